"""A tiny in-memory source and a quirky tiny-image corpus, for the builder's tests and benchmark.

Not a corpus format: real corpora come through `fashiontune.sources`. This exists so the builder can be
tested on every image quirk without depending on an adapter, and deterministically (same args, same bytes).
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image

from fashiontune.records import Record, Skip

COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 200), "black": (20, 20, 20)}
TAGS = ["striped", "long-sleeve", "hooded", "logo"]
# Every image quirk the builder must repair (-> a sample) or report (-> an errors.jsonl reason).
REPAIRED = ("grayscale", "cmyk", "palette_alpha", "la_png", "rgba_png", "i16_png", "exif_rotated", "png")
REPORTED = {  # "duplicate" repeats the id of the item before it: keep it after a plain item
    "duplicate": "duplicate_id", "missing": "missing_image", "truncated": "truncated_image", "garbage": "corrupt_image",
    "empty_file": "corrupt_image", "skip": "unparsable_row", "bad_id": "bad_id",
}


class ListSource:
    """A Source over a fixed list of Record / Skip items."""

    name = "list"

    def __init__(self, items: Iterable[Record | Skip]):
        self.items = list(items)

    def iter_records(self, input_dir: Path) -> Iterator[Record | Skip]:
        yield from self.items


def _picture(colour: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A flat colour with a darker block whose position depends on the seed (so images differ)."""
    im = Image.new("RGB", size, COLOURS[colour])
    rng = random.Random(seed)
    x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
    im.paste((0, 0, 0), (x, y, x + size[0] // 3, y + size[1] // 4))
    return im


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def write_quirk(kind: str, im: Image.Image, path: Path) -> Path:
    """Write `im` to `path` with the given quirk; return the path actually used (the suffix may change)."""
    if kind == "grayscale":
        path.write_bytes(_jpeg(im.convert("L")))
    elif kind == "cmyk":
        path.write_bytes(_jpeg(im.convert("CMYK")))
    elif kind == "exif_rotated":
        # Stored sideways (rotated 90 deg clockwise) with orientation 6: upright after exif_transpose.
        exif = Image.Exif()
        exif[0x0112] = 6
        path.write_bytes(_jpeg(im.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()))
    elif kind in ("palette_alpha", "la_png", "rgba_png", "i16_png", "png"):
        path = path.with_suffix(".png")
        if kind == "palette_alpha":
            p = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
            p.info["transparency"] = 0
            p.save(path, transparency=0)
        elif kind == "la_png":
            im.convert("LA").save(path)
        elif kind == "rgba_png":
            a = im.convert("RGBA")
            a.putalpha(200)
            a.save(path)
        elif kind == "i16_png":
            im.convert("L").point(lambda v: v * 257, "I").convert("I;16").save(path)
        else:
            im.save(path)
    elif kind == "truncated":
        data = _jpeg(im)
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "garbage":
        path.write_bytes(b"this is not an image\n" * 10)
    elif kind == "empty_file":
        path.write_bytes(b"")
    else:
        path.write_bytes(_jpeg(im))
    return path


def make_corpus(
    root: str | Path,
    n: int,
    seed: int = 0,
    size: tuple[int, int] = (48, 64),
    views: int = 2,
    quirks: Iterable[str] = (),
    write: bool = True,
) -> list[Record | Skip]:
    """`n` records (products of `views` images each, sharing a group_id); item i < len(quirks) gets quirk i.

    Labels: colour (single), tags (multi-label, sometimes empty), pattern (absent on every third item).
    With write=False only the records are returned (the files are assumed written by an earlier call).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    quirks = list(quirks)
    items: list[Record | Skip] = []
    for i in range(n):
        kind = quirks[i] if i < len(quirks) else ""
        colour = rng.choice(sorted(COLOURS))
        tags = sorted(rng.sample(TAGS, rng.randrange(3)))
        labels: dict = {"colour": colour, "tags": tags}
        if i % 3:
            labels["pattern"] = "plain" if i % 2 else "print"
        path = root / "images" / f"{i:05d}.jpg"
        if write and kind != "missing":
            path = write_quirk(kind, _picture(colour, size, seed * 100003 + i), path)
        elif kind in ("palette_alpha", "la_png", "rgba_png", "i16_png", "png"):
            path = path.with_suffix(".png")
        if kind == "skip":
            items.append(Skip(id=f"row{i}", path=str(root / "list.csv"), reason="unparsable_row"))
            continue
        rid = {"duplicate": f"item{i - 1:05d}" if i else "item00000", "bad_id": f"bad.id/{i}"}.get(kind, f"item{i:05d}")
        items.append(
            Record(
                id=rid,
                group_id=f"prod{i // views:05d}",
                image_path=path.relative_to(root),
                text=f"a {colour} garment" + (" with " + " and ".join(tags) if tags else ""),
                labels=labels,
                meta={"quirk": kind, "index": i},
            )
        )
    return items


def read_samples(out: Path) -> dict[str, dict]:
    """key -> {split, shard, json} read straight from a build's tars (no webdataset: tests check its format)."""
    got: dict[str, dict] = {}
    for tar in sorted(Path(out).glob("*/shard-*.tar")):
        with tarfile.open(tar) as tf:
            for ti in tf:
                key, _, ext = ti.name.partition(".")
                if ext == "json":
                    meta = json.loads(tf.extractfile(ti).read())
                    assert key not in got, f"{key} written twice"
                    got[key] = {"split": tar.parent.name, "shard": tar.name, "json": meta}
    return got
