"""`run_training(cfg)`: the training recipe, top to bottom.

    model + task -> accelerator (DDP / DeepSpeed) -> loaders -> optimiser + schedule -> resume
    -> for each step: micro-batches -> task.step(backward) -> clip/update or skip -> log / eval / checkpoint
    -> final eval, best export, results.json, plots

Resume is automatic and idempotent: a job started again with the same run directory (a SLURM requeue, a
crash, `loop.stop_after_steps`) restores the newest complete checkpoint (weights, optimiser, schedule, RNG,
data position, counters, best) and continues; a finished run started again only re-writes its report.
All the work of a step (its end-of-epoch or final validation and best export included) is done before the
checkpoint of that step is saved, so a resumed run repeats exactly what a kill cut off, never less.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from accelerate.utils import DistributedType, set_seed

from fashiontune.config import ConfigError, config_hash, save_config, to_yaml
from fashiontune.data import make_loader, read_manifest, to_device
from fashiontune.models import load_clip
from fashiontune.tasks import build_task
from fashiontune.train.accel import make_accelerator, process_state
from fashiontune.train.checkpoint import CheckpointManager
from fashiontune.train.config import TrainConfig
from fashiontune.train.logs import RunLogger, Throughput, read_metrics
from fashiontune.train.optim import build_optimizer, build_scheduler
from fashiontune.train.report import plot_confusion, plot_curves
from fashiontune.train.step import StepRunner
from fashiontune.train.testing import fault_point


def _chunks(it: Iterator[dict], n: int) -> Iterator[list[dict]]:
    group: list[dict] = []
    for b in it:
        group.append(b)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


def _zero3(acc) -> bool:
    if acc.distributed_type != DistributedType.DEEPSPEED:
        return False
    return int(acc.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)) == 3


def _n_samples(batch: dict) -> int:
    return int(batch["valid"].sum()) if "valid" in batch else len(batch["key"])


class _Evaluator:
    """Validation over the whole val split (or its first `max_batches`), gathered over ranks by the task.

    Padding batches (valid all False; short ranks of an uneven exact split) are dropped, and the forward runs
    on the unwrapped module, which does no collectives, so ranks may see different batch counts. Under
    ZeRO-3 every forward gathers parameters collectively, so there all ranks run every batch, padding
    included (a few repeated samples in the metrics)."""

    def __init__(self, acc, task, loader, max_batches: int):
        self.acc, self.task, self.loader, self.max_batches = acc, task, loader, max_batches

    def __call__(self) -> dict[str, float]:
        zero3 = _zero3(self.acc)

        def batches():
            for i, b in enumerate(self.loader):
                if self.max_batches and i >= self.max_batches:
                    break
                if zero3 or "valid" not in b or bool(b["valid"].any()):
                    yield to_device(b, self.acc.device)

        self.loader.set_epoch(0)
        wrapped = self.task.module
        if not zero3 and hasattr(self.task, "core"):
            self.task.module = self.task.core
        try:
            with torch.no_grad():
                return dict(self.task.evaluate(batches(), self.acc))
        finally:
            self.task.module = wrapped


def _export(acc, task, out: Path, step: int) -> None:
    """Best-so-far export, atomic: write <run>/.export-tmp, then swap it in for <run>/export."""
    state = acc.get_state_dict(task.module) if _zero3(acc) else None  # collective under ZeRO-3
    if acc.is_main_process:
        tmp, old = out.with_name(".export-tmp"), out.with_name(".export-old")
        for p in (tmp, old):
            shutil.rmtree(p, ignore_errors=True)
        task.export(tmp, state_dict=state)
        if out.exists():
            os.replace(out, old)
        fault_point("export", step)  # test hook: a kill here leaves no export/ (the next run writes it again)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _better(value: float, best: Optional[float], higher: bool) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value > best if higher else value < best)


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    cfg.validate()
    t_start = time.time()
    state = process_state(cfg)
    set_seed(cfg.loop.seed)  # the same initial weights and heads on every rank
    run_dir = cfg.run_dir
    manifest = read_manifest(cfg.data.shards)

    loaded = load_clip(cfg.model)
    task = build_task(cfg.task, loaded, manifest, state.process_index, state.num_processes)
    find_unused = cfg.dist.find_unused_parameters
    if find_unused is None:
        # With accumulation the synced (last) micro-batch need not touch every parameter: the contrastive
        # feature cache gives logit_scale its gradient on the first micro-batch only.
        find_unused = task.find_unused_parameters or cfg.loop.grad_accum > 1
    acc = make_accelerator(cfg, find_unused)
    main = acc.is_main_process
    if main:
        prev = run_dir / "config.yaml"
        if prev.exists() and prev.read_text() != to_yaml(cfg):
            print(f"fashiontune train: {prev} differs from this config; the run continues with the new one "
                  "(the old file is kept as config.prev.yaml).", flush=True)
            shutil.copy(prev, run_dir / "config.prev.yaml")
        save_config(cfg, run_dir)  # the resolved config is the first thing in the run directory
    acc.wait_for_everyone()

    fields = list(task.fields)
    tokenizer = loaded.tokenizer if task.needs_text else None
    common = dict(tokenizer=tokenizer, fields=fields, rank=acc.process_index, world_size=acc.num_processes,
                  manifest=manifest)
    val_count = int(manifest.get("splits", {}).get(cfg.data.val_split, {}).get("count", 0))
    val_loader = make_loader(cfg.data, train=False, transform=loaded.preprocess_val, **common) if val_count else None

    metric = cfg.checkpoint.best_metric or task.primary_metric
    higher = task.higher_is_better if not cfg.checkpoint.best_metric else metric != "loss" and "loss" not in metric
    results: dict[str, Any] = {"name": cfg.name, "task": cfg.task.name.value if hasattr(cfg.task.name, "value")
                               else str(cfg.task.name), "config_hash": config_hash(cfg),
                               "world_size": acc.num_processes, "best_metric": metric}

    if not task.trainable:  # zero-shot: evaluate and export, nothing to optimise
        task.module = task.module.to(acc.device)
        evaluator = _Evaluator(acc, task, val_loader, cfg.log.eval_max_batches) if val_loader else None
        val = evaluator() if evaluator else {}
        _export(acc, task, run_dir / "export", 0)
        results.update(step=0, final=val, best={"metric": metric, "value": val.get(metric), "step": 0})
        return _finish(acc, task, cfg, results, t_start)

    train_loader = make_loader(cfg.data, train=True, transform=loaded.preprocess_train, **common)
    ga = cfg.loop.grad_accum
    steps_per_epoch = math.ceil(len(train_loader) / ga)
    total_steps = cfg.loop.max_steps or cfg.loop.epochs * steps_per_epoch

    optimizer = build_optimizer(task.module, cfg.optim)
    scheduler = build_scheduler(optimizer, total_steps, cfg.schedule)
    # The scheduler is not prepared: accelerate would step it once per process per call; we step it once per
    # optimiser step (also under DeepSpeed); the checkpoint keeps its state as JSON.
    task.module, optimizer = acc.prepare(task.module, optimizer)
    runner = StepRunner(acc, task, optimizer, scheduler, cfg.optim.grad_clip, cfg.loop.max_bad_steps,
                        cfg.loop.nan_steps, cfg.loop.nan_ranks)
    evaluator = _Evaluator(acc, task, val_loader, cfg.log.eval_max_batches) if val_loader else None
    ckpt = CheckpointManager(acc, run_dir / "checkpoints", cfg.checkpoint.keep_last, task.module, optimizer, scheduler)

    step, epoch, samples_seen, last_val_step = 0, 0, 0, -1
    best: dict[str, Any] = {"metric": metric, "value": None, "step": None}
    resumed = ckpt.load_latest() if cfg.checkpoint.resume else None
    if resumed:
        step, epoch, samples_seen = resumed["step"], resumed["epoch"], resumed.get("samples_seen", 0)
        train_loader.load_state_dict(resumed["data"])
        runner.load_state_dict(resumed.get("runner", {}))
        best = resumed.get("best", best)
        last_val_step = resumed.get("last_val_step", -1)  # a validation already done at the checkpoint's step
        if main:
            print(f"fashiontune train: resumed from {resumed['path']} (step {step}, epoch {epoch})", flush=True)
    results["resumed_from_step"] = step

    logger = RunLogger(run_dir, main, cfg.log.tensorboard, cfg.log.progress, total_steps, step)
    meter = Throughput()
    last_val: dict[str, float] = {}

    def trainer_state(data_pos: dict) -> dict:
        return {"step": step, "epoch": epoch, "samples_seen": samples_seen, "data": data_pos,
                "runner": runner.state_dict(), "best": best, "total_steps": total_steps,
                "last_val_step": last_val_step}

    paused = 0.0  # seconds spent validating / checkpointing, left out of the training throughput

    def validate() -> dict[str, float]:
        nonlocal last_val_step, last_val, best, paused
        t0 = time.perf_counter()
        val = evaluator()
        last_val_step, last_val = step, val
        logger.log({"kind": "val", "step": step, "epoch": epoch, **val})
        if metric not in val:
            raise ConfigError(f"checkpoint.best_metric={metric!r} is not a validation metric of task "
                              f"{results['task']}; choose one of: {', '.join(sorted(val))}.")
        if _better(val[metric], best["value"], higher):
            best = {"metric": metric, "value": val[metric], "step": step}
            if cfg.checkpoint.export_best:
                _export(acc, task, run_dir / "export", step)
        paused += time.perf_counter() - t0
        fault_point("val", step)
        return val

    t_loop, step_at_start, samples_at_start = time.perf_counter(), step, samples_seen
    stop_early = False
    at_epoch_end = False  # the data position is "start of `epoch`" (the previous one was used up)
    while step < total_steps and not stop_early:
        train_loader.set_epoch(epoch)
        task.on_epoch_start(epoch)
        task.module.train()
        for micro in _chunks(iter(train_loader), ga):
            micro = [to_device(b, acc.device) for b in micro]
            logs = runner.run(micro, step)
            step += 1
            fault_point("step", step)
            n_local = sum(_n_samples(b) for b in micro)
            samples_seen += n_local * acc.num_processes
            meter.add(n_local * acc.num_processes)
            lr = scheduler.get_last_lr()[0]
            logger.progress(1, {"loss": logs.get("loss", float("nan")), "lr": lr})
            if step % cfg.log.every_steps == 0 or step == total_steps:
                loss = torch.tensor([logs.get("loss", float("nan"))], device=acc.device)
                loss = float(acc.reduce(loss, "mean")) if acc.num_processes > 1 else float(loss)
                rate = meter.rate()
                logger.log({"kind": "train", "step": step, "epoch": epoch, "samples": samples_seen,
                            **{k: v for k, v in logs.items() if k != "loss"}, "loss": loss, "lr": lr,
                            "samples_per_s": rate, "skipped_total": runner.skipped_total})
                if logger.bar is not None:
                    logger.bar.set_postfix({"loss": f"{loss:.4g}", "samples/s": f"{rate:.1f}"}, refresh=False)
            done = train_loader.state_dict()["batches"] >= len(train_loader)  # this epoch's data is used up
            periodic = cfg.log.eval_every_steps and step % cfg.log.eval_every_steps == 0
            epoch_end = done and not cfg.log.eval_every_steps
            if evaluator and (periodic or epoch_end or step == total_steps):
                validate()  # before this step's checkpoint: a resumed run never skips it (nor repeats it)
                task.module.train()
            stop_early = bool(cfg.loop.stop_after_steps) and cfg.loop.stop_after_steps <= step < total_steps
            if (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0) or stop_early:
                pos = {**train_loader.state_dict(), **({"epoch": epoch + 1, "batches": 0} if done else {})}
                t0 = time.perf_counter()
                ckpt.save(step, {**trainer_state(pos), **({"epoch": epoch + 1} if done else {})})
                paused += time.perf_counter() - t0
            if step >= total_steps or stop_early:
                break
        at_epoch_end = train_loader.state_dict()["batches"] >= len(train_loader)
        if at_epoch_end:
            epoch += 1
    logger.close()
    train_s = time.perf_counter() - t_loop - paused
    results["train_seconds"] = train_s  # this invocation's steps, data waits included, eval/checkpoints not
    results["train_samples_per_s"] = (samples_seen - samples_at_start) / train_s if step > step_at_start else None

    results["step"] = step
    results["skipped_steps"] = runner.skipped_total
    if stop_early:
        results["status"] = "stopped"
        acc.wait_for_everyone()
        return results

    if cfg.checkpoint.save_final:
        pos = {**train_loader.state_dict(), "epoch": epoch, "batches": 0} if at_epoch_end else train_loader.state_dict()
        ckpt.save(step, trainer_state(pos))
    val = {}
    if evaluator:  # the final validation ran at the last step, here or before the checkpoint resumed from
        val = validate() if last_val_step != step else (last_val or _last_val(run_dir, step, main, acc))
    if not cfg.checkpoint.export_best or best["value"] is None:
        _export(acc, task, run_dir / "export", step)  # nothing validated: export the final weights
    rates = [r.get("samples_per_s") for r in read_metrics(run_dir / "metrics.jsonl")
             if r.get("kind") == "train" and r.get("samples_per_s")] if main else []
    results.update(final=val, best=best, epochs_done=epoch, samples_seen=samples_seen,
                   samples_per_s=(sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else (rates[0] if rates else None)))
    return _finish(acc, task, cfg, results, t_start)


def _last_val(run_dir: Path, step: int, main: bool, acc) -> dict:
    if not main:
        return {}
    for r in reversed(read_metrics(run_dir / "metrics.jsonl")):
        if r.get("kind") == "val" and r.get("step") == step:
            return {k: v for k, v in r.items() if k not in ("kind", "step", "epoch")}
    return {}


def _finish(acc, task, cfg: TrainConfig, results: dict, t_start: float) -> dict:
    run_dir = cfg.run_dir
    results["status"] = "finished"
    results["time_s"] = time.time() - t_start
    if acc.is_main_process:
        results["plots"] = []
        if cfg.log.plots:
            plots = run_dir / "plots"
            written = plot_curves(read_metrics(run_dir / "metrics.jsonl"), plots)
            written += plot_confusion(getattr(task, "last_eval", {}), plots)
            results["plots"] = [str(p.relative_to(run_dir)) for p in written]
        tmp = run_dir / "results.json.tmp"
        tmp.write_text(json.dumps(_clean(results), indent=2, default=_json_default))
        os.replace(tmp, run_dir / "results.json")
    acc.wait_for_everyone()
    return results


def _clean(o: Any) -> Any:
    """JSON has no NaN/inf: write null ("not measured")."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)
