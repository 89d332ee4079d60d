"""`fashiontune sweep` run here (sequentially): a 2x2 grid, collected into sweep.json (equal to the four runs'
results.json, in grid order), sweep.md and one curve per metric and swept key; a mistyped grid key fails before
any run; the shipped data-efficiency sweep file plans on any shard directory; --cluster with submitit's local
executor runs the array and the collect job. Cost: ~15 s (four 4-step runs), + ~25 s for the slow one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashiontune.cli import main
from fashiontune.sweep import make_plan, read_plan
from fashiontune.train.testing import build_tiny_shards

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["loop.max_steps=4", "data.workers=0", "log.tensorboard=false", "log.plots=false", "checkpoint.every_steps=0",
          "data.batch_size=8"]


@pytest.fixture(scope="module")
def kagl(tmp_path_factory) -> Path:
    return build_tiny_shards("kagl", tmp_path_factory.mktemp("kagl"), n=120)


def test_two_by_two_sweep_collects_the_four_runs(kagl, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(ROOT / "configs/tiny-kagl-softmax.yaml"), "--grid", "optim.lr=1e-3,3e-3",
                 "--grid", "data.max_train_items=30,0", "--out", str(out), f"data.shards={kagl}", *COMMON]) == 0
    entries = json.loads((out / "sweep.json").read_text())
    grid = [(1e-3, 30), (1e-3, 0), (3e-3, 30), (3e-3, 0)]
    assert [(e["overrides"]["optim.lr"], e["overrides"]["data.max_train_items"]) for e in entries] == grid
    plan = read_plan(out)
    for i, e in enumerate(entries):
        assert e["results"] == json.loads((plan.run_dir(i) / "results.json").read_text())
        assert e["results"]["status"] == "finished" and e["results"]["step"] == 4
    rows = [r for r in (out / "sweep.md").read_text().splitlines() if r.startswith("| 0.00")]
    assert len(rows) == 4 and f"{entries[0]['results']['final']['accuracy']:.4g}" in rows[0]
    for key in ("optim.lr", "data.max_train_items"):
        assert (out / "plots" / f"accuracy_vs_{key}.png").stat().st_size > 0
    # collecting again (e.g. after more points finished) rewrites the same report
    before = (out / "sweep.json").read_text()
    assert main(["sweep", "--config", str(ROOT / "configs/tiny-kagl-softmax.yaml"), "--out", str(out), "--collect"]) == 0
    assert (out / "sweep.json").read_text() == before


def test_a_mistyped_grid_key_fails_before_any_run(kagl, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(ROOT / "configs/tiny-kagl-softmax.yaml"), "--grid", "optim.lrr=1e-3,2e-3",
                 "--out", str(out), f"data.shards={kagl}"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "optim.lr" in err and len(err.strip().splitlines()) == 1
    assert not (out / "runs").exists()


def test_the_data_efficiency_sweep_plans_on_any_shards(kagl, tmp_path):
    plan = make_plan(ROOT / "configs/sweeps/attributes-data-efficiency.yaml", [], [f"data.shards={kagl}",
                     "model.name=ft-tiny-vit", "model.pretrained=''"], tmp_path / "de")
    sizes = [p["data.max_train_items"] for p in plan.points]
    assert sizes == sorted(sizes) and len(sizes) >= 5 and plan.metrics == ["accuracy", "macro_f1"]
    assert "sweep" not in (tmp_path / "de" / "experiment.yaml").read_text()


@pytest.mark.slow
def test_cluster_flag_runs_the_array_and_its_collect_job(kagl, tmp_path, capsys):
    """--cluster with submitit's local executor: two array tasks, then the collect job (~25 s: three fresh
    processes)."""
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(ROOT / "configs/tiny-kagl-softmax.yaml"), "--grid", "optim.lr=1e-3,3e-3",
                 "--out", str(out), "--cluster", str(ROOT / "configs/cluster/local.yaml"),
                 f"cluster.log_dir={tmp_path / 'logs'}", f"data.shards={kagl}", *COMMON]) == 0
    entries = json.loads((out / "sweep.json").read_text())
    assert [e["overrides"] for e in entries] == [{"optim.lr": 1e-3}, {"optim.lr": 3e-3}]
    assert all(e["results"]["status"] == "finished" for e in entries)
    assert "2/2 points collected" in capsys.readouterr().out


def test_curves_use_a_log_axis_for_sizes_spanning_decades():
    from fashiontune.curves import log_x

    assert log_x([100, 300, 1000, 3000, 10000]) and log_x(["1e-5", "1e-3"])
    assert not log_x([1e-3, 3e-3]) and not log_x([0, 0.25, 1]) and not log_x(["a", "b"]) and not log_x([])
