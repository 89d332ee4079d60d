"""Checkpoints, resume and the non-finite guard, in one process on kagl shards (tiny model, batch 16).

- a run stopped after a checkpoint (loop.stop_after_steps) and started again ends with exactly the weights,
  schedule and data position of an uninterrupted run; starting a finished run again changes nothing;
- a run killed with SIGKILL right after a checkpoint resumes to the same weights (slow: a subprocess; the
  kill is the loop's fault hook, test_faults_train.py kills at many more moments);
- a NaN injected into the loss is skipped (no update) and counted; N in a row abort with a clear message.
Cost: ~35 s (four 6-10 step runs + one 12-step run), the SIGKILL test ~40 s more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashiontune.errors import UserError
from fashiontune.train import load_train_config, run_training
from fashiontune.train.step import NonFiniteLossError
from fashiontune.train.testing import FAULT_KILL_ENV, build_tiny_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kagl(tmp_path_factory) -> Path:
    return build_tiny_shards("kagl", tmp_path_factory.mktemp("kagl"), n=300)


def overrides(shards: Path, out: Path, name: str, *extra: str) -> list[str]:
    # export_best=false: the export is the final weights, so runs compare weight for weight.
    return [f"data.shards={shards}", f"out_dir={out}", f"name={name}", "data.workers=0", "data.batch_size=16",
            "log.tensorboard=false", "log.every_steps=1", "checkpoint.export_best=false", "log.eval_max_batches=2",
            *extra]


def cfg(*args: str):
    return load_train_config(ROOT / "configs/tiny-kagl-softmax.yaml", list(args))


def weights(run: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(run / "export" / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
    sd.update({f"head.{k}": v for k, v in torch.load(run / "export" / "heads.pt", weights_only=True).items()})
    return sd


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst <= atol, f"max weight difference {worst} > {atol}"


def train_lines(run: Path) -> list[dict]:
    return [x for x in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if x["kind"] == "train"]


def test_stopped_and_resumed_run_ends_where_an_uninterrupted_run_ends(kagl, tmp_path):
    # 220 train samples / 16 = 14 steps per epoch: 18 steps cross an epoch boundary after the resume.
    common = ["loop.max_steps=18", "checkpoint.every_steps=5", "checkpoint.keep_last=2"]
    full = run_training(cfg(*overrides(kagl, tmp_path, "full", *common)))
    first = run_training(cfg(*overrides(kagl, tmp_path, "resumed", *common, "loop.stop_after_steps=10")))
    assert first["status"] == "stopped" and first["step"] == 10
    ckpts = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert ckpts == ["step_00000005", "step_00000010"]
    again = run_training(cfg(*overrides(kagl, tmp_path, "resumed", *common)))  # same command: resumes
    assert again["resumed_from_step"] == 10 and again["step"] == 18 and again["epochs_done"] == 1

    assert_same_weights(tmp_path / "full", tmp_path / "resumed")
    # The log of the resumed run is the uninterrupted run's log: same steps, same losses and learning rates.
    a, b = train_lines(tmp_path / "full"), train_lines(tmp_path / "resumed")
    assert [x["step"] for x in b] == list(range(1, 19))
    assert [(x["loss"], x["lr"], x["samples"]) for x in a] == [(x["loss"], x["lr"], x["samples"]) for x in b]
    assert again["final"]["loss"] == pytest.approx(full["final"]["loss"], abs=1e-6)
    # keep_last=2: the final (step 18) and step 15 checkpoints remain.
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step_00000015",
                                                                                    "step_00000018"]
    # Starting the finished run again is a no-op for the weights (a requeue after the end).
    done = run_training(cfg(*overrides(kagl, tmp_path, "resumed", *common)))
    assert done["resumed_from_step"] == 18 and done["step"] == 18
    assert_same_weights(tmp_path / "full", tmp_path / "resumed")


def test_nan_loss_is_skipped_and_counted(kagl, tmp_path):
    """Steps 2 and 3 get a NaN loss: both are skipped (weights unchanged, schedule not advanced), counted in
    metrics.jsonl and results.json, and training goes on."""
    res = run_training(cfg(*overrides(kagl, tmp_path, "nan", "loop.max_steps=6", "loop.nan_steps=[2,3]",
                                      "checkpoint.every_steps=0", "optim.grad_clip=0")))
    assert res["skipped_steps"] == 2 and res["step"] == 6
    lines = train_lines(tmp_path / "nan")
    assert [x["skipped"] for x in lines] == [0, 0, 1, 1, 0, 0]
    assert [x["skipped_total"] for x in lines] == [0, 0, 1, 2, 2, 2]
    assert lines[2]["loss"] is None and lines[2]["grad_norm"] is None  # NaN is written as null
    lrs = [x["lr"] for x in lines]
    assert lrs[1] == lrs[2] == lrs[3]  # the schedule stays put while steps are skipped
    assert all(x["loss"] is not None and x["loss"] == x["loss"] for i, x in enumerate(lines) if i not in (2, 3))
    assert json.loads((tmp_path / "nan" / "results.json").read_text())["skipped_steps"] == 2


def test_nan_losses_in_a_row_abort_with_a_clear_message(kagl, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"3 optimiser steps in a row.*max_bad_steps=3") as e:
        run_training(cfg(*overrides(kagl, tmp_path, "abort", "loop.max_steps=8", "loop.nan_steps=[1,2,3]",
                                    "loop.max_bad_steps=3", "checkpoint.every_steps=0")))
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)  # the CLI prints it as one line, exit 2


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(kagl, tmp_path):
    """The training process SIGKILLs itself right after its step-6 checkpoint is complete (the fault hook, so
    nothing polls for a file a rotation may delete); started again, it ends with the weights of an
    uninterrupted in-process run. Cost ~40 s (a subprocess start + two runs)."""
    common = ["loop.max_steps=12", "checkpoint.every_steps=3", "checkpoint.keep_last=3", "log.progress=false"]
    run_training(cfg(*overrides(kagl, tmp_path, "full", *common)))
    argv = [sys.executable, "-m", "fashiontune", "train", "--config", str(ROOT / "configs/tiny-kagl-softmax.yaml"),
            *overrides(kagl, tmp_path, "killed", *common)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", FAULT_KILL_ENV: "saved@6"}
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (tmp_path / "killed" / "checkpoints" / "step_00000006" / "complete.json").is_file()
    assert not (tmp_path / "killed" / "results.json").exists()
    res = run_training(cfg(*overrides(kagl, tmp_path, "killed", *common)))
    assert res["resumed_from_step"] == 6 and res["step"] == 12
    assert_same_weights(tmp_path / "full", tmp_path / "killed")


def test_checkpoints_hold_the_train_state_and_results_come_from_memory(kagl, tmp_path):
    """trainer_state.json is the TrainState: a checkpoint on an epoch's last step (14 of 14) holds the position
    "epoch 1, batch 0" (the loader normalises it), the counters and the validation of that step; the next
    holds "epoch 1, batch 1". results.json's final metrics are that run's last validation."""
    res = run_training(cfg(*overrides(kagl, tmp_path, "state", "loop.max_steps=15", "checkpoint.every_steps=14",
                                      "loop.nan_steps=[3]")))
    ckpts = tmp_path / "state" / "checkpoints"
    at14, at15 = (json.loads((ckpts / f"step_{s:08d}" / "trainer_state.json").read_text()) for s in (14, 15))
    assert at14["step"] == 14 and {k: at14["position"][k] for k in ("epoch", "batches")} == {"epoch": 1, "batches": 0}
    assert at14["samples_seen"] == 220 and at14["skipped_total"] == 1 and at14["last_val_step"] == 14
    assert at15["step"] == 15 and {k: at15["position"][k] for k in ("epoch", "batches")} == {"epoch": 1, "batches": 1}
    assert at15["samples_seen"] == 236 and at15["best"]["step"] in (14, 15)
    vals = [x for x in map(json.loads, (tmp_path / "state" / "metrics.jsonl").read_text().splitlines())
            if x["kind"] == "val"]
    assert [v["step"] for v in vals] == [14, 15] and at14["last_val"]["accuracy"] == vals[0]["accuracy"]
    assert res["final"] == at15["last_val"] == {k: v for k, v in vals[1].items() if k not in ("kind", "step", "epoch")}
    assert res["epochs_done"] == 1 and res["samples_seen"] == 236 and res["samples_per_s"] > 0


def test_a_trainer_state_of_another_version_stops_the_resume_naming_the_file(kagl, tmp_path):
    from fashiontune.train.checkpoint import CheckpointError

    args = overrides(kagl, tmp_path, "old", "loop.max_steps=3", "loop.stop_after_steps=2")
    assert run_training(cfg(*args))["status"] == "stopped"  # a complete checkpoint at step 2
    path = tmp_path / "old" / "checkpoints" / "step_00000002" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["data"] = state.pop("position")  # what the loop wrote before issue 9
    path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"step_00000002/trainer_state.json: not a trainer state.*position"):
        run_training(cfg(*args))
