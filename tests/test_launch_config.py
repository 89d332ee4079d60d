"""Cluster configs, the sbatch scripts they produce, bad configs, requeue bookkeeping (pure; ~3 s)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from fashiontune.cli import main
from fashiontune.config import ConfigError
from fashiontune.launch.cluster import ClusterConfig, ExecutorKind, load_cluster
from fashiontune.launch.executor import SlurmStateWatcher, sbatch_script
from fashiontune.launch.runner import JobRunner, RequeueLimitReached, requeue_count
from fashiontune.launch.smoke import SmokeConfig

REPO = Path(__file__).resolve().parents[1]
LOGS = "/shared/logs"


def _sbatch_flags(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def _section(script: str, name: str) -> list[str]:
    lines = script.splitlines()
    i = lines.index(f"# {name}")
    out = []
    for line in lines[i + 1:]:
        if not line.strip():
            break
        out.append(line)
    return out


def test_a100_1node_sbatch_snapshot():
    cluster = load_cluster(REPO / "configs/cluster/a100-1node.yaml", [f"log_dir={LOGS}"])
    script = sbatch_script(cluster, "fashiontune-train")
    # as shipped, for a typical site: no node feature (constraint), no --wckey (submitit's default is
    # --wckey=submitit), the whole node with all its memory (--exclusive --mem=0), 8 x 8 CPUs
    assert _sbatch_flags(script) == [
        "#SBATCH --cpus-per-task=8",
        f"#SBATCH --error={LOGS}/%x-%j.out",  # the batch shell's log: in log_dir, which exists before sbatch
        "#SBATCH --exclusive",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --job-name=fashiontune-train",
        "#SBATCH --mem=0",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={LOGS}/%x-%j.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@180",
        "#SBATCH --time=1440",
    ]
    assert _section(script, "setup") == [
        "trap '' USR2  # the tasks handle it (fashiontune.launch.task)",  # the batch shell never dies of USR2
        f'mkdir -p {LOGS}/"${{SLURM_JOB_ID}}"  # srun opens the task logs there',  # before srun, not after sbatch
        "source .venv/bin/activate", "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1"]
    cmd = _section(script, "command")
    assert cmd[0] == "export SUBMITIT_EXECUTOR=slurm"
    # one srun task per GPU, a crashed rank ends the step, each task gets its CPUs (srun of SLURM 22.05/23.02
    # does not inherit --cpus-per-task) and sees every GPU of its node (it picks cuda:LOCAL_RANK), the pickled
    # JobRunner runs on every task, each started with USR2 ignored and blocked (fashiontune.launch.task takes
    # it once the job is loaded)
    srun = (rf"srun --unbuffered --output {LOGS}/%j/%j_%t_log.out --error {LOGS}/%j/%j_%t_log.err "
            rf"--kill-on-bad-exit=1 --cpus-per-task=8 --gpu-bind=none ")
    assert re.match(srun, cmd[1]), cmd[1]
    argv = shlex.split(cmd[1][len(srun.replace("\\", "")):])
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3
    assert re.fullmatch(r"trap '' USR2; if env --block-signal=USR2 true 2>/dev/null; then exec env "
                        rf"--block-signal=USR2 (\S*python\S*) -u -m fashiontune.launch.task {LOGS}/%j; fi; "
                        rf"exec \1 -u -m fashiontune.launch.task {LOGS}/%j", argv[2]), argv[2]


def test_a100_4nodes_sbatch_snapshot():
    cluster = load_cluster(REPO / "configs/cluster/a100-4nodes.yaml", [f"log_dir={LOGS}", "account=proj42",
                                                                       "qos=high"])
    flags = _sbatch_flags(sbatch_script(cluster, "fashiontune-train"))
    for line in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --signal=USR2@300", "#SBATCH --requeue",
                 "#SBATCH --time=2880", "#SBATCH --account=proj42", "#SBATCH --qos=high",
                 "#SBATCH --mail-type=END,FAIL", "#SBATCH --exclusive", "#SBATCH --mem=0"]:
        assert line in flags
    assert not [f for f in flags if f.startswith(("#SBATCH --constraint", "#SBATCH --wckey"))]
    assert cluster.num_tasks == 32


def test_shard_array_and_merge_scripts_are_single_process():
    cluster = load_cluster(REPO / "configs/cluster/a100-1node.yaml", [f"log_dir={LOGS}"])
    array_script = sbatch_script(cluster, "fashiontune-shards", single_task=True, array_size=6)
    array = _sbatch_flags(array_script)
    assert "#SBATCH --array=0-5%6" in array and "#SBATCH --ntasks-per-node=1" in array
    assert not any("gpus-per-node" in f for f in array)
    assert f"#SBATCH --output={LOGS}/%x-%A_%a.out" in array  # the batch log: one per array task, in log_dir
    assert f'mkdir -p {LOGS}/"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"' in array_script  # the task folder
    merge = _sbatch_flags(sbatch_script(cluster, "m", single_task=True, dependency="afterok:77"))
    assert "#SBATCH --dependency=afterok:77" in merge


def test_every_shipped_cluster_config_loads():
    names = sorted(p.stem for p in (REPO / "configs/cluster").glob("*.yaml"))
    assert {"local", "slurm-cpu", "a100-1node", "a100-4nodes"} <= set(names)
    for name in names:
        cfg = load_cluster(name)  # a bare name resolves to configs/cluster/<name>.yaml
        assert cfg.num_tasks >= 1
    assert load_cluster("local").executor == ExecutorKind.local


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tasks_per_node=4"], r"tasks_per_node=4 but gpus_per_node=8: run one task per GPU \(set tasks_per_node: 8\)"),
        (["nodes=0"], r"a100-1node.yaml: nodes=0 is invalid: set an integer >= 1"),
        (["signal_delay_s=3600", "time_min=30"], r"signal_delay_s=3600 is not shorter than time_min=30"),
        (["mem_gb=-1"], r"mem_gb=-1.0 is invalid"),
        (["sbatch_extra=[mail-type END]"], r"sbatch_extra line 'mail-type END' is not an sbatch long flag"),
        (["executor=local", "nodes=2"], r"nodes=2 with executor=local"),
        (["partiton=gpu"], r"unknown config key 'partiton'. Did you mean 'partition'"),
        (["executor=pbs"], r"bad value for 'executor'"),
    ],
)
def test_bad_cluster_configs_name_the_file_field_and_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_cluster(REPO / "configs/cluster/a100-1node.yaml", overrides)


def test_missing_cluster_file_lists_the_ready_ones():
    with pytest.raises(ConfigError, match=r"does not exist.*a100-1node, a100-4nodes, local, slurm-cpu"):
        load_cluster("configs/cluster/nope.yaml")


def test_sbatch_extra_flags_reach_the_script():
    cfg = ClusterConfig(sbatch_extra=["--reservation=demo", "#SBATCH --mail-type=END", "--hint=nomultithread"],
                        log_dir=LOGS)
    cfg.validate()
    flags = _sbatch_flags(sbatch_script(cfg, "x"))
    assert {"#SBATCH --reservation=demo", "#SBATCH --mail-type=END", "#SBATCH --hint=nomultithread"} <= set(flags)


def test_cli_dry_run_prints_the_script_and_submits_nothing(capsys, tmp_path):
    rc = main(["submit", "smoke", "--cluster", str(REPO / "configs/cluster/a100-4nodes.yaml"), "--dry-run",
               f"run_dir={tmp_path}/run", f"cluster.log_dir={tmp_path}/logs", "cluster.partition=big"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("#!/bin/bash")
    assert "#SBATCH --partition=big" in out and "#SBATCH --nodes=4" in out
    assert not (tmp_path / "logs").exists() and not (tmp_path / "run").exists()


def test_cli_bad_cluster_override_is_a_config_error(capsys):
    rc = main(["submit", "smoke", "--cluster", "slurm-cpu", "--dry-run", "cluster.gpus_per_node=2"])
    assert rc == 0 and "#SBATCH --gpus-per-node=2" in capsys.readouterr().out  # 2 tasks, 2 GPUs: valid
    rc = main(["submit", "smoke", "--cluster", "slurm-cpu", "--dry-run", "cluster.gpus_per_node=4"])
    assert rc == 2 and "run one task per GPU" in capsys.readouterr().err


def test_scontrol_state_parsing_covers_plain_and_array_jobs():
    text = (
        "JobId=12 JobName=a JobState=RUNNING Reason=None NodeList=vm BatchHost=vm\n"
        "JobId=14 ArrayJobId=13 ArrayTaskId=1 JobName=b JobState=FAILED NodeList=vm\n"
        "JobId=13 ArrayJobId=13 ArrayTaskId=0,2-3%4 JobName=b JobState=PENDING NodeList=(null)\n"
    )
    info = SlurmStateWatcher().read_info(text)
    assert info["12"]["State"] == "RUNNING"
    assert info["13_1"]["State"] == "FAILED"
    assert {k for k, v in info.items() if v["State"] == "PENDING"} == {"13_0", "13_2", "13_3"}


def test_a_node_failure_ends_a_job_only_when_slurm_will_not_requeue_it():
    w = SlurmStateWatcher()
    w._info_dict.update(w.read_info("JobId=7 JobState=NODE_FAIL Requeue=1 Restarts=0\n"
                                    "JobId=8 JobState=NODE_FAIL Requeue=0 Restarts=0\n"))
    w._registered.update({"7", "8"})
    assert not w.is_done("7", mode="cache")  # requeued by SLURM: a rerun follows
    assert w.is_done("8", mode="cache")  # not requeue-able: over (S.wait reports the failure)


def test_requeue_is_recorded_in_the_run_dir_and_bounded_per_submission(tmp_path, monkeypatch):
    runner = JobRunner("smoke", SmokeConfig(run_dir=str(tmp_path)), str(tmp_path), max_requeues=2)
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    for n in (1, 2):
        again = runner.checkpoint()
        assert again.function.run_dir == str(tmp_path) and again.function.config == runner.config
        assert requeue_count(tmp_path, "101") == n
    with pytest.raises(RequeueLimitReached, match=r"\(101\) was requeued 2 times already \(max_requeues=2\)"):
        runner.checkpoint()
    monkeypatch.setenv("SLURM_JOB_ID", "202")  # the same run submitted again: a fresh budget, history kept
    runner.checkpoint()
    records = [json.loads(x) for x in (tmp_path / "launch/requeues.jsonl").read_text().splitlines()]
    assert [(r["job_id"], r["n"]) for r in records] == [("101", 1), ("101", 2), ("202", 1)]
    assert requeue_count(tmp_path) == 3


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to run as another user")
def test_dev_cluster_start_refuses_non_root_with_exit_3_and_the_reason():
    # exit 3 is what makes the slurm tests skip (machine cannot host the cluster) instead of fail
    p = subprocess.run(["runuser", "-u", "nobody", "--", "bash", str(REPO / "slurm/dev-cluster/start.sh")],
                       env={**os.environ, "DEV_SLURM_PARTITION": "no-such-partition"}, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 3 and "must run as root" in p.stderr


def test_submit_env_drops_the_parent_jobs_slurm_variables_but_keeps_slurm_conf(monkeypatch, tmp_path):
    from fashiontune.launch.submit import submit_env

    monkeypatch.setenv("SLURM_CONF", "/etc/site/slurm.conf")
    monkeypatch.setenv("SLURM_JOB_ID", "41")  # submitting from inside a job
    with submit_env(ClusterConfig()):
        assert os.environ["SLURM_CONF"] == "/etc/site/slurm.conf" and "SLURM_JOB_ID" not in os.environ
    assert (os.environ["SLURM_CONF"], os.environ["SLURM_JOB_ID"]) == ("/etc/site/slurm.conf", "41")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    with submit_env(ClusterConfig(slurm_conf=str(conf))):  # the cluster config names its cluster
        assert os.environ["SLURM_CONF"] == str(conf)
    assert os.environ["SLURM_CONF"] == str(conf)  # for this process's later scontrol / scancel too
    with pytest.raises(ConfigError, match=r"slurm_conf='/nope/slurm.conf' does not exist.*--nodes"):
        with submit_env(ClusterConfig(slurm_conf="/nope/slurm.conf")):
            pass
