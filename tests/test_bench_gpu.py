"""bench/gpu.sh --dry-run: the GPU benchmark's code paths (both trainers, loader, FLOPs count, 1M-style scoring,
embedding throughput, the closing table) on the CPU with tiny sizes, so the script is known to run before a GPU
is at hand. Cost: ~50 s of CPU (six child processes that import torch/open_clip), ~2 min wall on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_dry_run_prints_the_table(tmp_path):
    pytest.importorskip("pandas", reason="open_clip_train (the training peer) needs the bench extra's pandas")
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    assert res["bench"] == "gpu"
    train = res["train"]
    assert train["ours"]["samples_per_s"] > 0 and train["openclip"]["samples_per_s"] > 0
    assert train["flops_per_sample"] > 0 and train["ours"]["mfu"] is None  # no peak on a CPU: n/a, not a guess
    assert res["eval"]["rows"][0]["ours"]["seconds"] > 0 and res["eval"]["rows"][0]["faiss"] is None
    assert [r["images_per_s"] > 0 for r in res["embed"]["rows"]] == [True, True]
    table = "\n".join(lines)
    for what in ("fashiontune train", "open_clip_train.main", "loader only", "eval scoring N=3,000",
                 "eval embedding"):
        assert what in table


def test_gpu_bench_refuses_unknown_arguments():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dryrun"], capture_output=True, text=True,
                          env={**os.environ, "PY": sys.executable}, timeout=60, check=False)
    assert proc.returncode == 2 and "usage" in proc.stderr
