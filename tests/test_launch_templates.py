"""The sbatch templates (slurm/*.sbatch) as files: what SLURM needs before they run, and what their srun lines
pass. Pure (no SLURM): ~1 s. On the dev cluster: tests/test_slurm_templates.py, tests/test_slurm_fresh_clone.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from fashiontune.launch import threads
from fashiontune.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((REPO / "slurm").glob("*.sbatch"))
SRUN_TEMPLATES = ["train", "eval"]  # the ones that start a job step (the shard ones exec python directly)


def _directives(path: Path) -> dict[str, str]:
    """#SBATCH flags up to the first command line, as SLURM reads them ({name: value or ""})."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines()[1:]:
        if line and not line.startswith("#"):
            break
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if m:
            out[m.group(1)] = m.group(2) or ""
    return out


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def test_every_template_logs_to_a_folder_a_fresh_clone_has():
    assert [p.stem for p in TEMPLATES] == ["eval", "shards-array", "shards-merge", "train"]
    for t in TEMPLATES:
        output = _directives(t)["output"]
        assert Path(output).parent == Path("runs/_slurm"), t.name
    # SLURM creates no folder for --output: the folder must come with the clone, its logs must not
    assert _git("ls-files", "--error-unmatch", "runs/_slurm/.gitkeep").returncode == 0, "runs/_slurm/.gitkeep untracked"
    assert _git("check-ignore", "-q", "runs/_slurm/.gitkeep").returncode == 1
    assert _git("check-ignore", "-q", "runs/_slurm/fashiontune-train-12.out").returncode == 0
    assert _git("check-ignore", "-q", "runs/my-run/results.json").returncode == 0


@pytest.mark.parametrize("template", [p.name for p in TEMPLATES])
def test_templates_run_where_slurm_starts_them_and_say_so_elsewhere(template):
    text = (REPO / "slurm" / template).read_text()
    # SLURM starts the script in the directory sbatch ran in, or in `sbatch -D DIR`; SLURM_SUBMIT_DIR is where
    # sbatch ran even with -D, so a cd there would undo -D
    assert "SLURM_SUBMIT_DIR" not in text
    assert "-f jobs/" in text, "no check that it runs in the repository root"


@pytest.mark.parametrize("template", SRUN_TEMPLATES)
def test_srun_gets_the_cpus_and_every_gpu_and_ranks_get_threads(template):
    text = (REPO / "slurm" / f"{template}.sbatch").read_text()
    flags = _directives(REPO / "slurm" / f"{template}.sbatch")
    assert flags["mem"] == "0" and "exclusive" in flags and "constraint" not in flags  # a whole node, any site
    srun = [line for line in text.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1
    assert '--cpus-per-task="${SLURM_CPUS_PER_TASK:-1}"' in srun[0]  # srun 22.05/23.02 does not inherit it
    assert "--gpu-bind=none" in srun[0]  # the ranks pick cuda:LOCAL_RANK among all GPUs of the node
    assert "export OMP_NUM_THREADS=$OMP_THREADS" in text
    assert re.search(r'python -m fashiontune\.launch\.threads "\$JOB" "\$CPUS_PER_RANK" --config "\$CONFIG"', text)
    # one process in all: accelerate refuses --multi_gpu, its plain launcher runs it (CPU partitions too)
    assert "(( NUM_PROCESSES > 1 )) || MULTI_GPU=\"\"" in text and "launch $MULTI_GPU " in text


@pytest.mark.parametrize("cpus, workers, want", [(8, 7, 1), (8, 2, 6), (8, 0, 8), (4, 12, 1), (1, 0, 1)])
def test_rank_threads_are_the_cpus_the_loader_workers_leave(cpus, workers, want):
    assert threads.rank_threads(cpus, workers) == want


def test_threads_cli_reads_the_workers_from_config_and_overrides_in_any_order(capsys):
    cfg = REPO / "configs/tiny-kagl-softmax.yaml"  # data.workers: 1
    assert threads.main(["train", "8", "--config", str(cfg)]) == 0
    assert threads.main(["train", "8", "data.workers=3", "--config", str(cfg), "name=x"]) == 0
    assert threads.main(["eval", "8", "data.num_workers=2", "--config", str(REPO / "configs/eval/tiny.yaml")]) == 0
    assert capsys.readouterr().out.split() == ["7", "5", "6"]


def test_apply_pins_or_derives_omp_threads_of_a_task():
    cfg = TrainConfig()
    cfg.data.workers = 2
    env = {"SLURM_CPUS_PER_TASK": "1"}  # a task bound to one CPU: its math still gets a thread
    assert threads.apply(cfg, environ=env) == 1 and env["OMP_NUM_THREADS"] == "1"
    env = {"SLURM_CPUS_PER_TASK": "1"}
    assert threads.apply(cfg, pinned=3, environ=env) == 3 and env["OMP_NUM_THREADS"] == "3"


def test_auto_workers_are_resolved_by_the_loaders_rule(monkeypatch):
    """data.workers=auto (the loader's own sizing, fashiontune.data.workers) resolved for the rank's CPUs."""
    import sys
    import types

    seen = {}

    def resolve_workers(value, environ):
        seen.update(value=value, cpus=environ["SLURM_CPUS_PER_TASK"])
        return 5

    monkeypatch.setitem(sys.modules, "fashiontune.data.workers", types.SimpleNamespace(resolve_workers=resolve_workers))
    cfg = types.SimpleNamespace(data=types.SimpleNamespace(workers="auto"))
    assert threads.loader_workers(cfg, 8) == 5 and seen == {"value": "auto", "cpus": "8"}
    assert threads.loader_workers(types.SimpleNamespace(), 8) == 0  # a job without a loader
