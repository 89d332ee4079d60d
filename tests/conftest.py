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


MULTINODE_NODES = 3  # jobs take 2 of them: a requeue or a dead node's job can land on another node order


@pytest.fixture(scope="session")
def multinode_cluster():
    """The simulated multi-node SLURM cluster (`slurm/dev-cluster/start.sh --nodes 3`: network namespaces on this
    machine, SLURM_CONF=/etc/slurm-multi/slurm.conf). Skips with the reason where it cannot start (not root);
    fails instead under CI=true as root, where `make test` must have started it; any other failure fails."""
    from fashiontune.launch import devcluster

    c = devcluster.start(nodes=MULTINODE_NODES)
    if c.cannot_host:
        why = f"multi-node dev SLURM cluster cannot start on this machine: {c.output}"
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(why + "; under CI as root `make test` starts it, so this is a CI setup bug")
        pytest.skip(why)
    if not c.ok:
        pytest.fail(f"slurm/dev-cluster/start.sh --nodes {MULTINODE_NODES} failed:\n{c.output}")
    print(f"multi-node cluster ready in {c.seconds:.1f} s: {c.output}")
    return c


@pytest.fixture(scope="session")
def fmnist_dir():
    """The real Fashion-MNIST (Debian's dataset-fashion-mnist; `make test` installs it as root). Skips with the
    reason where it is not installed; fails instead under CI=true as root, where `make test` must have put it."""
    from fashiontune.sources.fashion_mnist import INSTALLED, installed_dir

    d = installed_dir()
    if d is None:
        why = (f"Fashion-MNIST is not installed ({INSTALLED} or $FASHIONTUNE_FMNIST_DIR): run "
               "`sudo apt-get install dataset-fashion-mnist` (or `make test` as root)")
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(why + "; under CI as root `make test` installs it, so this is a CI setup bug")
        pytest.skip(why)
    return d
