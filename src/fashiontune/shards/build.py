"""`build_shards(cfg)`: source records -> plan -> shards (process pool) -> merge -> manifest.json.

An array task (num_jobs > 1) computes the same plan as every other task, builds only its contiguous range
of shards and returns its part; `merge(out_dir)` then checks that every planned shard is complete and
writes manifest.json and errors.jsonl. A plain build merges at the end by itself.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from tqdm import tqdm

from fashiontune.config import to_dict
from fashiontune.shards.config import ShardBuildConfig
from fashiontune.shards.errors import BuildError
from fashiontune.shards.manifest import make_manifest
from fashiontune.shards.plan import Plan, ShardPlan, error_sort_key, make_plan
from fashiontune.shards.writer import (
    PARTIAL, STATE_DIR, completed, write_json_atomic, write_shard, write_shard_job, write_text_atomic, writing,
)

PLAN_FILE = "plan.json"


def build_params(cfg: ShardBuildConfig) -> dict:
    """The parameters that define the build's output (recorded in the manifest)."""
    return {
        "image_size": cfg.image_size,
        "quality": cfg.quality,
        "shard_size": cfg.shard_size,
        "splits": cfg.split_fractions(),
        "split_salt": cfg.split_salt,
        "max_bad_fraction": cfg.max_bad_fraction,
        "encoding": cfg.encoding,
        "follow_symlinks": cfg.follow_symlinks,
        "allow_outside_input": cfg.allow_outside_input,
    }


