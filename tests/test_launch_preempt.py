"""fashiontune.launch.task without SLURM: a task process started as the executors start it survives USR2 at
any moment and does the right thing (local executor environment: a requeue is exit code 144, which its
controller answers by starting the task again). ~10 s on 2 CPU cores.

The same code on the dev cluster: tests/test_faults_preemption.py.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

from submitit.core.utils import DelayedSubmission, JobPaths, pickle_load
from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

from fashiontune.launch import testing
from fashiontune.launch.runner import JobRunner, requeue_count
from fashiontune.launch.smoke import SmokeConfig
from fashiontune.launch.task import task_command

JOB_ID = "7"


def _start(folder, function) -> tuple[subprocess.Popen, JobPaths]:
    folder.mkdir()
    paths = JobPaths(folder, job_id=JOB_ID, task_id=0)
    delayed = DelayedSubmission(function)
    delayed.set_timeout(10, 3)
    delayed.dump(paths.submitted_pickle)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID=JOB_ID, SUBMITIT_LOCAL_GLOBALID="0",
               SUBMITIT_LOCAL_LOCALID="0", SUBMITIT_LOCAL_NTASKS="1", SUBMITIT_LOCAL_NODEID="0",
               SUBMITIT_LOCAL_JOB_NUM_NODES="1")
    argv = shlex.split(task_command(shlex.quote(sys.executable), folder))
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), paths


def test_usr2_while_the_interpreter_starts_requeues_once_the_job_is_loaded(tmp_path):
    run = tmp_path / "run"
    # held before step 0 forever: only the signal can end it
    cfg = SmokeConfig(run_dir=str(run), steps=3, step_s=0.0, hold_at=0, hold_file=str(tmp_path / "never"))
    p, paths = _start(tmp_path / "logs", JobRunner("smoke", cfg, str(run), max_requeues=3))
    time.sleep(0.05)  # sh -> env -> python: the interpreter is starting (submitit: no handler yet -> killed)
    p.send_signal(signal.SIGUSR2)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == LOCAL_REQUEUE_RETURN_CODE, out  # not -12 (killed by USR2)
    assert requeue_count(run) == 1 and "requeue 1/3 of smoke" in out
    again = DelayedSubmission.load(paths.submitted_pickle)  # the resubmission the next start runs
    assert isinstance(again.function, JobRunner) and again.function.run_dir == str(run)
    assert not paths.result_pickle.exists()  # not an outcome: the job goes on after the requeue


def test_usr2_after_the_job_returned_is_ignored(tmp_path):
    marker = tmp_path / "checkpoint-called"
    p, paths = _start(tmp_path / "logs", testing.SignalSelfAtExit(str(marker)))
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert pickle_load(paths.result_pickle) == ("success", "done")
    assert not marker.exists(), out  # submitit: its handler, still installed, checkpoints + requeues it


def test_child_processes_of_a_task_survive_usr2(tmp_path):
    """DataLoader workers (fork or spawn) get SLURM's USR2 too: blocked, it cannot kill them."""
    p, paths = _start(tmp_path / "logs", testing.children_survive_usr2)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    assert pickle_load(paths.result_pickle) == ("success", [0, 0]), out
