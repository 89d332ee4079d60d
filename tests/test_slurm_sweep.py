"""A 2x2 sweep as a real SLURM job array on the dev cluster (`fashiontune sweep --cluster`): one task per point
plus the collect job; one point is preempted (USR2) after its step-4 checkpoint, requeued, and resumes; the
collected sweep.json equals the four runs' results.json. How the moment is fixed: every task writes its fault
points to one FIFO trace; at the first "saved 4" the test holds the pipe (every task blocks at its next fault
point, so none can finish), preempts a point whose step-4 checkpoint is complete (it is certainly running),
waits for SLURM's restart, then lets all go. Cost on 2 busy CPU cores: ~2-3 min."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from fashiontune.launch import submit as S
from fashiontune.launch import testing as T
from fashiontune.launch.cluster import load_cluster
from fashiontune.launch.runner import requeue_count
from fashiontune.sweep import SweepTask, collect, make_plan
from fashiontune.train.testing import FAULT_TRACE_ENV, build_tiny_shards

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEPS, EVERY = 40, 4


def test_sweep_array_with_a_preempted_point_collects_the_four_runs(dev_cluster, tmp_path):
    shards = build_tiny_shards("kagl", tmp_path / "kagl", n=120)
    plan = make_plan(REPO / "configs/tiny-kagl-softmax.yaml", ["optim.lr=1e-3,2e-3", "data.max_train_items=40,0"], [
        f"data.shards={shards}", f"loop.max_steps={STEPS}", f"checkpoint.every_steps={EVERY}", "checkpoint.keep_last=20",
        "data.batch_size=8", "data.workers=0", "log.tensorboard=false", "log.plots=false"], tmp_path / "sweep")
    cluster = load_cluster(REPO / "configs/cluster/slurm-cpu.yaml", [f"log_dir={tmp_path}/logs"])
    trace = T.TraceFifo(tmp_path / "trace.fifo")
    os.environ[FAULT_TRACE_ENV] = str(trace.path)  # sbatch passes the environment at submission
    try:
        sub = S.submit("sweep", SweepTask(plan.out, 0, 4), cluster)
    finally:
        del os.environ[FAULT_TRACE_ENV]
    ids = [j.job_id for j in sub.jobs]
    try:
        trace.wait_for(f"saved {EVERY}", 600)
        trace.hold()  # no task passes its next fault point: every started one is still running
        ready = [i for i in range(4) if (plan.run_dir(i) / f"checkpoints/step_{EVERY:08d}/complete.json").is_file()]
        victim = ready[0]
        T.usr2(ids[victim])
        T.wait_until(f"array task {ids[victim]} requeued", lambda: T.restarts(ids[victim]) >= 1, 300)
        trace.release()
        S.wait(sub, timeout_s=900)
        assert T.wait_final_state(ids[victim], 120) == "COMPLETED"
    finally:
        subprocess.run(["scancel", *ids, *([sub.merge.job_id] if sub.merge else [])], capture_output=True)
        trace.close()
    assert requeue_count(plan.out, ids[victim]) == 1
    entries = json.loads((Path(plan.out) / "sweep.json").read_text())  # written by the collect job
    assert [e["overrides"] for e in entries] == plan.points
    for i, e in enumerate(entries):
        assert e["results"] == json.loads((plan.run_dir(i) / "results.json").read_text())
        assert e["results"]["step"] == STEPS and e["results"]["status"] == "finished"
    assert entries[victim]["results"]["resumed_from_step"] >= EVERY
    assert collect(plan.out)["finished"] == 4
