"""Options and key=value overrides in any order, for every command that takes overrides (`fashiontune train`,
`eval`, `shards build`, `submit JOB`) and the job entry points SLURM runs (jobs/*.py). The README writes
`fashiontune submit train --cluster C cluster.k=v --config X k=v`, which argparse alone refuses. ~3 s.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from fashiontune.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs/tiny-kagl-softmax.yaml")


@pytest.mark.parametrize("argv", [
    ["--config", TINY, "name=a", "loop.max_steps=3"],
    ["name=a", "--config", TINY, "loop.max_steps=3"],
    ["name=a", "loop.max_steps=3", "--config", TINY],
    ["name=b", "--print-config", "name=a", "--config", TINY, "loop.max_steps=3"],  # the last one wins
])
def test_train_options_and_overrides_in_any_order(argv, capsys):
    assert main(["train", *argv, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "\nname: a\n" in f"\n{out}" and "max_steps: 3" in out and "batch_size: 16" in out  # the config file too


def test_eval_options_and_overrides_in_any_order(monkeypatch):
    seen = []
    monkeypatch.setattr("fashiontune.eval.run.run_eval", seen.append)
    assert main(["eval", "data.split=val", "--config", str(REPO / "configs/eval/tiny.yaml"), "data.batch_size=7"]) == 0
    cfg = seen[-1]
    assert cfg.data.split == "val" and cfg.data.batch_size == 7


def test_shards_build_options_and_overrides_in_any_order(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr("fashiontune.shards.build.build_shards", seen.append)
    assert main(["shards", "build", "split_salt=v2", "--source", "kagl", "--input", str(tmp_path), "--out",
                 str(tmp_path / "o"), "shard_size=7", "--quiet"]) == 0
    assert seen[0].split_salt == "v2" and seen[0].shard_size == 7 and seen[0].source == "kagl"


@pytest.mark.parametrize("job, config, over", [
    ("train", TINY, "name=a"),
    ("eval", str(REPO / "configs/eval/tiny.yaml"), "data.split=val"),
    ("smoke", None, "steps=7"),
])
def test_submit_in_the_readme_order(job, config, over, monkeypatch, capsys):
    """`submit JOB --cluster C cluster.k=v --config X k=v`: both kinds of overrides reach their config."""
    seen = {}
    monkeypatch.setattr("fashiontune.launch.submit.dry_run", lambda j, cfg, cluster: seen.update(cfg=cfg, c=cluster) or "")
    argv = ["submit", job, "--cluster", "slurm-cpu", "cluster.partition=big", *(["--config", config] if config else []),
            over, "--dry-run", "cluster.time_min=7"]
    assert main(argv) == 0, capsys.readouterr().err
    key, value = over.split("=")
    obj = seen["cfg"]
    for part in key.split(".")[:-1]:
        obj = getattr(obj, part)
    assert str(getattr(obj, key.split(".")[-1])) == value
    assert seen["c"].partition == "big" and seen["c"].time_min == 7


def test_leftovers_that_are_not_overrides_are_still_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "name=a", "--config", TINY, "--bogus", "loop.max_steps=3", "--print-config"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command that takes no overrides
        main(["shards", "verify", "/nonexistent", "x=1"])
    assert "unrecognized arguments: x=1" in capsys.readouterr().err


def test_job_entry_points_take_any_order_too(monkeypatch, capsys):
    """jobs/train.py is what SLURM and `accelerate launch` start (run here in-process, as its __main__)."""
    monkeypatch.setattr(sys, "argv", ["jobs/train.py", "name=a", "--config", TINY, "loop.max_steps=3", "--print-config"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "jobs/train.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert e.value.code == 0 and "name: a" in out and "max_steps: 3" in out
    for job in ("eval", "shards"):  # the others are `fashiontune <job>` (tested above)
        assert f'main(["{job}", *sys.argv[1:]])' in (REPO / f"jobs/{job}.py").read_text()
