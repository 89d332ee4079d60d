"""Where each item's image lies in its shard: (shard, byte offset, size) of its .jpg member, so that the app
reads a thumbnail with one seek + read (no extraction to disk, no scan of the tar)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Sequence

from fashiontune.data.samples import ShardDataError, ShardRef, _key_ext, fix_hint


def image_locations(shards: Sequence[ShardRef], shards_dir: Path, keys: Sequence[str]) -> list[dict]:
    """Per key (in `keys` order): {"shard": path relative to shards_dir, "offset", "size"} of its .jpg member.
    Reads only the tar headers (tarfile in seekable mode jumps over the member data)."""
    found: dict[str, dict] = {}
    for sh in shards:
        rel = Path(sh.path).relative_to(shards_dir).as_posix()
        try:
            with tarfile.open(sh.path, mode="r:") as tar:
                for info in tar:
                    kx = _key_ext(info.name) if info.isreg() else None  # the stream reader's key rule
                    if kx is not None and kx[1] == "jpg":
                        found[kx[0]] = {"shard": rel, "offset": info.offset_data, "size": info.size}
        except (tarfile.TarError, OSError) as e:
            raise ShardDataError(f"{sh.path}: cannot list the tar ({e}); {fix_hint(sh.path)}.") from e
    missing = [k for k in keys if k not in found]
    if missing:
        raise ShardDataError(f"{shards_dir}: no .jpg member for item(s) {missing[:5]}; {fix_hint(shards[0].path)}.")
    return [found[k] for k in keys]


def read_image_bytes(shards_dir: Path, loc: dict) -> bytes:
    """The .jpg bytes of one item (loc from image_locations, read from the index's own metadata)."""
    with open(shards_dir / loc["shard"], "rb") as f:
        f.seek(int(loc["offset"]))
        return f.read(int(loc["size"]))
