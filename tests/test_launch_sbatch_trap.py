"""The USR2 trap of slurm/train.sbatch and slurm/eval.sbatch without SLURM: the script runs under bash with
fake `srun` / `scontrol` on PATH, and the test signals its batch shell at known moments. ~5 s.

On the dev cluster, with real requeues: tests/test_slurm_templates.py, tests/test_faults_preemption.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# srun: says it started, then blocks until the test lets it go (a file), so every signal lands while it runs
FAKE_SRUN = '#!/bin/bash\ntouch "$FAKE_DIR/srun-started"\nuntil [[ -e $FAKE_DIR/go ]]; do sleep 0.02; done\n'
FAKE_SCONTROL = ('#!/bin/bash\nif [[ $1 == requeue ]]; then echo "requeue $2" >>"$FAKE_LOG"; '
                 'else echo node0; fi\n')


def _created(marker: Path, proc: subprocess.Popen, limit_s: float = 300) -> bool:
    """True once the template has created `marker`. Nothing ever removes it (it stays true), and the template
    blocks right after creating it until the test lets it go, so waiting on it cannot race."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end and proc.poll() is None:
        if marker.exists():
            return True
        time.sleep(0.02)
    return marker.exists()


def _run(tmp_path: Path, template: str, signal_when: str, signals: int) -> tuple[int, str, list[str]]:
    """Runs the template; once `signal_when` ("setup-started" or "srun-started") exists, sends its batch
    shell `signals` USR2s, then lets SETUP and srun finish."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "requeues.log"
    # SETUP (module load, conda activate...) in progress: says it started, then waits to be let go
    setup = (f'touch {tmp_path}/setup-started; until [[ -e {tmp_path}/go ]]; do sleep 0.02; done'
             if signal_when == "setup-started" else "true")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_DIR": str(tmp_path), "SETUP": setup, "SLURM_JOB_ID": "5", "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "node0", "SLURM_SUBMIT_DIR": str(REPO), "GPUS_PER_NODE": "1",
           "OMP_THREADS": "1"}  # pinned: no `python -m fashiontune.launch.threads` (a torch import) here
    env.pop("SLURM_RESTART_COUNT", None)
    p = subprocess.Popen(["bash", f"slurm/{template}.sbatch"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        assert _created(tmp_path / signal_when, p), f"{signal_when} never happened"
        for _ in range(signals):
            p.send_signal(signal.SIGUSR2)
            time.sleep(0.1)
    finally:
        (tmp_path / "go").touch()
        out, _ = p.communicate(timeout=60)
    return p.returncode, out, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("template", ["train", "eval"])
def test_usr2_during_setup_requeues_instead_of_killing_the_batch_shell(tmp_path, template):
    rc, out, requeues = _run(tmp_path, template, "setup-started", signals=1)
    assert rc == 0, out  # before the fix: the trap came after SETUP, bash died of USR2 (rc -12) -> FAILED
    assert requeues == ["requeue 5"], out


@pytest.mark.parametrize("template", ["train", "eval"])
def test_a_second_usr2_does_not_requeue_twice(tmp_path, template):
    rc, out, requeues = _run(tmp_path, template, "srun-started", signals=2)
    assert rc == 0, out
    assert requeues == ["requeue 5"], out
