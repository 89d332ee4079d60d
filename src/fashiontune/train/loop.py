"""`run_training(cfg)`: the training recipe, top to bottom.

    setup:  model + task -> accelerator -> loaders;  optimiser -> schedule + backend (DDP / DeepSpeed) -> resume
    train:  for each step: micro-batches -> train_step (step.py) -> log / validate / checkpoint
    finish: final checkpoint and validation, export, results.json, plots

Resume is automatic and idempotent: a job started again with the same run directory (a SLURM requeue, a
crash, `loop.stop_after_steps`) restores the newest complete checkpoint (weights, optimiser, schedule, RNG and
the TrainState: data position, counters, best, last validation) and continues; a finished run started again
only re-writes its report. All the work of a step (its end-of-epoch or final validation and best export
included) is done before the checkpoint of that step is saved, so a resumed run repeats exactly what a kill
cut off, never less.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from accelerate.utils import set_seed

from fashiontune.config import ConfigError, config_hash, save_config, to_yaml
from fashiontune.data import make_loader, read_manifest, to_device
from fashiontune.files import write_text_atomic
from fashiontune.models import load_clip
from fashiontune.models.lora import count_parameters
from fashiontune.models.precision import set_fast_math
from fashiontune.tasks import FreezeMode, Task, build_task
from fashiontune.train.accel import make_accelerator, process_state, resolved_precision
from fashiontune.train.backend import DDPBackend, make_backend
from fashiontune.train.batch_shapes import check_equal_batches
from fashiontune.train.checkpoint import STATE, CheckpointError, CheckpointManager, way_out
from fashiontune.train.config import TrainConfig
from fashiontune.train.logs import RunLogger, Throughput, read_metrics
from fashiontune.train.optim import build_optimizer, build_scheduler
from fashiontune.train.report import plot_confusion, plot_curves
from fashiontune.train.state import TrainState
from fashiontune.train.step import train_step
from fashiontune.train.testing import fault_point


class Clock:
    """This invocation's training seconds: data waits included, validation and checkpoints left out."""

    def __init__(self) -> None:
        self.start, self.paused = time.perf_counter(), 0.0

    @contextmanager
    def pause(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - t0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused


@dataclass
class Run:
    """Everything one training run holds; `state` is what its checkpoints save besides the tensors."""

    cfg: TrainConfig
    acc: Any
    task: Task
    train_loader: Any
    val_loader: Any
    metric: str  # the validation metric that picks the best step
    higher: bool
    total_steps: int
    results: dict[str, Any]
    state: TrainState = field(default_factory=TrainState)
    backend: Optional[DDPBackend] = None
    scheduler: Any = None
    ckpt: Optional[CheckpointManager] = None
    logger: Optional[RunLogger] = None
    clock: Clock = field(default_factory=Clock)
    meter: Throughput = field(default_factory=Throughput)
    rates: list[float] = field(default_factory=list)  # samples/s of each logged interval of this invocation
    started_at: tuple[int, int] = (0, 0)  # (step, samples_seen) when this invocation started training
    t_start: float = field(default_factory=time.time)


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    run = setup(cfg)
    if not run.task.trainable:  # zero-shot: evaluate and export, nothing to optimise
        return evaluate_only(run)
    lp_ft = cfg.task.freeze.mode == FreezeMode.lp_ft
    optimizer = build_optimizer(run.task.module, cfg.optim, cfg.task.freeze.tower_lr_scale if lp_ft else 1.0)
    prepare(run, optimizer)
    stopped = train(run)
    return finish(run, stopped)


# -- setup -------------------------------------------------------------------------------------------------
def setup(cfg: TrainConfig) -> Run:
    cfg.validate()
    t_start = time.time()
    ps = process_state(cfg)
    manifest = read_manifest(cfg.data.shards)
    check_equal_batches(cfg, ps.num_processes, manifest)  # before any work: it needs the world size
    set_fast_math(cfg.loop.tf32, cfg.loop.cudnn_benchmark)
    set_seed(cfg.loop.seed)  # the same initial weights and heads on every rank
    loaded = load_clip(cfg.model)
    task = build_task(cfg.task, loaded, manifest, ps.process_index, ps.num_processes)
    acc = make_accelerator(cfg, _find_unused(cfg, task))
    if hasattr(task, "bind_data"):  # tasks that read the train split themselves (rerank: hard-negative mining)
        task.bind_data(cfg.data.shards, cfg.data.train_split, cfg.data.batch_size, cfg.loop.seed)
    _write_config(acc, cfg)

    common = dict(tokenizer=loaded.tokenizer if task.needs_text else None, fields=list(task.fields),
                  rank=acc.process_index, world_size=acc.num_processes, manifest=manifest)
    val_count = int(manifest.get("splits", {}).get(cfg.data.val_split, {}).get("count", 0))
    val_loader = make_loader(cfg.data, train=False, transform=loaded.preprocess_val, **common) if val_count else None
    train_loader, total_steps = None, 0
    if task.trainable:
        train_loader = make_loader(cfg.data, train=True, transform=loaded.preprocess_train, **common)
        total_steps = cfg.loop.max_steps or cfg.loop.epochs * math.ceil(len(train_loader) / cfg.loop.grad_accum)

    metric = cfg.checkpoint.best_metric or task.primary_metric
    higher = task.higher_is_better if not cfg.checkpoint.best_metric else "loss" not in metric
    name = cfg.task.name.value if hasattr(cfg.task.name, "value") else str(cfg.task.name)
    results = {"name": cfg.name, "task": name, "config_hash": config_hash(cfg), "world_size": acc.num_processes,
               "precision": resolved_precision(cfg).value, "best_metric": metric}
    results["trainable_params"], results["total_params"] = count_parameters(task.module)
    if acc.is_main_process and task.trainable:
        n, total = results["trainable_params"], results["total_params"]
        lora = f" (LoRA rank {cfg.model.lora.rank} on {'+'.join(cfg.model.lora.towers)})" if cfg.model.lora.rank else ""
        print(f"fashiontune train: {n:,} of {total:,} parameters trainable ({100 * n / max(total, 1):.2f}%){lora}",
              flush=True)
    run = Run(cfg, acc, task, train_loader, val_loader, metric, higher, total_steps, results, t_start=t_start)
    run.state.best["metric"] = metric
    return run


def _find_unused(cfg: TrainConfig, task: Task) -> bool:
    """DDP's extra graph walk (and all-reduce of the used-parameter bitmap) every step, only where needed:
    freeze schedules cut the graph (the task says so). Accumulation needs none: every task uses every trainable
    parameter in every micro-batch, the synced last one included (contrastive: tasks/contrastive.py)."""
    if cfg.dist.find_unused_parameters is not None:
        return cfg.dist.find_unused_parameters
    return task.find_unused_parameters


def _write_config(acc, cfg: TrainConfig) -> None:
    """The resolved config is the first thing in the run directory (the previous one kept if it differs)."""
    if acc.is_main_process:
        prev = cfg.run_dir / "config.yaml"
        if prev.exists() and prev.read_text() != to_yaml(cfg):
            print(f"fashiontune train: {prev} differs from this config; the run continues with the new one "
                  "(the old file is kept as config.prev.yaml).", flush=True)
            shutil.copy(prev, cfg.run_dir / "config.prev.yaml")
        save_config(cfg, cfg.run_dir)
    acc.wait_for_everyone()


def prepare(run: Run, optimizer: torch.optim.Optimizer) -> None:
    """Schedule, backend, checkpoints, resume, logger."""
    cfg = run.cfg
    # The scheduler is not prepared: accelerate would step it once per process per call; train_step steps it
    # once per optimiser step (also under DeepSpeed); the checkpoint keeps its state as JSON.
    run.scheduler = build_scheduler(optimizer, run.total_steps, cfg.schedule)
    run.backend = make_backend(run.acc, run.task.module, optimizer, cfg.optim.grad_clip)
    run.ckpt = CheckpointManager(run.acc, cfg.run_dir / "checkpoints", cfg.checkpoint.keep_last,
                                 run.backend.model, run.backend.optimizer, run.scheduler)
    if cfg.checkpoint.resume:
        _resume(run)
    run.results["resumed_from_step"] = run.state.step
    run.logger = RunLogger(cfg.run_dir, run.acc.is_main_process, cfg.log.tensorboard, cfg.log.progress,
                           run.total_steps, run.state.step)


def _resume(run: Run) -> None:
    resumed = run.ckpt.load_latest()
    if resumed is None:
        return
    try:
        run.state.load_state_dict(resumed)
    except (KeyError, TypeError, ValueError) as e:
        path = Path(resumed["path"]) / STATE
        raise CheckpointError(f"{path}: not a trainer state of this version ({type(e).__name__}: {e}). "
                              f"{way_out(path)}") from e
    run.train_loader.load_state_dict(run.state.position)
    if run.acc.is_main_process:
        print(f"fashiontune train: resumed from {resumed['path']} (step {run.state.step}, epoch {run.state.epoch})",
              flush=True)


# -- train -------------------------------------------------------------------------------------------------
def train(run: Run) -> bool:
    """Steps until loop.max_steps / loop.epochs; True when loop.stop_after_steps stopped the run early."""
    cfg, s, loader = run.cfg, run.state, run.train_loader
    nan_steps = set(cfg.loop.nan_steps)  # test hook: NaN losses at these steps, on loop.nan_ranks (all if empty)
    if cfg.loop.nan_ranks and run.acc.process_index not in set(cfg.loop.nan_ranks):
        nan_steps = set()
    run.clock = Clock()
    run.started_at = (s.step, s.samples_seen)
    while s.step < run.total_steps:
        epoch = s.epoch
        loader.set_epoch(epoch)
        run.task.on_epoch_start(epoch)
        run.task.module.train()
        for micro in _chunks(iter(loader), cfg.loop.grad_accum):
            n = sum(_n_samples(b) for b in micro)  # on the CPU-side batches: no device sync
            micro = [to_device(b, run.acc.device) for b in micro]
            run.task.on_step_start(s.step)
            logs = train_step(run.task, run.backend, run.scheduler, micro, s, cfg.loop.max_bad_steps,
                              poison=s.step in nan_steps, check_finite=cfg.loop.check_finite)
            s.step += 1
            fault_point("step", s.step)
            s.position = run.train_loader.position()
            _log_step(run, n, logs, epoch)
            if _after_step(run, epoch):
                return True
            if s.step >= run.total_steps:
                break
    return False


def _chunks(it: Iterator[dict], n: int) -> Iterator[list[dict]]:
    group: list[dict] = []
    for b in it:
        group.append(b)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


def _n_samples(batch: dict) -> int:
    """Real rows of a CPU-side batch (before to_device: counting a device tensor would wait for the GPU)."""
    return int(batch["valid"].sum()) if "valid" in batch else len(batch["key"])


def _log_step(run: Run, n: int, logs: dict, epoch: int) -> None:
    """Count the step's samples; on log steps only, turn its logs into numbers (the one sync of a log step)."""
    cfg, s, acc = run.cfg, run.state, run.acc
    n *= acc.num_processes
    s.samples_seen += n
    run.meter.add(n)
    run.logger.progress(1)
    if s.step % cfg.log.every_steps != 0 and s.step != run.total_steps:
        return
    values = log_values(logs, acc)
    rate = run.meter.rate()
    run.rates.append(rate)
    run.logger.log({"kind": "train", "step": s.step, "epoch": epoch, "samples": s.samples_seen, **values,
                    "lr": run.scheduler.get_last_lr()[0], "samples_per_s": rate, "skipped_total": s.skipped_total})
    if run.logger.bar is not None:
        run.logger.bar.set_postfix({"loss": f"{values.get('loss', float('nan')):.4g}", "samples/s": f"{rate:.1f}"},
                                   refresh=False)


def log_values(logs: dict[str, Any], acc) -> dict[str, float]:
    """A step's logs (device tensors or floats) as floats, averaged over ranks: all of them stacked into one
    tensor, so one all-reduce and one host sync whatever their number. NaN stays NaN (a skipped step)."""
    keys = sorted(logs)
    if not keys:
        return {}
    stacked = torch.stack([torch.as_tensor(logs[k], device=acc.device).detach().float().reshape(()) for k in keys])
    if acc.num_processes > 1:
        stacked = acc.reduce(stacked, "mean")
    return dict(zip(keys, stacked.tolist()))


def _after_step(run: Run, epoch: int) -> bool:
    """Validation and checkpoint after a step; True when loop.stop_after_steps ends the run here."""
    cfg, s = run.cfg, run.state
    periodic = cfg.log.eval_every_steps and s.step % cfg.log.eval_every_steps == 0
    epoch_end = s.epoch != epoch and not cfg.log.eval_every_steps  # this step used up the epoch's data
    if run.val_loader and (periodic or epoch_end or s.step == run.total_steps):
        validate(run, epoch)  # before this step's checkpoint: a resumed run never skips it (nor repeats it)
        run.task.module.train()
    stop = bool(cfg.loop.stop_after_steps) and cfg.loop.stop_after_steps <= s.step < run.total_steps
    if (cfg.checkpoint.every_steps and s.step % cfg.checkpoint.every_steps == 0) or stop:
        with run.clock.pause():
            run.ckpt.save(s.step, s.state_dict())
    return stop


def validate(run: Run, epoch: int) -> dict[str, float]:
    """Validate, log, and export when it is the best so far."""
    s = run.state
    with run.clock.pause():
        val = {k: float(v) for k, v in _evaluate(run).items()}
        s.last_val_step, s.last_val = s.step, val
        run.logger.log({"kind": "val", "step": s.step, "epoch": epoch, **val})
        if run.metric not in val:
            raise ConfigError(f"checkpoint.best_metric={run.metric!r} is not a validation metric of task "
                              f"{run.results['task']}; choose one of: {', '.join(sorted(val))}.")
        if s.better(val[run.metric], run.higher):
            s.best = {"metric": run.metric, "value": val[run.metric], "step": s.step}
            if run.cfg.checkpoint.export_best:
                _export(run, s.step)
    fault_point("val", s.step)
    return val


def _evaluate(run: Run) -> dict[str, float]:
    """The whole val split (or its first log.eval_max_batches), gathered over ranks by the task, on the
    unwrapped module. Padding batches (valid all False: short ranks of an uneven exact split) are dropped, so
    ranks may see different batch counts; under ZeRO-3 every forward gathers parameters collectively, so
    there all ranks run every batch, padding included (a few repeated samples in the metrics)."""
    keep_padding = run.backend is not None and run.backend.zero3
    run.val_loader.set_epoch(0)

    def batches() -> Iterator[dict]:
        for i, b in enumerate(run.val_loader):
            if run.cfg.log.eval_max_batches and i >= run.cfg.log.eval_max_batches:
                break
            if keep_padding or "valid" not in b or bool(b["valid"].any()):
                yield to_device(b, run.acc.device)

    with torch.no_grad(), (run.backend.autocast() if run.backend else nullcontext()):  # training's precision
        return dict(run.task.evaluate(batches(), run.acc))


def _export(run: Run, step: int) -> None:
    """Best-so-far export, atomic: write <run>/.export-tmp, then swap it in for <run>/export."""
    state = run.backend.full_state_dict() if run.backend else None  # collective under ZeRO-3
    out = run.cfg.run_dir / "export"
    if run.acc.is_main_process:
        tmp, old = out.with_name(".export-tmp"), out.with_name(".export-old")
        for p in (tmp, old):
            shutil.rmtree(p, ignore_errors=True)
        run.task.export(tmp, state_dict=state)
        if out.exists():
            os.replace(out, old)
        fault_point("export", step)  # test hook: a kill here leaves no export/ (the next run writes it again)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    run.acc.wait_for_everyone()


# -- finish ------------------------------------------------------------------------------------------------
def finish(run: Run, stopped: bool) -> dict[str, Any]:
    """Final checkpoint and validation, export, results.json, plots (all from memory)."""
    cfg, s, res = run.cfg, run.state, run.results
    run.logger.close()
    train_s = run.clock.seconds()
    step0, samples0 = run.started_at
    res["train_seconds"] = train_s  # this invocation's steps, data waits included, eval/checkpoints not
    res["train_samples_per_s"] = (s.samples_seen - samples0) / train_s if s.step > step0 else None
    res.update(step=s.step, skipped_steps=s.skipped_total)
    if stopped:
        res["status"] = "stopped"
        run.acc.wait_for_everyone()
        return res
    if cfg.checkpoint.save_final:
        run.ckpt.save(s.step, s.state_dict())
    val: dict[str, float] = {}
    if run.val_loader:  # the final validation ran at the last step, here or before the checkpoint resumed from
        val = validate(run, s.epoch) if s.last_val_step != s.step else s.last_val
    if not cfg.checkpoint.export_best or s.best["value"] is None:
        _export(run, s.step)  # nothing validated: export the final weights
    rates = run.rates[1:] or run.rates  # the first interval holds start-up (workers, compile)
    res.update(final=val, best=s.best, epochs_done=s.epoch, samples_seen=s.samples_seen,
               samples_per_s=sum(rates) / len(rates) if rates else None)
    return _write_results(run)


def evaluate_only(run: Run) -> dict[str, Any]:
    run.task.module.to(run.acc.device)
    val = _evaluate(run) if run.val_loader else {}
    _export(run, 0)
    run.results.update(step=0, final=val, best={"metric": run.metric, "value": val.get(run.metric), "step": 0})
    return _write_results(run)


def _write_results(run: Run) -> dict[str, Any]:
    run_dir, res = run.cfg.run_dir, run.results
    res["status"] = "finished"
    res["time_s"] = time.time() - run.t_start
    if run.acc.is_main_process:
        res["plots"] = []
        if run.cfg.log.plots:
            plots = run_dir / "plots"
            written = plot_curves(read_metrics(run_dir / "metrics.jsonl"), plots)
            written += plot_confusion(getattr(run.task, "last_eval", {}), plots)
            res["plots"] = [str(p.relative_to(run_dir)) for p in written]
        write_text_atomic(run_dir / "results.json", json.dumps(_clean(res), indent=2, default=_json_default))
    run.acc.wait_for_everyone()
    return res


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
