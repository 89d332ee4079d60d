"""Suite-wide settings. Area-specific fixtures live beside their tests."""

import os

import pytest

# 2-core CI machine: one intra-op thread per process keeps parallel/distributed tests from thrashing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def dev_cluster():
    """The one-node dev SLURM cluster (slurm/dev-cluster/start.sh, idempotent: ~0.1 s when up). Skips with
    the reason only where it cannot start at all (not root, no apt); any other failure fails the test."""
    from fashiontune.launch import devcluster

    c = devcluster.start()
    if c.cannot_host:
        pytest.skip(f"dev SLURM cluster cannot start on this machine: {c.output}")
    if not c.ok:
        pytest.fail(f"slurm/dev-cluster/start.sh failed:\n{c.output}")
    print(f"dev cluster ready in {c.seconds:.1f} s: {c.output}")
    return c
