"""Shard builder throughput vs a naive baseline, on the same full-size (1800x2400) JPEGs, in one run.

    python bench/shards.py [--sizes 48,192] [--image-size 256] [--quality 90] [--work DIR]

Both sides run on one core, each in its own child process (so peak RSS is that side's own):
  naive:   Image.open (full-size decode) -> convert("RGB") -> resize (shorter side = image_size) -> save JPEG
  builder: fashiontune.shards.build.build_shards(workers=1) end to end: plan, draft-mode decode, EXIF,
           RGB, resize, encode, tar + sha256 + fsync, completion records, merge, manifest.
Prints items/s of each, their ratio (target >= 3x per core) and peak RSS per corpus size (target: flat).
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


def child(kind: str, inp: Path, image_size: int, quality: int) -> dict:
    from fashiontune.records import Record
    from fashiontune.sources import get_source

    records = [r for r in get_source("kagl").iter_records(inp) if isinstance(r, Record)]
    t0 = time.perf_counter()
    if kind == "naive":
        from PIL import Image

        for r in records:
            with Image.open(r.image_path) as im:
                im = im.convert("RGB")
                w, h = im.size
                s = image_size / min(w, h)
                im = im.resize((round(w * s), round(h * s)))
                im.save(io.BytesIO(), "JPEG", quality=quality)
        n = len(records)
    else:
        from fashiontune.shards.build import build_shards
        from fashiontune.shards.config import ShardBuildConfig

        out = Path(tempfile.mkdtemp(prefix="bench-shards-"))
        try:
            m = build_shards(ShardBuildConfig(source="kagl", input=str(inp), out=str(out), image_size=image_size,
                                              quality=quality, shard_size=1000, workers=1, progress=False))
            n = m["items"]["written"]
        finally:
            shutil.rmtree(out, ignore_errors=True)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="48,192", help="corpus sizes (images), comma separated")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=2, help="best of N per side (the machine may be shared)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "fashiontune-bench"))
    ap.add_argument("--child", choices=("naive", "builder"), help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.input), args.image_size, args.quality)))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"shard builder vs naive Pillow, 1 process each, 1800x2400 JPEG -> shorter side {args.image_size}, "
          f"q{args.quality}, best of {args.repeats}")
    print(f"{'images':>7} {'naive img/s':>12} {'builder img/s':>14} {'ratio':>6} {'naive RSS MB':>13} "
          f"{'builder RSS MB':>15}")
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        inp = corpus(work, n)
        best = {}
        for kind in ("naive", "builder"):
            runs = [run_child(kind, inp, args) for _ in range(args.repeats)]
            best[kind] = max(runs, key=lambda r: r["items_per_s"])
            best[kind]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        ratio = best["builder"]["items_per_s"] / best["naive"]["items_per_s"]
        rows.append({"images": n, "ratio": ratio, **{f"{k}_{m}": best[k][m] for k in best for m in
                                                     ("items_per_s", "peak_rss_mb")}})
        print(f"{n:>7} {best['naive']['items_per_s']:>12.1f} {best['builder']['items_per_s']:>14.1f} "
              f"{ratio:>5.2f}x {best['naive']['peak_rss_mb']:>13.0f} {best['builder']['peak_rss_mb']:>15.0f}",
              flush=True)
    growth = rows[-1]["builder_peak_rss_mb"] / rows[0]["builder_peak_rss_mb"]
    print(f"builder speed-up per core: {min(r['ratio'] for r in rows):.2f}x (target >= 3x); builder peak RSS "
          f"x{growth:.2f} from {rows[0]['images']} to {rows[-1]['images']} images (target: flat)")
    print(json.dumps({"bench": "shards", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
