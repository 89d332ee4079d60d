"""Loop pieces without training: config loading and errors, the lr schedule, DeepSpeed config filling,
checkpoint discovery (complete markers, pruning). Cost: < 2 s (no model, no data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fashiontune.config import ConfigError
from fashiontune.train.config import ScheduleConfig, ScheduleName, TrainConfig, load_train_config
from fashiontune.train.optim import lr_factor

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_config_loads(path):
    cfg = load_train_config(path)
    assert cfg.name == path.stem  # the run directory is named after the experiment file


def test_overrides_and_clear_errors(tmp_path):
    cfg = load_train_config(ROOT / "configs/tiny-kagl-softmax.yaml", ["optim.lr=0.5", "loop.max_steps=7"])
    assert cfg.optim.lr == 0.5 and cfg.loop.max_steps == 7
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load_train_config(ROOT / "configs/tiny-kagl-softmax.yaml", ["optim.lrr=1"])  # typo -> names the key
    with pytest.raises(ConfigError, match="precision"):
        load_train_config(None, ["loop.precision=fp8"])
    with pytest.raises(ConfigError, match="grad_accum"):
        load_train_config(None, ["loop.grad_accum=0"])
    with pytest.raises(ConfigError, match="deepspeed_config"):
        load_train_config(None, ["dist.strategy=deepspeed", f"dist.deepspeed_config={tmp_path}/nope.json"])


def test_cosine_schedule_with_warmup():
    cfg = ScheduleConfig(name=ScheduleName.cosine, warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(s, 110, cfg) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55)  # half-way: midpoint of [0.1, 1]
    assert min(f) >= 0.1 - 1e-9 and all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay
    const = ScheduleConfig(name=ScheduleName.constant, warmup_steps=0)
    assert {lr_factor(s, 50, const) for s in range(50)} == {1.0}


def test_deepspeed_config_auto_values_are_filled():
    from fashiontune.train.accel import deepspeed_config

    cfg = load_train_config(None, ["dist.strategy=deepspeed", f"dist.deepspeed_config={ROOT}/configs/deepspeed/zero2.json",
                                   "data.batch_size=8", "loop.grad_accum=3", "optim.grad_clip=0.5", "loop.precision=bf16"])
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 96 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and not ds["bf16"]["enabled"]
    for stage in (1, 3):
        assert json.loads((ROOT / f"configs/deepspeed/zero{stage}.json").read_text())["zero_optimization"]["stage"] == stage


def test_only_complete_checkpoints_are_resumed_and_pruned(tmp_path):
    from fashiontune.train.checkpoint import CheckpointManager, complete_checkpoints, latest_checkpoint

    ck = tmp_path / "checkpoints"
    for step, complete in [(10, True), (20, True), (30, False)]:
        d = ck / f"step_{step:08d}"
        d.mkdir(parents=True)
        if complete:
            (d / "complete.json").write_text("{}")
    (ck / ".tmp-step_00000040").mkdir()  # a save killed half-way
    assert latest_checkpoint(ck).name == "step_00000020"
    CheckpointManager(None, ck, keep_last=1)._prune()
    assert [s for s, _ in complete_checkpoints(ck)] == [20] and not (ck / ".tmp-step_00000040").exists()


def test_train_cli_prints_resolved_config(capsys):
    import argparse

    from fashiontune.train import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    assert cli.run(p.parse_args(["--config", str(ROOT / "configs/tiny-kagl-softmax.yaml"), "--print-config",
                                 "optim.lr=0.25"])) == 0
    out = capsys.readouterr().out
    assert "lr: 0.25" in out and "name: tiny-kagl-softmax" in out


def test_run_dir_property():
    assert TrainConfig(name="x", out_dir="/tmp/r").run_dir == Path("/tmp/r/x")


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    """The checkpoint's RNG file holds python/numpy/torch states as ints and tensors; restored from the
    weights-only loader, all three generators continue exactly where they were saved."""
    import random

    import numpy as np
    import torch

    from fashiontune.models import load_tensors
    from fashiontune.train.checkpoint import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng_state_0.pt")
    draw = lambda: (random.random(), float(np.random.rand()), float(torch.rand(1)))  # noqa: E731
    expected = draw()
    draw()  # move every generator on
    set_rng_state(load_tensors(tmp_path / "rng_state_0.pt", hint=""), tmp_path / "rng_state_0.pt")
    assert draw() == expected


def test_train_state_round_trips_through_json_and_refuses_a_foreign_state():
    from fashiontune.train.state import TrainState

    s = TrainState(step=7, samples_seen=112, position={"epoch": 1, "batches": 2, "plan": {"seed": 0}},
                   best={"metric": "accuracy", "value": 0.5, "step": 5}, last_val_step=5,
                   last_val={"accuracy": 0.5, "loss": float("nan")}, skipped_total=1, skipped_in_row=0)
    again = TrainState()
    again.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert again.state_dict().keys() == s.state_dict().keys() and again.epoch == 1 and again.step == 7
    assert again.best == s.best and again.position == s.position and math.isnan(again.last_val["loss"])
    assert again.better(0.6, higher=True) and not again.better(0.4, higher=True) and not again.better(float("nan"), True)
    old = {k: v for k, v in s.state_dict().items() if k != "position"}  # e.g. a checkpoint of an older version
    with pytest.raises(KeyError):
        TrainState().load_state_dict({**old, "data": {"epoch": 1, "batches": 2}})
    with pytest.raises(TypeError):
        TrainState().load_state_dict({**s.state_dict(), "step": "7"})


def test_precision_is_the_shared_enum_and_auto_resolves_per_device():
    import torch

    from fashiontune.eval.config import EvalConfig
    from fashiontune.models.precision import Precision
    from fashiontune.train.accel import resolved_precision
    from fashiontune.train.config import TrainConfig

    cfg = TrainConfig()
    assert type(cfg.loop.precision) is Precision is type(EvalConfig().precision)
    cfg.loop.precision = Precision.auto
    assert resolved_precision(cfg) is (Precision.bf16 if torch.cuda.is_available() else Precision.fp32)
    cfg.loop.precision = Precision.bf16
    assert resolved_precision(cfg) is Precision.bf16
