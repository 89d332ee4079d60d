"""`fashiontune eval --config configs/eval/<name>.yaml [key=value ...]`: full-corpus evaluation of a model.

Runs as one process, or under `accelerate launch` / torchrun / SLURM (jobs/eval.py): every rank embeds its
part of the split, rank 0 scores and writes <out_dir>/results.json, results.txt, plots/ and embeddings/.
"""

from __future__ import annotations

import argparse
import logging

from fashiontune.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (configs/eval/*.yaml); defaults when omitted")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.checkpoint=runs/x/export data.split=test")


def run(args: argparse.Namespace) -> int:
    from fashiontune.eval.config import EvalConfig
    from fashiontune.eval.run import run_eval

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("fashiontune").setLevel(logging.INFO)  # ours, without open_clip's INFO chatter
    # user errors (config, shards, model files) are printed as one line by fashiontune.cli
    cfg = load_config(EvalConfig, args.config, args.overrides).validate(args.config or "eval config")
    run_eval(cfg)
    return 0
