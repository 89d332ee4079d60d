"""Test support for the SLURM tests: job state from `scontrol` (stays visible MinJobAge after the end), and a
FIFO fault trace that holds a training job at a point the test chooses until the test lets it go.

Tests wait only on conditions that stay true (a job's final state, its restart count, a line already
read), never on a file a checkpoint rotation may delete.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
        "PREEMPTED"}


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol -o show job` of one (non-array) job: {JobState, Restarts, ExitCode, ...}; {} if unknown."""
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True).stdout
    line = out.splitlines()[0] if out.strip() else ""
    return dict(re.findall(r"(\w[\w/:]*)=(\S*)", line))


def restarts(job_id: str) -> int:
    return int(job_info(job_id).get("Restarts", 0) or 0)


def wait_until(what: str, cond: Callable[[], bool], timeout_s: float, poll_s: float = 0.2) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"not true after {timeout_s:.0f} s: {what}")
        time.sleep(poll_s)


def wait_final_state(job_id: str, timeout_s: float) -> str:
    """The job's final state (COMPLETED, FAILED, ...); a requeued job is not final until its last run ends."""
    state = {}

    def done() -> bool:
        state.update(job_info(job_id))
        return state.get("JobState") in DONE

    wait_until(f"job {job_id} ended (state {state.get('JobState')})", done, timeout_s, poll_s=0.5)
    return state["JobState"]


def usr2(job_id: str, batch: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """What SLURM sends on preemption / before the time limit: to the job's steps, or (`batch`, what
    `--signal=B:USR2` sends) to the batch shell only. `check=False` where the job may have no step yet or
    may have ended (scancel then fails, and says so)."""
    return subprocess.run(["scancel", *(["--batch"] if batch else []), "--signal=USR2", str(job_id)],
                          check=check, capture_output=True, text=True)


class TraceFifo:
    """A FIFO to set as FASHIONTUNE_TEST_FAULT_TRACE: every fault point of a training job
    (fashiontune.train.testing.fault_point) writes "<phase> <step>" to it.

    `hold()` fills the pipe, so that the job's next fault point blocks in its write: the job stays at a known
    point however fast or slow the machine is, until `release()` drains the pipe. The read end stays open
    until `close()`, so that no writer ever sees a broken pipe; a pipe holds far more lines than a test run
    writes, so nothing needs to read while the job runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        os.mkfifo(self.path)
        self._r = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._w = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # the filler; also: reads never see EOF
        self.lines: list[str] = []
        self._partial = b""

    def read(self) -> list[str]:
        """Every line written so far (reading releases a hold)."""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            data = self._partial + chunk.replace(b"\0", b"")
            *done, self._partial = data.split(b"\n")
            self.lines += [x.decode() for x in done if x]
        return self.lines

    def wait_for(self, line: str, timeout_s: float, since: int = 0) -> None:
        """Until `line` was written (at index `since` or later)."""
        wait_until(f"{line!r} in the fault trace", lambda: line in self.read()[since:], timeout_s)

    def wait_count(self, n: int, timeout_s: float) -> None:
        """Until `n` lines were written."""
        wait_until(f"{n} lines in the fault trace", lambda: len(self.read()) >= n, timeout_s)

    def hold(self) -> None:
        self.read()  # keep what the job wrote so far
        for size in (1 << 12, 1):
            while True:
                try:
                    os.write(self._w, b"\0" * size)
                except BlockingIOError:
                    break
                except OSError as e:  # pragma: no cover
                    if e.errno != errno.EAGAIN:
                        raise
                    break

    def release(self) -> None:
        self.read()

    def close(self) -> None:
        os.close(self._w)
        os.close(self._r)


# -- jobs for tests/test_launch_preempt.py (run inside a task process; importable by the unpickler) ---------
def requeue_batch_job_at(trace: "TraceFifo", job_id: str, line: str, restart_s: float, final_s: float) -> str:
    """A batch-script job (the sbatch templates) requeued by its own USR2 trap at a known moment: wait for the
    trace `line` (a line read stays read), hold the job at its next fault point (certainly running when the signal
    lands), send USR2 to the batch shell (what `#SBATCH --signal=B:USR2@...` sends), wait for the restart, let it
    go, and return its final state. The job is cancelled and the trace closed whatever happens."""
    try:
        trace.wait_for(line, final_s)
        trace.hold()
        usr2(job_id, batch=True)
        wait_until(f"job {job_id} restarted", lambda: restarts(job_id) >= 1, restart_s)
        trace.release()
        return wait_final_state(job_id, final_s)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)  # a no-op once it has ended
        trace.close()


class SignalSelfAtExit:
    """A checkpointable job that returns at once and sends itself USR2 at interpreter exit (after the job
    returned); `checkpoint()` (a requeue of the finished job: wrong) leaves `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self) -> str:
        import atexit
        import signal

        atexit.register(lambda: (os.kill(os.getpid(), signal.SIGUSR2), time.sleep(0.2)))
        return "done"

    def checkpoint(self):
        import submitit

        Path(self.marker).touch()
        return submitit.helpers.DelayedSubmission(SignalSelfAtExit(self.marker))


def children_survive_usr2() -> list[int]:
    """Starts a fork and a spawn child (what DataLoader workers are), sends each USR2, returns their exit
    codes (0: they ran to the end)."""
    import multiprocessing as mp
    import signal

    codes = []
    for method in ("fork", "spawn"):
        child = mp.get_context(method).Process(target=time.sleep, args=(1.0,))
        child.start()
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGUSR2)
        child.join(30)
        codes.append(child.exitcode)
    return codes


# -- the simulated multi-node cluster (slurm/dev-cluster/multinode.sh) ------------------------------------
def kill_node(node: str) -> list[int]:
    """A node of the simulated multi-node cluster dies: SIGKILL every process in its network namespace (its
    slurmd, and the job's batch shell, slurmstepd and ranks there). SLURM sees the node stop answering and ends
    or requeues its jobs (NODE_FAIL); `bash slurm/dev-cluster/start.sh --nodes N` brings it back."""
    ns = f"ft{node}"
    pids = [int(p) for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                           check=True).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return pids


def set_node_state(node: str, state: str, reason: str = "test") -> None:
    """`scontrol update nodename=<node> state=<drain|resume>`: keep new jobs off a node, or put it back."""
    extra = [f"reason={reason}"] if state in ("drain", "down") else []
    subprocess.run(["scontrol", "update", f"nodename={node}", f"state={state}", *extra], check=True,
                   capture_output=True, text=True)
