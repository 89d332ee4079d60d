"""Test support: tiny synthetic shard sets for the training tests, the demo and bench/train.py (a synthetic
corpus in a real dataset's layout -> the real shard builder; deterministic for a given (fmt, n, seed,
image_size)), and the fault-injection points of the training loop (`fault_point`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

SOURCE_OF = {"kagl": "kagl", "deepfashion-mm": "deepfashion-mm", "imaterialist": "imaterialist", "folder": "folder"}


def build_tiny_shards(fmt: str, out: str | Path, n: int = 300, seed: int = 0, image_size: int = 64,
                      splits: str = "train=0.7,val=0.3,test=0.0", shard_size: int = 64) -> Path:
    """Generate `n` synthetic items of `fmt` under out/raw and build shards into out/shards (reused only when
    an earlier call built them with the same arguments). Returns the shard directory."""
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.synth import generate

    out = Path(out)
    shards = out / "shards"
    stamp = out / "build_args.json"
    args = {"fmt": fmt, "n": n, "seed": seed, "image_size": image_size, "splits": splits, "shard_size": shard_size}
    if (shards / "manifest.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == args:
        return shards
    shutil.rmtree(out, ignore_errors=True)
    generate(fmt, out / "raw", n, seed=seed, image_size=image_size)
    build_shards(ShardBuildConfig(source=SOURCE_OF[fmt], input=str(out / "raw"), out=str(shards),
                                  image_size=image_size, shard_size=shard_size, splits=splits, workers=1,
                                  progress=False))
    stamp.write_text(json.dumps(args))
    return shards


# -- fault injection (tests only) ---------------------------------------------------------------------
FAULT_KILL_ENV = "FASHIONTUNE_TEST_KILL_AT"  # "<phase>@<step>": SIGKILL this process there
FAULT_TRACE_ENV = "FASHIONTUNE_TEST_FAULT_TRACE"  # a file: append "<phase> <step>" for every point reached


def fault_point(phase: str, step: int) -> None:
    """A named moment of a training run where the fault tests may kill the process (never set in real runs).

    Phases: "step" (an optimiser step done, nothing else yet), "val" (a validation logged, its best export
    done), "export" (mid-export: the old export moved aside, the new one not yet in place), "save" (mid-
    checkpoint: state written to .tmp-step_<N>/, not yet marked complete), "saved" (checkpoint complete).
    SIGKILL, not an exception: no handler, `finally` or buffered write runs, as under a real kill."""
    trace = os.environ.get(FAULT_TRACE_ENV)
    if trace:
        with open(trace, "a") as f:
            f.write(f"{phase} {step}\n")
    if os.environ.get(FAULT_KILL_ENV) == f"{phase}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
