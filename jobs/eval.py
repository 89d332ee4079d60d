"""Evaluation job entry point for `accelerate launch jobs/eval.py --config ... key=value` and SLURM (srun):
the same as `fashiontune eval`, which it calls."""

import sys

from fashiontune.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
