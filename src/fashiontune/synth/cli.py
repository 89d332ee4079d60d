"""`fashiontune synth`: write a synthetic corpus in a real dataset's on-disk format."""

from __future__ import annotations

import argparse
import json
import time

from . import FORMATS, QUIRKS_FILE, generate, image_size_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write a synthetic corpus in the exact on-disk layout of a real dataset (kagl = Kaggle Fashion Product "
        "Images, deepfashion-mm = DeepFashion-MultiModal, imaterialist = iMaterialist-Fashion 2019, folder = "
        "<class>/<image>). Same arguments give the same bytes."
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="on-disk layout to write")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--n", type=int, default=300, help="number of images (default 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quirks", type=float, default=0.0, metavar="RATE",
                   help="fraction of items given one real-data quirk, 0..1 (default 0 = clean); listed in "
                        f"OUT/{QUIRKS_FILE}")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full-size", action="store_true",
                      help="real-size JPEGs (1800x2400; deepfashion-mm 750x1101), e.g. for the benchmark")
    size.add_argument("--image-size", type=int, default=None, metavar="PX",
                      help="image width in px (height follows the format's aspect; default 60 -> 60x80)")


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise SystemExit("fashiontune synth: --n must be at least 1")
    if not 0.0 <= args.quirks <= 1.0:
        raise SystemExit(f"fashiontune synth: --quirks must be within 0..1, got {args.quirks}")
    t0 = time.perf_counter()
    out = generate(args.format, args.out, args.n, args.seed, quirk_rate=args.quirks, full_size=args.full_size,
                   image_size=args.image_size)
    w, h = image_size_of(args.format, args.full_size, args.image_size)
    log = json.loads((out / QUIRKS_FILE).read_text())
    def count(entries: dict[str, list[str]]) -> str:
        kinds: dict[str, int] = {}
        for qs in entries.values():
            for q in qs:
                kinds[q] = kinds.get(q, 0) + 1
        return json.dumps(kinds, sort_keys=True) if kinds else "none"

    line = (f"wrote {args.n} {args.format} images ({w}x{h}) to {out} in {time.perf_counter() - t0:.1f}s; "
            f"quirks: {count({**log['items'], **log['files']})}")
    if log["structural"]:
        line += f"; as in the real files: {count(log['structural'])}"
    print(line + f" (listed in {out / QUIRKS_FILE})")
    return 0
