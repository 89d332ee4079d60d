"""Across nodes on the simulated multi-node SLURM cluster (`start.sh --nodes 3`: node01..node03 are network
namespaces with their own address and hostname on one machine; SLURM_CONF=/etc/slurm-multi/slurm.conf).

Every job takes 2 nodes x 2 tasks (configs/cluster/slurm-multinode.yaml); the third node lets a requeued or
node-failed job come back on another node order. What runs across "hosts" here is real: SLURM's placement,
ranks from SLURM_PROCID/SLURM_NODEID, the rendezvous at the first host of SLURM_JOB_NODELIST resolved by name,
gloo over the bridge between namespaces, checkpoints written by ranks on two nodes. What it cannot show:
separate filesystems or memory, GPUs, NCCL, real network bandwidth.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from fashiontune.cli import main
from fashiontune.launch.devcluster import MULTI_CONF

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "configs/cluster/slurm-multinode.yaml"
pytestmark = pytest.mark.multinode


@pytest.fixture(scope="module")
def multi(multinode_cluster):
    """SLURM_CONF names the multi-node cluster for this module only (the one-node tests use the default)."""
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = MULTI_CONF
    yield multinode_cluster
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def _srun(*argv: str, timeout: float = 60) -> str:
    p = subprocess.run(["srun", *argv], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_nodes_are_separate_hosts_that_reach_each_other_by_name(multi):
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True).stdout.split("\n")
    assert sorted(x for x in states if x) == ["node01 idle", "node02 idle", "node03 idle"]
    code = ("import os, socket; s = socket.create_connection(('node01', 6918), timeout=5); "
            "print(os.environ['SLURM_PROCID'], socket.gethostname(), socket.gethostbyname(socket.gethostname()), "
            "s.getsockname()[0])")
    lines = sorted(_srun("-N2", "-n2", "--ntasks-per-node=1", "python3", "-c", code).split("\n"))[1:]
    # each task on its own host and address; from node02, node01's slurmd answered at its own address
    assert lines == ["0 node01 10.77.0.11 10.77.0.11", "1 node02 10.77.0.12 10.77.0.12"]


def test_smoke_job_two_nodes_by_two_tasks_through_the_cli(multi, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["submit", "smoke", "--cluster", str(CLUSTER), f"cluster.log_dir={tmp_path}/logs",
               f"run_dir={run}", "steps=10", "step_s=0.0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    res = json.loads((run / "results.json").read_text())
    assert res["world_size"] == 4 and res["acc"] == res["expected_acc"]
    start = json.loads((run / "starts.jsonl").read_text().splitlines()[0])
    job_id = start["job_id"]
    assert int(job_id) >= 700000  # the multi-node cluster's ids, never the one-node cluster's
    assert start["master"] == f"node01:{20000 + int(job_id) % 20000}"  # first host of SLURM_JOB_NODELIST
    hosts = {}
    for k in range(4):
        log = (tmp_path / f"logs/{job_id}/{job_id}_{k}_log.out").read_text()
        m = re.search(r"rank=(\d).* node_rank=(\d).* host=(\S+)", log)
        hosts[int(m.group(1))] = (int(m.group(2)), m.group(3))
    assert hosts == {0: (0, "node01"), 1: (0, "node01"), 2: (1, "node02"), 3: (1, "node02")}
