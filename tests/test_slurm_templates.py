"""The hand-written sbatch templates (slurm/*.sbatch) on the dev cluster, as a person would submit them:
`sbatch` from the repository root with the variables in the environment; GPU lines overridden for a CPU node.

Cost on 2 busy CPU cores: shard array + merge ~10 s; train.sbatch (DDP) with a batch-shell USR2 requeue ~80 s; the same with
STRATEGY=deepspeed (ZeRO-2) ~90 s on quiet cores, ~6.5 min when the machine is shared.
The preempted job is held at a fault point (a FIFO trace, launch.testing.TraceFifo) while it is signalled and
until SLURM shows its restart: nothing here waits on a file that a checkpoint rotation may delete.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from fashiontune.launch import testing as T
from fashiontune.train.testing import FAULT_TRACE_ENV

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm


def _sbatch(args: list[str], env: dict[str, str]) -> str:
    # --oversubscribe undoes the templates' --exclusive (and --mem their --mem=0): the dev node is shared
    p = subprocess.run(["sbatch", "--parsable", "--partition=dev", "--oversubscribe", "--mem=1G", *args], cwd=REPO,
                       env={**os.environ, "SETUP": f"source {REPO}/.venv/bin/activate", **env},
                       capture_output=True, text=True, check=True)
    return p.stdout.strip().split(";")[0]


def _state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    states = [line.split("JobState=")[1].split()[0] for line in out.splitlines() if "JobState=" in line]
    return "DONE" if states and all(s in T.DONE for s in states) else (states[0] if states else "UNKNOWN")


def _wait(job_id: str, timeout_s: float) -> None:
    """Until every task of the job (an array) has ended."""
    T.wait_until(f"job {job_id} ended", lambda: _state(job_id) == "DONE", timeout_s, poll_s=0.5)


def _job_states(job_id: str) -> list[str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    return [line.split("JobState=")[1].split()[0] for line in out.splitlines()]


def test_shard_array_template_then_merge_template(dev_cluster, tmp_path):
    from fashiontune.shards.verify import verify
    from fashiontune.synth import generate

    corpus = generate("kagl", tmp_path / "corpus", 30, seed=1, image_size=32)
    env = {"NUM_JOBS": "2", "SOURCE": "kagl", "INPUT": str(corpus), "OUT": str(tmp_path / "shards"),
           "BUILD_ARGS": "--image-size 32 --shard-size 4"}
    array = _sbatch(["--array=0-1", "--cpus-per-task=1", f"--output={tmp_path}/%x-%A_%a.out",
                     "slurm/shards-array.sbatch"], env)
    merge = _sbatch([f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes", f"--output={tmp_path}/%x-%j.out",
                     "slurm/shards-merge.sbatch"], env)
    _wait(merge, 120)
    assert _job_states(array) == ["COMPLETED", "COMPLETED"] and _job_states(merge) == ["COMPLETED"], \
        "\n".join(p.read_text() for p in tmp_path.glob("*.out"))
    report = verify(tmp_path / "shards")
    assert report.ok and json.loads((tmp_path / "shards/manifest.json").read_text())["items"]["written"] == 30


@pytest.mark.slow
# DeepSpeed ZeRO-2 here: ~90 s on 2 quiet CPU cores (~6.5 min when the machine is shared). The template's DDP
# path is requeued and resumed by test_faults_preemption's USR2 test (random moments, same result as an
# uninterrupted run) and by test_slurm_fresh_clone: a third DDP run here would only cost suite time.
@pytest.mark.parametrize("strategy", ["deepspeed"])
def test_train_template_two_processes_requeues_on_usr2_and_resumes(dev_cluster, tmp_path, strategy):
    """The template's DeepSpeed branch (STRATEGY=deepspeed), requeued by its USR2 trap and resuming from its own
    collective, ZeRO-sharded checkpoint."""
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.synth import generate

    corpus = generate("kagl", tmp_path / "corpus", 120, seed=0)
    build_shards(ShardBuildConfig(source="kagl", input=str(corpus), out=str(tmp_path / "shards"), image_size=64,
                                  splits="train=0.7,val=0.3,test=0.0", workers=1, progress=False))
    run = tmp_path / "runs/tpl"
    env = {"GPUS_PER_NODE": "2", "CONFIG": "configs/tiny-kagl-softmax.yaml", "STRATEGY": strategy,
           "DS_CONFIG": "configs/deepspeed/zero2.json",
           "OVERRIDES": f"data.shards={tmp_path}/shards out_dir={tmp_path}/runs name=tpl loop.max_steps=24 "
                        "checkpoint.every_steps=4 log.tensorboard=false log.plots=false data.batch_size=8 "
                        "data.workers=0"}
    # a CPU node: no GPUs, one node, the two "GPU" processes share 2 CPUs
    trace = T.TraceFifo(tmp_path / "trace.fifo")
    env[FAULT_TRACE_ENV] = str(trace.path)
    job = _sbatch(["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", "--time=30",
                   f"--output={tmp_path}/train-%j.out", "slurm/train.sbatch"], env)
    final = T.requeue_batch_job_at(trace, job, "saved 4", restart_s=300, final_s=600)  # after step 4's checkpoint
    log = (tmp_path / f"train-{job}.out").read_text()
    assert final == "COMPLETED", log
    assert "USR2: requeue job" in log and "restart 1:" in log  # the trap requeued the same job id
    assert "resumed from" in log
    assert f"strategy: {strategy}" in (run / "config.yaml").read_text()
    res = json.loads((run / "results.json").read_text())
    assert res["world_size"] == 2 and res["step"] == 24 and res["resumed_from_step"] >= 4
