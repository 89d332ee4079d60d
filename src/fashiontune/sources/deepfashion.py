"""DeepFashion-MultiModal: images/ + captions.json + labels/shape/shape_anno_all.txt +
labels/texture/{fabric,pattern}_ann.txt.

One record per image named in images/ or in any label file (a listed image whose file is missing becomes a
record too: the shard builder reports it). Codes become the official README's value names; a code the
README does not list (neckline 3 occurs in the data) is kept as "code_<n>", never a reason to drop the item.
An image without a line in the shape file simply lacks the shape fields.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

from fashiontune.records import Record, Skip

from .base import Source, SourceError, bad_filename, safe_id, skip, undecodable_name
from .textfile import read_json, read_lines

# the official README's codes, field names in the order of shape_anno_all.txt's columns
SHAPE_FIELDS = ("sleeve_length", "lower_length", "socks", "hat", "glasses", "neckwear", "wrist_wearing", "ring",
                "waist_accessories", "neckline", "cardigan", "covers_navel")
SHAPE_VALUES: dict[str, dict[int, str]] = {
    "sleeve_length": {0: "sleeveless", 1: "short-sleeve", 2: "medium-sleeve", 3: "long-sleeve", 4: "not long-sleeve",
                      5: "NA"},
    "lower_length": {0: "three-point", 1: "medium short", 2: "three-quarter", 3: "long", 4: "NA"},
    "socks": {0: "no", 1: "socks", 2: "leggings", 3: "NA"},
    "hat": {0: "no", 1: "yes", 2: "NA"},
    "glasses": {0: "no", 1: "eyeglasses", 2: "sunglasses", 3: "glasses in hand or clothes", 4: "NA"},
    "neckwear": {0: "no", 1: "yes", 2: "NA"},
    "wrist_wearing": {0: "no", 1: "yes", 2: "NA"},
    "ring": {0: "no", 1: "yes", 2: "NA"},
    "waist_accessories": {0: "no", 1: "belt", 2: "clothing", 3: "hidden", 4: "NA"},
    # the README lists no code 3; the data has it (kept as "code_3" by the adapter)
    "neckline": {0: "V-shape", 1: "square", 2: "round", 4: "standing", 5: "lapel", 6: "suspenders", 7: "NA"},
    "cardigan": {0: "yes", 1: "no", 2: "NA"},
    "covers_navel": {0: "no", 1: "yes", 2: "NA"},
}
FABRICS = {0: "denim", 1: "cotton", 2: "leather", 3: "furry", 4: "knitted", 5: "chiffon", 6: "other", 7: "NA"}
PATTERNS = {0: "floral", 1: "graphic", 2: "striped", 3: "pure color", 4: "lattice", 5: "other", 6: "color block",
            7: "NA"}
SHAPE_FILE = "labels/shape/shape_anno_all.txt"
FABRIC_FILE = "labels/texture/fabric_ann.txt"
PATTERN_FILE = "labels/texture/pattern_ann.txt"
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}
_NAME = re.compile(r"^(?P<gender>MEN|WOMEN)-(?P<category>.+)-(?P<product>id_\d+)-(?P<view>.+)$")
_PARTS = ("upper", "lower", "outer")


def _stem(name: str) -> str:
    base, ext = os.path.splitext(name)
    return base if ext.lower() in IMAGE_EXTS else name


def _read_codes(path: Path, width: int, bad: list[Skip], encoding: str) -> dict[str, list[int]]:
    """`<name> c1 ... c<width>` per line -> {stem: codes}; malformed lines are noted, not fatal."""
    out: dict[str, list[int]] = {}
    for ln in read_lines(path, encoding):
        lineno, line = ln.number, ln.text
        parts = line.split()
        if not parts:
            continue
        if ln.bad:
            bad.append(skip(f"{safe_id(path.stem)}_line{lineno}", f"{path}:{lineno}", "bad_encoding",
                            f"{ln.bad}; the image keeps its labels from the other files"))
            continue
        try:
            codes = [int(c) for c in parts[1:]]
        except ValueError:
            codes = []
        if len(codes) != width:
            bad.append(skip(f"{safe_id(path.stem)}_line{lineno}", f"{path}:{lineno}", "unparsable_row",
                            f"expected an image name and {width} integer codes, got {line.strip()[:200]!r}; "
                            "the image keeps its labels from the other files"))
            continue
        out[_stem(parts[0])] = codes
    return out


def _value(table: dict[int, str], code: int) -> str:
    return table.get(code, f"code_{code}")


class DeepFashionMMSource(Source):
    name = "deepfashion-mm"
    required = {
        "images": "the folder of <GENDER>-<Category>-id_<product>-<view>.jpg images",
        "captions.json": "{image name: caption}",
        SHAPE_FILE: "<name> and 12 shape codes per line",
        FABRIC_FILE: "<name> upper lower outer fabric codes",
        PATTERN_FILE: "<name> upper lower outer pattern codes",
    }

    def iter_records(self, input_dir: Path) -> Iterator[Record | Skip]:
        root = self.check(input_dir)
        bad: list[Skip] = []
        shape = _read_codes(root / SHAPE_FILE, 12, bad, self.encoding)
        fabric = _read_codes(root / FABRIC_FILE, 3, bad, self.encoding)
        pattern = _read_codes(root / PATTERN_FILE, 3, bad, self.encoding)
        raw = read_json(root / "captions.json", self.encoding)
        if not isinstance(raw, dict):
            raise SourceError(f"deepfashion-mm: {root / 'captions.json'} must be a JSON object {{image name: caption}}")
        captions = {_stem(k): v for k, v in raw.items() if isinstance(v, str)}
        files: dict[str, str] = {}
        with os.scandir(root / "images") as it:
            # not only regular files: a FIFO or socket named x.jpg is listed, and the builder refuses it
            for e in it:
                if not e.is_dir() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS:
                    if undecodable_name(e.name):
                        bad.append(bad_filename(e.name, e.path))
                    else:
                        files[_stem(e.name)] = e.name
        yield from bad
        names = sorted(set(files) | set(captions) | set(shape) | set(fabric) | set(pattern))
        for stem in names:
            labels: dict[str, str] = {}
            meta: dict[str, object] = {"name": stem}
            m = _NAME.match(stem)
            if m:
                labels["gender"], labels["category"] = m["gender"], m["category"]
                group, meta["view"] = m["product"], m["view"]
            else:  # not the official naming: each image is its own group
                group = safe_id(stem)
            for field, code in zip(SHAPE_FIELDS, shape.get(stem, ())):
                labels[field] = _value(SHAPE_VALUES[field], code)
            for prefix, table, codes in (("fabric", FABRICS, fabric), ("pattern", PATTERNS, pattern)):
                for part, code in zip(_PARTS, codes.get(stem, ())):
                    labels[f"{prefix}_{part}"] = _value(table, code)
            image = root / "images" / files.get(stem, stem + ".jpg")
            yield Record(id=safe_id(stem), group_id=group, image_path=image, text=captions.get(stem, ""),
                         labels=labels, meta=meta)
