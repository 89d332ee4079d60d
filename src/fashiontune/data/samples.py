"""Read a shard's samples and decode them: the one reader that the training stream, its validation and the
eval job share (shards/README.md has the format).

A shard is a plain tar of `<key>.<ext>` members, consecutive members of one key forming a sample (what
webdataset's `group_by_keys` does). We read it with the standard library's tarfile in stream mode so that a
damaged shard is reported precisely: a truncated member, a cut header, a corrupt JPEG or JSON each raise a
`ShardDataError` naming the shard file, the sample key and the fix. Members are read into memory, never
extracted to disk, so a hostile tar cannot write anywhere; non-regular members (links, devices) are skipped.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from PIL import Image, UnidentifiedImageError

from fashiontune.shards.errors import ManifestError


class ShardDataError(ManifestError):
    """A shard's bytes are not what the builder wrote (truncated, corrupt, incomplete sample)."""


def shards_dir_of(shard: str | Path) -> Path:
    """The directory holding manifest.json above a shard (<dir>/<split>/shard-N.tar), for the fix hint."""
    p = Path(shard)
    for d in list(p.parents)[:3]:
        if (d / "manifest.json").is_file():
            return d
    return p.parent


def fix_hint(shard: str | Path) -> str:
    return (f"run `fashiontune shards verify {shards_dir_of(shard)}` to list every damaged shard, then rebuild "
            "them with `fashiontune shards build` (or copy them again)")


def _error(shard: str | Path, what: str) -> ShardDataError:
    return ShardDataError(f"{shard}: {what}; {fix_hint(shard)}.")


def _key_ext(name: str) -> tuple[str, str] | None:
    """'dir/abc.jpg' -> ('dir/abc', 'jpg'): the key ends at the first dot of the file name (webdataset's rule)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _zero_block_at(path: str | Path, offset: int) -> bool:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)


def iter_tar(path: str | Path) -> Iterator[dict]:
    """Samples {"__key__", "__url__", ext: bytes, ...} of one shard, in file order."""
    url, sample, member, last = str(path), None, None, None  # member: the one being read; last: read whole
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                kx = _key_ext(info.name) if info.isreg() else None
                if kx is None:
                    continue
                member, (key, ext) = info.name, kx
                data = tar.extractfile(info).read()
                last = member
                if sample is None or key != sample["__key__"]:
                    if sample is not None:
                        yield sample
                    sample = {"__key__": key, "__url__": url}
                if ext in sample:
                    raise _error(url, f"sample {key!r} has two {ext!r} members")
                sample[ext] = data
            end = tar.offset  # where tarfile stopped: the end-of-archive block, if the tar is whole
    except FileNotFoundError as e:
        raise ShardDataError(f"{url}: listed in manifest.json but missing; {fix_hint(url)}.") from e
    except (tarfile.TarError, EOFError, OSError) as e:
        at = f"member {member!r}" if member and member != last else f"the member after {last!r}" if last else "its start"
        raise _error(url, f"the tar is cut short or unreadable at {at} ({type(e).__name__}: {e})") from e
    # tarfile stops silently at a header that is cut short or garbled: check the zero block is there
    if not _zero_block_at(path, end):
        raise _error(url, f"the tar is cut short or garbled at byte {end}, the member after {last!r}")
    if sample is not None:
        yield sample


class ShardRef(Protocol):
    path: Path
    count: int  # samples the manifest lists for this shard


def iter_range(shards: Sequence[ShardRef], lo: int, hi: int) -> Iterator[tuple[int, dict]]:
    """(position, sample) for positions lo..hi-1 of `shards` read one after another in the given order,
    opening only the shards that hold them: the one reader of the training stream and the eval embedder.

    The one count check: a shard read to its end must hold exactly the count manifest.json lists for it, and
    one that holds more is caught as soon as the extra sample is read; either is a ShardDataError naming it."""
    start = 0
    for sh in shards:
        end = start + sh.count
        if end > lo and start < hi:
            yield from _shard_range(sh, start, lo, hi)
        start = end
        if start >= hi:
            return


def _shard_range(sh: ShardRef, start: int, lo: int, hi: int) -> Iterator[tuple[int, dict]]:
    """Positions start.. of the shard's samples (of its `keep` keys only, for a subset: data/subset.py)."""
    keep = getattr(sh, "keep", None)
    total = getattr(sh, "full_count", 0) or sh.count
    seen, pos = 0, start - 1
    for seen, sample in enumerate(iter_tar(sh.path), 1):
        if seen > total:
            break
        if keep is not None and sample["__key__"] not in keep:
            continue
        pos += 1
        if pos >= hi:
            return  # stopped inside the shard: the rest is another reader's
        if pos >= lo:
            yield pos, sample
    if seen != total:
        holds = "more" if seen > total else str(seen)
        raise _error(sh.path, f"manifest.json says {total} samples, the tar holds {holds} (the shards changed "
                              "after the build)")


def where(sample: dict) -> str:
    return f"{sample.get('__url__')}: sample {sample.get('__key__')!r}"


def _require(sample: dict, ext: str) -> bytes:
    if ext not in sample:
        raise _error(sample.get("__url__"), f"sample {sample.get('__key__')!r} has no .{ext} member")
    return sample[ext]


def sample_meta(sample: dict) -> dict:
    """The parsed .json member (labels, group_id, source metadata), cached in the sample."""
    if "_meta" not in sample:
        raw = _require(sample, "json")
        try:
            meta = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise _error(sample.get("__url__"), f"sample {sample.get('__key__')!r}: .json does not parse ({e})") from e
        if not isinstance(meta, dict):
            raise _error(sample.get("__url__"), f"sample {sample.get('__key__')!r}: .json is not an object")
        sample["_meta"] = meta
    return sample["_meta"]


def sample_caption(sample: dict) -> str:
    """The .txt member (may be absent or empty)."""
    try:
        return sample.get("txt", b"").decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(sample.get("__url__"), f"sample {sample.get('__key__')!r}: .txt is not UTF-8 ({e})") from e


def decode_rgb(sample: dict, draft: int | None = None) -> Image.Image:
    """The .jpg member as an RGB image; with `draft`, JPEGs at least 2x larger decode at reduced scale."""
    raw = _require(sample, "jpg")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if draft and im.format == "JPEG":
                im.draft("RGB", (draft, draft))  # DCT-domain downscale, >= draft px a side
            return im.convert("RGB")
    # what Pillow raises on bad bytes: UnidentifiedImageError / truncation (OSError), broken chunks
    # (SyntaxError, ValueError, struct.error), a decompression bomb
    except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError) as e:
        why = "not an image format Pillow knows" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise _error(sample.get("__url__"), f"sample {sample.get('__key__')!r}: the .jpg does not decode ({why})") from e
