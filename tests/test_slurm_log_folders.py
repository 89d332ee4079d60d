"""The sbatch script `fashiontune submit` generates starts although nothing has created the job's log folder
yet: submitit creates `<log_dir>/<job id>/` only after sbatch has returned, and SLURM fails a job whose log
folder is missing (JobLaunchFailure, no log). Here nothing creates it at all. ~5 s on the dev cluster.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fashiontune.launch import testing as T
from fashiontune.launch.cluster import load_cluster
from fashiontune.launch.executor import make_executor, sbatch_script

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm


def test_generated_script_creates_the_job_log_folder_itself(dev_cluster, tmp_path):
    logs = tmp_path / "logs"
    cluster = load_cluster(REPO / "configs/cluster/slurm-cpu.yaml", [f"log_dir={logs}"])  # 2 tasks
    script = sbatch_script(cluster, "logs-check")
    # the same batch shell, setup and srun line; each task only says it ran (no pickled job to load)
    task_cmd = make_executor(cluster, "logs-check", dry_run=True)._submitit_command_str
    assert task_cmd in script
    path = tmp_path / "job.sh"
    path.write_text(script.replace(task_cmd, "bash -c 'echo task $SLURM_PROCID ran'"))
    logs.mkdir()  # what submitit creates before sbatch (it writes the pickle and this script there)
    job = subprocess.run(["sbatch", "--parsable", str(path)], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.strip()
    final = T.wait_final_state(job, 120)
    assert final == "COMPLETED", f"{final} ({T.job_info(job).get('Reason')}); logs: {sorted(logs.rglob('*'))}"
    for task in (0, 1):
        assert (logs / job / f"{job}_{task}_log.out").read_text().strip() == f"task {task} ran"
    assert (logs / f"logs-check-{job}.out").exists()  # the batch shell's own log, beside the job folders
