"""`fashiontune <command> ...`: one console script; each command lives in its own module, imported lazily
so that `fashiontune synth` or `shards` does not pay for importing torch."""

from __future__ import annotations

import argparse
import importlib
import sys

from fashiontune.config import ConfigError

# command -> module exposing `add_arguments(parser)` and `run(args) -> int`
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("fashiontune.synth.cli", "write a synthetic corpus in a real dataset's on-disk format"),
    "shards": ("fashiontune.shards.cli", "build / verify / merge WebDataset shards of a corpus"),
    "train": ("fashiontune.train.cli", "train on shards (any task) with Accelerate / DeepSpeed"),
    "eval": ("fashiontune.eval.cli", "full-corpus retrieval and classification evaluation"),
    "submit": ("fashiontune.launch.cli", "run a job on SLURM (or submitit's local executor)"),
    "demo": ("fashiontune.demo", "synthetic corpus -> shards -> train -> eval -> report, on CPU"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fashiontune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == chosen:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except ConfigError as e:
        print(f"fashiontune {args.command}: config error: {e}", file=sys.stderr)
        return 2
