"""Tiny synthetic shard sets for the training tests, the demo and bench/train.py: a synthetic corpus in a real
dataset's layout -> the real shard builder. Deterministic for a given (fmt, n, seed, image_size)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SOURCE_OF = {"kagl": "kagl", "deepfashion-mm": "deepfashion-mm", "imaterialist": "imaterialist", "folder": "folder"}


def build_tiny_shards(fmt: str, out: str | Path, n: int = 300, seed: int = 0, image_size: int = 64,
                      splits: str = "train=0.7,val=0.3,test=0.0", shard_size: int = 64) -> Path:
    """Generate `n` synthetic items of `fmt` under out/raw and build shards into out/shards (reused only when
    an earlier call built them with the same arguments). Returns the shard directory."""
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.synth import generate

    out = Path(out)
    shards = out / "shards"
    stamp = out / "build_args.json"
    args = {"fmt": fmt, "n": n, "seed": seed, "image_size": image_size, "splits": splits, "shard_size": shard_size}
    if (shards / "manifest.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == args:
        return shards
    shutil.rmtree(out, ignore_errors=True)
    generate(fmt, out / "raw", n, seed=seed, image_size=image_size)
    build_shards(ShardBuildConfig(source=SOURCE_OF[fmt], input=str(out / "raw"), out=str(shards),
                                  image_size=image_size, shard_size=shard_size, splits=splits, workers=1,
                                  progress=False))
    stamp.write_text(json.dumps(args))
    return shards
