"""`fashiontune serve INDEX [INDEX2] [--host 127.0.0.1] [--port 8000] [key=value ...]`: the search-and-classify
app (JSON API + one offline page) over one index, or two side by side (the page's compare view).
Binds to 127.0.0.1 unless told otherwise: the app has no authentication.

key=value overrides reach ServeConfig (serve/config.py): `rerank.model=EXPORT rerank.k=50` re-orders the first
index's text-search top-k with a cross-encoder (serve/rerank.py; pass the same index twice to compare)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("indexes", nargs="+", metavar="INDEX",
                        help="index directories (fashiontune index build); two = compare; then key=value overrides "
                             "(rerank.model=EXPORT rerank.k=50: re-rank the first index's text search)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted upload, in pixels")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / faiss threads per request (requests run concurrently; 1 suits a few cores)")
    parser.set_defaults(overrides=[])  # key=value after the options land here (cli.parse_any_order)


def build_app(indexes: list[str], max_upload_mb: float = 10.0, max_pixels: int = 40_000_000, threads: int = 1,
              overrides: Sequence[str] = ()):
    """The app over `indexes`; `overrides`: ServeConfig key=value (also accepted mixed into `indexes`)."""
    from fashiontune.config import load_config
    from fashiontune.errors import UserError
    from fashiontune.serve.app import create_app
    from fashiontune.serve.catalogue import Catalogue, set_threads
    from fashiontune.serve.config import ServeConfig, is_override
    from fashiontune.serve.uploads import UploadLimits

    overrides = [*overrides, *(a for a in indexes if is_override(a))]
    indexes = [a for a in indexes if not is_override(a)]
    cfg = load_config(ServeConfig, None, overrides).validate()
    if not indexes:
        raise UserError("serve needs an index directory (fashiontune index build) before its key=value overrides")
    if len(indexes) > 2:
        raise UserError(f"serve takes one or two indexes (two = compare view), not {len(indexes)}")
    if threads < 1:
        raise UserError(f"--threads {threads}: use 1 or more")
    set_threads(threads)
    cats = [Catalogue(p, slot=i) for i, p in enumerate(indexes)]
    for c in cats:
        c.model()  # load now: the first request should not pay for it, and /healthz means ready
    if cfg.rerank.model:
        cats[0].attach_reranker(cfg.rerank)  # checked against the index now: a mismatch stops the start-up
    return create_app(cats, UploadLimits(int(max_upload_mb * (1 << 20)), max_pixels))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    app = build_app(args.indexes, args.max_upload_mb, args.max_pixels, args.threads, args.overrides)
    print(f"fashiontune serve: http://{args.host}:{args.port}/  (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
