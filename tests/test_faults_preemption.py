"""Fault injection on the real dev SLURM cluster: USR2 (what SLURM sends on preemption and before the time limit)
at seeded random moments of a job's whole life -- startup, training, checkpointing, validation, export, exit,
right after a requeue -- through `fashiontune submit` (submitit) and through slurm/train.sbatch.

Each job must end COMPLETED with the uninterrupted run's result: requeued and resumed where the signal came
during the work, left alone where it came after. Signals go to a job step that exists (SLURM drops a
step-directed signal while the batch script has not started one yet) or to the batch shell.

Random points per run (seed FASHIONTUNE_FAULT_SEED, default 8; each signal waits for the previous one's
outcome, a requeue or the job's end, so a later one may land right after a requeue):
- smoke job through submit: 4 (3 at uniform times over startup + steps of successive runs, 1 at exit);
- training job through submit (DDP, 2 tasks, 1 DataLoader worker each): 4 (startup, 2 random fault points
  of the loop -- step / validation / export / checkpoint save -- held there by the FIFO trace, exit);
- train.sbatch (DDP, accelerate launch): 3 to the batch shell (startup, 1 random fault point, exit) and 1
  to the job steps (ignored there: the template's batch shell is the one that requeues).
Every run prints its moments and whether each requeued. Cost on 2 busy CPU cores: smoke ~75 s; training
~2 min and template ~1.5 min, beside a shared uninterrupted reference run.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

import pytest

from fashiontune.launch import submit as S
from fashiontune.launch import testing as T
from fashiontune.launch.cluster import load_cluster
from fashiontune.launch.runner import requeue_count
from fashiontune.launch.smoke import SmokeConfig, expected_acc
from fashiontune.train.testing import FAULT_TRACE_ENV

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("FASHIONTUNE_FAULT_SEED", "8"))
pytestmark = pytest.mark.slurm
STEPS, EVERY = 12, 4


def _step_running(job: str, k: int) -> bool:
    """Run k of the job (after k requeues) has a job step that signals can reach, or the job has ended."""
    info = T.job_info(job)
    if info.get("JobState") in T.DONE:
        return True
    if info.get("JobState") != "RUNNING" or int(info.get("Restarts", 0)) != k:
        return False
    out = subprocess.run(["squeue", "-h", "-s", "-j", job, "-o", "%i"], capture_output=True, text=True).stdout
    return any(re.fullmatch(rf"{job}\.\d+", line.strip()) for line in out.splitlines())


def _outcome(job: str, k: int, timeout_s: float = 300) -> bool:
    """After a USR2 to run k: True once the job was requeued, False once it ended without (conditions that
    stay true)."""
    T.wait_until(f"job {job}: requeue or end after a USR2",
                 lambda: T.restarts(job) > k or T.job_info(job).get("JobState") in T.DONE, timeout_s)
    return T.restarts(job) > k


def test_usr2_at_random_moments_of_a_submitted_job(dev_cluster, tmp_path):
    rng = random.Random(SEED)
    cluster = load_cluster(REPO / "configs/cluster/slurm-cpu.yaml", [f"log_dir={tmp_path}/logs", "max_requeues=10"])
    run = tmp_path / "run"
    steps = 40
    sub = S.submit("smoke", SmokeConfig(run_dir=str(run), steps=steps, step_s=0.1), cluster)
    job = sub.jobs[0].job_id
    k, moments = 0, []
    try:
        for i in range(4):
            T.wait_until(f"run {k} of job {job} has a step", lambda k=k: _step_running(job, k), 120)
            if T.job_info(job).get("JobState") in T.DONE:
                break
            if i < 3:  # the steps alone sleep 4 s: a delay below that lands in startup or in the work
                delay = rng.uniform(0.0, 4.0)
            else:  # exit: after the last run wrote its results
                T.wait_until("results.json", (run / "results.json").exists, 120)
                delay = rng.uniform(0.0, 0.5)
            time.sleep(delay)
            T.usr2(job, check=False)  # the job may just have ended
            requeued = _outcome(job, k)
            moments.append((round(delay, 2), requeued))
            k += requeued
        final = T.wait_final_state(job, 300)
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    print(f"seed {SEED}: (delay s, requeued) per signal: {moments}")
    log = "\n".join(p.read_text() for p in sorted((tmp_path / "logs").rglob("*.err")))
    assert final == "COMPLETED", log
    res = json.loads((run / "results.json").read_text())
    assert res["acc"] == expected_acc(steps, 2)  # the uninterrupted run's result (test_slurm_cluster checks it)
    starts = [json.loads(x) for x in (run / "starts.jsonl").read_text().splitlines()]
    assert [s["restart_count"] for s in starts][-1] == k == T.restarts(job) == requeue_count(run)
    assert k >= 1 and any(r for _, r in moments[:3])  # at least one signal really preempted the work
    assert [s["resumed_from"] for s in starts] == sorted(s["resumed_from"] for s in starts)  # never backwards


# -- a real training job: through submit, and through slurm/train.sbatch -------------------------------------

def _overrides(root: Path, name: str) -> list[str]:
    return [f"data.shards={root}/shards", f"out_dir={root}/runs", f"name={name}", f"loop.max_steps={STEPS}",
            f"checkpoint.every_steps={EVERY}", "log.tensorboard=false", "log.plots=false", "data.batch_size=8",
            "data.workers=1"]


@pytest.fixture(scope="module")
def reference(dev_cluster, tmp_path_factory):
    """Tiny kagl shards and one uninterrupted 2-task training run through submit (started here, awaited by
    the first test that needs its result, so that it runs beside that test's job)."""
    from fashiontune.train.testing import build_tiny_shards

    root = tmp_path_factory.mktemp("faults")
    build_tiny_shards("kagl", root, n=120, seed=0, image_size=64)
    cluster = load_cluster(REPO / "configs/cluster/slurm-cpu.yaml", [f"log_dir={root}/logs", "max_requeues=10"])
    cfg = S.load_job_config("train", str(REPO / "configs/tiny-kagl-softmax.yaml"), _overrides(root, "reference"))
    sub = S.submit("train", cfg, cluster)
    done: dict = {}

    def result() -> dict:
        if not done:
            S.wait(sub, timeout_s=900)
            done.update(json.loads((root / "runs/reference/results.json").read_text()))
        return done

    yield root, cluster, result
    subprocess.run(["scancel", sub.jobs[0].job_id], capture_output=True)


def _signal_training(job: str, trace: T.TraceFifo, run: Path, rng: random.Random, batch: bool,
                     fault_points: int) -> list[tuple[str, bool]]:
    """USR2 at startup, at `fault_points` random fault points, at exit; each waits for the previous one's
    outcome."""
    k, moments = 0, []

    def send(what: str) -> None:
        nonlocal k
        T.usr2(job, batch=batch, check=False)
        requeued = _outcome(job, k, 600)
        moments.append((what, requeued))
        k += requeued

    def ready() -> bool:  # the batch shell is there from the start; a job step only once srun started it
        return _step_running(job, k) if not batch else (T.restarts(job) == k and T.job_info(job).get(
            "JobState") == "RUNNING") or T.job_info(job).get("JobState") in T.DONE

    T.wait_until("the job runs", ready, 300)
    delay = rng.uniform(0.0, 2.0)  # interpreter start, imports, rendezvous
    time.sleep(delay)
    send(f"startup+{delay:.2f}s")
    for _ in range(fault_points):
        T.wait_until("the job runs", ready, 300)
        n = len(trace.read()) + rng.randint(1, 2 * STEPS)  # a random fault point (a full run writes ~40)
        try:
            trace.wait_count(n, 600)
        except AssertionError:
            if T.job_info(job).get("JobState") in T.DONE:
                break  # fewer points left than drawn: the job ended
            raise
        trace.hold()  # the job blocks at its next fault point, and is signalled there
        what = trace.lines[n - 1]
        send(f"after '{what}'")
        trace.release()
    T.wait_until("results.json", (run / "results.json").exists, 600)
    delay = rng.uniform(0.0, 1.0)
    time.sleep(delay)
    send(f"exit+{delay:.2f}s")
    return moments


def _same_result(run: Path, ref: dict) -> None:
    import torch

    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "finished" and res["step"] == STEPS and res["world_size"] == 2
    for key, value in ref["final"].items():
        assert res["final"][key] == pytest.approx(value, abs=1e-6), key
    assert res["best"]["step"] == ref["best"]["step"]  # the same checkpoint was exported
    assert res["best"]["value"] == pytest.approx(ref["best"]["value"], abs=1e-6)
    ref_w = torch.load(run.parent / "reference/export/open_clip_pytorch_model.bin", weights_only=True)
    w = torch.load(run / "export/open_clip_pytorch_model.bin", weights_only=True)
    assert w.keys() == ref_w.keys()
    for name, t in w.items():
        assert torch.allclose(t, ref_w[name], atol=1e-6), name


@pytest.mark.slow
def test_usr2_at_random_moments_of_a_submitted_training_job(reference, monkeypatch):
    root, cluster, ref = reference
    rng = random.Random(SEED + 1)
    trace = T.TraceFifo(root / "submit-trace.fifo")
    monkeypatch.setenv(FAULT_TRACE_ENV, str(trace.path))  # sbatch passes the environment at submission
    cfg = S.load_job_config("train", str(REPO / "configs/tiny-kagl-softmax.yaml"), _overrides(root, "submit"))
    sub = S.submit("train", cfg, cluster)
    monkeypatch.delenv(FAULT_TRACE_ENV)
    job = sub.jobs[0].job_id
    try:
        moments = _signal_training(job, trace, root / "runs/submit", rng, batch=False, fault_points=2)
        final = T.wait_final_state(job, 600)
    finally:
        subprocess.run(["scancel", job], capture_output=True)
        trace.close()
    print(f"seed {SEED + 1}: (moment, requeued) per signal: {moments}")
    log = "\n".join(p.read_text()[-3000:] for p in sorted((root / f"logs/{job}").glob("*.err")))
    assert final == "COMPLETED", log
    assert any(r for _, r in moments[1:-1]), moments  # a signal held at a fault point always preempts
    assert T.restarts(job) == requeue_count(root / "runs/submit") == sum(r for _, r in moments)
    _same_result(root / "runs/submit", ref())


@pytest.mark.slow
def test_usr2_at_random_moments_of_the_train_template(reference, tmp_path):
    root, _, ref = reference
    rng = random.Random(SEED + 2)
    trace = T.TraceFifo(tmp_path / "template-trace.fifo")
    env = {**os.environ, "SETUP": f"source {REPO}/.venv/bin/activate", "GPUS_PER_NODE": "2",
           "CONFIG": "configs/tiny-kagl-softmax.yaml", "STRATEGY": "ddp", FAULT_TRACE_ENV: str(trace.path),
           "OVERRIDES": " ".join(_overrides(root, "template"))}
    out = subprocess.run(["sbatch", "--parsable", "--partition=dev", "--mem=1G", "--nodes=1", "--gpus-per-node=0",
                          "--cpus-per-task=2", "--time=30", f"--output={tmp_path}/train-%j.out",
                          "slurm/train.sbatch"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    job = out.stdout.strip().split(";")[0]
    try:
        moments = _signal_training(job, trace, root / "runs/template", rng, batch=True, fault_points=1)
        # a USR2 to the job steps (not the batch shell): the tasks ignore it; at most a requeue by nobody
        T.usr2(job, check=False)
        final = T.wait_final_state(job, 600)
    finally:
        subprocess.run(["scancel", job], capture_output=True)
        trace.close()
    print(f"seed {SEED + 2}: (moment, requeued) per signal: {moments}")
    log = (tmp_path / f"train-{job}.out").read_text()
    assert final == "COMPLETED", log
    assert any(r for _, r in moments[1:-1]), moments
    assert T.restarts(job) == sum(r for _, r in moments) == log.count("USR2: requeue job")
    _same_result(root / "runs/template", ref())
