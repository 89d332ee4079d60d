"""`fashiontune index build --model EXPORT --shards DIR --out INDEX [--split test|all] [--kind flat|hnsw|ivf]
[--results RESULTS.json] [key=value ...]`: embed a catalogue and write the index `fashiontune serve` reads.

Runs as one process or under `accelerate launch` / SLURM (`fashiontune submit index`), every rank embedding
its part as the eval job does. key=value overrides reach IndexConfig (index/config.py), e.g.
model.name=ft-tiny-vit for a random-init model, approx.ef_search=64, data.batch_size=64; tokens=true also stores
the items' image patch tokens for `fashiontune serve INDEX rerank.model=EXPORT` (a re-ranked text search).
"""

from __future__ import annotations

import argparse
import logging

from fashiontune.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{build}")
    sub.required = True
    p = sub.add_parser("build", help="embed a catalogue and write an index directory")
    p.add_argument("--config", help="YAML IndexConfig (optional; the flags below override it)")
    p.add_argument("--model", help="a training export directory (runs/<name>/export) or a weights file")
    p.add_argument("--shards", help="the shard directory (with manifest.json)")
    p.add_argument("--out", help="the index directory to write")
    p.add_argument("--split", help="test (default), a split name, several (val,test) or all")
    p.add_argument("--kind", choices=("flat", "hnsw", "ivf"), help="flat = exact (default); hnsw / ivf = approximate")
    p.add_argument("--results", help="the model's eval results.json (per-class metrics in the app)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="IndexConfig overrides")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The flags as key=value overrides (before the explicit ones, which win)."""
    keys = {"model": "model.checkpoint", "shards": "data.shards", "out": "out", "split": "data.split",
            "kind": "kind", "results": "results"}
    return [f"{key}={getattr(args, a)}" for a, key in keys.items() if getattr(args, a, None)]


def run(args: argparse.Namespace) -> int:
    from fashiontune.index.build import build_index, summary
    from fashiontune.index.config import IndexConfig

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("fashiontune").setLevel(logging.INFO)
    cfg = load_config(IndexConfig, args.config, [*flag_overrides(args), *(args.overrides or [])])
    info = build_index(cfg.validate(args.config or "index build"))
    if info:
        print(summary(info))
        print(f"serve it: fashiontune serve {cfg.out}")
    return 0
