"""Benchmark: exact chunked scorer (fashiontune.eval) vs faiss exact search and the full matrix, text->image.

Peers, each on the same embeddings: faiss-cpu `IndexFlatIP.search` (exact top-50 by BLAS sgemm + heap, what a
user reaches for; its threads set like ours) and open_clip's get_clip_metrics (N x N similarity, argsort every
row, find the ground truth). Ours returns more than faiss: top-50 AND every query's first-relevant rank (for
MRR and mean/median rank); faiss returns the top-50 only. On a CPU with native bf16 (AVX512-BF16/AMX) and
d >= 256 ours screens every candidate with a bf16 GEMM under a proven error bound and rescores the few that can
matter in fp32 (fashiontune/metrics/screen.py): the same results; `--no-screen` times the fp32 kernel alone.
faiss and ours score the same query set, so `vs_faiss` = faiss seconds / ours (>= 1: ours is at least as fast).

Each (method, N) runs in a fresh subprocess, so peak memory is that process's high-water mark (VmHWM) minus
its resident size just before scoring (embeddings already built). The full matrix needs ~13 N^2 bytes
(fp32 scores + int64 argsort + bool compare); where that exceeds --budget-gb it is not run, and the table says
so. For large N our scorer may run on a subset of queries (--max-queries): its time is linear in the number
of queries (each query chunk is scored against all N candidates), so the table shows the measured time and the
full-corpus time extrapolated from it; memory does not depend on the number of queries.

    python bench/eval.py                         # N = 10k, 44k, 200k, d = 512, CPU
    python bench/eval.py --sizes 10000 --threads 2
    python bench/eval.py --device cuda --sizes 200000 1000000 --max-queries 0 --no-faiss   # on a GPU

The last line is one JSON object: {"bench": "eval", ..., "rows": [...], "vs_faiss": {"<N>": ratio, ...}}.

`--embed N` times the other half of the eval job instead: embedding N synthetic 256 px items (JPEG shards
through the real builder) with a random-init model, with the loader settings from before issue 18 (no decode
workers, batch 64, no pinning, float32 images from the workers) against today's defaults (workers from the
CPU allocation, batch 256, pinned memory, uint8 images normalised on the device), in images/s:

    python bench/eval.py --embed 4000 --device cuda --model ViT-B-32
    python bench/eval.py --embed 300 --model ft-tiny-vit --threads 2           # CPU smoke run

Times are wall-clock seconds; on CUDA the timed region starts and ends with torch.cuda.synchronize(), so
the queued kernels are inside it (process CPU seconds would count only the launches). CPU seconds are shown
beside them: on a shared CPU box they are the steadier number.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

FULL_BYTES_PER_PAIR = 4 + 8 + 1  # fp32 similarity + int64 argsort indices + bool (ranking == truth)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _prepare(method: str, txt, img, threads: int, device: str, chunk_mb: int):
    """What the timed region runs for `method`, returning R@1; setup (faiss index, relevance) done here."""
    import torch

    q = txt.shape[0]
    if method == "full":  # open_clip_train.train.get_clip_metrics, text->image direction
        def run() -> float:
            logits = txt @ img.T
            ranking = torch.argsort(logits, descending=True)
            preds = torch.where(ranking == torch.arange(q, device=logits.device).view(-1, 1))[1]
            return (preds < 1).double().mean().item()
    elif method == "faiss":  # exact inner-product search (BLAS sgemm + heap), top-50 only
        import faiss
        import numpy as np

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(img.shape[1])
        index.add(img.numpy())
        xq = txt.numpy()

        def run() -> float:
            _, ids = index.search(xq, 50)
            return float((ids[:, 0] == np.arange(q)).mean())
    else:
        from fashiontune.metrics.retrieval import PairRelevance, rank_metrics
        from fashiontune.metrics.topk import chunked_rank

        ids = [str(i) for i in range(img.shape[0])]
        rel = PairRelevance(ids, ids)  # single positive: the paired image

        def run() -> float:
            res = chunked_rank(txt, img, 50, rel, memory_budget_bytes=chunk_mb << 20, device=device,
                               screen=method != "chunked-fp32")
            return rank_metrics(res.first_rank, (1,))["R@1"]
    return run


def child(method: str, n: int, d: int, queries: int, device: str, threads: int, chunk_mb: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(n, d, generator=g)
    img /= img.norm(dim=1, keepdim=True)
    txt = img + 0.25 * torch.randn(n, d, generator=g)  # paired text near its image: a non-trivial retrieval task
    txt /= txt.norm(dim=1, keepdim=True)
    q = n if queries <= 0 else min(n, queries)
    if device == "cuda":
        img, txt = img.cuda(), txt.cuda()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_kb = _rss_kb("VmRSS")
    run = _prepare(method, txt[:q], img, threads, device, chunk_mb)  # index / relevance built off the clock
    _sync(device)  # the inputs are on the device before the clock starts
    t0, c0 = time.perf_counter(), time.process_time()
    r1 = run()
    _sync(device)  # every queued kernel has finished before the clock stops
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = (torch.cuda.max_memory_allocated() - base) if device == "cuda" else (_rss_kb("VmHWM") - base_kb) * 1024
    return {"method": method, "n": n, "queries": q, "seconds": secs, "cpu_seconds": cpu, "peak_bytes": peak, "R@1": r1}


def embed_bench(args) -> None:
    """Images/s of fashiontune.eval.embed.embed_range, before-issue-18 settings vs today's defaults."""
    import tempfile

    import torch

    from fashiontune.data.workers import resolve_pin_memory, resolve_workers
    from fashiontune.eval import embed as E
    from fashiontune.models import load_clip
    from fashiontune.models.config import ModelConfig
    from fashiontune.models.precision import Precision
    from fashiontune.shards.manifest import load_manifest
    from fashiontune.train.testing import build_tiny_shards

    torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="ft-bench-eval-")
    root = build_tiny_shards("kagl", out, n=args.embed, image_size=256, splits="train=0.0,val=0.0,test=1.0",
                             shard_size=500)
    manifest = load_manifest(root)
    shards, total = E.eval_shards(manifest, root, "test"), int(manifest["splits"]["test"]["count"])
    loaded = load_clip(ModelConfig(name=args.model, pretrained=""))
    device = torch.device(args.device)
    precision = Precision.auto.resolve(device.type).value
    workers = resolve_workers("auto", "--embed workers")
    settings = [("before: workers 0, batch 64, unpinned, float32", 64, 0, False, False),
                (f"now: workers auto={workers}, batch 256, pinned={resolve_pin_memory('auto')}, uint8", 256, workers,
                 device.type == "cuda" and resolve_pin_memory("auto"), True)]
    print(f"eval embedding, {args.model} (random init), {total} items of 256 px, device={device.type}, "
          f"precision={precision}, wall seconds with torch.cuda.synchronize around the GPU work")
    rows = []
    for label, bs, nw, pin, uint8 in settings:
        E.embed_range(loaded, shards, 0, min(total, 2 * bs), bs, 0, device, precision)  # warm-up: kernels, caches
        _sync(args.device)
        t0, c0 = time.perf_counter(), time.process_time()
        E.embed_range(loaded, shards, 0, total, bs, nw, device, precision, pin_memory=pin, uint8=uint8)
        _sync(args.device)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"  {label:<60} {total / secs:8.1f} images/s  ({secs:.1f} s wall, {cpu:.1f} s CPU of this process)",
              flush=True)
        rows.append({"setting": label, "images_per_s": total / secs, "seconds": secs, "cpu_seconds": cpu})
    print(json.dumps({"bench": "embed", "model": args.model, "device": device.type, "precision": precision,
                      "items": total, "rows": rows}))


