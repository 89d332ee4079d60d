"""data.max_train_items: a deterministic subset of the training split, optionally class-balanced.

Every item gets a score from a hash of (data.seed, key); the subset is the lowest-scored items, or, with
data.subset_field, classes taken in turn (each class's lowest-scored item not yet taken; classes that run out
drop out), so rare classes are represented as far as they can be. The order is fixed, so a smaller subset is
always contained in a larger one (a data-efficiency curve adds data, it does not redraw it), and every rank
computes the same subset on its own.

Choosing needs the keys (and labels): one pass over the tar headers (and .json members) of the split's shards
when the loader is built (index_tar: image bytes are seeked over). It records each chosen sample's byte span,
and every epoch then reads only those spans (iter_spans): an epoch of 100 items costs 100 items' bytes,
not the split's (tests/test_data_subset.py counts them).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from dataclasses import replace
from typing import Sequence

from fashiontune.config import ConfigError
from fashiontune.data.manifest import ShardInfo
from fashiontune.data.samples import SampleSpan, index_tar, sample_meta


def _score(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def _class_of(labels: dict, field: str) -> str:
    value = labels.get(field)
    if isinstance(value, list):  # multi-label: balance over the first value
        value = value[0] if value else None
    return "" if value is None else str(value)


def _round_robin(by_class: dict[str, list[tuple[int, str]]], n: int) -> list[str]:
    queues = [sorted(v) for _, v in sorted(by_class.items())]
    order = (item for rnd in itertools.zip_longest(*queues) for item in rnd if item is not None)
    return [key for _, key in itertools.islice(order, n)]


def subset_shards(shards: Sequence[ShardInfo], max_items: int, seed: int, field: str = "",
                  manifest: dict | None = None) -> list[ShardInfo]:
    """`shards` restricted to `max_items` chosen items (all of them when max_items is 0 or >= the split)."""
    if max_items <= 0 or max_items >= sum(s.count for s in shards):
        return list(shards)
    if field and field not in (manifest or {}).get("labels", {field: None}):
        raise ConfigError(f"data.subset_field={field!r} is not a label field of the shards; the manifest has "
                          f"{sorted((manifest or {}).get('labels', {}))} (or set '' for an unbalanced subset).")
    by_class: dict[str, list[tuple[int, str]]] = defaultdict(list)
    where: dict[str, tuple[int, SampleSpan]] = {}
    for i, sh in enumerate(shards):
        for span, meta in index_tar(sh.path, sh.count, with_json=bool(field)):
            where[span.key] = (i, span)
            label = _class_of(_labels(meta, sh, span), field) if field else ""
            by_class[label].append((_score(seed, span.key), span.key))
    chosen = _round_robin(by_class, max_items) if field else [k for _, k in sorted(by_class[""])[:max_items]]
    keep: dict[int, list[SampleSpan]] = defaultdict(list)
    for key in chosen:
        i, span = where[key]
        keep[i].append(span)
    return [replace(sh, count=len(keep[i]), spans=tuple(sorted(keep[i], key=lambda s: s.offset)))
            for i, sh in enumerate(shards) if keep[i]]


def _labels(meta: bytes | None, shard: ShardInfo, span: SampleSpan) -> dict:
    """The labels of one sample's .json member (sample_meta's checks: a ShardDataError naming it)."""
    sample = {"__key__": span.key, "__url__": str(shard.path), **({} if meta is None else {"json": meta})}
    return sample_meta(sample).get("labels", {})
