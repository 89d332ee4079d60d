"""Submit a registered job with a cluster config, wait for it, and explain failures.

    from fashiontune.launch import submit
    sub = submit.submit("train", train_cfg, cluster)          # one task per GPU on every node
    results = submit.wait(sub)                                 # per-task results, or JobFailed

A job whose spec has an `array` (registry.ArraySpec; today `shards`, with cfg.num_jobs = N) and whose config
asks for N > 1 tasks is submitted as a job array of N single-process tasks, then its merge job: on SLURM a job
that depends on the whole array (`afterok`, cancelled by SLURM if a task fails), on the local executor a job
submitted once all tasks succeeded. A failed task is reported with its index and what it covers (the spec's
task label: a shard range).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import submitit

from fashiontune.config import ConfigError, load_config
from fashiontune.launch import registry
from fashiontune.launch.cluster import ClusterConfig, ExecutorKind
from fashiontune.launch.executor import as_slurm_job, log_root, make_executor, sbatch_script
from fashiontune.launch.runner import JobRunner


class JobFailed(RuntimeError):
    """A submitted job (or one array task) failed; the message holds the remote traceback and log paths."""


@dataclass
class Submission:
    job: str
    run_dir: Path
    cluster: ClusterConfig
    jobs: list[submitit.Job] = field(default_factory=list)  # one job, or the array's tasks
    merge: Optional[submitit.Job] = None  # an array's merge job (on SLURM submitted with the array)
    labels: list[str] = field(default_factory=list)  # per entry of `jobs`, for messages (e.g. shard range)
    config: Any = None
    submitted_at: float = 0.0

    @property
    def is_array(self) -> bool:
        return len(self.jobs) > 1

    @property
    def job_ids(self) -> list[str]:
        return [j.job_id for j in self.jobs] + ([self.merge.job_id] if self.merge is not None else [])

    def log_paths(self) -> list[Path]:
        return [j.paths.stdout.parent for j in self.jobs] + ([self.merge.paths.stdout.parent] if self.merge else [])

    def describe(self) -> str:
        first = self.jobs[0]
        where = "locally (submitit local executor)" if self.cluster.executor == ExecutorKind.local else "on SLURM"
        lines = [f"submitted {self.job} {where}: job {', '.join(self.job_ids)}; "
                 f"{first.num_tasks} task(s) per job; run dir {self.run_dir}",
                 f"  logs: {first.paths.stdout}  (and {first.paths.stderr.name}; one pair per task)"]
        if self.cluster.executor == ExecutorKind.slurm:  # setup lines, srun's own messages
            lines.append(f"  batch shell: {log_root(self.cluster)}/{job_name(self.cluster, self.job)}-{first.job_id}.out")
        if self.merge is not None:
            lines.append(f"  merge: job {self.merge.job_id} runs after every array task succeeded")
        return "\n".join(lines)


def load_job_config(job: str, config_path: Optional[str], overrides: Sequence[str]) -> Any:
    """Build and validate a job's config here, before anything is queued."""
    spec = registry.get(job)
    cfg = load_config(spec.config_class(), config_path, overrides)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def job_name(cluster: ClusterConfig, job: str) -> str:
    return cluster.job_name or f"fashiontune-{job}"


def dry_run(job: str, cfg: Any, cluster: ClusterConfig) -> str:
    """The sbatch script(s) that `submit` would hand to SLURM."""
    spec = registry.get(job)
    name = job_name(cluster, job)
    n = spec.array_size(cfg)
    if n > 1:
        return (f"# array of {n} single-process tasks\n"
                + sbatch_script(cluster, name, single_task=True, array_size=n,
                                task_gpus=min(spec.array.task_gpus, cluster.gpus_per_node))
                + "\n# then the merge job (submitted with the array's id)\n"
                + sbatch_script(cluster, name + "-merge", single_task=True,
                                dependency="afterok:<array job id>"))
    return sbatch_script(cluster, name, single_task=not spec.distributed)


