"""data.workers=auto: sized from the CPUs the process may use (its affinity set, i.e. SLURM's binding)."""

from __future__ import annotations

import logging

import pytest

from fashiontune.config import ConfigError, load_config
from fashiontune.data import DataConfig
from fashiontune.data import workers as W


@pytest.fixture
def cpus(monkeypatch):
    """Pretend this process may run on n of a 128-CPU machine's cores."""
    def set_(n: int) -> None:
        monkeypatch.setattr(W.os, "sched_getaffinity", lambda pid: set(range(n)))
        monkeypatch.setattr(W.os, "cpu_count", lambda: 128)
    return set_


@pytest.mark.parametrize("bound,expected", [(1, 1), (2, 1), (4, 3), (9, 8), (13, 12), (64, 12)])
def test_auto_is_the_bound_cpus_minus_one_capped(cpus, bound, expected):
    cpus(bound)
    assert W.resolve_workers("auto", environ={}) == W.resolve_workers(-1, environ={}) == expected


def test_slurm_cpus_per_task_bounds_a_looser_binding(cpus, caplog):
    cpus(32)
    assert W.resolve_workers("auto", environ={"SLURM_CPUS_PER_TASK": "6"}) == 5
    cpus(1)  # srun of SLURM 22.05/23.02 without --cpus-per-task: one core whatever the allocation says
    with caplog.at_level(logging.WARNING, logger="fashiontune.data.workers"):
        assert W.resolve_workers("auto", environ={"SLURM_CPUS_PER_TASK": "6"}) == 1
    assert "pass --cpus-per-task to srun" in caplog.text


def test_unbound_ranks_share_the_machine(cpus):
    cpus(128)  # torchrun / accelerate on an 8-GPU box without binding: each rank sees every CPU
    assert W.resolve_workers("auto", environ={"LOCAL_WORLD_SIZE": "8"}) == 12  # 16 each, capped
    assert W.resolve_workers("auto", environ={"LOCAL_WORLD_SIZE": "32"}) == 3  # 4 each


def test_ranks_a_launcher_started_inside_one_slurm_task_split_its_cpus(cpus):
    # slurm/train.sbatch: one srun task per node (--cpus-per-task=64) runs `accelerate launch`, whose 8 ranks
    # (TORCHELASTIC_RUN_ID set) share those 64 CPUs: 8 each, 7 workers, not 12 x 8 = 96 processes on 64 cores
    cpus(64)
    env = {"SLURM_CPUS_PER_TASK": "64", "LOCAL_WORLD_SIZE": "8", "TORCHELASTIC_RUN_ID": "none"}
    assert W.usable_cpus(env) == 8 and W.resolve_workers("auto", environ=env) == 7
    # `fashiontune submit`: one SLURM task per rank, bound to its own 8 CPUs: nothing shared
    cpus(8)
    assert W.usable_cpus({"SLURM_CPUS_PER_TASK": "8", "LOCAL_WORLD_SIZE": "8"}) == 8


def test_explicit_counts_keep_working(cpus):
    cpus(64)
    assert W.resolve_workers(0, environ={}) == 0 and W.resolve_workers(2, environ={}) == 2
    assert load_config(DataConfig, None, ["workers=3"]).workers == 3
    assert load_config(DataConfig, None, ["workers=auto", "pin_memory=false"]).pin_memory is False


@pytest.mark.parametrize("override,key", [("workers=many", "data.workers"), ("workers=-2", "data.workers"),
                                          ("pin_memory=sometimes", "data.pin_memory")])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"{key}=.* is invalid: set"):
        load_config(DataConfig, None, [override]).validate()


def test_pin_memory_auto_follows_cuda(monkeypatch):
    monkeypatch.setattr(W.torch.cuda, "is_available", lambda: True)
    assert W.resolve_pin_memory("auto") is True and W.resolve_pin_memory(False) is False
    monkeypatch.setattr(W.torch.cuda, "is_available", lambda: False)
    assert W.resolve_pin_memory("auto") is False
