"""Leaderboard retrieval metrics: BEIR / trec_eval Recall@K, P@K, nDCG@K, MAP@K and MRR@10.

These are the numbers of BEIR's `EvaluateRetrieval.evaluate` (pytrec_eval's `recall`, `P`, `ndcg_cut`,
`map_cut`) plus BEIR's `mrr`, which Marqo's fashion leaderboard reports, computed from a top-K run and graded
relevance judgments (qrels). They are NOT the hit rates of `metrics.retrieval` (its "R@K" = share of queries
with ANY relevant item in the top K, printed as Hit@K): here Recall@K divides by ALL relevant items of the query.

Per query q with judgments rel(q, d) (ints; relevant iff rel >= 1, trec_eval's relevance_level 1), its ranked
list d_1..d_k (best first) and R_q = number of relevant docs in the qrels (retrieved or not):
- P@K      = #relevant in d_1..d_K / K  (K, even when fewer than K docs exist: trec_eval's P_K)
- Recall@K = #relevant in d_1..d_K / R_q
- MAP@K    = sum over relevant d_i, i <= K, of (#relevant in d_1..d_i / i), divided by R_q  (map_cut_K)
- NDCG@K   = DCG@K / IDCG@K, DCG@K = sum_{i<=K} max(rel, 0) / log2(i + 1), IDCG@K = the same over the
             judgments sorted by relevance (ndcg_cut_K: linear gain, not 2^rel - 1)
- MRR@10   = 1 / (rank of the first relevant doc) if it is within the top 10, else 0  (BEIR's mrr over a
             top-10 run, which is what Marqo's eval.py retrieves)
Averages are over the queries that have at least one judgment (any value). Queries without judgments are
skipped, as pytrec_eval skips queries absent from the qrels, and counted ("queries_without_judgments"); a
query judged but with nothing relevant (all rel <= 0) counts, with every metric 0, as in pytrec_eval.
Values are not rounded (BEIR rounds to 5 decimals). Ties: the run's order is the one tie rule of topk.py
(equal scores: lower doc index first); trec_eval would instead order equal scores by doc id string,
descending, so `run_to_beir` hands our order to pytrec_eval as strictly decreasing scores.

Memory: `topk_run` is one O(chunk x N) pass (topk.chunked_rank); the metrics then need only the Q x K top
lists and, per query, its judgments (R_q and the ideal gains come from the qrels, not from the ranking).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fashiontune.errors import UserError
from fashiontune.metrics.topk import RankResult, chunked_rank

DEFAULT_IR_KS = (1, 5, 10, 100)  # Marqo's leaderboard prints K = 1 and 10
MRR_K = 10


class QrelsError(UserError):
    """Relevance judgments that cannot be used (unknown query, non-integer relevance)."""


@dataclass(frozen=True)
class IRRun:
    """Top-k retrieval run: per query the k best doc indices (best first) and their scores, on the CPU."""

    indices: Tensor  # Q x k int64
    scores: Tensor  # Q x k fp32
    n_docs: int  # corpus size N (k = min(requested k, N))

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    @classmethod
    def from_rank(cls, res: RankResult, n_docs: int) -> IRRun:
        """Reuse the top-k lists of a topk.chunked_rank pass (e.g. retrieval_ranks) instead of ranking again."""
        return cls(res.topk_indices, res.topk_scores, int(n_docs))


def topk_run(
    query_emb: Tensor,
    doc_emb: Tensor,
    k: int,
    *,
    chunk_size: int | None = None,
    memory_budget_bytes: int | None = None,
    device: torch.device | str | None = None,
) -> IRRun:
    """Exact top-k docs per query by dot product (fp32; pass normalised embeddings for cosine), in query
    chunks of `chunk_size` (or sized from `memory_budget_bytes`): never a Q x N matrix at once."""
    res = chunked_rank(query_emb, doc_emb, k, None, chunk_size=chunk_size,
                       memory_budget_bytes=memory_budget_bytes, device=device)
    return IRRun.from_rank(res, doc_emb.shape[0])


def _flatten_qrels(qrels: Sequence[Mapping[int, int]], n_docs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, doc, relevance) int64 arrays of all judgments, query-major."""
    sizes = [len(q) for q in qrels]
    qi = np.repeat(np.arange(len(qrels), dtype=np.int64), sizes)
    di = np.fromiter((d for q in qrels for d in q), dtype=np.int64, count=len(qi))
    rel = np.fromiter((r for q in qrels for r in q.values()), dtype=np.int64, count=len(qi))
    if di.size and (di.min() < 0 or di.max() >= n_docs):
        raise ValueError(f"qrels name doc index {int(di.min() if di.min() < 0 else di.max())}, outside 0..{n_docs - 1}")
    return qi, di, rel