def build_shards(cfg: ShardBuildConfig, source=None) -> dict:
    """Build (this task's part of) the shards of `cfg.source`; return the manifest, or the task's part.

    `source`: an object with `iter_records(input_dir)`; default `fashiontune.sources.get_source(cfg.source)`.
    """
    cfg.validate(need_source=source is None)
    if source is None:
        from fashiontune.sources import get_source

        source = get_source(cfg.source, encoding=cfg.encoding, follow_symlinks=cfg.follow_symlinks)
    out = Path(cfg.out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    _save_config(cfg, out)
    input_dir = Path(cfg.input).resolve()
    t0 = time.perf_counter()
    plan = make_plan(source.iter_records(input_dir), input_dir, build_params(cfg))
    plan.source = cfg.source
    if plan.listed == 0:
        raise BuildError(f"{cfg.source or 'source'}: {input_dir} lists no items (e.g. a CSV with a header only, or "
                         "empty class folders): nothing to build. Check --input and --source.")
    # The old manifest no longer describes what is on disk once a shard is touched; merge writes it anew.
    with writing(out / "manifest.json"):
        (out / "manifest.json").unlink(missing_ok=True)
    write_json_atomic(out / STATE_DIR / PLAN_FILE, plan.to_json())  # identical from every task

    owned = plan.owned(cfg.num_jobs, cfg.job_index)
    for s in owned:  # leftovers of a killed run of this task
        for p in list((out / s.split).glob(f".{Path(s.name).name}.*{PARTIAL}")):
            p.unlink(missing_ok=True)
    todo = [s for s in owned if completed(out, s.name, s.spec) is None]  # sha256 re-checked: trust no torn tar
    total = sum(len(s.items) for s in owned)
    n_todo = sum(len(s.items) for s in todo)
    bar = tqdm(
        total=total, initial=total - n_todo, unit="img", desc=f"shards {cfg.source or 'build'}",
        disable=not cfg.progress, dynamic_ncols=True, smoothing=0.1,
    )
    t1 = time.perf_counter()
    try:
        _run(out, todo, cfg, bar)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t1
    stats = {
        "planned_s": t1 - t0, "shards_built": len(todo), "shards_reused": len(owned) - len(todo),
        "items_processed": n_todo, "seconds": elapsed, "items_per_s": n_todo / elapsed if elapsed > 0 else 0.0,
    }
    if cfg.num_jobs > 1:
        part = {"job_index": cfg.job_index, "num_jobs": cfg.num_jobs, "shards": [s.name for s in owned], **stats}
        if cfg.progress:
            print(
                f"job {cfg.job_index}/{cfg.num_jobs}: {len(owned)} of {len(plan.shards)} shards done "
                f"({stats['shards_reused']} reused), {n_todo} images at {stats['items_per_s']:.1f} img/s; "
                f"run `fashiontune shards merge {out}` after the last task.",
                file=sys.stderr,
            )
        return part
    manifest = merge(out)
    if cfg.progress:
        print(summary(manifest, stats), file=sys.stderr)
    return manifest


def _run(out: Path, todo: list[ShardPlan], cfg: ShardBuildConfig, bar: tqdm) -> None:
    workers = min(cfg.resolved_workers(), len(todo))
    if workers <= 1:  # in-process: per-image progress, no pickling, easiest to profile
        for s in todo:
            write_shard(str(out), _shard_arg(s, cfg), cfg.image_size, cfg.quality, progress=bar.update)
        return
    # forkserver: workers do not inherit tqdm's monitor thread or any lock held by the parent at fork time.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["fashiontune.shards.writer"])  # import once, fork cheap workers from it
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        futures = {
            ex.submit(write_shard_job, (str(out), _shard_arg(s, cfg), cfg.image_size, cfg.quality)): s for s in todo
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                exc = f.exception()
                if exc is not None:
                    ex.shutdown(wait=True, cancel_futures=True)
                    if isinstance(exc, BuildError):  # e.g. OutputError: its message names the file and the fix
                        raise exc
                    raise BuildError(
                        f"writing {futures[f].name} failed: {type(exc).__name__}: {exc}. Shards finished so far are "
                        "kept: rerun the same command to resume."
                    ) from exc
                bar.update(len(futures[f].items))


def _shard_arg(s: ShardPlan, cfg: ShardBuildConfig) -> dict:
    return {"name": s.name, "split": s.split, "spec": s.spec, "items": s.items, "follow_symlinks": cfg.follow_symlinks}


def _save_config(cfg: ShardBuildConfig, out: Path) -> None:
    """The resolved config, minus job_index so that every array task writes the same file."""
    d = to_dict(cfg)
    d.pop("job_index", None)
    tmp_yaml = OmegaConf.to_yaml(OmegaConf.create(d))
    p = out / "config.yaml"
    if not p.exists() or p.read_text() != tmp_yaml:
        write_text_atomic(p, tmp_yaml)


def load_plan(out_dir: Path) -> Plan:
    p = Path(out_dir) / STATE_DIR / PLAN_FILE
    if not p.is_file():
        raise BuildError(f"{p} does not exist: run `fashiontune shards build --out {out_dir} ...` first.")
    return Plan.from_json(json.loads(p.read_text(encoding="utf-8")))


def merge(out_dir: str | Path, max_bad_fraction: Optional[float] = None) -> dict:
    """Check that every planned shard is complete; write errors.jsonl and manifest.json; return the manifest."""
    out = Path(out_dir)
    plan = load_plan(out)
    num_jobs = _num_jobs(out)
    records: dict[str, dict] = {}
    missing: list[str] = []
    for i, s in enumerate(plan.shards):
        rec = completed(out, s.name, s.spec, check_sha=False)  # size + plan match; `verify` re-hashes
        if rec is None:
            missing.append(f"{s.name} (job {plan.owner(i, num_jobs)} of {num_jobs})")
        else:
            records[s.name] = rec
    if missing:
        head = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise BuildError(
            f"{out}: {len(missing)} of {len(plan.shards)} planned shards are not complete: {head}. "
            "Rerun the build (the array task with that --job-index) to finish them, then merge again."
        )
    with writing(out / "manifest.json"):  # a failed merge leaves no manifest behind
        (out / "manifest.json").unlink(missing_ok=True)
    _clean(out, plan)
    errors = sorted(plan.errors + [e for r in records.values() for e in r["errors"]], key=error_sort_key)
    _write_errors(out / "errors.jsonl", errors)
    manifest = make_manifest(plan, records, errors)
    items = manifest["items"]
    if items["written"] + items["skipped"] != items["listed"]:  # the no-silent-loss invariant
        raise BuildError(f"{out}: {items} does not add up: please report this bug with the plan in {STATE_DIR}/.")
    limit = plan.params["max_bad_fraction"] if max_bad_fraction is None else max_bad_fraction
    frac = items["skipped"] / max(items["listed"], 1)
    if frac > limit:
        reasons = Counter(e["reason"] for e in errors)
        top = ", ".join(f"{r} {n}" for r, n in reasons.most_common(5))
        hints = "".join(f" {h}." for r, h in _HINTS.items() if r in reasons)
        raise BuildError(
            f"{items['skipped']} of {items['listed']} items ({frac:.1%}) could not be used ({top}), more than "
            f"max_bad_fraction={limit}. Every one is listed in {out / 'errors.jsonl'}: fix those inputs, or "
            f"accept them with --max-bad-fraction (then `fashiontune shards merge {out} --max-bad-fraction X`).{hints}"
        )
    write_json_atomic(out / "manifest.json", manifest, indent=1)
    return manifest


def _num_jobs(out: Path) -> int:
    try:
        return int(OmegaConf.load(out / "config.yaml").get("num_jobs", 1))
    except Exception:
        return 1


def _clean(out: Path, plan: Plan) -> None:
    """Drop leftovers no planned shard owns: temp files of killed writers, shards of an older plan."""
    planned = {s.name for s in plan.shards}
    for p in sorted(out.rglob(f"*{PARTIAL}")):
        p.unlink(missing_ok=True)
    for split in plan.params["splits"]:
        for p in sorted((out / split).glob("shard-*.tar")):
            if f"{split}/{p.name}" not in planned:
                p.unlink()
        for p in sorted((out / STATE_DIR / "shards" / split).glob("shard-*.json")):
            if f"{split}/{p.stem}.tar" not in planned:
                p.unlink()


# reasons whose fix is a flag, said once in the failure message
_HINTS = {
    "symlink": "symlink: pass --follow-symlinks if the links are meant to be read",
    "outside_input": "outside_input: pass --allow-outside-input if those paths are meant to be read",
    "bad_encoding": "bad_encoding: pass the files' real encoding, e.g. --encoding latin-1",
}


def _write_errors(path: Path, errors: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in errors))


def task_range(cfg: Any, out_dir: Path, index: int) -> str:
    """The shards array task `index` builds, for a failure message (the plan may not be written yet)."""
    try:
        owned = load_plan(out_dir).owned(cfg.num_jobs, index)
    except BuildError:
        return "shard range unknown (plan not written)"
    return f"shards {owned[0].name} .. {owned[-1].name} ({len(owned)})" if owned else "no shards"


def summary(manifest: dict, stats: Optional[dict] = None) -> str:
    """The end-of-build report: per split counts, errors by reason, speed."""
    it = manifest["items"]
    lines = [f"shards of {manifest['source'] or '?'} ({manifest['input']}): {it['written']} of {it['listed']} items written"]
    for name, s in manifest["splits"].items():
        lines.append(f"  {name:<6} {s['count']:>8} items  {s['groups']:>7} groups  {len(s['shards']):>5} shards")
    if manifest["errors"]["count"]:
        reasons = ", ".join(f"{r} {n}" for r, n in manifest["errors"]["by_reason"].items())
        lines.append(f"  skipped {manifest['errors']['count']}: {reasons} (see errors.jsonl)")
    else:
        lines.append("  skipped 0")
    for field, lab in manifest["labels"].items():
        lines.append(f"  label {field}: {len(lab['vocab'])} values{' (multi-label)' if lab['multi'] else ''}")
    if stats:
        lines.append(
            f"  this run: {stats['shards_built']} shards built, {stats['shards_reused']} reused, "
            f"{stats['items_processed']} images in {stats['seconds']:.1f} s = {stats['items_per_s']:.1f} img/s"
        )
    return "\n".join(lines)
