"""The IDX format of (Fashion-)MNIST: a big-endian header, then one unsigned byte per pixel or label.

    magic 2051 (images): int32 count, int32 rows, int32 cols, then count*rows*cols bytes
    magic 2049 (labels): int32 count, then count bytes

Files may be gzipped (`.gz`, as distributed) or not. Every problem is an IdxError naming the file.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from .base import SourceError

IMAGES, LABELS = 2051, 2049
_DIMS = {IMAGES: 3, LABELS: 1}


class IdxError(SourceError):
    """A malformed IDX file: wrong magic, a truncated body, trailing bytes."""


def read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; EOFError: a cut gzip stream
        raise IdxError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is damaged or not gzip: "
                       "download it again (or reinstall dataset-fashion-mnist).") from None


def parse(data: bytes, path: Path, magic: int) -> np.ndarray:
    """The array of an IDX file's bytes: (count, rows, cols) uint8 images or (count,) uint8 labels."""
    what = "images" if magic == IMAGES else "labels"
    fix = "download it again (or reinstall dataset-fashion-mnist)"
    n_dims = _DIMS[magic]
    head = 4 + 4 * n_dims
    if len(data) < head:
        raise IdxError(f"{path}: {len(data)} bytes, shorter than an IDX {what} header ({head} bytes): {fix}.")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise IdxError(f"{path}: magic number {found}, expected {magic} (IDX {what}): is this the {what} file? "
                       f"The images files are *-images-idx3-ubyte, the labels *-labels-idx1-ubyte.")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims))
    size = int(np.prod(dims))
    body = len(data) - head
    if body != size:
        state = "truncated" if body < size else "has trailing bytes"
        raise IdxError(f"{path}: {state}: the header says {'x'.join(map(str, dims))} = {size} bytes of {what}, "
                       f"the file holds {body}: {fix}.")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims)


def read_idx(path: Path, magic: int) -> np.ndarray:
    return parse(read_bytes(Path(path)), Path(path), magic)


@functools.lru_cache(maxsize=2)
def cached_images(path: str) -> np.ndarray:
    """The images of one IDX file, read once per process (shard writers read many items of one file)."""
    return read_idx(Path(path), IMAGES)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write uint8 `array` ((n, rows, cols) images or (n,) labels) as an IDX file, gzipped if `path` ends in .gz
    (test corpora in the real download's format)."""
    magic = IMAGES if array.ndim == 3 else LABELS
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = head + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path
