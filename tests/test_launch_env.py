"""Rank discovery from SLURM, torchrun / accelerate and submitit-local variables (pure, < 1 s)."""

import pytest

from fashiontune.launch import env as dist_env


def _hosts(nodelist):
    assert nodelist == "gpu-a[07-10]"
    return ["gpu-a07", "gpu-a08", "gpu-a09", "gpu-a10"]


def test_slurm_rank_discovery_multi_node():
    # task 13 of a 4 nodes x 8 GPUs job: node 1, local rank 5
    environ = {
        "SLURM_JOB_ID": "4242", "SLURM_PROCID": "13", "SLURM_LOCALID": "5", "SLURM_NTASKS": "32",
        "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_NODELIST": "gpu-a[07-10]",
        "SLURM_TASKS_PER_NODE": "8(x4)",
    }
    d = dist_env.discover(environ, hostnames=_hosts)
    assert (d.rank, d.local_rank, d.world_size, d.local_world_size) == (13, 5, 32, 8)
    assert (d.node_rank, d.num_nodes, d.master_addr, d.source) == (1, 4, "gpu-a07", "slurm")
    assert d.master_port == dist_env.job_port("4242") == 20000 + 4242
    # every task of the job derives the same rendezvous
    other = dist_env.discover({**environ, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"},
                              hostnames=_hosts)
    assert (other.master_addr, other.master_port) == (d.master_addr, d.master_port)

    out: dict = {}
    dist_env.export(d, out)
    assert out == {"RANK": "13", "LOCAL_RANK": "5", "WORLD_SIZE": "32", "LOCAL_WORLD_SIZE": "8", "NODE_RANK": "1",
                   "GROUP_RANK": "1", "MASTER_ADDR": "gpu-a07", "MASTER_PORT": str(20000 + 4242)}


def test_slurm_uneven_tasks_per_node_and_explicit_master_port():
    environ = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "11",
               "SLURM_NODEID": "2", "SLURM_NNODES": "3", "SLURM_JOB_NODELIST": "n[1-3]",
               "SLURM_TASKS_PER_NODE": "4(x2),3", "MASTER_PORT": "29999"}
    d = dist_env.discover(environ, hostnames=lambda s: ["n1", "n2", "n3"])
    assert (d.local_world_size, d.num_nodes, d.master_addr, d.master_port) == (3, 3, "n1", 29999)


def test_nodelist_parsing_without_scontrol(monkeypatch):
    monkeypatch.setattr(dist_env.shutil, "which", lambda name: None)
    assert dist_env.expand_nodelist("gpu[01-03,07],cpu7") == ["gpu01", "gpu02", "gpu03", "gpu07", "cpu7"]


def test_torchrun_variables_win_inside_a_slurm_allocation():
    # `accelerate launch` on node 1 of 2 (one srun task per node), process 3 of 4 on that node
    environ = {"SLURM_JOB_ID": "5", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_NODEID": "1",
               "RANK": "7", "LOCAL_RANK": "3", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
               "MASTER_ADDR": "node-a", "MASTER_PORT": "29500"}
    d = dist_env.discover(environ, hostnames=lambda s: pytest.fail("torchrun needs no node list"))
    assert (d.rank, d.local_rank, d.world_size, d.local_world_size, d.node_rank, d.num_nodes) == (7, 3, 8, 4, 1, 2)
    assert (d.master_addr, d.master_port, d.source) == ("node-a", 29500, "torchrun")


def test_submitit_local_and_single_process():
    d = dist_env.discover({"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
                           "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_ID": "31337"})
    assert (d.rank, d.world_size, d.master_addr, d.source) == (1, 2, "127.0.0.1", "submitit-local")
    assert d.master_port == dist_env.job_port("31337")
    s = dist_env.discover({})
    assert (s.rank, s.world_size, s.source, s.is_main) == (0, 1, "single", True)


def test_broken_rank_variable_is_a_clear_error():
    with pytest.raises(RuntimeError, match="SLURM_PROCID='x'"):
        dist_env.discover({"SLURM_JOB_ID": "1", "SLURM_PROCID": "x", "SLURM_NTASKS": "2"})


def test_unresolvable_master_is_a_clear_error_naming_the_host_and_the_fix():
    env = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_NODEID": "1",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "no-such-node[01-02].invalid"}
    d = dist_env.discover(env, hostnames=lambda s: ["no-such-node01.invalid", "no-such-node02.invalid"])
    with pytest.raises(RuntimeError, match=r"MASTER_ADDR='no-such-node01.invalid'.*does not resolve.*/etc/hosts"):
        dist_env.check_master(d, env)
    ok = dist_env.discover({**env, "MASTER_ADDR": "127.0.0.1"})
    assert dist_env.check_master(ok, env) is ok  # resolvable: passes through
    assert dist_env.check_master(dist_env.DistEnv(master_addr="no-such-node.invalid")).world_size == 1  # 1 rank
