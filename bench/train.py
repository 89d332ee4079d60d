"""Training throughput: `fashiontune train` against open_clip's own trainer (`open_clip_train.main`), same run.

Both train CLIP contrastively for one epoch on the same WebDataset shards (a synthetic kagl corpus through the
shard builder), with the same tiny model (ft-tiny-vit, random init), batch size, precision and loader workers,
each in a fresh subprocess with the same thread settings. Throughput = samples / seconds of the training
epoch (data waits included; model build, validation and checkpoints excluded on both sides). Also prints the
loader-only samples/s of our pipeline (fashiontune.data.measure_loader_throughput).

    python bench/train.py [--n 3000] [--batch 32] [--precision auto] [--workers 1] [--accum 1] [--model ft-tiny-vit]
                          [--syncs] [--out /tmp/ft-bench]

On CUDA both run as open_clip_train does there: `--precision auto` is bf16 autocast (ours: loop.precision=auto;
open_clip: amp_bf16), TF32 matmuls and cudnn.benchmark on (ours: loop.tf32 / loop.cudnn_benchmark, defaults;
open_clip sets them itself on CUDA). `--accum K` is gradient accumulation with the feature cache on both sides
(loop.grad_accum / --accum-freq); `--no-tf32` turns TF32 off on our side only. `--syncs` (CUDA only) also
counts our training loop's host syncs with torch.cuda.set_sync_debug_mode("warn") and prints syncs per step
(train/step.py states the budget).

Model FLOPs utilisation (MFU) = samples/s x training FLOPs per sample (3 x one forward of image + text,
counted by torch.utils.flop_counter) / the device's dense bf16 peak (H100/H200: 989 TFLOPS; other devices:
set FT_PEAK_TFLOPS; none on a CPU). The last line is one JSON object with every number printed.

open_clip_train imports pandas at module level: `make bench` installs the `bench` extra, which has it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODEL = "ft-tiny-vit"


def ours(a: argparse.Namespace, shards: Path) -> dict:
    from fashiontune.train import load_train_config, run_training

    cfg = load_train_config(None, [
        "name=bench-ours", f"out_dir={a.out}/runs", f"model.name={a.model}", f"data.shards={shards}",
        f"data.batch_size={a.batch}", f"data.workers={a.workers}", "data.drop_last=true", "task.name=contrastive",
        "loop.epochs=1", f"loop.precision={a.precision}", f"loop.grad_accum={a.accum}",
        f"loop.tf32={str(a.tf32).lower()}", "checkpoint.every_steps=0",
        "checkpoint.save_final=false", "checkpoint.resume=false", "checkpoint.export_best=false",
        "log.progress=false", "log.tensorboard=false", "log.plots=false", "log.every_steps=1000",
        "data.val_split=none"])
    syncs = count_syncs() if a.syncs else None
    res = run_training(cfg)
    out = {"samples_per_s": res["train_samples_per_s"], "seconds": res["train_seconds"], "steps": res["step"],
           "precision": res["precision"]}
    if syncs is not None:
        out["syncs_per_step"] = len(syncs) / max(res["step"], 1)
    return out


def count_syncs() -> list:
    """Host syncs of our training loop (train(), not setup or the final export), recorded by CUDA's sync
    debug mode: each synchronising CUDA call warns once it is set to "warn"."""
    import warnings

    import torch

    from fashiontune.train import loop

    if not torch.cuda.is_available():
        raise SystemExit("bench/train.py: --syncs needs CUDA (torch.cuda.set_sync_debug_mode).")
    seen: list = []
    inner = loop.train

    def train(run):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return inner(run)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                seen.extend(w for w in caught if "synchroniz" in str(w.message))

    loop.train = train
    return seen


def openclip(a: argparse.Namespace, shards: Path) -> dict:
    try:
        import pandas  # noqa: F401  (open_clip_train imports it at module level)
    except ImportError:
        raise SystemExit("bench/train.py: open_clip_train needs pandas: run `make bench` or "
                         "`.venv/bin/pip install -e .[bench]`.")
    import open_clip_train.data as ocd
    import open_clip_train.main as ocm
    import webdataset as wds

    # open_clip_train's own tar grouping expects an older webdataset sample layout ("fname" keys); use the
    # installed webdataset's reader, which does the same grouping.
    ocd.tarfile_to_samples_nothrow = wds.tarfile_to_samples(handler=wds.warn_and_continue)

    import torch

    from fashiontune.models import register_model_configs

    register_model_configs()  # ft-tiny-vit known to open_clip by name
    precision = {"fp32": "fp32", "bf16": "amp_bf16",
                 "auto": "amp_bf16" if torch.cuda.is_available() else "fp32"}[a.precision]  # as ours resolves it
    manifest = json.loads((shards / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    urls = "::".join(str(shards / s["name"]) for s in train["shards"])
    timing: dict = {}
    inner = ocm.train_one_epoch

    def timed(model, data, *args, **kw):
        t = time.perf_counter()
        out = inner(model, data, *args, **kw)
        timing["seconds"] = time.perf_counter() - t
        timing["samples"] = data["train"].dataloader.num_samples
        timing["steps"] = data["train"].dataloader.num_batches
        return out

    ocm.train_one_epoch = timed
    ocm.main([
        "--train-data", urls, "--dataset-type", "webdataset", "--train-num-samples", str(train["count"]),
        "--model", a.model, "--batch-size", str(a.batch), "--precision", precision, "--accum-freq", str(a.accum),
        "--epochs", "1", "--workers", str(a.workers), "--logs", f"{a.out}/openclip-logs", "--name", f"bench-{time.time_ns()}",
        "--save-frequency", "0", "--report-to", "", "--log-every-n-steps", "1000", "--lr", "1e-4", "--warmup", "1",
        "--seed", "0", "--grad-clip-norm", "1.0",  # ours clips at optim.grad_clip=1.0 by default
    ])
    return {"samples_per_s": timing["samples"] / timing["seconds"], "seconds": timing["seconds"],
            "steps": timing["steps"] // a.accum, "precision": precision}


def loader_only(a: argparse.Namespace, shards: Path) -> dict:
    from fashiontune.data import DataConfig, make_loader, measure_loader_throughput
    from fashiontune.models import ModelConfig, load_clip

    loaded = load_clip(ModelConfig(name=a.model))
    cfg = DataConfig(shards=str(shards), batch_size=a.batch, workers=a.workers)
    loader = make_loader(cfg, train=True, transform=loaded.preprocess_train, tokenizer=loaded.tokenizer)
    return measure_loader_throughput(loader)


# dense bf16 tensor-core peak, FLOP/s, by device-name substring (spec sheets, SXM)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def flops_per_sample(model_name: str) -> float:
    """Training FLOPs of one (image, text) pair: 3 x the forward (backward ~ 2 x forward), counted on the CPU."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fashiontune.models import ModelConfig, load_clip

    loaded = load_clip(ModelConfig(name=model_name))
    size = loaded.model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    image, text = torch.zeros(1, 3, *size), loaded.tokenizer(["a red dress"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        loaded.model(image, text)
    return 3.0 * counter.get_total_flops()


def peak_flops() -> float | None:
    import torch

    if os.environ.get("FT_PEAK_TFLOPS"):
        return float(os.environ["FT_PEAK_TFLOPS"]) * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def flops_info(a: argparse.Namespace, shards: Path) -> dict:
    return {"flops_per_sample": flops_per_sample(a.model), "peak_flops": peak_flops()}


def worker(a: argparse.Namespace) -> None:
    shards = Path(a.out) / "kagl" / "shards"
    out = {"ours": ours, "openclip": openclip, "loader": loader_only, "flops": flops_info}[a.worker](a, shards)
    print("RESULT " + json.dumps(out), flush=True)


def worker_result(a: argparse.Namespace, who: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", who, "--n", str(a.n), "--batch", str(a.batch),
                           "--workers", str(a.workers), "--model", a.model, "--out", a.out], env=env,
                          capture_output=True, text=True, check=False)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{who} failed (exit {proc.returncode})")
    return json.loads(line[len("RESULT "):])


def summary(a: argparse.Namespace, best: dict, loader: dict, flops: dict) -> None:
    """The closing lines: samples/s and MFU of both trainers, the loader against them, one JSON object."""
    peak = flops["peak_flops"]
    for r in best.values():
        r["mfu"] = r["samples_per_s"] * flops["flops_per_sample"] / peak if peak else None
    mfu = lambda r: f"MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else "MFU n/a (no peak known)"
    ratio = best["ours"]["samples_per_s"] / best["openclip"]["samples_per_s"]
    print(f"fashiontune train : {best['ours']['samples_per_s']:8.1f} samples/s  {mfu(best['ours'])}")
    print(f"open_clip_train   : {best['openclip']['samples_per_s']:8.1f} samples/s  {mfu(best['openclip'])}")
    print(f"ratio (ours / open_clip): {ratio:.2f}  (target >= 1.0); "
          f"{flops['flops_per_sample'] / 1e9:.1f} GFLOP per training sample")
    print(f"loader only       : {loader['samples_per_s']:8.1f} samples/s "
          f"({loader['samples_per_s'] / best['ours']['samples_per_s']:.1f}x what training consumes)")
    print(json.dumps({"bench": "train", "model": a.model, "batch": a.batch, "workers": a.workers, "ours": best["ours"],
                      "openclip": best["openclip"], "loader": loader, **flops, "ratio": ratio}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000, help="synthetic kagl items (90%% train)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64, help="side of the synthetic images in the shards")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU (both trainers)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation steps (both trainers)")
    p.add_argument("--model", default=MODEL, help="open_clip model name, random init (e.g. ViT-B-32 on a GPU)")
    p.add_argument("--syncs", action="store_true", help="CUDA: count our loop's host syncs per step")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="ours: loop.tf32 (open_clip_train always turns TF32 on on CUDA)")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per trainer; the best of each is kept")
    p.add_argument("--out", default="/tmp/fashiontune-bench-train")
    p.add_argument("--worker", choices=["ours", "openclip", "loader", "flops"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return 0

    from fashiontune.train.testing import build_tiny_shards

    shards = build_tiny_shards("kagl", Path(a.out) / "kagl", n=a.n, image_size=a.image_size,
                               splits="train=0.9,val=0.1,test=0.0", shard_size=128)
    count = json.loads((shards / "manifest.json").read_text())["splits"]["train"]["count"]
    print(f"shards: {shards} ({count} train samples), model {a.model}, batch {a.batch} x accum {a.accum}, "
          f"{a.precision}, workers {a.workers}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    env = {**os.environ}
    best: dict[str, dict] = {}
    for rep in range(a.repeats):
        for who in ("openclip", "ours") if rep % 2 == 0 else ("ours", "openclip"):
            cmd = [sys.executable, __file__, "--worker", who, "--n", str(a.n), "--batch", str(a.batch),
                   "--precision", a.precision, "--workers", str(a.workers), "--accum", str(a.accum),
                   "--model", a.model, "--out", a.out, "--tf32" if a.tf32 else "--no-tf32",
                   *(["--syncs"] if a.syncs and who == "ours" else [])]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{who} failed (exit {proc.returncode})")
            r = json.loads(line[len("RESULT "):])
            syncs = f", {r['syncs_per_step']:.2f} host syncs/step" if "syncs_per_step" in r else ""
            print(f"  run {rep + 1} {who:9s} {r['samples_per_s']:8.1f} samples/s  ({r['steps']} steps, "
                  f"{r['seconds']:.1f} s, {r['precision']}{syncs})")
            if who not in best or r["samples_per_s"] > best[who]["samples_per_s"]:
                best[who] = r
    loader, flops = (worker_result(a, w, env) for w in ("loader", "flops"))
    summary(a, best, loader, flops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
