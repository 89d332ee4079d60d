"""The item contract between corpus adapters (`sources/`) and the shard builder (`shards/`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

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
    split:      "" (the builder draws the split from the group hash), or the split the dataset itself fixes for
                the item (Fashion-MNIST's t10k = "test"). A split any record fixes holds exactly those records.
    image_index: None when image_path is an image file; else the item is image number `image_index` of the
                multi-image file image_path (an IDX file), read from there by the shard writer.
    """

    id: str
    group_id: str
    image_path: Path
    text: str = ""
    labels: dict[str, LabelValue] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)
    split: str = ""
    image_index: Optional[int] = None


@dataclass(frozen=True)
class Skip:
    """An input a source could not turn into a Record (unparsable row, ...): one line of errors.jsonl."""

    id: str
    path: str  # the file (and `:line` for a row) the user should look at
    reason: str  # short code counted in the manifest: unparsable_row, duplicate_id, ...
    detail: str = ""  # what is wrong and how to fix it
