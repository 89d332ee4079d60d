"""The item contract between corpus adapters (`sources/`) and the shard builder (`shards/`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

LabelValue = Union[str, list[str]]


@dataclass(frozen=True)
class Record:
    """One item of a corpus, before its image is decoded.

    id:         stable, unique item id; becomes the sample's `__key__` (no dots, no slashes).
    group_id:   product id: every view of one product shares it; splits are assigned per group.
    image_path: the image file on disk (may turn out missing or corrupt: the builder records that).
    text:       caption or product name, may be empty.
    labels:     label field -> value (single-label) or list of values (multi-label). Fields absent for an
                item are simply missing from the dict (never a placeholder value).
    meta:       any other source metadata worth keeping in the sample's json (raw name, height, ...).
    """

    id: str
    group_id: str
    image_path: Path
    text: str = ""
    labels: dict[str, LabelValue] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    """An input a source could not turn into a Record (unparsable row, ...): one line of errors.jsonl."""

    id: str
    path: str  # the file (and `:line` for a row) the user should look at
    reason: str  # short code counted in the manifest: unparsable_row, duplicate_id, ...
    detail: str = ""  # what is wrong and how to fix it
