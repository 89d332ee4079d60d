"""Rank discovery: who am I in this job, and where is the rendezvous?

Sources, first match wins:
1. torchrun / `accelerate launch` variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): the launcher
   already decided, even inside a SLURM allocation (one `accelerate launch` per node);
2. a SLURM step (one task per GPU via srun): SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, SLURM_NODEID, the
   master is the first host of SLURM_JOB_NODELIST;
3. submitit's local executor (SUBMITIT_LOCAL_*): one node, master 127.0.0.1;
4. nothing: a single process.

`export()` writes the torch.distributed `env://` variables that Accelerate and DeepSpeed both read
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT), so the job code
never looks at SLURM itself.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, MutableMapping, Optional

PORT_BASE, PORT_SPAN = 20000, 20000  # rendezvous port derived from the job id (same on every node)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # torchrun | slurm | submitit-local | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_env(self) -> dict[str, str]:
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "NODE_RANK": str(self.node_rank),
            "GROUP_RANK": str(self.node_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }

    def describe(self) -> str:
        d = asdict(self)
        return " ".join(f"{k}={v}" for k, v in d.items())


def discover(
    environ: Mapping[str, str] | None = None,
    hostnames: Optional[Callable[[str], list[str]]] = None,
) -> DistEnv:
    env = os.environ if environ is None else environ
    hostnames = hostnames or expand_nodelist
    if "RANK" in env and "WORLD_SIZE" in env:
        return _from_torchrun(env)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_JOB_ID" in env:
        return _from_slurm(env, hostnames)
    if "SUBMITIT_LOCAL_GLOBALID" in env:
        return _from_submitit_local(env)
    return DistEnv(master_port=int(env.get("MASTER_PORT", 29500)))


def export(dist: DistEnv, environ: MutableMapping[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    env.update(dist.as_env())
    return dist


def setup(environ: MutableMapping[str, str] | None = None) -> DistEnv:
    """discover() + check_master() + export(): call first thing in a job process."""
    return export(check_master(discover(environ), environ), environ)


def check_master(dist: DistEnv, environ: Mapping[str, str] | None = None) -> DistEnv:
    """Every rank must resolve the rendezvous host (the first node of the allocation): say so clearly here,
    instead of a rendezvous that hangs or fails later with a bare socket error."""
    if dist.world_size <= 1:
        return dist
    try:
        socket.getaddrinfo(dist.master_addr, dist.master_port, type=socket.SOCK_STREAM)
    except OSError as e:
        env = os.environ if environ is None else environ
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "-"
        raise RuntimeError(
            f"rank {dist.rank} on {socket.gethostname()}: the rendezvous host MASTER_ADDR={dist.master_addr!r} "
            f"(source: {dist.source}; SLURM_JOB_NODELIST={nodes}) does not resolve ({e}). Every node must resolve "
            "the names of the others (DNS or /etc/hosts; `getent hosts <name>` on each node), or export "
            "MASTER_ADDR=<an address all nodes reach> in the job."
        ) from e
    return dist


def _int(env: Mapping[str, str], key: str, default: Optional[int] = None) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        if default is None:
            raise RuntimeError(f"environment variable {key} is missing: cannot tell this process's rank")
        return default
    m = re.match(r"^\d+", raw)
    if not m:
        raise RuntimeError(f"environment variable {key}={raw!r} is not an integer")
    return int(m.group(0))


def _from_torchrun(env: Mapping[str, str]) -> DistEnv:
    world = _int(env, "WORLD_SIZE")
    local_world = _int(env, "LOCAL_WORLD_SIZE", world)
    rank = _int(env, "RANK")
    return DistEnv(
        rank=rank,
        local_rank=_int(env, "LOCAL_RANK", rank % max(local_world, 1)),
        world_size=world,
        local_world_size=local_world,
        node_rank=_int(env, "GROUP_RANK", _int(env, "NODE_RANK", rank // max(local_world, 1))),
        num_nodes=max(1, world // max(local_world, 1)),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", 29500),
        source="torchrun",
    )


def _from_slurm(env: Mapping[str, str], hostnames: Callable[[str], list[str]]) -> DistEnv:
    world = _int(env, "SLURM_NTASKS")
    nodes = _int(env, "SLURM_JOB_NUM_NODES", _int(env, "SLURM_NNODES", 1))
    node_rank = _int(env, "SLURM_NODEID", 0)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    master = env.get("MASTER_ADDR") or (hostnames(nodelist)[0] if nodelist else "127.0.0.1")
    return DistEnv(
        rank=_int(env, "SLURM_PROCID"),
        local_rank=_int(env, "SLURM_LOCALID", 0),
        world_size=world,
        local_world_size=_tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE"),
                                        node_rank, world // max(nodes, 1)),
        node_rank=node_rank,
        num_nodes=nodes,
        master_addr=master,
        master_port=_int(env, "MASTER_PORT", job_port(env.get("SLURM_JOB_ID", "0"))),
        source="slurm",
    )


def _from_submitit_local(env: Mapping[str, str]) -> DistEnv:
    world = _int(env, "SUBMITIT_LOCAL_NTASKS", 1)
    return DistEnv(
        rank=_int(env, "SUBMITIT_LOCAL_GLOBALID"),
        local_rank=_int(env, "SUBMITIT_LOCAL_LOCALID", 0),
        world_size=world,
        local_world_size=world,
        master_addr="127.0.0.1",
        master_port=_int(env, "MASTER_PORT", job_port(env.get("SUBMITIT_LOCAL_JOB_ID", "0"))),
        source="submitit-local",
    )


def job_port(job_id: str) -> int:
    """A port every task of one job computes alike; different jobs sharing a node rarely collide."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def _tasks_on_node(spec: Optional[str], node: int, fallback: int) -> int:
    """SLURM_TASKS_PER_NODE '4(x2),3' -> tasks on node `node` (4 for nodes 0-1, 3 for node 2)."""
    if not spec:
        return max(1, fallback)
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            return max(1, fallback)
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node] if node < len(counts) else max(1, fallback)


def expand_nodelist(nodelist: str) -> list[str]:
    """'gpu[01-03],cpu7' -> ['gpu01', 'gpu02', 'gpu03', 'cpu7'], via `scontrol show hostnames` when present."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
            ).stdout.split()
            if out:
                return out
        except (subprocess.SubprocessError, OSError):
            pass
    from submitit.slurm.slurm import _parse_node_list  # the same grammar, in pure Python

    return _parse_node_list(nodelist)
