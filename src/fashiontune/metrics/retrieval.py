"""Full-corpus retrieval metrics (text->image, image->text, image->image) and category-to-product precision.

Definitions (all over the WHOLE evaluated corpus, never per batch):
- Corpus: N items, item i = (image_i, text_i, group_i). Candidates for a text query are all N images, for an
  image query all N texts. The query's own paired item is a candidate and is relevant.
- Relevance: candidate j is relevant to query i when group_i == group_j (several views of one product) OR
  text_i == text_j (identical caption). Empty captions never match each other (only their own group).
- Ranking: by dot-product similarity of L2-normalised embeddings in fp32, descending; equal scores are broken
  by the lower candidate index (deterministic, see topk.py).
- rank_i: 1-based position of the best-ranked relevant candidate. A query is a hit at K when ANY relevant
  candidate is in its top K, i.e. rank_i <= K. Hit@K = mean(rank_i <= K) (results.json key "R@K", kept for
  compatibility: a HIT RATE, the "R@K" of CLIP papers and open_clip, NOT the BEIR/trec_eval Recall@K of the
  public fashion leaderboard, which divides the relevant items found by ALL relevant items of the query: see
  metrics/ir.py); MRR = mean(1 / rank_i) over the full ranking (no cutoff, unlike BEIR's MRR@10);
  mean_rank = mean(rank_i); median_rank = median(rank_i) (numpy median: the mean of the two middle ranks for
  an even count; open_clip reports floor(median(rank - 1)) + 1).
- Image -> image, same product ("i2i", DeepFashion In-shop's protocol): each product with 2+ images splits
  them alternately into queries and gallery (same_product_split); a query ranks the whole gallery (every
  other product's images too, single-image products included) and a hit is a gallery image of its product.
  The same rank, tie rule and Hit@K / MRR as above. What it shows that t2i / i2t do not: whether views of one
  product embed together (plain CLIP loss treats them as negatives of each other when they share a batch).
- Category-to-product (per label field, per label value v): query = embedding of a label prompt for v
  (e.g. "a photo of a dress"); candidates = images of the items that HAVE a value for that field (items with
  the field missing are unknown, not negatives); relevant = items labelled v (for multi-label fields: v in
  their label set). precision@K = |relevant in top K| / K, MRR = 1 / rank of the first relevant item.
  Means are over label values with at least one relevant item (macro); values without are counted, not
  averaged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fashiontune.metrics.topk import RankResult, chunked_rank

DEFAULT_KS = (1, 5, 10, 50)


def codes(values: Sequence[str], empty_unique: bool = False) -> np.ndarray:
    """Integer code per value (equal strings, equal codes). With empty_unique, each empty string gets its own
    negative code, so that empty captions never count as identical."""
    table: dict[str, int] = {}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if empty_unique and v == "":
            out[i] = -(i + 1)
        else:
            out[i] = table.setdefault(v, len(table))
    return out


def rank_metrics(ranks: np.ndarray | Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Hit rates and first-hit ranks from 1-based first-relevant ranks (-1 = no relevant: excluded).

    Keys: "R@K" = Hit@K, the share of queries with at least one relevant item in the top K (not BEIR's
    Recall@K: for that use metrics.ir.ir_metrics); "mrr" = mean 1 / rank of the first relevant item, no cutoff;
    "mean_rank", "median_rank", "queries". The keys keep their results.json names; reports print them as Hit@K.
    """
    r = np.asarray(ranks, dtype=np.float64)
    r = r[r > 0]
    if r.size == 0:
        return {**{f"R@{k}": float("nan") for k in ks}, "mrr": float("nan"), "mean_rank": float("nan"),
                "median_rank": float("nan"), "queries": 0}
    out = {f"R@{k}": float(np.mean(r <= k)) for k in ks}
    out.update(mrr=float(np.mean(1.0 / r)), mean_rank=float(r.mean()), median_rank=float(np.median(r)),
               queries=int(r.size))
    return out


class _Blocks:
    """Items grouped by an integer code: the members of query i's code block, without an N x N anything.
    query_code: the queries' codes when the queries are not the items themselves (default: they are)."""

    def __init__(self, code: np.ndarray, query_code: np.ndarray | None = None):
        order = np.argsort(code, kind="stable")
        sorted_code = code[order]
        query_code = code if query_code is None else query_code
        first = np.searchsorted(sorted_code, query_code, side="left")
        self.perm = torch.from_numpy(order)
        self.start = torch.from_numpy(first)
        self.count = torch.from_numpy(np.searchsorted(sorted_code, query_code, side="right") - first)

    def pairs(self, s: int, e: int) -> tuple[Tensor, Tensor]:
        cnt = self.count[s:e]
        rows = torch.repeat_interleave(torch.arange(e - s), cnt)
        offset = torch.arange(int(cnt.sum())) - torch.repeat_interleave(cnt.cumsum(0) - cnt, cnt)
        return rows, self.perm[torch.repeat_interleave(self.start[s:e], cnt) + offset]


class PairRelevance:
    """relevant(i, j) = group_i == group_j or caption_i == caption_j, as sparse (row, col) pairs per query
    chunk: O(relevant pairs), never N x N. Empty captions match nothing but themselves."""

    def __init__(self, group_ids: Sequence[str], captions: Sequence[str]):
        if len(group_ids) != len(captions):
            raise ValueError(f"{len(group_ids)} group ids but {len(captions)} captions")
        self.blocks = (_Blocks(codes(group_ids)), _Blocks(codes(captions, empty_unique=True)))

    def __call__(self, s: int, e: int, device: torch.device) -> tuple[Tensor, Tensor]:
        (r1, c1), (r2, c2) = (b.pairs(s, e) for b in self.blocks)
        return torch.cat([r1, r2]).to(device), torch.cat([c1, c2]).to(device)


