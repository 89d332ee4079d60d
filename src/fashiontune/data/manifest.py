"""Read a shard directory's manifest.json and list a split's shards (the shard format: shards/README.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fashiontune.data.samples import SampleSpan
from fashiontune.shards.errors import ManifestError  # one error type for "fix your shard directory"
from fashiontune.shards.manifest import load_manifest


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    count: int  # samples read from this shard (len(spans) for a subset)
    # a subset (data.max_train_items, data/subset.py): only the samples at these byte spans are read
    spans: Optional[tuple[SampleSpan, ...]] = None


def read_manifest(shards_dir: str | Path) -> dict:
    """The manifest of `shards_dir` (the shard builder's reader: checks format and builder version)."""
    return load_manifest(Path(shards_dir))


def split_shards(manifest: dict, split: str, shards_dir: str | Path,
                 key: str = "data.train_split / data.val_split") -> list[ShardInfo]:
    """The shards of `split` in manifest order, with their sample counts (what exact epochs are planned on and
    the eval job embeds); `key` is the config key that chose the split, for the error message."""
    where = Path(shards_dir) / "manifest.json"
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise ManifestError(f"{where}: no 'splits' object; rebuild the shards with `fashiontune shards build`.")
    if split not in splits:
        raise ManifestError(
            f"{where}: no split {split!r}; it has {sorted(splits)}. Set {key}."
        )
    out = []
    for i, s in enumerate(splits[split].get("shards", [])):
        try:
            out.append(ShardInfo(Path(shards_dir) / s["name"], int(s["count"])))
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{where}: splits.{split}.shards[{i}] needs 'name' and 'count' ({e}).") from e
    return [s for s in out if s.count > 0]


def label_fields(manifest: dict) -> dict[str, dict]:
    labels = manifest.get("labels", {})
    if not isinstance(labels, dict):
        raise ManifestError("manifest.json: 'labels' must be an object {field: {multi, vocab, counts}}.")
    return labels