@contextlib.contextmanager
def submit_env(cluster: ClusterConfig):
    """submitit's clean_env (a job submitted from inside a job must not inherit its SLURM_*), except SLURM_CONF:
    it names the cluster to submit to (a site's second cluster, the simulated multi-node one). A cluster
    config's `slurm_conf` sets it for this whole process: job state and cancel (`scontrol`, `scancel`) must
    reach the same cluster, and sbatch passes it on to the job (whose own `scontrol requeue` needs it too)."""
    if cluster.executor == ExecutorKind.slurm and cluster.slurm_conf:
        if not Path(cluster.slurm_conf).is_file():
            raise ConfigError(f"cluster config: slurm_conf={cluster.slurm_conf!r} does not exist: start that cluster "
                              "(the simulated multi-node one: sudo bash slurm/dev-cluster/start.sh --nodes 3) or "
                              "set slurm_conf: '' for the default cluster.")
        os.environ["SLURM_CONF"] = cluster.slurm_conf
    conf = os.environ.get("SLURM_CONF")
    with submitit.helpers.clean_env():
        if conf is not None:
            os.environ["SLURM_CONF"] = conf
        try:
            yield
        finally:
            os.environ.pop("SLURM_CONF", None)  # clean_env puts the caller's value back


def _drop_stale_results(jobs: list[submitit.Job], since: float) -> None:
    """A re-created cluster (fresh slurmctld state) hands out job ids again; a result file left in
    <log_dir>/<id>/ by an older job with the same id would otherwise read as this job's result."""
    for j in jobs:
        for k in range(j.num_tasks):
            p = j.task(k).paths.result_pickle
            if p.exists() and p.stat().st_mtime < since:
                p.unlink()


def submit(job: str, cfg: Any, cluster: ClusterConfig) -> Submission:
    sub = _submit(job, cfg, cluster, since=time.time())
    _drop_stale_results(sub.jobs + ([sub.merge] if sub.merge is not None else []), sub.submitted_at)
    return sub


def _submit(job: str, cfg: Any, cluster: ClusterConfig, since: float) -> Submission:
    spec = registry.get(job)
    run_dir = spec.run_dir(cfg).absolute()
    name = job_name(cluster, job)
    if spec.array_size(cfg) > 1:
        return _submit_array(spec, cfg, cluster, run_dir, name, since)
    ex = make_executor(cluster, name, single_task=not spec.distributed)
    with submit_env(cluster):  # a job submitted from inside a job must not inherit its SLURM_*
        j = as_slurm_job(ex.submit(JobRunner(job, cfg, str(run_dir), cluster.max_requeues, cluster.omp_threads)))
    return Submission(job, run_dir, cluster, [j], labels=[job], config=cfg, submitted_at=since)


def _merge_runner(spec: registry.JobSpec, run_dir: Path, cluster: ClusterConfig) -> JobRunner:
    return JobRunner(spec.array.merge, str(run_dir), str(run_dir), cluster.max_requeues)


def _submit_array(spec: registry.JobSpec, cfg: Any, cluster: ClusterConfig, run_dir: Path, name: str,
                  since: float) -> Submission:
    n = spec.array_size(cfg)
    runners = [JobRunner(spec.name, dataclasses.replace(cfg, **{spec.array.index_key: i}), str(run_dir),
                         cluster.max_requeues, cluster.omp_threads) for i in range(n)]
    ex = make_executor(cluster, name, single_task=True, array=True,
                       task_gpus=min(spec.array.task_gpus, cluster.gpus_per_node))
    with submit_env(cluster):
        with ex.batch():
            delayed = [ex.submit(r) for r in runners]
        jobs = [as_slurm_job(j) for j in delayed]
        sub = Submission(spec.name, run_dir, cluster, jobs, labels=[f"array task {i} of {n}" for i in range(n)],
                         config=cfg, submitted_at=since)
        if cluster.executor == ExecutorKind.slurm:
            array_id = jobs[0].job_id.split("_")[0]
            mex = make_executor(cluster, name + "-merge", single_task=True)
            extra = dict(mex.parameters.get("additional_parameters", {}), kill_on_invalid_dep="yes")
            mex.update_parameters(dependency=f"afterok:{array_id}", additional_parameters=extra)
            sub.merge = as_slurm_job(mex.submit(_merge_runner(spec, run_dir, cluster)))
    return sub


