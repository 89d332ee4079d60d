"""What every corpus adapter shares: the Source interface, id rules and the missing-file error."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

from fashiontune.config import ConfigError
from fashiontune.records import Record, Skip


class SourceError(ConfigError):
    """The input does not look like the corpus the user named; the message says which file and what to get."""


class Source:
    """A corpus adapter: reads metadata only (no image decoding) and yields Records, or Skips for inputs it
    cannot use, in a deterministic order. Never raises on a bad row; raises SourceError when the input as a
    whole is not this corpus (a required file is missing)."""

    name: str = ""
    # file or folder names the input directory must contain -> what the real download should have there
    required: dict[str, str] = {}

    def __init__(self, encoding: str = "utf-8", follow_symlinks: bool = False):
        self.encoding = encoding  # of the corpus's CSV / JSON / label files (never guessed, never replaced)
        self.follow_symlinks = follow_symlinks  # read symlinked folders (adapters that walk folders)

    def check(self, input_dir: Path) -> Path:
        root = Path(input_dir)
        if not root.is_dir():
            raise SourceError(f"{self.name}: input {root} is not a directory. {self.expect()}")
        for rel, what in self.required.items():
            if not (root / rel).exists():
                # downloads often unpack into one more folder (e.g. fashion-dataset/styles.csv)
                nested = sorted(p.parent for p in root.glob(f"*/{rel}"))
                hint = f" Found {nested[0] / rel}: pass --input {nested[0]}." if nested else ""
                raise SourceError(f"{self.name}: {root / rel} not found ({what}).{hint} {self.expect()}")
        return root

    def expect(self) -> str:
        names = ", ".join(self.required)
        return f"Point --input at the folder of the {self.name} download, which contains: {names}."

    def iter_records(self, input_dir: Path) -> Iterator[Record | Skip]:
        raise NotImplementedError


# Kept as a name for adapters and tests: a Skip always carries `detail` now (records.py).
SourceSkip = Skip


def skip(id: str, path: str, reason: str, detail: str = "") -> Skip:
    return Skip(id=id, path=path, reason=reason, detail=detail)


_SLASH = re.compile(r"[/\\]")
_OTHER = re.compile(r"[.\s]")


def safe_id(text: str) -> str:
    """An id usable as a WebDataset `__key__`: '/' (and '\\') -> '__', '.' and whitespace -> '_'."""
    return _OTHER.sub("_", _SLASH.sub("__", text.strip()))


def undecodable_name(path: str) -> bool:
    """True for a file name whose bytes are not UTF-8 (Python holds them as surrogate escapes)."""
    try:
        path.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def printable(text: str) -> str:
    """`text` with undecodable bytes shown as \\xNN (for messages and errors.jsonl, which are UTF-8)."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (e.g. a JSON "\\ud800")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bad_filename(rel: str, full: str) -> Skip:
    """The error line for a file whose name is not UTF-8: shown escaped; the build goes on."""
    return skip(path_id(printable(rel)), printable(full), "bad_filename",
                f"the file name is not valid UTF-8 ({os.fsencode(full)!r}); rename it to UTF-8, e.g. "
                "`convmv -f latin1 -t utf-8 --notest -r DIR`")


def path_id(rel: str) -> str:
    """Id of a file from its path relative to the corpus root ('shirt/a.jpg' -> 'shirt__a_jpg')."""
    return safe_id(rel.replace("\\", "/"))
