"""`verify(out_dir)`: re-read every shard and check it against manifest.json.

Checks per shard: the file exists, its size and sha256 match (a shorter file is reported as truncated, a
same-size different one as modified), it parses as a tar, every sample has jpg/txt/json members, its jpg
decodes, its json names the right split, keys are unique across the build, and the counts add up.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fashiontune.shards.manifest import load_manifest

MEMBERS = ("jpg", "json", "txt")


@dataclass
class VerifyReport:
    out_dir: str
    shards_checked: int = 0
    samples_checked: int = 0
    problems: list[str] = field(default_factory=list)  # one line per problem, naming the shard

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.out_dir}: {self.shards_checked} shards, {self.samples_checked} samples checked: "
        if self.ok:
            return head + "OK"
        return head + f"{len(self.problems)} problem(s)\n" + "\n".join(f"  {p}" for p in self.problems)


def verify(out_dir: str | Path, decode: bool = True) -> VerifyReport:
    out = Path(out_dir)
    m = load_manifest(out)
    rep = VerifyReport(str(out))
    seen: set[str] = set()
    total = 0
    for split, info in m["splits"].items():
        split_count = 0
        for sh in info["shards"]:
            rep.shards_checked += 1
            n = _check_shard(out, split, sh, decode, seen, rep)
            split_count += n
        if split_count != info["count"]:
            rep.problems.append(f"split {split}: {split_count} samples in its shards, manifest says {info['count']}")
        total += split_count
    if total != m["items"]["written"]:
        rep.problems.append(f"{total} samples in all shards, manifest items.written says {m['items']['written']}")
    return rep


def _check_shard(out: Path, split: str, sh: dict, decode: bool, seen: set[str], rep: VerifyReport) -> int:
    name, path = sh["name"], out / sh["name"]
    if not path.is_file():
        rep.problems.append(f"{name}: missing")
        return 0
    data = path.read_bytes()
    if len(data) < sh["bytes"]:
        rep.problems.append(f"{name}: truncated ({len(data)} of {sh['bytes']} bytes)")
    elif len(data) > sh["bytes"]:
        rep.problems.append(f"{name}: modified ({len(data)} bytes, manifest says {sh['bytes']})")
    elif hashlib.sha256(data).hexdigest() != sh["sha256"]:
        rep.problems.append(f"{name}: modified (sha256 differs from the manifest)")
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for ti in tf:
                if not ti.isfile():
                    continue
                key, _, ext = ti.name.partition(".")
                samples.setdefault(key, {})[ext] = tf.extractfile(ti).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        rep.problems.append(f"{name}: unreadable tar ({type(e).__name__}: {e})")
    for key, members in samples.items():
        rep.samples_checked += 1
        where = f"{name}: sample {key}"
        if key in seen:
            rep.problems.append(f"{where}: key appears in another shard too")
        seen.add(key)
        absent = [m for m in MEMBERS if m not in members]
        if absent:
            rep.problems.append(f"{where}: no {'/'.join(absent)} member")
            continue
        try:
            meta = json.loads(members["json"])
            if meta.get("split") != split or meta.get("id") != key:
                rep.problems.append(f"{where}: json says split={meta.get('split')!r} id={meta.get('id')!r}")
        except ValueError as e:
            rep.problems.append(f"{where}: json does not parse ({e})")
        if decode:
            try:
                with Image.open(io.BytesIO(members["jpg"])) as im:
                    im.load()
                    if im.mode != "RGB":
                        rep.problems.append(f"{where}: jpg is {im.mode}, not RGB")
            except Exception as e:
                rep.problems.append(f"{where}: jpg does not decode ({type(e).__name__}: {e})")
    if len(samples) != sh["count"]:
        rep.problems.append(f"{name}: {len(samples)} samples, manifest says {sh['count']}")
    return len(samples)
