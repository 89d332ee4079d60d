"""manifest.json: assembled from the plan and the per-shard completion records; read by every loader.

No timestamps, no output paths, no worker counts: two builds of the same corpus with the same parameters
give byte-identical manifests, whichever way (workers, array jobs, resumes) they were built.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from fashiontune.shards.errors import ManifestError
from fashiontune.shards.plan import BUILDER_VERSION, Plan

FORMAT = "fashiontune-shards"


def make_manifest(plan: Plan, records: dict[str, dict], errors: list[dict]) -> dict:
    """`records`: shard name -> completion record, for every planned shard; `errors`: all error lines."""
    failed = {e["id"] for r in records.values() for e in r["errors"]}
    splits: dict[str, dict] = {}
    for name in plan.params["splits"]:
        shards = [s for s in plan.shards if s.split == name]
        groups = {it["group_id"] for s in shards for it in s.items if it["id"] not in failed}
        splits[name] = {
            "count": sum(records[s.name]["count"] for s in shards),
            "groups": len(groups),
            "shards": [
                {k: records[s.name][k] for k in ("name", "count", "bytes", "sha256")} for s in shards
            ],
        }
    labels: dict[str, dict] = {}
    for field, multi in plan.multi.items():
        per_split: dict[str, Counter] = {name: Counter() for name in splits}
        for s in plan.shards:
            per_split[s.split].update(records[s.name]["labels"].get(field, {}))
        total = sum(per_split.values(), Counter())
        labels[field] = {
            "multi": multi,
            "vocab": sorted(total),
            "counts": dict(sorted(total.items())),
            "split_counts": {n: dict(sorted(c.items())) for n, c in per_split.items()},
        }
    written = sum(s["count"] for s in splits.values())
    return {
        "format": FORMAT,
        "builder_version": BUILDER_VERSION,
        "source": plan.source,
        "input": plan.input,
        "params": plan.params,
        "splits": splits,
        "labels": labels,
        "errors": {"count": len(errors), "by_reason": dict(sorted(Counter(e["reason"] for e in errors).items()))},
        "items": {"listed": plan.listed, "written": written, "skipped": len(errors)},
    }


def load_manifest(path: str | Path) -> dict:
    """The manifest of a shard directory (or the manifest.json file itself)."""
    p = Path(path)
    f = p / "manifest.json" if p.is_dir() or not p.suffix else p
    if not f.is_file():
        raise ManifestError(
            f"{f} does not exist: build shards first (`fashiontune shards build --out {p}`), "
            "or finish an array build with `fashiontune shards merge DIR`."
        )
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ManifestError(f"{f} is not valid JSON ({e}): rebuild it with `fashiontune shards merge {f.parent}`.")
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ManifestError(f"{f}: field 'format' is not {FORMAT!r}: this is not a fashiontune shard manifest.")
    if m.get("builder_version", 0) > BUILDER_VERSION:
        raise ManifestError(
            f"{f}: builder_version {m['builder_version']} is newer than this code ({BUILDER_VERSION}): update fashiontune."
        )
    return m
