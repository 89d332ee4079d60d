"""A user's own catalogue as a CSV: one row per image.

--input is either the CSV file itself or a folder containing `items.csv`. Columns (header required):
  image      required: image path, relative to the CSV's folder (absolute paths and '..' leading out of that
             folder are refused by the builder unless --allow-outside-input)
  caption    optional text of the item (`text` is accepted as well)
  id         optional stable item id (default: derived from the image path)
  group_id   optional product id, so that views of one product share a split (default: the id)
  split      optional split the dataset itself fixes for the row (e.g. `test` for an official test set);
             empty = drawn by the group hash. A split any row names holds exactly the rows that name it.
  <other>    every other column is a label field; a column in which any cell holds '|' is multi-label
             ("red|blue" -> ["blue", "red"]); an empty cell means the item has no value for that field.
A malformed row (wrong cell count, a quote left open, bytes not in --encoding) yields a Skip naming its first
line and the fix; the rest of the file is still read (see textfile.CsvTable). A caption may span lines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from fashiontune.records import Record, Skip

from .base import Source, SourceError, path_id, safe_id, skip
from .textfile import CsvTable, Row, well_formed

DEFAULT_NAME = "items.csv"
RESERVED = ("image", "caption", "text", "id", "group_id", "split")


class CsvSource(Source):
    name = "csv"

    def locate(self, input_path: Path) -> Path:
        p = Path(input_path)
        if p.is_file():
            return p
        if p.is_dir():
            if (p / DEFAULT_NAME).is_file():
                return p / DEFAULT_NAME
            raise SourceError(f"csv: {p / DEFAULT_NAME} not found. Pass the CSV file itself as --input, or a folder "
                              f"containing {DEFAULT_NAME} (header with an `image` column; optional caption, id, "
                              "group_id; other columns are labels).")
        raise SourceError(f"csv: {p} does not exist; pass a CSV file or a folder containing {DEFAULT_NAME}.")

    def iter_records(self, input_dir: Path) -> Iterator[Record | Skip]:
        path = self.locate(input_dir)
        table = CsvTable(path, self.encoding, "csv")
        header = table.header
        if "image" not in header:
            raise SourceError(f"csv: {path} line 1: no `image` column (header: {','.join(header)!r}). The first line "
                              "must name the columns, e.g. image,caption,category,colour.")
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup or "" in header:
            raise SourceError(f"csv: {path} line 1: column names must be non-empty and unique "
                              f"(duplicated: {', '.join(dup) or 'none'}; empty: {'yes' if '' in header else 'no'}).")
        # a caption may hold line breaks (a quoted multi-line cell); no other column may
        rows = list(table.rows(multiline=[h for h in ("caption", "text") if h in header]))
        if not rows:
            raise SourceError(f"csv: {path} has a header but no data rows: add one row per image "
                              "(image,caption,...), or pass the CSV that lists your items.")
        yield from self._items(path, header, rows)

    def _items(self, path: Path, header: list[str], rows: list) -> Iterator[Record | Skip]:
        col = {h: i for i, h in enumerate(header)}
        text_col = col.get("caption", col.get("text"))
        label_cols = [h for h in header if h not in RESERVED]
        good = [r.cells for r in rows if isinstance(r, Row) and len(r.cells) == len(header)]
        multi = {h for h in label_cols if any("|" in cells[col[h]] for cells in good)}
        seen: set[str] = set()
        fix = 'quote cells that contain commas ("a, b") and check for missing or extra separators'
        for r in well_formed(rows, path, len(header), fix):
            if isinstance(r, Skip):
                yield r
                continue
            line, row, where = r.line, r.cells, f"{path}:{r.line}"
            image = row[col["image"]].strip()
            if not image:
                yield skip(f"line{line}", where, "unparsable_row",
                           "empty `image` cell; give the image path (relative to the CSV's folder, or absolute)")
                continue
            # relative to the CSV's folder; whether it may leave that folder is the builder's call (outside_input)
            image_path = Path(image) if os.path.isabs(image) else path.parent / image
            given = row[col["id"]].strip() if "id" in col else ""
            rid = safe_id(given) if given else path_id(image.lstrip("/"))
            if rid in seen:
                yield skip(f"{rid}_line{line}", where, "duplicate_id",
                           f"id {rid!r} is already used by an earlier row; give each row a unique `id` (or a "
                           "distinct image path)")
                continue
            seen.add(rid)
            group = row[col["group_id"]].strip() if "group_id" in col else ""
            labels: dict[str, str | list[str]] = {}
            for h in label_cols:
                cell = row[col[h]].strip()
                if not cell:
                    continue
                if h in multi:
                    labels[h] = sorted({v.strip() for v in cell.split("|") if v.strip()})
                else:
                    labels[h] = cell
            text = " ".join(row[text_col].split()) if text_col is not None else ""
            split = row[col["split"]].strip() if "split" in col else ""
            yield Record(id=rid, group_id=safe_id(group) if group else rid, image_path=image_path, text=text,
                         labels=labels, meta={"line": line}, split=split)
