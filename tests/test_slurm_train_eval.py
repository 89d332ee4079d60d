"""Training and evaluation as SLURM jobs on the dev cluster, through `fashiontune submit`.

One module fixture builds tiny kagl shards (120 items, 64 px) and runs two 2-task training jobs side by side
(the node advertises 4 CPUs): an uninterrupted one, and one preempted with USR2 right after its step-4
checkpoint, held there (a FIFO fault trace) until SLURM shows the requeue. Cost on 2 busy CPU cores: ~100 s for both runs, ~60 s for the eval job + the local eval.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from fashiontune.launch import submit as S
from fashiontune.launch.cluster import load_cluster
from fashiontune.launch import testing as T
from fashiontune.launch.runner import requeue_count
from fashiontune.train.testing import FAULT_TRACE_ENV

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


STEPS, EVERY = 24, 4


def _train_cfg(root: Path, name: str):
    return S.load_job_config("train", str(REPO / "configs/tiny-kagl-softmax.yaml"), [
        f"data.shards={root}/shards", f"out_dir={root}/runs", f"name={name}", f"loop.max_steps={STEPS}",
        f"checkpoint.every_steps={EVERY}", "log.tensorboard=false", "log.plots=false", "data.batch_size=8",
        "data.workers=0"])


@pytest.fixture(scope="module")
def trained(dev_cluster, tmp_path_factory):
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.synth import generate

    root = tmp_path_factory.mktemp("train")
    corpus = generate("kagl", root / "corpus", 120, seed=0)
    build_shards(ShardBuildConfig(source="kagl", input=str(corpus), out=str(root / "shards"), image_size=64,
                                  splits="train=0.7,val=0.3,test=0.0", workers=1, progress=False))
    cluster = load_cluster(REPO / "configs/cluster/slurm-cpu.yaml", [f"log_dir={root}/logs"])
    t0 = time.monotonic()
    plain = S.submit("train", _train_cfg(root, "plain"), cluster)
    trace = T.TraceFifo(root / "trace.fifo")
    os.environ[FAULT_TRACE_ENV] = str(trace.path)  # sbatch passes the environment at submission
    try:
        preempted = S.submit("train", _train_cfg(root, "preempted"), cluster)
    finally:
        del os.environ[FAULT_TRACE_ENV]
    job_id = preempted.jobs[0].job_id
    try:
        trace.wait_for(f"saved {EVERY}", 420)  # its first checkpoint is complete
        trace.hold()  # blocks at its next fault point: still running when the signal lands
        T.usr2(job_id)
        T.wait_until(f"job {job_id} requeued", lambda: T.restarts(job_id) >= 1, 300)
        trace.release()
        results = {"plain": S.wait(plain, timeout_s=420), "preempted": S.wait(preempted, timeout_s=420)}
        assert T.wait_final_state(job_id, 120) == "COMPLETED"
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)  # a no-op once it has ended
        trace.close()
    print(f"two training jobs (one preempted) done in {time.monotonic() - t0:.1f} s")
    return root, cluster, results, job_id


def test_two_task_training_job_writes_checkpoints_and_results(trained):
    root, _, results, _ = trained
    run = root / "runs/plain"
    res = json.loads((run / "results.json").read_text())
    assert res["world_size"] == 2 and res["step"] == STEPS and res["status"] == "finished"
    assert [r["step"] for r in results["plain"][0]] == [STEPS, STEPS]  # both ranks ran the whole loop
    assert (run / f"checkpoints/step_{STEPS:08d}/complete.json").exists()
    assert (run / "export/open_clip_pytorch_model.bin").exists()


def test_preempted_training_resumes_from_its_checkpoint_with_the_same_final_metrics(trained):
    root, _, results, job_id = trained
    plain = json.loads((root / "runs/plain/results.json").read_text())
    resumed = json.loads((root / "runs/preempted/results.json").read_text())
    assert resumed["resumed_from_step"] >= EVERY  # resumed from a checkpoint, not from scratch
    assert resumed["step"] == STEPS
    assert requeue_count(root / "runs/preempted") == 1
    log = (root / f"logs/{job_id}/{job_id}_0_log.out").read_text()
    assert "requeue 1/3 of train" in log and "resumed from" in log
    # Same data order, RNG and optimiser state after resume: equal within float noise.
    for key, value in plain["final"].items():
        assert resumed["final"][key] == pytest.approx(value, abs=1e-6), key


def test_eval_job_on_slurm_equals_a_local_evaluation(trained):
    from fashiontune.config import load_config
    from fashiontune.eval.config import EvalConfig
    from fashiontune.eval.run import run_eval

    root, cluster, _, _ = trained
    common = [f"model.checkpoint={root}/runs/plain/export", f"data.shards={root}/shards", "data.split=val",
              "plots.grid_queries=0"]
    sub = S.submit("eval", S.load_job_config("eval", None, [*common, f"out_dir={root}/eval-slurm"]), cluster)
    local = run_eval(load_config(EvalConfig, None, [*common, f"out_dir={root}/eval-local"]))
    S.wait(sub, timeout_s=300)
    remote = json.loads((root / "eval-slurm/results.json").read_text())
    assert remote["world_size"] == 2
    assert remote["items"] == local["items"]
    for key in ("retrieval", "category", "classification"):
        assert _flat(remote[key]) == pytest.approx(_flat(local[key]), abs=1e-6), key


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = v
    return out
