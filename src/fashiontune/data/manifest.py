"""Read a shard directory's manifest.json and list a split's shards (the shard format: shards/README.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ManifestError(ValueError):
    """A shard directory or manifest a user must fix; the message names the file and the field."""


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    count: int


def read_manifest(shards_dir: str | Path) -> dict:
    """The manifest of `shards_dir`: via the shard builder's loader when it exists, else the plain JSON."""
    d = Path(shards_dir)
    try:  # the builder's loader may validate more (format, version); prefer it when present
        from fashiontune.shards.manifest import load_manifest
    except ImportError:
        load_manifest = None
    if load_manifest is not None:
        return load_manifest(d)
    path = d / "manifest.json"
    if not path.is_file():
        raise ManifestError(
            f"{path} does not exist: point data.shards at a directory built by `fashiontune shards build`."
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); rebuild the shards.") from e


def split_shards(manifest: dict, split: str, shards_dir: str | Path) -> list[ShardInfo]:
    """The shards of `split` in manifest order, with their sample counts (what exact epochs are planned on)."""
    where = Path(shards_dir) / "manifest.json"
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise ManifestError(f"{where}: no 'splits' object; rebuild the shards with `fashiontune shards build`.")
    if split not in splits:
        raise ManifestError(
            f"{where}: no split {split!r}; it has {sorted(splits)}. Set data.train_split / data.val_split."
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
