"""Reading the text files of a corpus (CSV tables, label lists, JSON) without losing or inventing a row.

- Bytes that are not valid in the file's encoding are never replaced: a line holding them is reported with
  its line number and byte offset (and the fix: re-encode the file, or pass --encoding). They are decoded as
  surrogate escapes only so that the rest of the line can still be parsed.
- CSV rows come from the standard csv module, fed one physical line at a time so that a record's first line
  is known. A quote left open never swallows the rows after it: where a cell may not span lines, a row is
  one line; where it may (a caption), a record that breaks the rules (see `CsvTable.rows`) is reported at
  the line where it starts and parsing restarts at the next line, so every other row is still read.
"""

from __future__ import annotations

import codecs
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional, Union

from fashiontune.records import Skip

from .base import SourceError, safe_id, skip

# Cells may be long (iMaterialist's run-length masks); a runaway quote is bounded by MAX_RECORD_LINES instead.
csv.field_size_limit(sys.maxsize)
MAX_RECORD_LINES = 200  # the most physical lines one quoted caption may span
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def check_encoding(encoding: str) -> str:
    """The codec's canonical name; raises SourceError for an unknown or non-ASCII-compatible encoding."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise SourceError(f"encoding={encoding!r} is not a known text encoding: pass e.g. --encoding utf-8, "
                          "latin-1 or cp1252.") from None
    if "\n,\"".encode(name, errors="replace") != b"\n,\"":
        raise SourceError(f"encoding={encoding!r} is not ASCII-compatible (e.g. UTF-16): convert the file to "
                          "UTF-8 first (iconv -f UTF-16 -t UTF-8 in > out).")
    return name


class Line(NamedTuple):  # a tuple: one is made per line of files with 300k lines
    number: int  # 1-based physical line number
    text: str  # decoded, line ending kept; undecodable bytes as surrogate escapes
    bad: Optional[str] = None  # what is undecodable here and how to fix it; None when the line is clean


def encoding_fix(encoding: str) -> str:
    return (f"re-encode the file as {encoding} (e.g. `iconv -f latin1 -t utf-8`), or pass the file's real "
            "encoding with --encoding (e.g. --encoding latin-1)")


def _bad_bytes(raw: bytes, err: UnicodeDecodeError, number: int, offset: int, encoding: str) -> str:
    pos = offset + err.start
    return (f"bytes {raw[err.start:err.end]!r} at line {number}, byte offset {pos} are not valid {encoding}: "
            + encoding_fix(encoding))


def read_lines(path: Path, encoding: str = "utf-8") -> Iterator[Line]:
    """The physical lines of `path`, decoded with `encoding` (a UTF-8 byte-order mark is dropped)."""
    encoding = check_encoding(encoding)
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            start = offset
            offset += len(raw)
            if number == 1 and encoding.startswith("utf-8") and raw.startswith(codecs.BOM_UTF8):
                raw, start = raw[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
            if not raw.endswith(b"\n"):  # the last line: ended like the others, so a quote open here shows
                raw += b"\n"
            try:
                yield Line(number, raw.decode(encoding))
            except UnicodeDecodeError as e:
                yield Line(number, raw.decode(encoding, "surrogateescape"), _bad_bytes(raw, e, number, start, encoding))


def read_json(path: Path, encoding: str = "utf-8"):
    """Parse a JSON file; undecodable bytes or bad JSON -> SourceError naming the line, byte offset and fix."""
    raw = Path(path).read_bytes()
    encoding = check_encoding(encoding)
    if encoding.startswith("utf-8") and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SourceError(f"{path}: {_bad_bytes(raw, e, line, 0, encoding)}.") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise SourceError(f"{path} is not valid JSON ({e}); re-download or repair it.") from None


@dataclass(frozen=True)
class BadRow:
    """A CSV record that cannot be used: one errors.jsonl line at `line`."""

    line: int
    reason: str  # unparsable_row | bad_encoding
    detail: str


class Row(NamedTuple):
    line: int  # first physical line of the record
    cells: list[str]
    last_line: int


class _Feed:
    """The lines a csv.reader consumes, remembering those of the current record so they can be pushed back."""

    def __init__(self, lines: Iterable[Line]):
        self.it, self.back, self.taken = iter(lines), [], []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.back.pop() if self.back else next(self.it)
        self.taken.append(line)
        if len(self.taken) > MAX_RECORD_LINES:
            raise csv.Error(f"a quoted cell runs over more than {MAX_RECORD_LINES} lines")
        return line.text

    def start(self) -> None:
        self.taken = []

    def rewind_after_first(self) -> None:
        """Give back every line of the current record but its first (parsing resumes at the next line)."""
        self.back.extend(reversed(self.taken[1:]))
        self.taken = self.taken[:1]


class CsvTable:
    """A CSV file with a header line. `header` is read on construction (SourceError if it is unusable)."""

    def __init__(self, path: Path, encoding: str = "utf-8", what: str = "csv"):
        self.path, self.what = Path(path), what
        self._feed = _Feed(read_lines(self.path, encoding))
        first = next(self._records(multiline=set()), None)
        if first is None:
            raise SourceError(f"{what}: {self.path} is empty: the first line must name the columns.")
        if isinstance(first, BadRow):
            raise SourceError(f"{what}: {self.path} line {first.line} (the header): {first.detail}")
        self.header = [h.strip() for h in first.cells]

    def rows(self, multiline: Iterable[str] = ()) -> Iterator[Union[Row, BadRow]]:
        """Data rows after the header (blank lines dropped). Only the columns named in `multiline` may hold a
        quoted cell spanning lines; a record that breaks that, has the wrong number of cells after spanning
        lines, or whose continuation lines look like rows of their own (an unclosed quote that happened to
        close later) is reported at its first line, and parsing resumes at the line after it."""
        cols = {i for i, h in enumerate(self.header) if h in set(multiline)}
        for rec in self._records(cols):
            if isinstance(rec, Row) and not "".join(rec.cells).strip():
                continue
            yield rec

    def _records(self, multiline: set[int]) -> Iterator[Union[Row, BadRow]]:
        feed = self._feed
        # strict where cells may span lines: a stray quote is then an error, not the start of a swallow
        reader = csv.reader(feed, strict=bool(multiline))
        while True:
            feed.start()
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                if not feed.taken:  # nothing was read: nothing to report
                    return
                yield self._unclosed(feed, str(e))
                reader = csv.reader(feed, strict=bool(multiline))
                continue
            first, last = feed.taken[0].number, feed.taken[-1].number
            problem = self._check(cells, first, last, multiline)
            if problem:
                yield self._unclosed(feed, problem)
                continue
            bad = feed.taken[0].bad if len(feed.taken) == 1 else next((ln.bad for ln in feed.taken if ln.bad), None)
            if bad:
                yield BadRow(first, "bad_encoding", bad)
                continue
            yield Row(first, cells, last)

    def _check(self, cells: list[str], first: int, last: int, multiline: set[int]) -> Optional[str]:
        """Why a record read over several lines is not one real row (None if it is, or spans one line)."""
        if first == last:  # only a quote left open at the end of the file leaves a line break in (the last) cell
            return "unclosed quote at the end of the file" if cells and cells[-1][-1:] in ("\n", "\r") else None
        if not multiline or any(("\n" in c or "\r" in c) and i not in multiline for i, c in enumerate(cells)):
            return f"a quoted cell runs over lines {first}-{last}"
        if len(cells) != len(self.header):
            return f"a quoted cell runs over lines {first}-{last} and the record has {len(cells)} cells"
        for line in self._feed.taken[1:]:
            alone = next(csv.reader([line.text]), [])
            if len(alone) == len(self.header) and any(c.strip().lower().endswith(IMAGE_SUFFIXES) for c in alone):
                return (f"a quoted cell runs over lines {first}-{last} and line {line.number} reads as a row of "
                        "its own (an unclosed quote)")
        return None

    def _unclosed(self, feed: _Feed, problem: str) -> BadRow:
        first = feed.taken[0].number
        feed.rewind_after_first()
        return BadRow(first, "unparsable_row",
                      f"{problem}: a cell that starts with a quote must end with one (write \"\" for a quote "
                      "inside a quoted cell); only this line is skipped, the next line is read as a new row")


def well_formed(rows: Iterable[Union[Row, BadRow]], path: Path, n_fields: int, fix: str, id_prefix: str = "line",
                more_ok: bool = False, id_col: Optional[int] = None) -> Iterator[Union[Row, Skip]]:
    """The rows with `n_fields` cells (at least, with `more_ok`); every other row is a Skip at its real line,
    `fix` saying what to change, with the id in column `id_col` where there is one, else <id_prefix><line>.
    The one place a source turns malformed rows into errors.jsonl lines."""
    for r in rows:
        where = f"{path}:{r.line}"
        if isinstance(r, BadRow):
            yield skip(f"{id_prefix}{r.line}", where, r.reason, r.detail)
        elif len(r.cells) < n_fields or (len(r.cells) > n_fields and not more_ok):
            given = safe_id(r.cells[id_col].strip()) if id_col is not None and len(r.cells) > id_col else ""
            yield skip(given or f"{id_prefix}{r.line}", where, "unparsable_row",
                       f"{len(r.cells)} fields, expected {n_fields}; {fix}")
        else:
            yield r