def retrieval_ranks(
    image_emb: Tensor,
    text_emb: Tensor,
    group_ids: Sequence[str],
    captions: Sequence[str],
    k: int = max(DEFAULT_KS),
    **kw,
) -> dict[str, RankResult]:
    """RankResult for "t2i" (text queries over images) and "i2t" (image queries over texts)."""
    if not (image_emb.shape[0] == text_emb.shape[0] == len(group_ids)):
        raise ValueError(f"{image_emb.shape[0]} images, {text_emb.shape[0]} texts, {len(group_ids)} group ids")
    rel = PairRelevance(group_ids, captions)  # symmetric, so one function serves both directions
    return {
        "t2i": chunked_rank(text_emb, image_emb, k, rel, **kw),
        "i2t": chunked_rank(image_emb, text_emb, k, rel, **kw),
    }


def same_product_split(group_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery items of image -> image same-product retrieval, as DeepFashion In-shop splits them:
    each product (group) with 2+ images alternates them, in corpus order, between the queries (1st, 3rd, ...)
    and the gallery (2nd, 4th, ...); a product with one image is in the gallery only (a distractor)."""
    code = codes(group_ids)
    order = np.argsort(code, kind="stable")
    sizes = np.bincount(code)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(len(code), dtype=np.int64)  # each item's place among its product's images
    position[order] = np.arange(len(code)) - np.repeat(starts, sizes)
    is_query = (position % 2 == 0) & (sizes[code] >= 2)
    return np.flatnonzero(is_query), np.flatnonzero(~is_query)


def same_product_ranks(image_emb: Tensor, group_ids: Sequence[str], k: int = max(DEFAULT_KS),
                       **kw) -> RankResult | None:
    """Image -> image ranks over same_product_split (a hit: a gallery image of the query's product); None when
    no product has two images. Results index the queries in split order, top-k indices the gallery."""
    if image_emb.shape[0] != len(group_ids):
        raise ValueError(f"{image_emb.shape[0]} images, {len(group_ids)} group ids")
    queries, gallery = same_product_split(group_ids)
    if queries.size == 0:
        return None
    code = codes(group_ids)
    blocks = _Blocks(code[gallery], query_code=code[queries])

    def relevance(s: int, e: int, device: torch.device) -> tuple[Tensor, Tensor]:
        rows, cols = blocks.pairs(s, e)
        return rows.to(device), cols.to(device)

    return chunked_rank(image_emb[torch.from_numpy(queries)], image_emb[torch.from_numpy(gallery)],
                        min(k, gallery.size), relevance, **kw)


def retrieval_metrics(
    image_emb: Tensor,
    text_emb: Tensor,
    group_ids: Sequence[str],
    captions: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    **kw,
) -> dict[str, dict[str, float]]:
    res = retrieval_ranks(image_emb, text_emb, group_ids, captions, k=max(ks), **kw)
    return {d: rank_metrics(r.first_rank, ks) for d, r in res.items()}


def category_metrics(
    prompt_emb: Tensor,
    image_emb: Tensor,
    targets: np.ndarray,
    label_names: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    **kw,
) -> dict:
    """Category-to-product retrieval for one label field.

    prompt_emb: L x d, one (normalised) prompt embedding per label value; image_emb: N x d.
    targets: N int class indices (-1 = missing) for a single-label field, or N x L {0,1} for a multi-label one
    (rows of all zeros = missing). Returns per-label P@K / MRR / support and their macro means.
    """
    n_labels = prompt_emb.shape[0]
    if len(label_names) != n_labels:
        raise ValueError(f"{n_labels} prompt embeddings but {len(label_names)} label names")
    t = np.asarray(targets)
    if t.ndim == 1:
        labelled = t >= 0
        multi_hot = np.zeros((t.size, n_labels), dtype=bool)
        multi_hot[np.flatnonzero(labelled), t[labelled]] = True
    else:
        multi_hot = t.astype(bool)
        labelled = multi_hot.any(1)
    keep = np.flatnonzero(labelled)
    rel_t = torch.from_numpy(np.ascontiguousarray(multi_hot[keep].T))  # L x N'
    cand = image_emb[torch.from_numpy(keep)]

    def relevance(s: int, e: int, device: torch.device) -> Tensor:
        return rel_t[s:e].to(device)

    kmax = min(max(ks), len(keep)) if len(keep) else 0
    per_label: dict[str, dict] = {}
    if kmax == 0:
        return {"per_label": per_label, "labels_with_items": 0, "labels_without_items": n_labels, "items": 0}
    res = chunked_rank(prompt_emb, cand, kmax, relevance, **kw)
    hits = torch.gather(rel_t, 1, res.topk_indices).numpy()  # L x kmax: is the j-th retrieved item relevant
    support = rel_t.sum(1).numpy()
    for v, name in enumerate(label_names):
        row = {"support": int(support[v])}
        if support[v] > 0:
            row.update({f"P@{k}": float(hits[v, :k].sum() / k) for k in ks if k <= kmax})
            row["mrr"] = float(1.0 / res.first_rank[v].item())
        per_label[name] = row
    scored = [r for r in per_label.values() if r["support"] > 0]
    means = {key: float(np.mean([r[key] for r in scored])) for key in scored[0] if key != "support"} if scored else {}
    return {
        "mean": means,
        "per_label": per_label,
        "labels_with_items": len(scored),
        "labels_without_items": n_labels - len(scored),
        "items": int(len(keep)),
    }