def run_child(args, method: str, n: int, queries: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--sizes", str(n), "--dim", str(args.dim),
           "--max-queries", str(queries), "--device", args.device, "--threads", str(args.threads),
           "--chunk-mb", str(args.chunk_mb)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_child(args, method: str, n: int, queries: int) -> dict:
    """Fastest of --repeats runs (the machine may be shared)."""
    return min((run_child(args, method, n, queries) for _ in range(args.repeats)), key=lambda r: r["seconds"])


def _table_row(args, n: int) -> dict:
    """Run the peers and ours at corpus size n, print one table line, return its numbers."""
    need = FULL_BYTES_PER_PAIR * n * n + 2 * n * args.dim * 4
    full = best_child(args, "full", n, 0) if need <= args.budget_gb * 2**30 else None
    q = 0 if full is not None else args.max_queries  # where the full matrix runs, score the same full query set
    ours = best_child(args, "chunked" if args.screen else "chunked-fp32", n, q)
    fai = best_child(args, "faiss", n, q) if args.faiss else None
    scale = n / ours["queries"]
    row = {"n": n, "queries": ours["queries"], "ours": ours, "faiss": fai, "full": full}
    t = lambda r: f"{r['seconds']:.1f}s ({r['cpu_seconds']:.1f}s)"
    r1 = [f"{ours['R@1']:.4f}"]
    if fai is not None:
        row["vs_faiss"] = fai["seconds"] / ours["seconds"]
        row["vs_faiss_cpu"] = fai["cpu_seconds"] / ours["cpu_seconds"]
        r1.append(f"{fai['R@1']:.4f}")
    if full is not None:
        row["vs_full"] = full["seconds"] / (ours["seconds"] * scale)
        r1.append(f"{full['R@1']:.4f}")
    full_s = (f"{t(full):>18} {gb(full['peak_bytes']):>10}" if full is not None
              else f"{'does not fit':>18} {'>' + gb(need):>10}")
    fai_s = t(fai) if fai is not None else "-"
    mem = f"{full['peak_bytes'] / max(ours['peak_bytes'], 1):>6.1f}x" if full is not None else f"{'-':>7}"
    print(f"{n:>8} | {full_s} | {ours['queries']:>7} {fai_s:>18} | {t(ours):>18} "
          f"{ours['seconds'] * scale:>9.1f}s{'*' if scale != 1 else ' '}{gb(ours['peak_bytes']):>8} | "
          f"{row.get('vs_faiss', float('nan')):>7.2f}x {row.get('vs_full', float('nan')):>7.2f}x {mem} | "
          f"{' = '.join(r1)}", flush=True)
    return row


def gb(b: float) -> str:
    return f"{b / 2**30:.2f} GB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 44_000, 200_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (the CI box has 2 shared cores)")
    p.add_argument("--budget-gb", type=float, default=8.0, help="memory the full-matrix method may use")
    p.add_argument("--chunk-mb", type=int, default=512, help="working-set budget of the chunked scorer")
    p.add_argument("--max-queries", type=int, default=2_000,
                   help="score at most this many queries for our method at large N (0 = all), extrapolate")
    p.add_argument("--embed", type=int, default=0, help="time embedding N synthetic items instead of scoring")
    p.add_argument("--model", default="ViT-B-32", help="--embed: open_clip model (random init)")
    p.add_argument("--out", default="", help="--embed: where the synthetic shards go (default: a temp dir)")
    p.add_argument("--repeats", type=int, default=1, help="best of N runs per method (the machine may be shared)")
    p.add_argument("--no-screen", dest="screen", action="store_false",
                   help="ours without the bf16 screen (the fp32 tiled kernel alone)")
    p.add_argument("--no-faiss", dest="faiss", action="store_false", help="skip the faiss column (no faiss-cpu)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.embed:
        embed_bench(args)
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.sizes[0], args.dim, args.max_queries, args.device, args.threads,
                               args.chunk_mb)))
        return 0

    print(f"text->image scoring, d={args.dim}, device={args.device}, threads={args.threads}, "
          f"full-matrix budget {args.budget_gb:g} GB, chunked working set {args.chunk_mb} MB, best of {args.repeats}")
    print("times are wall seconds, GPU work synchronised (process CPU seconds in brackets)")
    head = (f"{'N':>8} | {'full: time':>18} {'peak':>10} | {'queries':>7} {'faiss: time':>18} | {'ours: time':>18} "
            f"{'all-N time':>10} {'peak':>8} | {'vs faiss':>8} {'vs full':>8} {'mem':>7} | R@1 ours = faiss = full")
    print(head)
    print("-" * len(head))
    rows = [_table_row(args, n) for n in args.sizes]
    print("* extrapolated linearly from the measured query subset (time is linear in the number of queries;"
          " peak memory does not depend on it). vs faiss = faiss s / ours on the same queries; vs full = full /"
          " ours; mem = full peak / ours.")
    vs = {str(r["n"]): r["vs_faiss"] for r in rows if "vs_faiss" in r}
    print(json.dumps({"bench": "eval", "device": args.device, "threads": args.threads, "dim": args.dim,
                      "rows": rows, "vs_faiss": vs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
