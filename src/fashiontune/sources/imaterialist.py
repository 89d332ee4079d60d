"""iMaterialist-Fashion 2019 (FGVC6): train/<ImageId>.jpg + train.csv + label_descriptions.json.

train.csv has one row per segment; rows are grouped by ImageId into one multi-label record:
labels = {"category": sorted category names of its segments, "attribute": sorted attribute names} (an empty
attribute list means "no fine-grained attribute", which is what most segments carry). ClassId is "cat" or
"cat_attr_attr..."; the 2020 edition's separate `AttributesIds` column is read too when present. An id
missing from label_descriptions.json becomes "code_<n>". A damaged row yields a Skip naming its line; the
image keeps its other rows. Images on disk without rows in train.csv carry no labels and are not listed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from fashiontune.records import Record, Skip

from .base import Source, SourceError, safe_id, skip
from .textfile import CsvTable, read_json, well_formed

COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width", "ClassId")


def rle_decode(encoded: str, height: int, width: int) -> np.ndarray:
    """Competition RLE (1-indexed, column-major 'start length' pairs) -> bool HxW mask."""
    nums = np.array(encoded.split(), dtype=np.int64)
    flat = np.zeros(height * width, dtype=bool)
    for start, length in zip(nums[0::2] - 1, nums[1::2]):
        flat[start:start + length] = True
    return flat.reshape(width, height).T


def _names(desc: dict, key: str, path: Path) -> dict[int, str]:
    try:
        return {int(c["id"]): str(c["name"]) for c in desc[key]}
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"imaterialist: {path}: '{key}' must be a list of {{\"id\", \"name\", ...}} objects ({e}); "
                          "use the label_descriptions.json shipped with the competition data.") from e


class IMaterialistSource(Source):
    name = "imaterialist"
    required = {
        "train.csv": "one row per segment: " + ",".join(COLUMNS),
        "label_descriptions.json": '{"info", "categories": [{"id", "name", ...}], "attributes": [...]}',
        "train": "the folder of <ImageId>.jpg training images",
    }

    def iter_records(self, input_dir: Path) -> Iterator[Record | Skip]:
        root = self.check(input_dir)
        desc_path = root / "label_descriptions.json"
        desc = read_json(desc_path, self.encoding)
        if not isinstance(desc, dict):
            raise SourceError(f"imaterialist: {desc_path} must be a JSON object with 'categories' and 'attributes'.")
        cats, attrs = _names(desc, "categories", desc_path), _names(desc, "attributes", desc_path)
        cat_name = lambda i: cats.get(i, f"code_{i}")  # noqa: E731
        attr_name = lambda i: attrs.get(i, f"code_{i}")  # noqa: E731
        path = root / "train.csv"
        images: dict[str, dict] = {}  # ImageId -> {h, w, cats, attrs, n}; first-appearance order
        table = CsvTable(path, self.encoding, "imaterialist")
        header = table.header
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise SourceError(
                f"imaterialist: {path} line 1: missing column(s) {', '.join(missing)}; expected the header "
                f"{','.join(COLUMNS)} of the iMaterialist-Fashion 2019 train.csv (got {','.join(header)!r})."
            )
        col = {c: header.index(c) for c in header}
        attr_col = col.get("AttributesIds")  # 2020 edition
        fix = f"the columns are {','.join(header)}"
        # one line per row: no cell of train.csv spans lines
        for r in well_formed(table.rows(), path, len(header), fix, id_prefix="train_csv_line"):
            if isinstance(r, Skip):
                yield r
                continue
            line, row, where = r.line, r.cells, f"{path}:{r.line}"
            image_id = row[col["ImageId"]].strip()
            if image_id.lower().endswith(".jpg"):
                image_id = image_id[:-4]
            try:
                if not image_id:
                    raise ValueError("empty ImageId")
                h, w = int(row[col["Height"]]), int(row[col["Width"]])
                class_parts = [int(p) for p in row[col["ClassId"]].strip().split("_")]
                extra = row[attr_col].strip() if attr_col is not None else ""
                attr_ids = class_parts[1:] + [int(a) for a in extra.split(",") if a.strip()]
            except ValueError as e:
                yield skip(f"{safe_id(image_id)}_line{line}" if image_id else f"train_csv_line{line}", where,
                           "unparsable_row", f"{e}; Height/Width must be integers and ClassId 'cat' or "
                           "'cat_attr_attr...' (the image keeps its other segments)")
                continue
            item = images.setdefault(image_id, {"h": h, "w": w, "cats": set(), "attrs": set(), "n": 0})
            item["cats"].add(cat_name(class_parts[0]))
            item["attrs"].update(attr_name(a) for a in attr_ids)
            item["n"] += 1
        for image_id, item in images.items():
            yield Record(
                id=safe_id(image_id), group_id=safe_id(image_id), image_path=root / "train" / f"{image_id}.jpg",
                text="", labels={"category": sorted(item["cats"]), "attribute": sorted(item["attrs"])},
                meta={"height": item["h"], "width": item["w"], "n_segments": item["n"]},
            )
