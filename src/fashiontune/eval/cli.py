"""`fashiontune eval --config configs/eval/<name>.yaml [key=value ...]`: full-corpus evaluation of a model.

Runs as one process, or under `accelerate launch` / torchrun / SLURM (jobs/eval.py): every rank embeds its
part of the split, rank 0 scores and writes <out_dir>/results.json, results.txt, plots/ and embeddings/.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fashiontune.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (configs/eval/*.yaml); defaults when omitted")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.checkpoint=runs/x/export data.split=test")


def run(args: argparse.Namespace) -> int:
    from fashiontune.eval.config import EvalConfig
    from fashiontune.eval.run import run_eval

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("fashiontune").setLevel(logging.INFO)  # ours, without open_clip's INFO chatter
    from fashiontune.eval.embed import ShardReadError
    from fashiontune.models import ModelLoadError
    from fashiontune.shards.errors import ManifestError

    cfg = load_config(EvalConfig, args.config, args.overrides)
    try:
        run_eval(cfg)
    except (ShardReadError, ModelLoadError, ManifestError) as e:  # a user's input to fix: the message, no traceback
        print(f"fashiontune eval: {e}", file=sys.stderr)
        return 2
    return 0
