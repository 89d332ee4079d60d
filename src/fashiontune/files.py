"""Atomic file writes: write under a temporary name, then rename, so a reader (a resumed job, another rank)
never sees a half-written file. The shard builder has its own variant (shards/writer.py) because it also
fsyncs, injects faults in tests and turns a full disk into its own one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def replace_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` writes the content; `tmp` then replaces `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return replace_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, obj: Any, indent: int = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=str))
