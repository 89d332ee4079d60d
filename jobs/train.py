"""Training job entry point that SLURM, submitit and `accelerate launch` run:

    accelerate launch --multi_gpu --num_processes 2 jobs/train.py --config configs/tiny-kagl-softmax.yaml
    srun python jobs/train.py --config configs/kagl-subcategory-softmax.yaml name=kagl-run1

A requeued job with the same run directory resumes from its newest complete checkpoint.
"""

import argparse
import sys

from fashiontune.train import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="jobs/train.py", description="fashiontune training job")
    cli.add_arguments(parser)
    sys.exit(cli.run(parser.parse_args()))