def _retrieved_relevance(run: IRRun, qi: np.ndarray, di: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Q x k relevance of each retrieved doc (0 where unjudged), by a sorted-key lookup: no dicts, no Q x N."""
    n = max(run.n_docs, 1)
    keys = qi * n + di
    order = np.argsort(keys, kind="stable")
    keys, rel = keys[order], rel[order]
    q = run.indices.shape[0]
    want = (np.arange(q, dtype=np.int64)[:, None] * n + run.indices.numpy()).ravel()
    pos = np.minimum(np.searchsorted(keys, want), max(keys.size - 1, 0))
    found = keys[pos] == want if keys.size else np.zeros(want.shape, dtype=bool)
    return np.where(found, rel[pos] if keys.size else 0, 0).reshape(q, run.k)


def _ideal_dcg(qi: np.ndarray, rel: np.ndarray, n_queries: int, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """IDCG@K per query: the query's positive judgments sorted by relevance, discounted by position."""
    pos_mask = rel > 0
    q, g = qi[pos_mask], rel[pos_mask].astype(np.float64)
    order = np.lexsort((-g, q))  # by query, then relevance descending
    q, g = q[order], g[order]
    first = np.searchsorted(q, q, side="left")
    rank0 = np.arange(q.size) - first  # 0-based position within the query's ideal list
    disc = g / np.log2(rank0 + 2.0)
    return {k: np.bincount(q[rank0 < k], weights=disc[rank0 < k], minlength=n_queries) for k in ks}


def _per_query(gains: np.ndarray, n_rel: np.ndarray, idcg: dict[int, np.ndarray], ks: Sequence[int],
               mrr_k: int) -> dict[str, np.ndarray]:
    """Per-query metric arrays from the Q x k retrieved relevance and the per-query relevant counts."""
    q, k_run = gains.shape
    hit = gains > 0
    cum = np.cumsum(hit, axis=1)
    ranks = np.arange(1, k_run + 1, dtype=np.float64)
    prec_at_hit = np.where(hit, cum / ranks, 0.0)
    disc_gain = np.maximum(gains, 0) / np.log2(ranks + 1.0)
    denom = np.maximum(n_rel, 1).astype(np.float64)  # n_rel = 0 -> the numerator is 0 too
    out: dict[str, np.ndarray] = {}
    for k in ks:
        c = min(k, k_run)
        found = cum[:, c - 1] if c else np.zeros(q)
        out[f"Recall@{k}"] = found / denom
        out[f"P@{k}"] = found / k
        out[f"NDCG@{k}"] = np.divide(disc_gain[:, :c].sum(1), idcg[k], out=np.zeros(q), where=idcg[k] > 0)
        out[f"MAP@{k}"] = prec_at_hit[:, :c].sum(1) / denom
    top = hit[:, :mrr_k]
    first = np.argmax(top, axis=1)
    out[f"MRR@{mrr_k}"] = np.where(top.any(1), 1.0 / (first + 1.0), 0.0)
    return out


def ir_metrics(
    run: IRRun,
    qrels: Sequence[Mapping[int, int]],
    ks: Sequence[int] = DEFAULT_IR_KS,
    mrr_k: int = MRR_K,
) -> dict[str, float | int]:
    """BEIR/trec_eval metrics of a run, averaged over judged queries (see the module docstring).

    qrels[q] = {doc index: relevance} for query q of the run (relevant iff relevance >= 1). Returns
    "Recall@K", "P@K", "NDCG@K", "MAP@K" for K in ks, f"MRR@{mrr_k}", and the counts "queries" (averaged)
    and "queries_without_judgments" (skipped). NaN metrics when no query is judged.
    """
    n_q = run.indices.shape[0]
    if len(qrels) != n_q:
        raise ValueError(f"{len(qrels)} qrels entries for a run of {n_q} queries: give one dict per query")
    need = max([*ks, mrr_k])
    if run.k == 0 or min(ks) < 1 or mrr_k < 1:
        raise ValueError(f"need a run with k >= 1 (got {run.k}) and cutoffs >= 1 (got ks={tuple(ks)}, mrr_k={mrr_k})")
    if run.k < min(need, run.n_docs):
        raise ValueError(f"run has top-{run.k} of {run.n_docs} docs; metrics at K={need} need top-{min(need, run.n_docs)}")
    qi, di, rel = _flatten_qrels(qrels, run.n_docs)
    judged = np.bincount(qi, minlength=n_q) > 0
    n_rel = np.bincount(qi, weights=(rel > 0), minlength=n_q)
    per_q = _per_query(_retrieved_relevance(run, qi, di, rel), n_rel, _ideal_dcg(qi, rel, n_q, ks), ks, mrr_k)
    n = int(judged.sum())
    out: dict[str, float | int] = {key: float(v[judged].mean()) if n else float("nan") for key, v in per_q.items()}
    out.update(queries=n, queries_without_judgments=int(n_q - n))
    return out


def qrels_from_beir(
    beir_qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    source: str = "qrels",
) -> tuple[list[dict[int, int]], dict[str, list[str]]]:
    """BEIR-shaped judgments ({query id: {doc id: relevance}}) -> one {doc index: relevance} per query of
    `query_ids` (doc index = position in `doc_ids`), plus {query id: [doc ids not in doc_ids]}: unknown docs
    are returned for the caller to count and report, never silently dropped. A query of `query_ids` absent
    from `beir_qrels` gets {} (skipped by ir_metrics, like pytrec_eval)."""
    index = {d: i for i, d in enumerate(doc_ids)}
    if len(index) != len(doc_ids):
        raise ValueError(f"{len(doc_ids) - len(index)} duplicate doc ids: doc ids must be unique")
    out: list[dict[int, int]] = []
    unknown: dict[str, list[str]] = {}
    for qid in query_ids:
        row: dict[int, int] = {}
        for doc, r in beir_qrels.get(qid, {}).items():
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
                raise QrelsError(f"{source}: query {qid!r}, doc {doc!r}: relevance {r!r} is not an integer; "
                                 "use integer grades (1 = relevant, 0 = judged not relevant)")
            if doc in index:
                row[index[doc]] = int(r)
            else:
                unknown.setdefault(qid, []).append(doc)
        out.append(row)
    return out, unknown


def qrels_to_beir(qrels: Sequence[Mapping[int, int]], query_ids: Sequence[str], doc_ids: Sequence[str]) -> dict:
    """The inverse of qrels_from_beir: {query id: {doc id: relevance}}; queries without judgments are left out."""
    _check_query_ids(query_ids, len(qrels))
    return {qid: {doc_ids[d]: int(r) for d, r in row.items()} for qid, row in zip(query_ids, qrels) if row}


def run_to_beir(run: IRRun, query_ids: Sequence[str], doc_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """{query id: {doc id: score}} for pytrec_eval / BEIR. The score is k - position (strictly decreasing),
    not the similarity: trec_eval re-sorts by score and orders equal scores by doc id (descending), which
    would reorder our ties; rank-encoded scores make it read exactly our ranking."""
    _check_query_ids(query_ids, run.indices.shape[0])
    k = run.k
    return {qid: {doc_ids[d]: float(k - j) for j, d in enumerate(row)}
            for qid, row in zip(query_ids, run.indices.tolist())}


def _check_query_ids(query_ids: Sequence[str], n: int) -> None:
    if len(query_ids) != n or len(set(query_ids)) != n:
        raise ValueError(f"need {n} unique query ids, got {len(query_ids)} ({len(set(query_ids))} unique)")
