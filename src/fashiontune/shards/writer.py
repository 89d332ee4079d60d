"""Write one shard: the unit of work of the process pool and of resume.

A shard is written under a temporary name, fsynced and renamed; only then is its completion record
(`_state/shards/<split>/shard-NNNNNN.json`: count, bytes, sha256, label counts, errors) written, also
atomically. So a tar without a matching record is by definition partial and gets rebuilt, and a record
always describes the bytes next to it. Tar members carry a fixed mtime/owner so the bytes are a pure
function of the plan: a rerun after a kill ends byte-identical to an uninterrupted build.

The tar is written the way webdataset's `TarWriter` writes it (members `<key>.<ext>` in sorted order, plain
uncompressed tar stream) but with the standard library: `import webdataset` imports torch, which costs
~5 s and ~650 MB of RSS in every worker process, more than building a whole shard of small images.
tests/test_shards_build.py reads our shards back with `webdataset.WebDataset` to hold the format to that.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import socket
import tarfile
from pathlib import Path
from typing import Callable, Optional


from fashiontune.shards.errors import OutputError
from fashiontune.shards.image import ImageError, encode

STATE_DIR = "_state"
_HOST = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"
PARTIAL = ".partial"


class _HashingFile:
    """File wrapper that hashes and counts what the tar stream writes (no second read of the shard)."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.n += len(b)
        return self.f.write(b)


class _SampleTar:
    """Samples -> tar stream, member for member as webdataset's TarWriter lays them out."""

    def __init__(self, f):
        self.tar = tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            data = members[ext]
            ti = tarfile.TarInfo(f"{key}.{ext}")
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o444  # fixed: same bytes on every rerun
            ti.uname = ti.gname = "fashiontune"
            self.tar.addfile(ti, io.BytesIO(data))

    def close(self) -> None:
        self.tar.close()


def state_path(out_dir: Path, shard_name: str) -> Path:
    return out_dir / STATE_DIR / "shards" / (shard_name[: -len(".tar")] + ".json")


def tmp_path(final: Path) -> Path:
    """A temp name unique to this process, also across the nodes of an array job on a shared filesystem."""
    return final.with_name(f".{final.name}.{_HOST}.{os.getpid()}{PARTIAL}")


def open_output(path: Path, mode: str):
    """Every file the builder writes is opened here (one seam for the disk-full and crash tests)."""
    return open(path, mode, encoding=None if "b" in mode else "utf-8")


@contextlib.contextmanager
def writing(final: Path, tmp: Optional[Path] = None):
    """An OSError while writing `final` (disk full, read-only, no permission) -> one OutputError naming the
    file and the fix; the temp file is removed so that nothing half-written stays behind."""
    try:
        yield
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise OutputError(output_error_message(final, e)) from e


def output_error_message(path: Path, e: OSError) -> str:
    what = e.strerror or str(e)
    code = errno.errorcode.get(e.errno or 0, "")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = ("free space on that disk (or pass another --out), then rerun the same command: finished shards are "
               "kept, nothing half-written is reused")
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "pass an --out folder you can write to"
    else:
        fix = "fix the output folder, then rerun the same command to resume"
    return f"cannot write {path}: {what}{f' ({code})' if code else ''}; {fix}."


def write_text_atomic(path: Path, text: str, fsync: bool = True) -> None:
    """Write `text` under a temp name, then rename: a reader never sees a half-written file."""
    tmp = tmp_path(path)
    with writing(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_output(tmp, "w") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)


def write_json_atomic(path: Path, obj, indent: Optional[int] = None) -> None:
    # key order is built deterministically; ensure_ascii=False: labels stay readable
    write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def completed(out_dir: Path, name: str, spec: str, check_sha: bool = True) -> Optional[dict]:
    """The shard's completion record if it exists, was made for this plan (`spec`) and matches the tar."""
    try:
        rec = json.loads(state_path(out_dir, name).read_text())
        tar = out_dir / name
        if rec.get("spec") != spec or tar.stat().st_size != rec["bytes"]:
            return None
        if check_sha and sha256_file(tar) != rec["sha256"]:
            return None
        return rec
    except (OSError, ValueError, KeyError):
        return None


def write_shard(
    out_dir: str,
    shard: dict,
    image_size: int,
    quality: int,
    progress: Optional[Callable[[int], None]] = None,
) -> dict:
    """Encode every item of `shard` (`{"name", "split", "spec", "items"}`) into its tar; return its record."""
    out = Path(out_dir)
    final = out / shard["name"]
    tmp = tmp_path(final)
    follow = shard.get("follow_symlinks", True)  # the plan refused symlinks already; O_NOFOLLOW re-checks
    errors: list[dict] = []
    labels: dict[str, dict[str, int]] = {}
    count = 0
    with writing(final, tmp):
        final.parent.mkdir(parents=True, exist_ok=True)
        with open_output(tmp, "wb") as f:
            hf = _HashingFile(f)
            tw = _SampleTar(hf)
            try:
                for item in shard["items"]:
                    try:
                        enc = encode(item["path"], image_size, quality, follow, item.get("index"))
                    except ImageError as e:
                        errors.append({"id": item["id"], "path": item["path"], "reason": e.reason, "detail": e.detail})
                    else:
                        tw.write(item["id"], _members(item, enc))
                        count += 1
                        for field, v in item["labels"].items():
                            c = labels.setdefault(field, {})
                            for value in v if isinstance(v, list) else [v]:
                                c[value] = c.get(value, 0) + 1
                    if progress is not None:
                        progress(1)
            except BaseException:
                with contextlib.suppress(Exception):  # finish the temp tar so its stream does not write on GC
                    tw.close()
                raise
            tw.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    record = {
        "name": shard["name"],
        "split": shard["split"],
        "spec": shard["spec"],
        "count": count,
        "bytes": hf.n,
        "sha256": hf.sha.hexdigest(),
        "labels": {k: dict(sorted(v.items())) for k, v in sorted(labels.items())},
        "errors": errors,
    }
    write_json_atomic(state_path(out, shard["name"]), record)
    return record


def _members(item: dict, enc) -> dict[str, bytes]:
    sample = {"id": item["id"], "group_id": item["group_id"], "split": item["split"], "labels": item["labels"],
              "meta": item["meta"], "orig_size": list(enc.orig_size)}
    return {
        "jpg": enc.jpeg,
        "txt": item["text"].encode("utf-8"),
        "json": json.dumps(sample, sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }


def write_shard_job(args: tuple) -> dict:
    """Process-pool entry point (picklable, top level)."""
    return write_shard(*args)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
