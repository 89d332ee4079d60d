"""Shard builder throughput vs img2dataset's resizer, a no-I/O Pillow floor and naive Pillow, same JPEGs, one run.

    python bench/shards.py [--sizes 48,192] [--image-size 256] [--quality 90] [--work DIR]

Every side runs in its own child process (so peak RSS is that side's own), one thread, on the same full-size
(1800x2400) files, to the same size (shorter side = image_size, never upscaled) and JPEG quality:
  img2dataset: img2dataset's `Resizer` (what users run to shard image corpora): read the file, cv2 full
           decode, albumentations SmallestMaxSize (INTER_AREA), cv2 encode. Needs `pip install img2dataset
           --no-deps` plus the bench extra (opencv-python-headless, albumentations); skipped if missing.
  floor:   Pillow draft-mode decode + resize + encode with no I/O at all (files read into memory before the
           clock): the per-image work of our approach, the most the builder could do.
  naive:   Image.open (full-size decode) -> convert("RGB") -> resize -> save JPEG.
  builder: fashiontune.shards.build.build_shards end to end (plan, draft decode, EXIF, RGB, resize, encode,
           tar + sha256 + fsync, completion records, merge, manifest), with 1 worker and with 2.
Prints items/s of each, builder / img2dataset (target >= 2x), builder / floor (target >= 0.85x), 2 workers /
1 worker, and peak RSS per corpus size (target: flat). The last line is one JSON object.
The corpus is `fashiontune.synth.generate("kagl", ..., full_size=True)`, cached under --work.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def corpus(work: Path, n: int) -> Path:
    d = work / f"kagl-full-{n}"
    if not (d / "styles.csv").is_file():
        from fashiontune.synth import generate

        print(f"generating {n} full-size images in {d} ...", file=sys.stderr, flush=True)
        generate("kagl", d, n, seed=0, quirk_rate=0.0, full_size=True)
    return d


def _img2dataset_resizer(image_size: int, quality: int):
    """img2dataset's Resizer, loaded from its file: the package's __init__ imports its whole CLI (fire, pyarrow,
    wandb...), which the resizer does not need."""
    import importlib.util

    spec = importlib.util.find_spec("img2dataset")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("img2dataset is not installed: pip install img2dataset --no-deps (plus the bench extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resizer.py"
    mod_spec = importlib.util.spec_from_file_location("img2dataset_resizer", path)
    mod = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_spec.name] = mod
    mod_spec.loader.exec_module(mod)
    return mod.Resizer(image_size, mod.ResizeMode.keep_ratio, resize_only_if_bigger=True, encode_quality=quality)


def _per_image(kind: str, paths: list[str], image_size: int, quality: int) -> float:
    """The per-image peers: each turns every file into a resized JPEG (bytes discarded). Returns when its
    clock started (after its setup: loading the resizer, or the floor's reading of the files)."""
    from PIL import Image

    from fashiontune.shards.image import target_size

    if kind == "img2dataset":
        resizer = _img2dataset_resizer(image_size, quality)
        t0 = time.perf_counter()
        for p in paths:
            with open(p, "rb") as f:
                if resizer(io.BytesIO(f.read()))[-1] is not None:
                    raise RuntimeError(f"img2dataset failed on {p}")
        return t0
    if kind == "floor":
        blobs = [Path(p).read_bytes() for p in paths]  # no I/O on the clock
        t0 = time.perf_counter()
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                size = target_size(*im.size, image_size)
                im.draft("RGB", (image_size, image_size))
                im = im.convert("RGB").resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
                im.save(io.BytesIO(), "JPEG", quality=quality)
        return t0
    t0 = time.perf_counter()
    for p in paths:  # naive
        with Image.open(p) as im:
            im = im.convert("RGB")
            im = im.resize(target_size(*im.size, image_size))
            im.save(io.BytesIO(), "JPEG", quality=quality)
    return t0


def child(kind: str, inp: Path, image_size: int, quality: int) -> dict:
    from fashiontune.records import Record
    from fashiontune.sources import get_source

    records = [r for r in get_source("kagl").iter_records(inp) if isinstance(r, Record)]
    t0 = time.perf_counter()
    if kind.startswith("builder"):
        from fashiontune.shards.build import build_shards
        from fashiontune.shards.config import ShardBuildConfig

        out = Path(tempfile.mkdtemp(prefix="bench-shards-"))
        try:
            m = build_shards(ShardBuildConfig(source="kagl", input=str(inp), out=str(out), image_size=image_size,
                                              quality=quality, shard_size=1000, workers=int(kind[len("builder"):]),
                                              progress=False))
            n = m["items"]["written"]
        finally:
            shutil.rmtree(out, ignore_errors=True)
    else:
        t0 = _per_image(kind, [str(r.image_path) for r in records], image_size, quality)
        n = len(records)
    dt = time.perf_counter() - t0
    return {"kind": kind, "items": n, "seconds": dt, "items_per_s": n / dt,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's RSS high-water mark. Not getrusage's ru_maxrss: Linux carries that over from the parent
    across fork+exec, so a child started by a big parent reports the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def run_child(kind: str, inp: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--input", str(inp), "--image-size", str(args.image_size),
           "--quality", str(args.quality)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _table_row(args, inp: Path, n: int, kinds: list[str]) -> dict:
    """Every side on one corpus, best of --repeats; prints one line."""
    best = {}
    for kind in kinds:
        runs = [run_child(kind, inp, args) for _ in range(args.repeats)]
        best[kind] = max(runs, key=lambda r: r["items_per_s"])
        best[kind]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    speed = {k: best[k]["items_per_s"] for k in kinds}
    row = {"images": n, **{f"{k}_{m}": best[k][m] for k in kinds for m in ("items_per_s", "peak_rss_mb")},
           "vs_naive": speed["builder1"] / speed["naive"], "vs_floor": speed["builder1"] / speed["floor"],
           "workers_2_vs_1": speed["builder2"] / speed["builder1"]}
    if "img2dataset" in speed:
        row["vs_img2dataset"] = speed["builder1"] / speed["img2dataset"]
    print(f"{n:>7} " + " ".join(f"{speed[k]:>16.1f}" for k in kinds) +
          f" {row.get('vs_img2dataset', float('nan')):>13.2f}x {row['vs_floor']:>7.2f}x "
          f"{row['workers_2_vs_1']:>5.2f}x {best['builder1']['peak_rss_mb']:>7.0f}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="48,192", help="corpus sizes (images), comma separated")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=2, help="best of N per side (the machine may be shared)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "fashiontune-bench"))
    ap.add_argument("--no-img2dataset", action="store_true", help="skip the img2dataset column")
    ap.add_argument("--child", choices=("naive", "img2dataset", "floor", "builder1", "builder2"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.input), args.image_size, args.quality)))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import importlib.util

    kinds = ["naive", "floor", "builder1", "builder2"]
    if importlib.util.find_spec("img2dataset") is not None and not args.no_img2dataset:
        kinds.insert(1, "img2dataset")
    else:
        print("img2dataset not installed (pip install img2dataset --no-deps + the bench extra): column skipped")
    print(f"shard builder vs img2dataset's Resizer, the no-I/O Pillow draft floor and naive Pillow, one thread "
          f"each, 1800x2400 JPEG -> shorter side {args.image_size}, q{args.quality}, best of {args.repeats}")
    print(f"{'images':>7} " + " ".join(f"{k + ' img/s':>16}" for k in kinds) +
          f" {'vs img2dataset':>14} {'vs floor':>8} {'2w/1w':>6} {'RSS MB':>7}")
    rows = [_table_row(args, corpus(work, int(x)), int(x), kinds) for x in args.sizes.split(",")]
    growth = rows[-1]["builder1_peak_rss_mb"] / rows[0]["builder1_peak_rss_mb"]
    print(f"builder (1 worker) vs img2dataset: {min(r.get('vs_img2dataset', float('nan')) for r in rows):.2f}x "
          f"(target >= 2x), vs the floor: {min(r['vs_floor'] for r in rows):.2f}x (target >= 0.85x); "
          f"peak RSS x{growth:.2f} from {rows[0]['images']} to {rows[-1]['images']} images (target: flat)")
    print(json.dumps({"bench": "shards", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
