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
from typing import Iterator, NamedTuple, Protocol, Sequence

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


class SampleSpan(NamedTuple):
    """Where one sample lies in its shard: its members are the tar bytes [offset, offset + length)."""

    key: str
    offset: int
    length: int


def index_tar(path: str | Path, count: int, with_json: bool = False) -> list[tuple[SampleSpan, bytes | None]]:
    """(span, .json bytes or None) of every sample of one shard, in file order, reading only the tar headers
    (and, with `with_json`, the small .json members): image bytes are seeked over, never read. The count
    check of iter_range: the shard must hold exactly `count` samples (what manifest.json lists)."""
    url, out, cur, member = str(path), [], None, None  # cur: [key, start, end, json] of the sample being read
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for info in tar:
                kx = _key_ext(info.name) if info.isreg() else None
                if kx is None:
                    continue
                member, (key, ext) = info.name, kx
                if cur is None or key != cur[0]:
                    if cur is not None:
                        out.append(cur)
                    cur = [key, info.offset, 0, None]  # a pax member's offset is its extended header's
                cur[2] = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                if with_json and ext == "json":
                    cur[3] = tar.extractfile(info).read()
    except FileNotFoundError as e:
        raise ShardDataError(f"{url}: listed in manifest.json but missing; {fix_hint(url)}.") from e
    except (tarfile.TarError, EOFError, OSError) as e:
        at = f"member {member!r}" if member else "its start"
        raise _error(url, f"the tar is cut short or unreadable after {at} ({type(e).__name__}: {e})") from e
    if cur is not None:
        out.append(cur)
    if len(out) != count:
        raise _error(url, f"manifest.json says {count} samples, the tar holds {len(out)} (the shards changed "
                          "after the build)")
    return [(SampleSpan(k, start, end - start), js) for k, start, end, js in out]


def iter_spans(path: str | Path, spans: Sequence[SampleSpan]) -> Iterator[dict]:
    """The samples at `spans` of one shard (index_tar's), reading only their bytes."""
    url = str(path)
    try:
        with open(path, "rb") as f:
            for span in spans:
                f.seek(span.offset)
                yield _span_sample(f.read(span.length), span, url)
    except FileNotFoundError as e:
        raise ShardDataError(f"{url}: listed in manifest.json but missing; {fix_hint(url)}.") from e


def _span_sample(data: bytes, span: SampleSpan, url: str) -> dict:
    sample = {"__key__": span.key, "__url__": url}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for info in tar:
                kx = _key_ext(info.name) if info.isreg() else None
                if kx is None:
                    continue
                if kx[0] != span.key or kx[1] in sample:
                    break
                sample[kx[1]] = tar.extractfile(info).read()
            else:
                if len(data) == span.length and len(sample) > 2:
                    return sample
    except (tarfile.TarError, EOFError) as e:
        raise _error(url, f"bytes {span.offset}..{span.offset + span.length} (sample {span.key!r}) are not a "
                          f"tar sample ({type(e).__name__}: {e}); the shards changed after the subset was "
                          "chosen: restart the run") from e
    raise _error(url, f"bytes {span.offset}..{span.offset + span.length} no longer hold sample {span.key!r} "
                      "alone (the shards changed after the subset was chosen): restart the run")


class ShardRef(Protocol):
    path: Path
    count: int  # samples the manifest lists for this shard (a subset's shard: len(spans))


def iter_shard(sh: ShardRef) -> Iterator[dict]:
    """A shard's samples in file order: all of them, or only a subset's (`spans`: data/subset.py)."""
    spans = getattr(sh, "spans", None)
    return iter_tar(sh.path) if spans is None else iter_spans(sh.path, spans)


def iter_range(shards: Sequence[ShardRef], lo: int, hi: int) -> Iterator[tuple[int, dict]]:
    """(position, sample) for positions lo..hi-1 of `shards` read one after another in the given order,
    opening only the shards that hold them: the one reader of the training stream and the eval embedder.

    The one count check: a shard read to its end must hold exactly the count manifest.json lists for it, and
    one that holds more is caught as soon as the extra sample is read; either is a ShardDataError naming it.
    (A subset's shard is read at its samples' byte spans only; index_tar checked its count when choosing.)"""
    start = 0
    for sh in shards:
        end = start + sh.count
        if end > lo and start < hi:
            yield from _shard_range(sh, start, lo, hi)
        start = end
        if start >= hi:
            return


def _shard_range(sh: ShardRef, start: int, lo: int, hi: int) -> Iterator[tuple[int, dict]]:
    """Positions start.. of the shard's samples."""
    spans = getattr(sh, "spans", None)
    if spans is not None:  # a subset: read only the spans this range covers
        first = max(lo - start, 0)
        yield from enumerate(iter_spans(sh.path, spans[first:hi - start]), start + first)
        return
    seen, pos = 0, start - 1
    for seen, sample in enumerate(iter_tar(sh.path), 1):
        if seen > sh.count:
            break
        pos += 1
        if pos >= hi:
            return  # stopped inside the shard: the rest is another reader's
        if pos >= lo:
            yield pos, sample
    if seen != sh.count:
        holds = "more" if seen > sh.count else str(seen)
        raise _error(sh.path, f"manifest.json says {sh.count} samples, the tar holds {holds} (the shards changed "
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
