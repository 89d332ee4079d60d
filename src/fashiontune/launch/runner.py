"""What runs on the nodes: `JobRunner(job, config)()`, a submitit checkpointable callable.

Preemption (dinov2's submit.py pattern): submitit calls `checkpoint()` on global rank 0 when the job gets
USR2 (preemption, or `signal_delay_s` before the time limit). The jobs save their own checkpoints on a step
interval from every rank (a DeepSpeed save is collective, so it cannot happen inside a signal handler on one
rank); `checkpoint()` therefore only resubmits the same callable with the same run directory, and the
requeued job resumes from the newest complete checkpoint there. Requeues are counted in
<run_dir>/launch/requeues.jsonl and bounded by the cluster config's `max_requeues`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from fashiontune.launch import env as dist_env
from fashiontune.launch import registry

log = logging.getLogger("fashiontune.launch")


class RequeueLimitReached(RuntimeError):
    pass


def requeue_log(run_dir: str | Path) -> Path:
    return Path(run_dir) / "launch" / "requeues.jsonl"


def requeue_count(run_dir: str | Path) -> int:
    p = requeue_log(run_dir)
    return sum(1 for line in p.read_text().splitlines() if line.strip()) if p.exists() else 0


class JobRunner:
    """Picklable: holds only the job name, its config and the requeue budget."""

    def __init__(self, job: str, config: Any, run_dir: str, max_requeues: int) -> None:
        self.job = job
        self.config = config
        self.run_dir = str(run_dir)
        self.max_requeues = max_requeues

    def __call__(self) -> Any:
        spec = registry.get(self.job)
        if spec.distributed:
            dist = dist_env.setup()
        else:
            dist = dist_env.DistEnv()
        n = requeue_count(self.run_dir)
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(
            f"[fashiontune] job={self.job} run_dir={self.run_dir} host={socket.gethostname()} {dist.describe()} "
            f"requeues_so_far={n}/{self.max_requeues} slurm_restart_count={restarts}",
            flush=True,
        )
        return spec.function()(self.config)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on rank 0 on USR2: record the requeue and resubmit the same job."""
        import submitit

        n = requeue_count(self.run_dir)
        if n >= self.max_requeues:
            raise RequeueLimitReached(
                f"job {self.job} was requeued {n} times already (max_requeues={self.max_requeues}); not "
                f"requeuing again. Resubmit it by hand to resume from {self.run_dir}, or raise max_requeues."
            )
        path = requeue_log(self.run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"n": n + 1, "time": time.time(), "job": self.job, "host": socket.gethostname(),
                  "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "")}
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"[fashiontune] requeue {n + 1}/{self.max_requeues} of {self.job}: resuming from {self.run_dir}",
              flush=True)
        return submitit.helpers.DelayedSubmission(JobRunner(self.job, self.config, self.run_dir, self.max_requeues))
