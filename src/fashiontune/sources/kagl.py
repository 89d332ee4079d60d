"""Kaggle "Fashion Product Images": styles.csv + images/<id>.jpg.

Read with the csv module, not pandas: pandas turns the literal value "NA" (a real usage value, and one
real product name) into a missing value. The file is unquoted, so product names with commas split into
extra fields; they are joined back into productDisplayName.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from fashiontune.records import Record, Skip

from .base import Source, SourceError, skip
from .textfile import CsvTable, well_formed

HEADER = ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year", "usage",
          "productDisplayName"]
LABEL_FIELDS = HEADER[1:9]


class KaglSource(Source):
    name = "kagl"
    required = {"styles.csv": "the product table with header " + ",".join(HEADER),
                "images": "the folder of <id>.jpg product images"}

    def iter_records(self, input_dir: Path) -> Iterator[Record | Skip]:
        root = self.check(input_dir)
        path = root / "styles.csv"
        seen: set[str] = set()
        table = CsvTable(path, self.encoding, "kagl")
        header = table.header
        if header[:10] != HEADER:
            raise SourceError(
                f"kagl: {path} line 1: header is {','.join(header)!r}, expected {','.join(HEADER)!r}. "
                "Is this the styles.csv of the Kaggle 'Fashion Product Images' dataset?"
            )
        fix = f"the columns are {','.join(HEADER)}; fix or delete the row"
        # one line per row (the file has no multi-line cells); more fields: unquoted commas in the name
        for r in well_formed(table.rows(), path, len(HEADER), fix, more_ok=True, id_col=0):
            if isinstance(r, Skip):
                yield r
                continue
            line, row, where = r.line, r.cells, f"{path}:{r.line}"
            item = row[0].strip()
            if not item.isdigit():
                yield skip(f"line{line}", where, "unparsable_row", f"id {item!r} is not an integer product id")
                continue
            if item in seen:
                yield skip(f"{item}_line{line}", where, "duplicate_id", f"id {item} is already listed earlier")
                continue
            seen.add(item)
            # more than 10 fields: the name contained unquoted commas
            name = ",".join(row[9:])
            labels = {k: v.strip() for k, v in zip(LABEL_FIELDS, row[1:9]) if v.strip()}
            meta: dict[str, object] = {"productDisplayName": name, "line": line}
            if len(row) > len(HEADER):
                meta["repaired"] = "comma_in_name"
            yield Record(id=item, group_id=item, image_path=root / "images" / f"{item}.jpg",
                         text=" ".join(name.split()), labels=labels, meta=meta)
