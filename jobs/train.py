"""Training job entry point that SLURM, submitit and `accelerate launch` run:

    accelerate launch --multi_gpu --num_processes 2 jobs/train.py --config configs/tiny-kagl-softmax.yaml
    srun python jobs/train.py --config configs/kagl-subcategory-softmax.yaml name=kagl-run1

The same as `fashiontune train`, which it calls. A requeued job with the same run directory resumes from its
newest complete checkpoint.
"""

import sys

from fashiontune.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
