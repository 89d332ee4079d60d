"""Training killed at chosen and at seeded random moments, then resumed, ends exactly as the uninterrupted run:
the same export weights (bitwise), the same best step and value, the same metrics log, line for line.

How a kill is placed: the loop calls `fault_point(phase, step)` at named moments (train/testing.py: after a
step, after a validation and its best export, mid-export, mid-checkpoint-save, after a save); a training
subprocess started with FASHIONTUNE_TEST_KILL_AT=<phase>@<step> SIGKILLs itself there. The uninterrupted
reference run traces every point it passes (FASHIONTUNE_TEST_FAULT_TRACE), so the tests draw kill points
from moments that really happen, and each kill is checked to have happened (exit by SIGKILL, no
results.json). Nothing waits on a file: the subprocess ends by itself at its fault point.

The run: 30 steps of 14-step epochs (end-of-epoch validations at 14 and 28, the final one at 30),
checkpoints every 7 steps (so one lands on each epoch's last step), best export on. A run of killed
processes is a chain: each kill point lies after the previous one in the reference's order; the last
process runs to the end. Two chains per run of this file:
- fixed: right after the first end-of-epoch validation, mid-save of the next checkpoint, mid-export;
- random: RANDOM_POINTS points drawn with a fixed seed (FASHIONTUNE_FAULT_SEED to draw others) from all
  ~130 traced points.
Cost: ~2-3 min on 2 cores (one in-process reference, 6 killed subprocesses, 2 in-process finishes).

DeepSpeed ZeRO-3 (one process, its own checkpoint files, checked before DeepSpeed reads them): killed
mid-save and resumed, it ends with the uninterrupted run's weights. ~45 s (3 subprocesses). The 2-process
ZeRO-2 resume is tests/test_train_distributed.py's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashiontune.train import load_train_config, run_training
from fashiontune.train.testing import FAULT_KILL_ENV, FAULT_TRACE_ENV, build_tiny_shards

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/tiny-kagl-softmax.yaml"
RANDOM_POINTS = 3
SEED = int(os.environ.get("FASHIONTUNE_FAULT_SEED", "20261202"))


@pytest.fixture(scope="module")
def kagl(tmp_path_factory) -> Path:
    return build_tiny_shards("kagl", tmp_path_factory.mktemp("kagl"), n=300)


def overrides(shards: Path, out: Path, name: str) -> list[str]:
    # 220 train samples / 16 = 14 steps per epoch.
    return [f"data.shards={shards}", f"out_dir={out}", f"name={name}", "data.workers=0", "data.batch_size=16",
            "loop.max_steps=30", "checkpoint.every_steps=7", "checkpoint.keep_last=2", "checkpoint.export_best=true",
            "log.tensorboard=false", "log.every_steps=1", "log.progress=false", "log.plots=false",
            "log.eval_max_batches=2"]


@pytest.fixture(scope="module")
def reference(kagl, tmp_path_factory) -> tuple[Path, list[str]]:
    """The uninterrupted run and the fault points it passed, in order ("phase@step")."""
    out = tmp_path_factory.mktemp("ref")
    trace = out / "trace.txt"
    os.environ[FAULT_TRACE_ENV] = str(trace)
    try:
        run_training(load_train_config(CONFIG, overrides(kagl, out, "ref")))
    finally:
        del os.environ[FAULT_TRACE_ENV]
    points = ["@".join(line.split()) for line in trace.read_text().splitlines()]
    assert len(points) == len(set(points)), "a fault point was passed twice in one uninterrupted run"
    return out / "ref", points


def train_process(args: list[str], kill_at: str = "") -> int:
    """`fashiontune train` in a subprocess, SIGKILLing itself at the fault point `kill_at` (if given)."""
    argv = [sys.executable, "-m", "fashiontune", "train", "--config", str(CONFIG), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({FAULT_KILL_ENV: kill_at} if kill_at else {})}
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    if kill_at:
        assert proc.returncode == -signal.SIGKILL, f"not killed at {kill_at}: rc={proc.returncode}\n" + proc.stderr.decode()[-3000:]
    return proc.returncode


def killed_at(kagl: Path, out: Path, point: str) -> None:
    """One training process that SIGKILLs itself at `point`; it must really die there."""
    train_process(overrides(kagl, out, "chain"), kill_at=point)
    assert not (out / "chain" / "results.json").exists()


def run_chain(kagl: Path, out: Path, points: list[str]) -> Path:
    for point in points:
        killed_at(kagl, out, point)
    run_training(load_train_config(CONFIG, overrides(kagl, out, "chain")))  # the last start runs to the end
    return out / "chain"


def export_weights(run: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(run / "export" / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
    sd.update({f"head.{k}": v for k, v in torch.load(run / "export" / "heads.pt", weights_only=True).items()})
    return sd


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k != "samples_per_s"} for x in lines]


def assert_same_run(run: Path, ref: Path) -> None:
    a, b = export_weights(run), export_weights(ref)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (run, ref))
    for key in ("best", "final", "step", "epochs_done", "samples_seen", "skipped_steps"):
        assert ra[key] == rb[key], key
    assert metrics(run) == metrics(ref)


def test_reference_run_has_the_moments_the_faults_need(reference):
    ref, points = reference
    assert {"val@14", "val@28", "val@30", "save@14", "saved@14", "step@30"} <= set(points)
    assert any(p.startswith("export@") for p in points)
    best = json.loads((ref / "results.json").read_text())["best"]
    assert best["step"] in (14, 28, 30) and best["value"] is not None


def test_kills_after_epoch_end_validation_mid_save_and_mid_export_resume_exactly(kagl, reference, tmp_path):
    ref, points = reference
    last_export = [p for p in points if p.startswith("export@")][-1]
    chain = sorted({"val@14", "save@21", last_export}, key=points.index)
    assert_same_run(run_chain(kagl, tmp_path, chain), ref)


def test_kills_at_seeded_random_moments_resume_exactly(kagl, reference, tmp_path):
    ref, points = reference
    chain = sorted(random.Random(SEED).sample(points, RANDOM_POINTS), key=points.index)
    print(f"fault points (seed {SEED}): {chain}")
    assert_same_run(run_chain(kagl, tmp_path, chain), ref)


@pytest.mark.distributed
def test_deepspeed_zero3_killed_mid_save_resumes_exactly(kagl, tmp_path):
    ds = ["dist.strategy=deepspeed", f"dist.deepspeed_config={ROOT / 'configs/deepspeed/zero3.json'}",
          "loop.max_steps=6", "checkpoint.every_steps=2"]
    assert train_process([*overrides(kagl, tmp_path, "full"), *ds]) == 0
    train_process([*overrides(kagl, tmp_path, "killed"), *ds], kill_at="save@4")
    assert (tmp_path / "killed" / "checkpoints" / ".tmp-step_00000004" / "pytorch_model").is_dir()  # cut mid-save
    assert train_process([*overrides(kagl, tmp_path, "killed"), *ds]) == 0
    assert json.loads((tmp_path / "killed" / "results.json").read_text())["resumed_from_step"] == 2
    assert_same_run(tmp_path / "killed", tmp_path / "full")
