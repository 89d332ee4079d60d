"""What every task of a submitted job runs, instead of `python -m submitit.core._submit FOLDER`: submitit's
`process_job` with preemption that holds at every moment of the task's life.

submitit installs its USR2 handler only after it has unpickled the job, runs it inside whatever Python code
the main thread happens to be in, and Python puts the default action (terminate) back at shutdown; a USR2 in
any of those windows killed the task and the job ended FAILED. Here instead:

- USR2 is blocked (and ignored) from the task's first instruction to its last: `task_command` starts it as
  `sh -c "trap '' USR2; exec env --block-signal=USR2 python -u -m fashiontune.launch.task FOLDER"`. Blocked
  and ignored dispositions survive exec, and a blocked signal stays pending instead of being lost, so no
  process of the task (the interpreter while it starts or exits, DataLoader workers, subprocesses) can die
  of it. (Without coreutils >= 8.31 `env --block-signal`, a USR2 during the interpreter's start is ignored.)
- On global rank 0 one thread takes USR2 with `sigwait` once the job is loaded (a signal that came earlier
  is still pending and is taken at once). It never runs code inside the job: it asks the job's `checkpoint()`
  for the resubmission (JobRunner: bounded by max_requeues), writes it, `scontrol requeue`s the job and ends
  the process with `os._exit`, like a kill, which the checkpoints are built to survive. A second USR2 is a
  no-op. Other ranks ignore USR2, as under submitit.
- Once the job function has returned (or raised), USR2 is a no-op: a finished job ends COMPLETED.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

SIGNAL_NAME = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")  # submitit's own override
SIG = getattr(signal, "SIG" + SIGNAL_NAME)

REQUEUED_EXIT = 255  # submitit's sys.exit(-1) after a requeue


def task_command(python: str, folder: str | Path) -> str:
    """The command submitit's executors start each task with (a shell command line; the local executor
    shlex-splits it). `python` is a shell command (e.g. `singularity exec img python`)."""
    run = f"{python} -u -m fashiontune.launch.task {shlex.quote(str(folder))}"
    sig = SIGNAL_NAME
    script = (f"trap '' {sig}; if env --block-signal={sig} true 2>/dev/null; "
              f"then exec env --block-signal={sig} {run}; fi; exec {run}")
    return "/bin/sh -c " + shlex.quote(script)


class Preemption:
    """USR2 handling of one task: see the module docstring."""

    def __init__(self, env, paths, delayed) -> None:
        from submitit.core.logger import get_logger

        self.env, self.paths, self.delayed = env, paths, delayed
        self.log = get_logger()
        self._lock = threading.Lock()
        self._done = False
        # As submitit: SLURM's SIGTERM (a requeue or scancel) is logged, the SIGKILL after KillWait ends us.
        for s in (signal.SIGTERM, signal.SIGCONT):
            signal.signal(s, self._bypass)
        if env.global_rank == 0:
            threading.Thread(target=self._watch, name="preemption", daemon=True).start()

    def _bypass(self, signum: int, frame=None) -> None:
        self.log.warning(f"Bypassing signal {signal.Signals(signum).name}")

    def finish(self) -> None:
        """The job function returned or raised: from now on USR2 is a no-op (blocked and ignored, so
        Python's shutdown has no handler to reset)."""
        with self._lock:  # waits for (and never returns from) a requeue already under way
            self._done = True
        signal.signal(SIG, signal.SIG_IGN)

    def _watch(self) -> None:
        while True:
            signal.sigwait({SIG})
            with self._lock:
                if self._done:
                    self.log.info(f"Caught {SIGNAL_NAME} after the job's work was done: ignored.")
                    continue
                self._requeue()  # never returns

    def _requeue(self) -> None:
        self.log.warning(f"Caught {SIGNAL_NAME} on {socket.gethostname()}: preempted or near the time limit.")
        try:
            self._write_resubmission()
            try:
                self.env._requeue(self.delayed._timeout_countdown)  # SLURM: scontrol requeue <job id>
                code = REQUEUED_EXIT
            except SystemExit as e:  # the local executor requeues by an exit code
                code = int(e.code or 0)
            self.log.info("Requeued; exiting.")
        except Exception:  # e.g. RequeueLimitReached: the job fails, with this traceback as its error
            self.log.error(f"Not requeued:\n{traceback.format_exc()}")
            _dump(self.paths.result_pickle, ("error", traceback.format_exc()))
            code = 1
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)

    def _write_resubmission(self) -> None:
        from submitit.core import utils

        d = self.delayed
        if not hasattr(d.function, "checkpoint"):
            return  # requeue the same submission
        new = d._checkpoint_function()
        if new is None:
            raise utils.UncompletedJobError("Job not requeued because: checkpoint function returned None.")
        new.set_timeout(d._timeout_min, d._timeout_countdown)
        with utils.temporary_save_path(self.paths.submitted_pickle) as tmp:
            new.dump(tmp)


def _dump(path: Path, outcome: tuple) -> None:
    from submitit.core import utils

    with utils.temporary_save_path(path) as tmp:
        utils.cloudpickle_dump(outcome, tmp)


def process_job(folder: str | Path) -> None:
    """submitit.core.submission.process_job (same files, logs and outcomes) under `Preemption`."""
    from submitit.core import job_environment, utils
    from submitit.core.logger import get_logger

    os.environ["SUBMITIT_FOLDER"] = str(folder)
    env = job_environment.JobEnvironment()
    paths = env.paths
    logger = get_logger()
    logger.info(f"Starting with {env}")
    for _ in range(60):  # a shared file system may show the pickle late
        if paths.submitted_pickle.exists():
            break
        time.sleep(1)
    if not paths.submitted_pickle.exists():
        raise RuntimeError(f"Waited for 60 seconds but could not find submitted jobs in path:\n"
                           f"{paths.submitted_pickle}")
    guard = None
    try:
        delayed = utils.DelayedSubmission.load(paths.submitted_pickle)
        guard = Preemption(env, paths, delayed)
        result = delayed.result()
        guard.finish()
        logger.info("Job completed successfully")
        del delayed
        _dump(paths.result_pickle, ("success", result))
        logger.info("Exiting after successful completion")
    except Exception as error:
        if guard is not None:
            guard.finish()
        try:
            _dump(paths.result_pickle, ("error", traceback.format_exc()))
        except Exception as dump_error:
            logger.error(f"Could not dump error:\n{error}\n\nbecause of {dump_error}")
        logger.error("Submitted job triggered an exception")
        raise


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {SIG})  # already, if started by task_command with env
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fashiontune.launch.task SUBMITIT_FOLDER")
    try:  # numpy before the pickle, as submitit does
        import numpy  # noqa: F401
    except ImportError:
        pass
    process_job(sys.argv[1])