def _first_exception(job: submitit.Job) -> Optional[tuple[int, Exception]]:
    """(task, exception) of a finished job, the root cause first: the task whose error was written earliest
    (a rank that raised beats the peers that then lost their connection), then tasks with no result at all."""
    tasks = [job.task(k) for k in range(job.num_tasks)]
    with_result = sorted((t for t in tasks if t.paths.result_pickle.exists()),
                         key=lambda t: t.paths.result_pickle.stat().st_mtime)
    for t in with_result + [t for t in tasks if t not in with_result]:
        exc = t.exception()
        if exc is not None:
            return (t.task_id or 0), exc
    return None


def _failure(sub: Submission, index: int, job: submitit.Job, task: int, exc: Exception) -> str:
    label = sub.labels[index] if index < len(sub.labels) else sub.job
    covers = registry.get(sub.job).task_label(sub.config, sub.run_dir, index) if sub.is_array else ""
    if covers:
        label += f", {covers}"
    where = f"; task {task} of {job.num_tasks}" if job.num_tasks > 1 else ""
    head = f"{sub.job} job {job.job_id} failed ({label}{where})"
    paths = job.task(task).paths
    return f"{head}:\n{exc}\nlogs of that task: {paths.stderr}\n                   {paths.stdout}"


def _wait_done(jobs: list[submitit.Job], log_dir: str, start: float, timeout_s: Optional[float], poll_s: float,
               on_progress: Optional[Callable[[str], None]]) -> None:
    """Poll until every job is done (the whole wait's deadline counts from `start`); a note every 30 s."""
    last_note = time.monotonic()
    while not all(j.done() for j in jobs):
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            ids = ", ".join(j.job_id for j in jobs if not j.done())
            raise TimeoutError(f"job(s) {ids} not done after {timeout_s:.0f} s (still queued or running; "
                               f"logs under {log_dir})")
        if on_progress and time.monotonic() - last_note > 30:
            last_note = time.monotonic()
            on_progress(", ".join(f"{j.job_id}: {j.state}" for j in jobs))
        time.sleep(poll_s)


def wait(sub: Submission, timeout_s: Optional[float] = None, poll_s: float = 1.0,
         on_progress: Optional[Callable[[str], None]] = None) -> list[Any]:
    """Block until every job is done; return the per-task results of each job (for a shards array: the
    merge result last). Raises JobFailed with the remote traceback and log paths of each failed task."""
    start = time.monotonic()

    def _wait(jobs: list[submitit.Job]) -> None:
        _wait_done(jobs, sub.cluster.log_dir, start, timeout_s, poll_s, on_progress)

    _wait(sub.jobs)
    failures = []
    for i, j in enumerate(sub.jobs):
        found = _first_exception(j)
        if found is not None:
            failures.append(_failure(sub, i, j, *found))
    if failures:
        if sub.merge is not None:
            sub.merge.cancel(check=False)  # SLURM cancels it too (kill-on-invalid-dep); be explicit
        spec = registry.get(sub.job)
        more = f"\n{spec.array.rerun_hint}" if sub.is_array and spec.array.rerun_hint else ""
        raise JobFailed("\n\n".join(failures) + more)
    results: list[Any] = [j.results() for j in sub.jobs]
    if sub.is_array:
        merge_job = sub.merge
        if merge_job is None:  # local executor: the client runs the dependency
            spec = registry.get(sub.job)
            ex = make_executor(sub.cluster, job_name(sub.cluster, sub.job) + "-merge", single_task=True)
            since = time.time()
            merge_job = ex.submit(_merge_runner(spec, sub.run_dir, sub.cluster))
            _drop_stale_results([merge_job], since)  # local job ids are pids, which get reused
            sub.merge = merge_job
        _wait([merge_job])
        found = _first_exception(merge_job)
        if found is not None:
            raise JobFailed(_failure(dataclasses.replace(sub, labels=["merge"], jobs=[merge_job]), 0, merge_job,
                                     *found))
        results.append(merge_job.results())
    return results


def main_result(results: list[Any]) -> Any:
    """Rank 0's result of the last job (the merge for an array)."""
    last = results[-1]
    return last[0] if isinstance(last, list) and last else last

