"""Issue 18's "done when": a fresh clone's `sbatch slurm/train.sbatch`, with the dev cluster's CPU settings as
sbatch flags and template variables, runs, is requeued by its own USR2 trap and resumes.

The clone is `git clone` of the repository these tests run from (its committed HEAD: commit first), so nothing
ignored by git (runs/, a venv, built shards) comes along; SETUP activates this test's venv and puts the
clone's src/ first, so the clone's own code runs. The job is held at a fault point (launch.testing.TraceFifo)
right after its step-4 checkpoint while it is signalled and until SLURM shows the restart: nothing here waits
on a transient file. Cost on 2 busy CPU cores: clone + shards ~3 s; the train job with its requeue ~100 s
(each start imports torch twice: the template's launch.threads, then the job; SLURM holds a requeued job
~10 s); the merge-from-elsewhere job ~3 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fashiontune.launch import testing as T
from fashiontune.train.testing import FAULT_TRACE_ENV

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm
STEPS, EVERY = 12, 4
# The dev cluster's CPU settings: partition dev, one node, no GPUs, one process (GPUS_PER_NODE=1) on 2 CPUs;
# --oversubscribe undoes the template's --exclusive (with --mem it also replaces --mem=0: the node is shared).
CPU_FLAGS = ["--partition=dev", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", "--oversubscribe",
             "--mem=2G", "--time=15"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("fresh") / "fashiontune"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dst)], check=True, capture_output=True, text=True)
    assert sorted(p.name for p in (dst / "runs").iterdir()) == ["_slurm"]  # what a clone has, nothing more
    assert [p.name for p in (dst / "runs/_slurm").iterdir()] == [".gitkeep"]
    return dst


def _env(**extra: str) -> dict[str, str]:
    setup = f"source {sys.prefix}/bin/activate && export PYTHONPATH=$PWD/src"  # $PWD: the clone, in the job
    return {**os.environ, "SETUP": setup, **extra}


def _sbatch(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    p = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return p.stdout.strip().split(";")[0]


@pytest.mark.slow  # ~100 s on 2 busy cores (each start imports torch twice: launch.threads, then the job)
def test_fresh_clone_train_template_runs_requeues_and_resumes(dev_cluster, clone, tmp_path):
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.synth import generate

    corpus = generate("kagl", tmp_path / "corpus", 60, seed=0)
    build_shards(ShardBuildConfig(source="kagl", input=str(corpus), out=str(tmp_path / "shards"), image_size=64,
                                  splits="train=0.7,val=0.3,test=0.0", workers=1, progress=False))
    trace = T.TraceFifo(tmp_path / "trace.fifo")
    env = _env(GPUS_PER_NODE="1", CONFIG="configs/tiny-kagl-softmax.yaml", FASHIONTUNE_TEST_FAULT_TRACE=str(trace.path),
               OVERRIDES=f"data.shards={tmp_path}/shards name=fresh loop.max_steps={STEPS} "
                         f"checkpoint.every_steps={EVERY} log.tensorboard=false log.plots=false data.batch_size=8 "
                         "data.workers=0")
    assert FAULT_TRACE_ENV == "FASHIONTUNE_TEST_FAULT_TRACE"
    job = _sbatch([*CPU_FLAGS, "slurm/train.sbatch"], clone, env)  # as the README says: from the repository root
    log = clone / f"runs/_slurm/fashiontune-train-{job}.out"
    # held after the step-4 checkpoint; the template's trap requeues
    final = T.requeue_batch_job_at(trace, job, f"saved {EVERY}", restart_s=120, final_s=300)
    text = log.read_text() if log.exists() else f"no log at {log}"
    assert final == "COMPLETED", text
    assert "USR2: requeue job" in text and "restart 1:" in text, text
    assert "OMP_NUM_THREADS=2 per rank" in text, text  # 2 CPUs, no loader workers: both for the rank's math
    res = json.loads((clone / "runs/fresh/results.json").read_text())
    assert res["status"] == "finished" and res["step"] == STEPS and res["world_size"] == 1
    assert res["resumed_from_step"] >= EVERY


def test_template_submitted_from_elsewhere_with_chdir_logs_into_the_clone(dev_cluster, clone, tmp_path):
    """`sbatch -D <repo> <repo>/slurm/X.sbatch` from another directory: the log and the job's paths are the
    repository's (here a merge of an empty folder, which fails with its own message, in the log)."""
    empty = tmp_path / "no-shards"
    empty.mkdir()
    job = _sbatch(["--partition=dev", "-D", str(clone), str(clone / "slurm/shards-merge.sbatch")], tmp_path,
                  _env(OUT=str(empty)))
    final = T.wait_final_state(job, 120)
    log = clone / f"runs/_slurm/fashiontune-shards-merge-{job}.out"
    assert log.exists(), f"no log: the job could not open it (state {final}, {T.job_info(job).get('Reason')})"
    text = log.read_text()
    assert final == "FAILED" and "fashiontune shards" in text and str(empty) in text, text
    assert not list(tmp_path.glob("runs")), "wrote into the directory sbatch ran in"
