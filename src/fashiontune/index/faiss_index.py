"""The faiss index over normalised image embeddings: exact inner product (= cosine) by default, HNSW or IVF
for big catalogues, with the approximate one's recall@10 against the exact one measured on the same data."""

from __future__ import annotations

import math

import numpy as np

from fashiontune.index.config import ApproxConfig

RECALL_K = 10


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def build(kind: str, vectors: np.ndarray, a: ApproxConfig):
    """A filled faiss index of `kind` over (already normalised) `vectors`; inner product metric."""
    import faiss

    n, d = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, a.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = a.ef_construction
    else:  # ivf: cells trained on the catalogue itself (at most n of them)
        nlist = max(1, min(n, a.nlist or int(4 * math.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    index.add(vectors)
    tune(index, kind, a)
    return index


def tune(index, kind: str, a: ApproxConfig) -> None:
    """Search-time parameters (set again after reading an index from disk)."""
    if kind == "hnsw":
        index.hnsw.efSearch = a.ef_search
    elif kind == "ivf":
        index.nprobe = a.nprobe


def recall_at_k(index, vectors: np.ndarray, queries: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of each query's exact top-k (brute force over `vectors`) that the index returns in its top-k."""
    import faiss

    k = min(k, len(vectors))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, want = exact.search(queries, k)
    _, got = index.search(queries, k)
    return float(np.mean([len(set(w) & set(g)) / k for w, g in zip(want.tolist(), got.tolist())]))
