"""Benchmark: `fashiontune serve`'s text search (GET /api/search over loopback HTTP, a bounded number of
concurrent keep-alive clients) against its floors measured in the same run on the same index:

    faiss          a bare faiss search of the same index (query vectors precomputed): the floor of the issue
    encode+faiss   the same work in one process without HTTP: the text tower on the query, then faiss

The index holds N synthetic catalogue items (random unit image embeddings of the model's width, items.jsonl
without images: search never reads a shard), built through fashiontune.index.build.write_index; the model is
the named open_clip architecture at random init (no download; a trained model of the same architecture costs
the same). The server runs in its own process (`fashiontune serve`, uvicorn), the clients are threads here.

    python bench/serve.py                              # N = 10k, 100k; ft-tiny-rn (the demo's); 4 clients; 15 s each
    python bench/serve.py --model ViT-B-32 --sizes 100000  # a CLIP-sized text tower
    python bench/serve.py --sizes 2000 --duration 2        # smoke run
    python bench/serve.py --model ft-tiny-vit --rerank     # + `serve rerank.model=EXPORT rerank.k=50`, same run

With --rerank the model is exported with a cross-encoder beside it (task.name=rerank's export: towers +
reranker.pt, its zero-init head given random weights: a trained one costs the same), the index holds synthetic
fp16 patch tokens (index build tokens=true's file), and the same index is served twice, without and with the
re-ranker: p50/p99 and req/s of both come from one run under the same load.

Goal (issue 11): at 100k items on 2 cores, p99 < 50 ms and >= 200 requests/s, within 1.5x of the faiss floor.
A ViT-B-32 text tower alone costs ~6 GFLOP per query (~100+ ms on one busy core, measured 140 ms): with it the
goal is out of reach on 2 CPU cores whatever the server does; the tiny towers cost a few ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

WORDS = ["red", "blue", "black", "white", "floral", "striped", "denim", "cotton", "long-sleeve", "summer",
         "dress", "shirt", "jacket", "skirt", "jeans", "sneakers", "top", "coat", "t-shirt", "blouse"]


def queries(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 5))) for _ in range(n)]


def make_index(out: Path, n: int, model: str, kind: str, export: Path | None = None) -> None:
    """An index directory of n synthetic items for `model` (random init), as `fashiontune serve` reads it; with
    `export` (make_reranker's) the index is of that export's towers and holds synthetic patch tokens too."""
    from fashiontune.config import load_config, save_config
    from fashiontune.eval.embed import Corpus
    from fashiontune.index.build import write_index
    from fashiontune.index.config import IndexConfig
    from fashiontune.models import ModelConfig, load_clip

    which = [f"model.checkpoint={export}"] if export else [f"model.name={model}", "model.pretrained=''"]
    cfg = load_config(IndexConfig, None, [f"out={out}", *which, f"kind={kind}", f"data.shards={out}"])
    clip = load_clip(ModelConfig(name=model, pretrained=""))
    rng = np.random.default_rng(0)
    image = rng.standard_normal((n, clip.image_dim), dtype=np.float32)
    keys = [f"item{i:07d}" for i in range(n)]
    corpus = Corpus(keys, keys, [""] * n, [{}] * n, image, image[:1], {})  # text: only "has a text tower"
    (out / "embeddings").mkdir(parents=True, exist_ok=True)
    np.save(out / "embeddings" / "image.npy", image)
    save_config(cfg, out)
    info = write_index(out, cfg, corpus, [{"shard": "none.tar", "offset": 0, "size": 0}] * n, {})
    if export:  # index build tokens=true's file: N x patches x width, fp16
        gh, gw = clip.model.visual.grid_size
        tok = rng.standard_normal((n, gh * gw, clip.model.visual.conv1.out_channels), dtype=np.float32)
        (out / "tokens").mkdir(exist_ok=True)
        np.save(out / "tokens" / "image.npy", tok.astype(np.float16))
        info["tokens"] = {"image": "tokens/image.npy", "shape": list(tok.shape), "dtype": "float16"}
    (out / "index.json").write_text(json.dumps(info))


def make_reranker(out: Path, model: str, width: int, layers: int) -> Path:
    """`model` (random init) exported with a cross-encoder beside it, as task.name=rerank exports them."""
    import torch

    from fashiontune.models import ModelConfig, load_clip
    from fashiontune.models.cross import CrossConfig, build_cross, save_reranker
    from fashiontune.models.export import export_model

    torch.manual_seed(0)
    loaded = load_clip(ModelConfig(name=model, pretrained=""))
    cross = build_cross(loaded.model, CrossConfig(width=width, layers=layers, heads=max(1, width // 32)))
    torch.nn.init.normal_(cross.head[-1].weight)  # a re-ordering head (zero-init = the dual order; same cost)
    export_model(loaded, out)
    save_reranker(out, cross.eval(), loaded.name)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, threads: int, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "fashiontune", "serve", str(index), "--port", str(port),
                             "--threads", str(threads), *overrides], env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # /healthz answers once the model is loaded (and stays so)
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"fashiontune serve exited with {proc.returncode}")
            time.sleep(0.5)
    raise TimeoutError("the server did not answer /healthz in 300 s")


def run_clients(call, texts: list[str], clients: int, duration: float) -> dict:
    """`clients` threads calling call(conn_state, text) back to back for `duration` s: latency p50/p99, req/s."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    stop = time.perf_counter() + duration

    def worker(w: int) -> None:
        state: dict = {}
        i = w
        while time.perf_counter() < stop:
            t = time.perf_counter()
            call(state, texts[i % len(texts)])
            lat[w].append(time.perf_counter() - t)
            i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    all_lat = np.array([x for part in lat for x in part]) * 1000
    return {"requests": len(all_lat), "p50_ms": float(np.percentile(all_lat, 50)),
            "p99_ms": float(np.percentile(all_lat, 99)), "req_s": len(all_lat) / wall}


def http_search(port: int, k: int):
    def call(state: dict, text: str) -> None:
        if "conn" not in state:
            state["conn"] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        state["conn"].request("GET", f"/api/search?k={k}&q={urllib.parse.quote(text)}")
        r = state["conn"].getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")
    return call


def measure(n: int, args) -> list[dict]:
    from fashiontune.serve.catalogue import Catalogue, set_threads

    set_threads(args.threads)  # the floors run with the server's per-request threads
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        index = Path(tmp) / f"index-{n}"
        export = make_reranker(Path(tmp) / "export", args.model, args.rerank_width, args.rerank_layers) \
            if args.rerank else None
        make_index(index, n, args.model, args.kind, export)
        texts = queries(2000)
        cat = Catalogue(index)
        vecs = {t: cat.text_query(t) for t in texts[:200]}  # the floor's query vectors, precomputed
        rows.append({"method": "faiss", **run_clients(lambda s, t: cat.search(vecs[t], args.k), texts[:200],
                                                      args.clients, args.duration)})
        rows.append({"method": "encode+faiss", **run_clients(lambda s, t: cat.search(cat.text_query(t), args.k),
                                                             texts, args.clients, args.duration)})
        servers = [("serve (HTTP)", [])]
        if export:
            servers.append((f"+rerank k={args.rerank_k}", [f"rerank.model={export}", f"rerank.k={args.rerank_k}"]))
        for method, overrides in servers:
            rows.append({"method": method, **serve_http(index, texts, args, *overrides)})
    for r in rows:
        r["items"] = n
    return rows


def serve_http(index: Path, texts: list[str], args, *overrides: str) -> dict:
    port = free_port()
    server = start_server(index, port, args.threads, *overrides)
    try:
        run_clients(http_search(port, args.k), texts, args.clients, min(2.0, args.duration))  # warm-up
        return run_clients(http_search(port, args.k), texts, args.clients, args.duration)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--model", default="ft-tiny-rn", help="open_clip architecture, random init (no download); "
                   "default: the tiny one `make demo` trains and serves")
    p.add_argument("--threads", type=int, default=1, help="torch / faiss threads per request (serve --threads)")
    p.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivf"])
    p.add_argument("--clients", type=int, default=4, help="concurrent keep-alive clients")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    p.add_argument("--k", type=int, default=20, help="results per query (the page asks for 20)")
    p.add_argument("--rerank", action="store_true", help="also serve with a re-ranker (needs a ViT --model, "
                   "e.g. ft-tiny-vit): rows with and without it, same run")
    p.add_argument("--rerank-k", type=int, default=50, help="serve rerank.k")
    p.add_argument("--rerank-width", type=int, default=128, help="cross-encoder width (task.rerank.width's default)")
    p.add_argument("--rerank-layers", type=int, default=2, help="cross-encoder layers (task.rerank.layers's default)")
    p.add_argument("--json", default="", help="also write the rows here")
    args = p.parse_args()
    rows = [r for n in args.sizes for r in measure(n, args)]
    print(f"\ntext search, {args.model} (random init), {args.kind} index, k={args.k}, {args.clients} clients, "
          f"{args.duration:.0f} s each, {os.cpu_count()} CPUs")
    if args.rerank:
        print(f"re-ranker: width {args.rerank_width} x {args.rerank_layers} layers over the top {args.rerank_k}")
    print(f"{'items':>8} {'method':<14} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'p99 vs faiss':>13}")
    floor = {r["items"]: r for r in rows if r["method"] == "faiss"}
    for r in rows:
        ratio = r["p99_ms"] / floor[r["items"]]["p99_ms"]
        print(f"{r['items']:>8} {r['method']:<14} {r['requests']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['req_s']:>8.1f} {ratio:>12.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
