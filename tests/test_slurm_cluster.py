"""End to end on the real one-node dev SLURM cluster (slurm/dev-cluster/start.sh), through `fashiontune submit`.

The session fixture starts the cluster (idempotent; ~12 s to install + start on a fresh Debian machine,
~0.1 s when up). The tests skip only when this machine cannot host it (start.sh exit 3: not root, no apt);
any other start failure fails them. Costs on 2 busy CPU cores: smoke ~10 s, failure ~15 s, preemption ~45 s,
requeue limit ~20 s, shard array (fail, resubmit) ~15 s. A preempted job is held at a known step (smoke's
hold_at/hold_file) until the test has seen what it waits for: no test races the job.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from fashiontune.cli import main
from fashiontune.launch import submit as S
from fashiontune.launch import testing as T
from fashiontune.launch.cluster import load_cluster
from fashiontune.launch.runner import requeue_count
from fashiontune.launch.smoke import SmokeConfig, expected_acc

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm


def _cluster_args(tmp_path) -> list[str]:
    return ["--cluster", str(REPO / "configs/cluster/slurm-cpu.yaml"), f"cluster.log_dir={tmp_path}/logs"]


def _wait_for_step(run_dir: Path, step: int, timeout_s: float = 120) -> dict:
    ckpt = run_dir / "checkpoints" / "smoke.json"
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            state = json.loads(ckpt.read_text())
            if state["step"] >= step:
                return state
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{ckpt} never reached step {step}")


STEPS, STEP_S, HOLD = 30, 0.05, 5


def _starts(run: Path) -> list[dict]:
    p = run / "starts.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


@contextlib.contextmanager
def _released(job_id: str, gate: Path):
    """Let a held smoke job go on leaving the block; cancel it if the block failed (never leave it held)."""
    try:
        yield
    except BaseException:
        subprocess.run(["scancel", job_id], capture_output=True)
        raise
    finally:
        gate.touch()


def test_two_task_job_through_the_cli(dev_cluster, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["submit", "smoke", *_cluster_args(tmp_path), f"run_dir={run}", f"steps={STEPS}", "step_s=0.0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "on SLURM: job" in out and f"{tmp_path}/logs/" in out
    res = json.loads((run / "results.json").read_text())
    # the uninterrupted reference the preemption test must reproduce
    assert res == {"steps": STEPS, "acc": expected_acc(STEPS, 2), "expected_acc": expected_acc(STEPS, 2),
                   "world_size": 2, "resumed_from": 0, "rank": 0}
    start = json.loads((run / "starts.jsonl").read_text().splitlines()[0])
    assert start["master"].endswith(f":{20000 + int(start['job_id'])}")  # rendezvous from the SLURM job id
    batch_log = tmp_path / f"logs/fashiontune-smoke-{start['job_id']}.out"  # the batch shell's, named in the output
    assert f"batch shell: {batch_log}" in out and batch_log.exists()


def test_preempted_job_requeues_resumes_and_matches_an_uninterrupted_run(dev_cluster, tmp_path):
    cluster = load_cluster(REPO / "configs/cluster/slurm-cpu.yaml", [f"log_dir={tmp_path}/logs"])
    gate = tmp_path / "go"
    cfg = SmokeConfig(run_dir=str(tmp_path / "run"), steps=STEPS, step_s=STEP_S, hold_at=HOLD, hold_file=str(gate))
    sub = S.submit("smoke", cfg, cluster)
    job_id = sub.jobs[0].job_id
    with _released(job_id, gate):
        _wait_for_step(Path(cfg.run_dir), HOLD)  # held there until `gate` exists: running when signalled
        T.usr2(job_id)  # what SLURM sends on preemption
        T.wait_until("the requeued run started", lambda: len(_starts(tmp_path / "run")) == 2, 120)
    results = S.wait(sub, timeout_s=240)
    for r in results[0]:
        assert r["acc"] == expected_acc(STEPS, 2)  # == the uninterrupted run above
        assert r["resumed_from"] == HOLD  # resumed from its checkpoint, not from scratch
    starts = _starts(tmp_path / "run")
    assert [s["job_id"] for s in starts] == [job_id, job_id]  # same job, same run dir, requeued
    assert [s["restart_count"] for s in starts] == [0, 1]
    assert requeue_count(cfg.run_dir) == 1
    assert "requeue 1/3 of smoke" in (tmp_path / f"logs/{job_id}/{job_id}_0_log.out").read_text()
    assert T.wait_final_state(job_id, 60) == "COMPLETED"


def test_requeues_are_bounded(dev_cluster, tmp_path):
    cluster = load_cluster(REPO / "configs/cluster/slurm-cpu.yaml", [f"log_dir={tmp_path}/logs", "max_requeues=0"])
    gate = tmp_path / "go"
    cfg = SmokeConfig(run_dir=str(tmp_path / "run"), steps=STEPS, step_s=STEP_S, hold_at=2, hold_file=str(gate))
    sub = S.submit("smoke", cfg, cluster)
    with _released(sub.jobs[0].job_id, gate):
        _wait_for_step(Path(cfg.run_dir), 2)
        T.usr2(sub.jobs[0].job_id)
        with pytest.raises(S.JobFailed, match=r"requeued 0 times already \(max_requeues=0\)"):
            S.wait(sub, timeout_s=120)
    assert T.wait_final_state(sub.jobs[0].job_id, 60) == "FAILED"


def test_a_raising_job_shows_the_remote_traceback_and_log_path(dev_cluster, tmp_path, capsys):
    t0 = time.monotonic()
    rc = main(["submit", "smoke", *_cluster_args(tmp_path), f"run_dir={tmp_path}/run", "steps=10", "step_s=0.0",
               "fail_at_step=3", "fail_rank=1", "timeout_s=30"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: smoke job: rank 1 fails on purpose at step 3" in err  # the root cause, not the peer's
    assert "task 1 of 2" in err and f"{tmp_path}/logs/" in err and "_1_log.err" in err
    assert time.monotonic() - t0 < 90  # reported, not hung


def test_shard_array_failed_task_then_resubmit_merges_like_a_local_build(dev_cluster, tmp_path, capsys):
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.shards.verify import verify
    from fashiontune.synth import generate

    corpus = generate("kagl", tmp_path / "corpus", 40, seed=0, image_size=32)
    common = ["source=kagl", f"input={corpus}", "shard_size=5", "image_size=32", "workers=1", "progress=false"]
    local = build_shards(ShardBuildConfig(source="kagl", input=str(corpus), out=str(tmp_path / "local"),
                                          shard_size=5, image_size=32, workers=1, progress=False))
    out = tmp_path / "array"
    argv = ["submit", "shards", *_cluster_args(tmp_path), f"out={out}", "num_jobs=2", *common]

    # A directory squatting on a shard owned by the second task makes exactly that task fail.
    blocker = out / local["splits"]["train"]["shards"][-1]["name"]
    blocker.mkdir(parents=True)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "array task 1 of 2" in err and "shards train/shard-" in err and "IsADirectoryError" in err
    assert "Resubmit the same command" in err and not (out / "manifest.json").exists()

    blocker.rmdir()
    cluster = load_cluster(REPO / "configs/cluster/slurm-cpu.yaml", [f"log_dir={tmp_path}/logs"])
    cfg = S.load_job_config("shards", None, [f"out={out}", "num_jobs=2", *common])
    results = S.wait(S.submit("shards", cfg, cluster), timeout_s=180)
    part0, part1, merged = results[0][0], results[1][0], results[2][0]
    assert part0["shards_built"] == 0 and part0["shards_reused"] > 0  # the task that succeeded is not redone
    assert part1["shards_built"] >= 1
    assert merged == local == json.loads((out / "manifest.json").read_text())
    assert verify(out).ok
