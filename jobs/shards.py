"""Shard-building job entry point that SLURM array tasks (slurm/shards-array.sbatch) and people run:

    python jobs/shards.py build --source kagl --input data/kagl --out shards/kagl \
        --num-jobs $SLURM_ARRAY_TASK_COUNT --job-index $SLURM_ARRAY_TASK_ID
    python jobs/shards.py merge shards/kagl          # once every array task succeeded

The same as `fashiontune shards ...`, which it calls. `fashiontune submit shards` does both steps for you.
"""

import sys

from fashiontune.cli import main

if __name__ == "__main__":
    sys.exit(main(["shards", *sys.argv[1:]]))
