"""OMP_NUM_THREADS of one rank: the CPUs it may use minus its DataLoader workers, at least 1.

Why this number: a rank's main process does its own CPU math (batch collation, the host side of each step,
gloo collectives, and every op of a CPU-only rank) while each DataLoader worker is a separate process that
PyTorch runs single-threaded. Giving the main process the CPUs its workers leave free keeps the allocation
busy without oversubscribing it. `1` for everything (torchrun's and accelerate's default) idles the cores a
CPU rank could use; OpenMP's own default (every CPU the process sees, per rank and per library) thrashes.

Used by both launch paths:
- `fashiontune submit` (submitit): `JobRunner` calls `apply()` in each task, where `task_cpus()` is what srun
  bound the task to (`--cpus-per-task`, passed to srun explicitly);
- the sbatch templates: one launcher task per node starts GPUS_PER_NODE ranks that share its CPUs, so the
  template asks `python -m fashiontune.launch.threads JOB CPUS_PER_RANK --config C k=v ...` and exports it.
A cluster config's `omp_threads` (or the template's OMP_THREADS) pins the number instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping, MutableMapping, Optional


def rank_threads(cpus: int, workers: int) -> int:
    return max(1, int(cpus) - int(workers))


def loader_workers(cfg: Any, cpus: int) -> int:
    """DataLoader worker processes per rank that a job config starts on `cpus` CPUs (0 for jobs without one)."""
    data = getattr(cfg, "data", None)
    value = getattr(data, "workers", getattr(data, "num_workers", 0))  # train: data.workers, eval: data.num_workers
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    # "auto": sized from the allocation by the loader's own rule (fashiontune.data.workers), for `cpus` CPUs
    from fashiontune.data.workers import resolve_workers

    return resolve_workers(value, environ={"SLURM_CPUS_PER_TASK": str(cpus)})


def task_cpus(environ: Optional[Mapping[str, str]] = None) -> int:
    """CPUs of this rank: the loader's rule (fashiontune.data.workers.usable_cpus), so threads and workers agree."""
    from fashiontune.data.workers import usable_cpus

    return usable_cpus(environ)


def apply(cfg: Any, pinned: int = 0, environ: Optional[MutableMapping[str, str]] = None) -> int:
    """Set OMP_NUM_THREADS for this task (and its children) and torch's intra-op pool if torch is loaded."""
    env = os.environ if environ is None else environ
    n = pinned if pinned > 0 else rank_threads(task_cpus(env), loader_workers(cfg, task_cpus(env)))
    env["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and environ is None:
        torch.set_num_threads(n)
    return n


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m fashiontune.launch.threads JOB CPUS_PER_RANK [--config C] [key=value ...]` prints the number."""
    from fashiontune.cli import parse_any_order
    from fashiontune.launch.submit import load_job_config

    parser = argparse.ArgumentParser(prog="python -m fashiontune.launch.threads", description=main.__doc__)
    parser.add_argument("job", help="train | eval (the job's config gives its loader workers)")
    parser.add_argument("cpus", type=int, help="CPUs of one rank")
    parser.add_argument("--config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parse_any_order(parser, sys.argv[1:] if argv is None else argv)
    cfg = load_job_config(args.job, args.config, args.overrides)
    print(rank_threads(args.cpus, loader_workers(cfg, args.cpus)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
