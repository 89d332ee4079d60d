"""The shard plan: which item goes to which split, in which order, in which shard, built by which job.

Everything here is a pure function of the source's records and the build parameters, never of the worker
count, the array size or the clock, so every array task computes the same plan on its own and a rerun
after a crash finds the same shard names holding the same items.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from fashiontune.records import Record, Skip
from fashiontune.shards.errors import BuildError
from fashiontune.shards.paths import PathPolicy
from fashiontune.sources.base import printable as _printable

BUILDER_VERSION = 1
_BAD_ID = re.compile(r"[./\\\s]")  # webdataset cuts keys at the first dot; slashes would make paths


def unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from strings: 64 bits of sha256 (stable across Python runs, unlike hash())."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def assign_split(group_id: str, splits: dict[str, float], salt: str) -> str:
    """The split of a group: its hash against the cumulative fractions, so no group straddles two splits."""
    u = unit_hash(salt, "split", group_id)
    acc = 0.0
    names = list(splits)
    for name in names:
        acc += splits[name]
        if u < acc:
            return name
    return next(n for n in reversed(names) if splits[n] > 0)  # float rounding at the top end


@dataclass
class ShardPlan:
    name: str  # "train/shard-000000.tar"
    split: str
    items: list[dict]  # item specs (see `item_spec`), in write order
    spec: str = ""  # sha256 of params + items: a completion record counts only if it matches

    @property
    def state_name(self) -> str:
        return self.name[: -len(".tar")] + ".json"


@dataclass
class Plan:
    params: dict
    shards: list[ShardPlan]
    errors: list[dict]  # source-level errors (Skip, duplicate or bad ids)
    listed: int
    multi: dict[str, bool] = field(default_factory=dict)  # label field -> multi-label?
    source: str = ""
    input: str = ""

    def owned(self, num_jobs: int, job_index: int) -> list[ShardPlan]:
        lo, hi = job_range(len(self.shards), num_jobs, job_index)
        return self.shards[lo:hi]

    def owner(self, shard_index: int, num_jobs: int) -> int:
        return next(j for j in range(num_jobs) if shard_index < job_range(len(self.shards), num_jobs, j)[1])

    def to_json(self) -> dict:
        return {
            "builder_version": BUILDER_VERSION,
            "source": self.source,
            "input": self.input,
            "params": self.params,
            "listed": self.listed,
            "multi": self.multi,
            "errors": self.errors,
            "shards": [{"name": s.name, "split": s.split, "spec": s.spec, "items": s.items} for s in self.shards],
        }

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        shards = [ShardPlan(s["name"], s["split"], s["items"], s["spec"]) for s in d["shards"]]
        return cls(d["params"], shards, d["errors"], d["listed"], d["multi"], d["source"], d["input"])


def job_range(n_shards: int, num_jobs: int, job_index: int) -> tuple[int, int]:
    """Contiguous, disjoint, covering ranges of shard indices; sizes differ by at most one."""
    return n_shards * job_index // num_jobs, n_shards * (job_index + 1) // num_jobs


def _norm_labels(labels: dict, multi: dict[str, bool]) -> dict:
    """Drop missing values (None, ""), stringify, and make multi-label fields sorted unique lists."""
    out: dict = {}
    for k in sorted(labels):
        v = labels[k]
        if multi.get(k):
            vals = v if isinstance(v, (list, tuple)) else ([] if v is None or v == "" else [v])
            out[k] = sorted({str(x) for x in vals if x is not None and x != ""})
        elif v is not None and v != "":
            out[k] = str(v)
    return out


def _error(id_: str, path: str, reason: str, detail: str = "") -> dict:
    return {"id": str(id_), "path": str(path), "reason": reason, "detail": detail}


_SURROGATE = re.compile("[\ud800-\udfff]")


def _undecodable_field(r: Record) -> Optional[str]:
    """The first field of `r` holding text that is not valid Unicode (undecodable bytes, a lone surrogate)."""
    fields = {"image path": str(r.image_path), "id": r.id, "group_id": r.group_id, "text": r.text,
              "labels": json.dumps(r.labels, ensure_ascii=False, default=str),
              "meta": json.dumps(r.meta, ensure_ascii=False, default=str)}
    return next((k for k, v in fields.items() if _SURROGATE.search(v or "")), None)


def _check_record(r: Record, policy: PathPolicy, first_path: dict[str, str]) -> tuple[str, Optional[dict]]:
    """(the image path to read, None) for a usable record, else (path, its error line)."""
    bad_field = _undecodable_field(r)
    if bad_field:  # checked first: such a string cannot even be passed to lstat or written as UTF-8
        path = _printable(str(r.image_path))
        if bad_field == "image path":
            return path, _error(_printable(r.id), path, "bad_filename",
                                "the file name is not valid UTF-8; rename it (e.g. `convmv -f latin1 -t utf-8`)")
        return path, _error(_printable(r.id), path, "bad_encoding",
                            f"the {bad_field} is not valid Unicode text (undecodable bytes or an unpaired "
                            "surrogate); fix the source file, or pass its real encoding with --encoding")
    path, problem = policy.check(r.image_path)
    if not r.id or _BAD_ID.search(r.id):
        return path, _error(r.id, path, "bad_id", "ids become webdataset keys: no dots, slashes or spaces")
    if r.id in first_path:
        return path, _error(r.id, path, "duplicate_id", f"id already used by {first_path[r.id]}")
    if problem:
        return path, _error(r.id, path, *problem)
    return path, None


def drawn_splits(splits: dict[str, float], kept: list[tuple[Record, str]]) -> tuple[dict[str, float], list[str]]:
    """(fractions the group hash draws the other items from, the splits the source fixes).

    A split that any record fixes (Record.split, e.g. Fashion-MNIST's official test set) holds exactly the
    records that fix it: its fraction is ignored and the rest are drawn among the other splits, their fractions
    rescaled to sum to 1. Without fixed splits the fractions are used untouched (no rescaling round-off)."""
    fixed = sorted({r.split for r, _ in kept if r.split})
    unknown = [f for f in fixed if f not in splits]
    fix = "its fraction is ignored: the dataset decides which items are in it"
    if unknown:
        raise BuildError(f"the source fixes the split(s) {', '.join(unknown)} of some items, but splits="
                         f"{','.join(f'{k}={v:g}' for k, v in splits.items())} has no such split: add it, e.g. "
                         f"--splits train=0.9,val=0.1,{unknown[0]}=0 ({fix}).")
    if not fixed:
        return splits, []
    free = {k: v for k, v in splits.items() if k not in fixed}
    total = sum(free.values())
    if total <= 0 and any(not r.split for r, _ in kept):
        raise BuildError(f"the source fixes the split(s) {', '.join(fixed)}; the other items need another split "
                         f"with a fraction > 0 in splits={','.join(f'{k}={v:g}' for k, v in splits.items())}, "
                         "e.g. --splits train=0.9,val=0.1,test=0.")
    return {k: v / total for k, v in free.items()} if total > 0 else free, fixed


def make_plan(records: Iterable[Record | Skip], input_dir: Path, params: dict) -> Plan:
    """Turn a source's records into the shard plan (deterministic; see module docstring)."""
    splits: dict[str, float] = params["splits"]
    salt: str = params["split_salt"]
    root = input_dir if input_dir.is_dir() else input_dir.parent  # a CSV given as --input: its folder
    policy = PathPolicy(root, params.get("follow_symlinks", False), params.get("allow_outside_input", False))
    errors: list[dict] = []
    kept: list[tuple[Record, str]] = []
    first_path: dict[str, str] = {}
    listed = 0
    for r in records:
        listed += 1
        if isinstance(r, Skip):
            errors.append(_error(_printable(r.id), _printable(r.path), r.reason, _printable(r.detail)))
            continue
        path, error = _check_record(r, policy, first_path)
        if error:
            errors.append(error)
        else:
            first_path[r.id] = path
            kept.append((r, path))
    multi: dict[str, bool] = {}
    for r, _ in kept:
        for k, v in r.labels.items():
            multi[k] = multi.get(k, False) or isinstance(v, (list, tuple))
    multi = dict(sorted(multi.items()))

    drawn, fixed = drawn_splits(splits, kept)
    if fixed:
        params = {**params, "fixed_splits": fixed}
    by_split: dict[str, list[tuple[float, str, dict]]] = {name: [] for name in splits}
    for r, path in kept:
        group = r.group_id or r.id  # a source without product ids: every item its own group
        split = r.split or assign_split(group, drawn, salt)
        item = {
            "id": r.id,
            "group_id": group,
            "split": split,
            "path": path,
            "text": r.text or "",
            "labels": _norm_labels(r.labels, multi),
            "meta": json.loads(json.dumps(r.meta, sort_keys=True, default=str)),
        }
        if r.image_index is not None:  # only then: the specs (and shards) of image-file builds stay as they were
            item["index"] = int(r.image_index)
        # Order by a hash of the id: a deterministic shuffle, so one shard is not one class or one product.
        by_split[split].append((unit_hash(salt, "order", r.id), r.id, item))

    shards: list[ShardPlan] = []
    size = params["shard_size"]
    # What the bytes of a shard depend on besides its items (max_bad_fraction etc. do not invalidate shards).
    encoding = {"image_size": params["image_size"], "quality": params["quality"], "builder": BUILDER_VERSION}
    for split, items in by_split.items():
        items.sort(key=lambda t: (t[0], t[1]))
        for i in range(0, len(items), size):
            chunk = [t[2] for t in items[i : i + size]]
            sp = ShardPlan(f"{split}/shard-{i // size:06d}.tar", split, chunk)
            sp.spec = hashlib.sha256(json.dumps([encoding, chunk], sort_keys=True).encode()).hexdigest()
            shards.append(sp)
    errors.sort(key=error_sort_key)
    return Plan(params, shards, errors, listed, multi, input=str(input_dir))


def error_sort_key(e: dict) -> tuple:
    return (e["id"], e["reason"], e["path"], e["detail"])


