"""Loader resources sized from the allocation: worker processes per rank and memory pinning.

`workers: auto` = the CPUs this process may run on, minus one for the rank's main thread (which launches the
GPU work), capped. The CPU set is `os.sched_getaffinity`, which is what SLURM's task binding
(`--cpus-per-task`) and cgroups actually give the process; `SLURM_CPUS_PER_TASK` bounds it where the binding is
looser, and ranks that share an unbound machine (`LOCAL_WORLD_SIZE` > 1 from torchrun / accelerate) split it.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import torch

from fashiontune.config import ConfigError

log = logging.getLogger(__name__)

# Beyond ~12 decode workers per GPU the open_clip train transform (~550 samples/s per core at 256 px) outruns
# even a ViT-B/32 on an H100; more processes only cost memory and start-up time.
AUTO_WORKERS_CAP = 12


def usable_cpus(environ: Mapping[str, str] | None = None) -> int:
    """CPUs this rank may use: its affinity set, bounded by SLURM_CPUS_PER_TASK, divided among the local ranks that
    share it. Ranks share one CPU set when a launcher (torchrun / `accelerate launch`, which set
    TORCHELASTIC_RUN_ID) started them inside one SLURM task (the sbatch templates: one launcher per node), or when
    nothing binds them at all (a plain machine); one SLURM task per rank (`fashiontune submit`) shares nothing."""
    env = os.environ if environ is None else environ
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS: no affinity API
        cpus = os.cpu_count() or 1
    whole_machine = cpus >= (os.cpu_count() or cpus)
    per_task = str(env.get("SLURM_CPUS_PER_TASK", ""))
    if per_task.isdigit() and int(per_task) > 0:
        if cpus < int(per_task):  # srun of SLURM 22.05/23.02 without --cpus-per-task binds a task to one core
            log.warning("this task may run on %d CPU(s) but SLURM_CPUS_PER_TASK=%s: pass --cpus-per-task to srun "
                        "(or set SRUN_CPUS_PER_TASK) so its loader workers get their cores", cpus, per_task)
        cpus = min(cpus, int(per_task))
    local = str(env.get("LOCAL_WORLD_SIZE", "1"))
    shared = "TORCHELASTIC_RUN_ID" in env or (whole_machine and not per_task)
    if local.isdigit() and int(local) > 1 and shared:
        cpus //= int(local)
    return max(1, cpus)


def resolve_workers(value: int | str, key: str = "data.workers", environ: Mapping[str, str] | None = None,
                    cap: int = AUTO_WORKERS_CAP) -> int:
    """An explicit count (>= 0) as is; "auto" or -1 = usable_cpus() - 1, at least 1, at most `cap`."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if value == "auto" or value == -1:
        return max(1, min(cap, usable_cpus(environ) - 1))
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"{key}={value!r} is invalid: set an integer >= 0 (0 = read in the main process) or auto (-1).")


def plan_workers(value: int | str) -> int:
    """The worker slots an epoch plan is cut into (data/plan.py): the DataLoader processes, or one slot read
    in-process for 0. The loader and every check that replays its plan (train/batch_shapes.py) use this."""
    return max(resolve_workers(value), 1)


def resolve_pin_memory(value: bool | str, key: str = "data.pin_memory") -> bool:
    """"auto" = pin when CUDA is available (page-locked batches make the host-to-device copy asynchronous)."""
    if value == "auto":
        return torch.cuda.is_available()
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key}={value!r} is invalid: set true, false or auto (= true when CUDA is available).")
