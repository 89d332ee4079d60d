"""Start the one-node dev SLURM cluster (slurm/dev-cluster/start.sh) from Python: what the `slurm` tests call;
`start(nodes=N)`: the simulated N-node cluster (`start.sh --nodes N`) that the `multinode` tests call.

start.sh exits 3 when this machine cannot host the cluster (not root, no apt): callers skip with its reason.
Any other failure is a bug to see, not to skip.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

START = Path(__file__).resolve().parents[3] / "slurm" / "dev-cluster" / "start.sh"
CANNOT_HOST = 3


@dataclass(frozen=True)
class DevCluster:
    ok: bool
    cannot_host: bool  # True: not root / no apt; skip, don't fail
    seconds: float
    output: str


MULTI_CONF = "/etc/slurm-multi/slurm.conf"  # the simulated multi-node cluster's (slurm/dev-cluster/multinode.sh)


def start(timeout_s: float = 900, nodes: int = 0) -> DevCluster:
    """The one-node cluster, or with `nodes` the simulated multi-node one (talk to it with SLURM_CONF=MULTI_CONF)."""
    if not START.is_file():
        return DevCluster(False, True, 0.0, f"{START} not found (fashiontune installed without its repository)")
    t0 = time.monotonic()
    argv = ["bash", str(START), *(["--nodes", str(nodes)] if nodes else [])]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    out = (p.stdout + p.stderr).strip()
    return DevCluster(p.returncode == 0, p.returncode == CANNOT_HOST, time.monotonic() - t0, out)
