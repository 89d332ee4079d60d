"""`fashiontune <command> ...`: one console script; each command lives in its own module, imported lazily
so that `fashiontune synth` or `shards` does not pay for importing torch.

Errors: anything a user must fix (a `fashiontune.errors.UserError`: config key, file, shard, model path;
or the machine's state: a full disk, a read-only or forbidden path) prints as ONE line
`fashiontune <command>: <message>` and exits 2; `--debug` (or FASHIONTUNE_DEBUG=1) adds the traceback.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback

from fashiontune.errors import UserError, one_line

# command -> module exposing `add_arguments(parser)` and `run(args) -> int`
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("fashiontune.synth.cli", "write a synthetic corpus in a real dataset's on-disk format"),
    "shards": ("fashiontune.shards.cli", "build / verify / merge WebDataset shards of a corpus"),
    "train": ("fashiontune.train.cli", "train on shards (any task) with Accelerate / DeepSpeed"),
    "eval": ("fashiontune.eval.cli", "full-corpus retrieval and classification evaluation"),
    "index": ("fashiontune.index.cli", "embed a catalogue into a searchable index (faiss)"),
    "serve": ("fashiontune.serve.cli", "search and classify an index in the browser and over a JSON API"),
    "wise": ("fashiontune.wise.cli", "WiSE-FT: weight-space ensembles of a base and a fine-tuned export"),
    "sweep": ("fashiontune.sweep.cli", "a grid of training runs (a SLURM job array) -> sweep.json, table, curves"),
    "submit": ("fashiontune.launch.cli", "run a job on SLURM (or submitit's local executor)"),
    "demo": ("fashiontune.demo", "synthetic corpus -> shards -> train -> eval -> report, on CPU"),
}
# the machine's state, not the program's: a full disk, a quota, a read-only or forbidden path
_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "free space there or write elsewhere",
                       errno.EDQUOT: "free quota there or write elsewhere",
                       errno.EROFS: "write elsewhere (the file system is read-only)",
                       errno.EACCES: "fix the permissions or write elsewhere"}
DEBUG_HELP = "on an error, also print the Python traceback (same as FASHIONTUNE_DEBUG=1)"


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("FASHIONTUNE_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `--debug` is accepted anywhere (before or after the command and its sub-commands)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(prog="fashiontune", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == chosen:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p)
    args = parse_any_order(parser, argv)
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except UserError as e:
        return _report(args.command, e, one_line(e), debug)
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise  # anything else may be a bug: keep the traceback
        where = f"{e.filename}: " if e.filename else ""
        return _report(args.command, e, f"{where}{e.strerror}; {_ENVIRONMENT_ERRNOS[e.errno]}.", debug)


def parse_any_order(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, with `key=value` overrides accepted before, between and after the options
    (`submit train --cluster C cluster.k=v --config X k=v`), kept in the order given (the last one wins).

    argparse gives a `nargs="*"` positional only its first run of values and cannot interleave positionals
    with options; `parse_intermixed_args` would, but refuses parsers with sub-commands (all of ours). So the
    runs argparse leaves over are appended to `overrides` of the (sub-)command that takes them; anything else
    left over is the usual "unrecognized arguments" error.
    """
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _report(command: str, e: BaseException, message: str, debug: bool) -> int:
    if debug_enabled(debug):
        traceback.print_exc()
        if getattr(e, "worker_traceback", ""):  # raised in a DataLoader worker: its own traceback
            print(e.worker_traceback, file=sys.stderr)
    print(f"fashiontune {command}: {message}", file=sys.stderr, flush=True)
    return 2
