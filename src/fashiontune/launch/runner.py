"""What runs on the nodes: `JobRunner(job, config)()`, a submitit checkpointable callable.

Preemption (dinov2's submit.py pattern): `launch.task` calls `checkpoint()` on global rank 0 when the job gets
USR2 (preemption, or `signal_delay_s` before the time limit), from its own thread, at any moment before the job
function returns. The jobs save their own checkpoints on a step interval from every rank (a DeepSpeed save is
collective, so it cannot happen inside a signal handler on one rank); `checkpoint()` therefore only
resubmits the same callable with the same run directory, and the requeued job resumes from the newest
complete checkpoint there. Requeues are counted in
<run_dir>/launch/requeues.jsonl and bounded by the cluster config's `max_requeues`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from fashiontune.launch import env as dist_env
from fashiontune.launch import registry, threads

class RequeueLimitReached(RuntimeError):
    pass


def requeue_log(run_dir: str | Path) -> Path:
    return Path(run_dir) / "launch" / "requeues.jsonl"


def requeue_count(run_dir: str | Path, job_id: str | None = None) -> int:
    """Requeues recorded in the run dir; with `job_id`, only those of that submission (a requeued job keeps its
    id, so each new submission of the same run gets a fresh budget while the file keeps the whole history)."""
    p = requeue_log(run_dir)
    if not p.exists():
        return 0
    records = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return sum(1 for r in records if job_id is None or r.get("job_id") == job_id)


def current_job_id() -> str:
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)  # "<array id>_<index>" for array tasks
    except Exception:  # not inside a submitit job (tests, a plain process)
        return os.environ.get("SLURM_JOB_ID", "")


class JobRunner:
    """Picklable: holds only the job name, its config and the requeue budget."""

    def __init__(self, job: str, config: Any, run_dir: str, max_requeues: int, omp_threads: int = 0) -> None:
        self.job = job
        self.config = config
        self.run_dir = str(run_dir)
        self.max_requeues = max_requeues
        self.omp_threads = omp_threads  # 0 = this task's CPUs minus its loader workers (launch.threads)

    def __call__(self) -> Any:
        spec = registry.get(self.job)
        if spec.distributed:
            dist = dist_env.setup()
            threads.apply(self.config, getattr(self, "omp_threads", 0))
        else:
            dist = dist_env.DistEnv()
        n = requeue_count(self.run_dir, current_job_id())
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(
            f"[fashiontune] job={self.job} run_dir={self.run_dir} host={socket.gethostname()} {dist.describe()} "
            f"requeues_so_far={n}/{self.max_requeues} slurm_restart_count={restarts} "
            f"omp_threads={os.environ.get('OMP_NUM_THREADS', '')}",
            flush=True,
        )
        return spec.function()(self.config)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called on rank 0 on USR2 (launch.task): record the requeue and resubmit the same job."""
        import submitit

        job_id = current_job_id()
        n = requeue_count(self.run_dir, job_id)
        if n >= self.max_requeues:
            raise RequeueLimitReached(
                f"job {self.job} ({job_id}) was requeued {n} times already (max_requeues={self.max_requeues}); "
                f"not requeuing again. Submit it again to resume from {self.run_dir} (a new submission gets a "
                "fresh budget), or raise max_requeues."
            )
        path = requeue_log(self.run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"n": n + 1, "time": time.time(), "job": self.job, "host": socket.gethostname(), "job_id": job_id}
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"[fashiontune] requeue {n + 1}/{self.max_requeues} of {self.job}: resuming from {self.run_dir}",
              flush=True)
        return submitit.helpers.DelayedSubmission(JobRunner(self.job, self.config, self.run_dir, self.max_requeues,
                                                            getattr(self, "omp_threads", 0)))
