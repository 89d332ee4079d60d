"""`fashiontune shards build | verify | merge`."""

from __future__ import annotations

import argparse

from fashiontune.config import load_config
from fashiontune.shards.config import SOURCES, ShardBuildConfig

# flag -> config key; flags left unset do not override the YAML file.
_FLAGS = {
    "source": "source", "input": "input", "out": "out", "image_size": "image_size", "quality": "quality",
    "shard_size": "shard_size", "splits": "splits", "workers": "workers", "num_jobs": "num_jobs",
    "job_index": "job_index", "max_bad_fraction": "max_bad_fraction", "encoding": "encoding",
    "follow_symlinks": "follow_symlinks", "allow_outside_input": "allow_outside_input",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="shards_command", metavar="{build,verify,merge}")
    sub.required = True
    b = sub.add_parser("build", help="build WebDataset shards of a corpus (or one array task's part)")
    b.add_argument("--source", choices=SOURCES)
    b.add_argument("--input", help="corpus directory")
    b.add_argument("--out", help="output directory (default shards/out)")
    b.add_argument("--image-size", type=int, help="shorter side in pixels (default 256, never upscaled)")
    b.add_argument("--quality", type=int, help="JPEG quality (default 90)")
    b.add_argument("--shard-size", type=int, help="samples per shard (default 1000)")
    b.add_argument("--splits", help="e.g. train=0.8,val=0.1,test=0.1 (split by group id, deterministic)")
    b.add_argument("--workers", type=int, help="processes (default 0 = all CPUs available)")
    b.add_argument("--num-jobs", type=int, help="array size (SLURM array); then run `shards merge`")
    b.add_argument("--job-index", type=int, help="this task's index in 0..num_jobs-1")
    b.add_argument("--max-bad-fraction", type=float, help="fail if skipped/listed exceeds this (default 0.05)")
    b.add_argument("--encoding", help="text encoding of the corpus's CSV/JSON/label files (default utf-8; e.g. "
                   "latin-1); bytes not valid in it are reported per row, never replaced")
    b.add_argument("--follow-symlinks", action="store_true", default=None,
                   help="read images through symlinked files and folders (default: refused, one error line each)")
    b.add_argument("--allow-outside-input", action="store_true", default=None,
                   help="read image paths that lead outside the input folder (absolute paths, '..') "
                        "(default: refused, one error line each)")
    b.add_argument("--config", help="YAML file of ShardBuildConfig keys")
    b.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. split_salt=v2")
    v = sub.add_parser("verify", help="re-read every shard and check it against manifest.json")
    v.add_argument("dir")
    v.add_argument("--no-decode", action="store_true", help="skip decoding every image (faster)")
    m = sub.add_parser("merge", help="after an array build: check completeness, write manifest.json")
    m.add_argument("dir")
    m.add_argument("--max-bad-fraction", type=float, help="override the build's threshold")


def config_from_args(args: argparse.Namespace) -> ShardBuildConfig:
    flags = [f"{key}={getattr(args, a)}" for a, key in _FLAGS.items() if getattr(args, a, None) is not None]
    cfg = load_config(ShardBuildConfig, args.config, flags + list(args.overrides))
    if args.quiet:
        cfg.progress = False
    return cfg


def run(args: argparse.Namespace) -> int:
    """Exit 0, or 1 when `verify` finds a damaged shard. A user error (BuildError, ManifestError, SourceError,
    ConfigError: all fashiontune.errors.UserError) propagates to `fashiontune.cli`: one line, exit 2."""
    if args.shards_command == "build":
        from fashiontune.shards.build import build_shards

        build_shards(config_from_args(args))
        return 0
    if args.shards_command == "merge":
        from fashiontune.shards.build import merge, summary

        print(summary(merge(args.dir, args.max_bad_fraction)))
        return 0
    from fashiontune.shards.verify import verify

    report = verify(args.dir, decode=not args.no_decode)
    print(report)
    return 0 if report.ok else 1
