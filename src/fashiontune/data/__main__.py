"""Loader-only throughput from the command line (what bench/train.py reports beside training samples/s)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """`python -m fashiontune.data SHARDS [--model NAME] [--workers N ...] [key=value ...]`:
    loader-only samples/s with a model's own train transform and tokenizer (random init, no weights needed)."""
    import argparse

    from fashiontune.config import load_config
    from fashiontune.data.config import DataConfig
    from fashiontune.data.loader import make_loader
    from fashiontune.data.throughput import measure_loader_throughput
    from fashiontune.models import load_clip
    from fashiontune.models.config import ModelConfig

    p = argparse.ArgumentParser(prog="python -m fashiontune.data", description=main.__doc__)
    p.add_argument("shards", help="a shard directory (manifest.json inside)")
    p.add_argument("--model", default="ft-tiny-vit", help="open_clip model whose transforms to use")
    p.add_argument("--workers", nargs="+", default=["0", "auto"], help="counts or auto")
    p.add_argument("--batches", type=int, default=20, help="timed batches per setting (after 2 warm-up ones)")
    p.add_argument("overrides", nargs="*", help="data config overrides, e.g. batch_size=64")
    args = p.parse_intermixed_args(argv)
    loaded = load_clip(ModelConfig(name=args.model, pretrained=""))
    for w in args.workers:
        cfg = load_config(DataConfig, None, [f"shards={args.shards}", f"workers={w}", *args.overrides])
        loader = make_loader(cfg, train=True, transform=loaded.preprocess_train, tokenizer=loaded.tokenizer)
        r = measure_loader_throughput(loader, max_batches=args.batches)
        print(f"{args.model} train transform, batch {cfg.batch_size}, workers={w}: "
              f"{r['samples_per_s']:.0f} samples/s ({r['samples']} samples in {r['seconds']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
