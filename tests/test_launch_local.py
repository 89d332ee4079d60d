"""The same submit path on submitit's local executor (no SLURM): 2 gloo ranks, a failing rank, a shard array.

Cost on 2 CPU cores: ~15-40 s (two 2-process jobs, each importing torch; a 2-task shard array ~3 s).
"""

from __future__ import annotations

import json
import time

import pytest

from fashiontune.launch import submit as S
from fashiontune.launch.cluster import load_cluster
from fashiontune.launch.smoke import SmokeConfig, expected_acc

pytestmark = pytest.mark.distributed


def _local(tmp_path):
    return load_cluster("local", ["tasks_per_node=2", f"log_dir={tmp_path}/logs", "time_min=10"])


def test_two_ranks_on_the_local_executor(tmp_path):
    cfg = SmokeConfig(run_dir=str(tmp_path / "run"), steps=6, step_s=0.0)
    sub = S.submit("smoke", cfg, _local(tmp_path))
    results = S.wait(sub, timeout_s=120)
    assert [r["rank"] for r in results[0]] == [0, 1]
    assert all(r["acc"] == expected_acc(6, 2) for r in results[0])
    assert json.loads((tmp_path / "run/results.json").read_text())["world_size"] == 2


def test_a_failing_rank_surfaces_its_traceback_and_log_path(tmp_path):
    cfg = SmokeConfig(run_dir=str(tmp_path / "run"), steps=6, step_s=0.0, fail_at_step=2, fail_rank=1,
                      timeout_s=30)
    t0 = time.monotonic()
    sub = S.submit("smoke", cfg, _local(tmp_path))
    with pytest.raises(S.JobFailed) as err:
        S.wait(sub, timeout_s=120)
    msg = str(err.value)
    assert "rank 1 fails on purpose at step 2" in msg and "Traceback" in msg
    assert f"{tmp_path}/logs" in msg and "_1_log.err" in msg  # the failing task's own log
    assert time.monotonic() - t0 < 90


def test_shard_array_on_the_local_executor_merges_after_all_tasks(tmp_path):
    """No SLURM dependency here: the client waits for both tasks, then runs the merge job (~3 s)."""
    from fashiontune.synth import generate

    corpus = generate("kagl", tmp_path / "corpus", 24, seed=2, image_size=32)
    cfg = S.load_job_config("shards", None, ["source=kagl", f"input={corpus}", f"out={tmp_path}/out", "num_jobs=2",
                                             "shard_size=4", "image_size=32", "workers=1", "progress=false"])
    results = S.wait(S.submit("shards", cfg, load_cluster("local", [f"log_dir={tmp_path}/logs"])), timeout_s=120)
    parts, manifest = [r[0] for r in results[:2]], results[2][0]
    assert [p["job_index"] for p in parts] == [0, 1] and all(p["shards_built"] >= 1 for p in parts)
    assert manifest["items"] == {"listed": 24, "written": 24, "skipped": 0}
    assert json.loads((tmp_path / "out/manifest.json").read_text()) == manifest
