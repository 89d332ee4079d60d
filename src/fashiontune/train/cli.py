"""`fashiontune train --config configs/<experiment>.yaml [key=value ...]`

The same command runs on one process, under `accelerate launch --num_processes N` / `torchrun`, and in the
SLURM job (jobs/train.py). Starting it again with the same run directory resumes from the newest complete
checkpoint.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="experiment YAML (configs/*.yaml); defaults apply without one")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.lr=3e-4 loop.max_steps=200 name=my-run")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from fashiontune.config import to_yaml
    from fashiontune.train.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    from fashiontune.train import run_training

    results = run_training(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        summary = {k: results.get(k) for k in ("name", "task", "status", "step", "best", "final", "samples_per_s")}
        print(json.dumps(summary, indent=2, default=str))
        print(f"run directory: {cfg.run_dir}")
    return 0
