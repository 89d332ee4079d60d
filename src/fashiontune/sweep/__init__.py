"""Sweeps: every point of a grid of config overrides as its own training run (a SLURM job array on a cluster,
sequential here otherwise), collected into <out>/sweep.json, sweep.md and PNG curves.

    fashiontune sweep --config EXP --grid key=v1,v2 [--grid ...] [--cluster CFG] [key=value ...]
"""

from .plan import SweepError, SweepPlan, make_plan, read_plan
from .run import SweepTask, collect, run_point

__all__ = ["SweepError", "SweepPlan", "SweepTask", "collect", "make_plan", "read_plan", "run_point"]
