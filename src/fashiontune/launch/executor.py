"""ClusterConfig -> a submitit executor (SLURM or local), and the sbatch script it would submit.

Two things submitit leaves to us:
- job state without an accounting database: submitit asks `sacct`, which fails on clusters (like the
  one-node dev cluster) that run without slurmdbd; a failed job then looks "running" forever. Our watcher
  falls back to `scontrol show job` there (MinJobAge keeps finished jobs visible to it).
- preemption-safety flags: `--requeue` so that SLURM may requeue the job, and `srun --kill-on-bad-exit` so
  that one crashed rank ends the step instead of leaving its peers blocked in a collective.
- preemption at any moment: every task runs `fashiontune.launch.task` (see there) instead of submitit's
  `_submit`, and the batch shell ignores USR2 (`scancel --full` or `--signal=B:USR2` must not kill it; srun
  still forwards the signal to the tasks).
- log folders that exist when SLURM opens them: submitit points the batch log at `<log_dir>/<job id>/`, a
  folder it creates only after `sbatch` has returned, and SLURM fails a job whose log folder is missing
  (JobLaunchFailure, no log). The batch shell's own log goes to `<log_dir>/%x-%j.out` instead (log_dir exists
  before sbatch runs: submitit writes the pickle and the script there), and its first line creates the job's
  folder before srun opens the per-task logs in it.
- srun's resources: SLURM 22.05/23.02's srun does not inherit `--cpus-per-task` (each task would get one core
  for itself and all its loader workers), so it is passed explicitly; `--gpu-bind=none` because a site default
  binding one GPU per task would leave each rank one visible GPU while it picks cuda:LOCAL_RANK.
- no `--wckey=submitit` (submitit's default: sites that track wckeys reject or misfile an unknown one).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import submitit
from submitit.slurm import slurm as _slurm

from fashiontune.launch.cluster import ClusterConfig, ExecutorKind
from fashiontune.launch.task import SIGNAL_NAME, task_command


def _accounting_enabled() -> bool:
    return _accounting_enabled_for(os.environ.get("SLURM_CONF", ""))


@functools.lru_cache(maxsize=8)
def _accounting_enabled_for(slurm_conf: str) -> bool:  # per cluster (SLURM_CONF)
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    m = re.search(r"^AccountingStorageType\s*=\s*(\S+)", out, re.M)
    return not (m and m.group(1).endswith("/none"))


class SlurmStateWatcher(_slurm.SlurmInfoWatcher):
    """sacct where accounting exists, else `scontrol -o show job` parsed into sacct's shape."""

    def _make_command(self) -> Optional[list[str]]:
        if _accounting_enabled():
            return super()._make_command()
        if not self._registered - self._finished:
            return None
        return ["scontrol", "-o", "show", "job"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        if not text.startswith("JobId="):
            return super().read_info(text)
        info: dict[str, dict[str, str]] = {}
        for line in text.splitlines():
            kv = dict(re.findall(r"(\w[\w/:]*)=(\S*)", line))
            state = {"JobID": kv.get("JobId", ""), "State": kv.get("JobState", ""), "NodeList": kv.get("NodeList", ""),
                     "Requeue": kv.get("Requeue", "")}
            array_id, task = kv.get("ArrayJobId"), kv.get("ArrayTaskId")
            if array_id and task:
                for t in _expand_tasks(task):
                    info[f"{array_id}_{t}"] = state
            else:
                info[state["JobID"]] = state
        return info

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        # scontrol shows a few transient states sacct folds away; none of them is "done".
        state = self.get_state(job_id, mode=mode).upper()
        if state in {"CONFIGURING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "REQUEUE_FED",
                     "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}:
            return False
        if state == "NODE_FAIL" and self.get_info(job_id, mode="cache").get("Requeue") == "1":
            return False  # its node died; a requeue-able job goes back to the queue (a rerun resumes it)
        return super().is_done(job_id, mode=mode)


def _expand_tasks(spec: str) -> list[int]:
    """'0-3%2' / '1,4-5' -> task indices."""
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out += range(int(a), int(b) + 1)
        elif part.isdigit():
            out.append(int(part))
    return out


class SlurmJob(_slurm.SlurmJob):
    watcher = SlurmStateWatcher(delay_s=30)


class SlurmExecutor(_slurm.SlurmExecutor):
    job_class = SlurmJob

    @property
    def _submitit_command_str(self) -> str:  # also what array jobs run (submitit passes it on)
        return task_command(self.python, self.folder)


class LocalExecutor(submitit.LocalExecutor):
    @property
    def _submitit_command_str(self) -> str:
        return task_command(self.python, self.folder)


class _DryRunSlurmExecutor(SlurmExecutor):
    """Builds sbatch text on a machine without `srun` (a laptop checking a config)."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def as_slurm_job(job: submitit.Job) -> submitit.Job:
    """submitit builds array jobs with its own SlurmJob class: rewrap them so they use our watcher."""
    if isinstance(job, _slurm.SlurmJob) and not isinstance(job, SlurmJob):
        return SlurmJob(folder=job.paths.folder, job_id=job.job_id, tasks=job._tasks)
    return job


def log_root(cluster: ClusterConfig) -> Path:
    """submitit's folder without the job id: it exists before sbatch runs."""
    return Path(cluster.log_dir).absolute()


def slurm_parameters(cluster: ClusterConfig, job_name: str, single_task: bool = False,
                     array: bool = False, task_gpus: int = 0) -> dict[str, Any]:
    """submitit SlurmExecutor parameters; `single_task`: one process on one node (array tasks, merge) with
    `task_gpus` GPUs; `array`: the parameters of a job array's tasks (log names carry %A_%a)."""
    job_id = "%A_%a" if array else "%j"
    batch_log = str(log_root(cluster) / f"%x-{job_id}.out")  # the batch shell's output (setup, srun's messages)
    p: dict[str, Any] = {
        "job_name": job_name,
        "time": cluster.time_min,
        "nodes": 1 if single_task else cluster.nodes,
        "ntasks_per_node": 1 if single_task else cluster.tasks_per_node,
        "cpus_per_task": cluster.cpus_per_task,
        "signal_delay_s": cluster.signal_delay_s,
        "array_parallelism": cluster.array_parallelism,
        "srun_args": ["--kill-on-bad-exit=1", f"--cpus-per-task={cluster.cpus_per_task}", "--gpu-bind=none"],
        "wckey": None,  # None: submitit writes no --wckey line
        "additional_parameters": {"requeue": True, "output": batch_log, "error": batch_log,
                                  **cluster.sbatch_additional()},
    }
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cluster, key):
            p[key] = getattr(cluster, key)
    if cluster.gpus_per_node and not single_task:
        p["gpus_per_node"] = cluster.gpus_per_node
    elif single_task and task_gpus:
        p["gpus_per_node"] = task_gpus
    if cluster.mem_gb:
        p["mem"] = _slurm._convert_mem(cluster.mem_gb)
    elif cluster.exclusive:
        p["mem"] = "0"  # the whole node: its memory too (--exclusive alone may leave DefMemPerCPU x CPUs)
    if cluster.exclusive:
        p["exclusive"] = True
    task_dir = "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" if array else "${SLURM_JOB_ID}"
    p["setup"] = [f"trap '' {SIGNAL_NAME}  # the tasks handle it (fashiontune.launch.task)",
                  f'mkdir -p {shlex.quote(str(log_root(cluster)))}/"{task_dir}"  # srun opens the task logs there',
                  *cluster.setup]
    return p


def make_executor(cluster: ClusterConfig, job_name: str, single_task: bool = False, dry_run: bool = False,
                  array: bool = False, task_gpus: int = 0):
    folder = log_root(cluster) / "%j"
    python = cluster.python or None
    if cluster.executor == ExecutorKind.local:
        ex = LocalExecutor(folder=folder, max_num_timeout=cluster.max_requeues, python=python)
        ex.update_parameters(
            timeout_min=cluster.time_min,
            tasks_per_node=1 if single_task else cluster.tasks_per_node,
            gpus_per_node=task_gpus if single_task else cluster.gpus_per_node,
            signal_delay_s=cluster.signal_delay_s,
            **({"setup": list(cluster.setup)} if cluster.setup else {}),
        )
        return ex
    if not dry_run and shutil.which("sbatch") is None:
        raise RuntimeError(
            "cluster config says executor: slurm, but there is no `sbatch` on this machine: submit from a SLURM "
            "login node, start the dev cluster (bash slurm/dev-cluster/start.sh), or use configs/cluster/local.yaml."
        )
    cls = _DryRunSlurmExecutor if dry_run else SlurmExecutor
    ex = cls(folder=folder, max_num_timeout=cluster.max_requeues, python=python)
    # SlurmExecutor.update_parameters takes sbatch names (time, ntasks_per_node, mem="16GB") as they are.
    ex.update_parameters(**slurm_parameters(cluster, job_name, single_task, array, task_gpus))
    return ex


def sbatch_script(cluster: ClusterConfig, job_name: str, single_task: bool = False, array_size: int = 0,
                  dependency: str = "", task_gpus: int = 0) -> str:
    """The exact sbatch file submitit writes for this cluster config (without submitting anything)."""
    if cluster.executor == ExecutorKind.local:
        return (f"# executor: local -- no sbatch script; {cluster.tasks_per_node} task(s) run as subprocesses "
                f"of this machine, logs in {Path(cluster.log_dir).absolute()}/<job id>/\n")
    ex = make_executor(replace(cluster), job_name, single_task=single_task, dry_run=True, array=bool(array_size),
                       task_gpus=task_gpus)
    if array_size:
        ex.parameters["map_count"] = array_size
    if dependency:
        ex.parameters["dependency"] = dependency
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")
