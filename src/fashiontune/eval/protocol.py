"""Marqo-compatible retrieval tasks (the public fashion leaderboard's protocol) and user relevance files.

A task = (query set, documents, relevance), scored with BEIR/trec_eval metrics (metrics/ir.py):
- queries: the UNIQUE non-empty captions ("text") or raw values of a label field ("Topwear"), sorted, then
  sampled down to `max_queries` with the eval seed (numpy default_rng, without replacement);
- documents: every item of the evaluated split, doc id = the item's `__key__` (for KAGL the styles.csv id);
  embedding normalize(w_image * image + w_text * text) of the L2-normalised towers (category -> product:
  0.9 / 0.1, as the leaderboard);
- relevance (binary): items whose caption equals the query, or whose field value is (contains, for a list
  field) the query.
A relevance file (`retrieval.qrels`, BEIR's {query_text: {doc_id: relevance}}) replaces the derived query set
and relevance by exactly its own. Its doc ids that are not item keys of the split are counted and reported
(results.json unknown_doc_ids, a warning, a note) and left out of the relevance sets: the scores equal
pytrec_eval fed the file's judgments of the split's items. A query left with no judged item is skipped (as
pytrec_eval skips queries without judgments) and counted in queries_without_judgments.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fashiontune.eval.embed import Corpus, for_inference
from fashiontune.metrics.ir import (
    MRR_K,  # the leaderboard's MRR looks at the top 10 only
)

log = logging.getLogger(__name__)


@dataclass
class Queries:
    texts: list[str]
    qrels: list[dict[int, int]]  # per query: doc index -> relevance
    unknown: dict[str, list[str]]  # query -> doc ids of the file that the split does not have


def _values(labels: dict, field: str) -> list[str]:
    v = labels.get(field)
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def item_values(corpus: Corpus, query: str) -> list[list[str]]:
    """Per item, the strings it is relevant to: its caption ("text") or its values of label field `query`."""
    if query == "text":
        return [[c] if c else [] for c in corpus.captions]
    return [_values(lab, query) for lab in corpus.labels]


def derived_queries(corpus: Corpus, query: str, max_queries: int, seed: int, pattern: str = "") -> Queries:
    """Unique values (matching `pattern`, a regex searched in the value, when set), sampled to max_queries."""
    import re

    per_item = item_values(corpus, query)
    members: dict[str, list[int]] = {}
    for i, vals in enumerate(per_item):
        for v in vals:
            members.setdefault(v, []).append(i)
    unique = sorted(v for v in members if not pattern or re.search(pattern, v))
    if len(unique) > max_queries:
        pick = np.random.default_rng(seed).choice(len(unique), size=max_queries, replace=False)
        unique = [unique[i] for i in sorted(pick)]
    return Queries(unique, [{i: 1 for i in members[v]} for v in unique], {})


def read_qrels(path: str | Path, keys: Sequence[str]) -> Queries:
    """A BEIR-shape relevance file {query_text: {doc_id: relevance}} against the split's item keys."""
    from fashiontune.metrics.ir import QrelsError, qrels_from_beir

    fix = ('write a JSON object {"query text": {"<item id = shard __key__>": 1, ...}, ...} '
           "(BEIR qrels shape, integer relevance)")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise QrelsError(f"retrieval.qrels={path}: no such file; {fix}.") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise QrelsError(f"retrieval.qrels={path}: not valid UTF-8 JSON ({e}); {fix}.") from e
    if not isinstance(data, dict) or not data:
        raise QrelsError(f"retrieval.qrels={path}: the top level must be a non-empty JSON object; {fix}.")
    for q, docs in data.items():
        if not q or not isinstance(docs, dict):
            raise QrelsError(f"retrieval.qrels={path}: query {q[:60]!r} must map to an object of doc id -> "
                             f"relevance (got {str(docs)[:60]}); {fix}.")
    texts = list(data)
    qrels, unknown = qrels_from_beir(data, texts, list(keys), source=f"retrieval.qrels={path}")
    n = sum(len(v) for v in unknown.values())
    if n:
        example = next(iter(unknown.values()))[0]
        log.warning("retrieval.qrels=%s: %d doc id(s) in %d queries are not item keys of the split (e.g. %r); "
                    "they are left out of the relevance sets and counted in results.json (unknown_doc_ids)",
                    path, n, len(unknown), example)
    return Queries(texts, qrels, unknown)


def doc_embeddings(corpus: Corpus, image_weight: float, text_weight: float) -> torch.Tensor:
    """normalize(w_i * normalize(image) + w_t * text) per item (text is stored normalised)."""
    img = torch.nn.functional.normalize(torch.from_numpy(corpus.image).float(), dim=-1)
    if text_weight == 0:
        return img
    txt = torch.from_numpy(corpus.text).float()
    return torch.nn.functional.normalize(image_weight * img + text_weight * txt, dim=-1)


def query_embeddings(corpus: Corpus, texts: Sequence[str], embed_texts: Callable[[list[str]], np.ndarray]) -> torch.Tensor:
    """A query equal to an item's caption takes that item's cached text embedding (the first such item); the
    others (label values, free text) go through the text tower once."""
    first: dict[str, int] = {}
    for i, c in enumerate(corpus.captions):
        if c:
            first.setdefault(c, i)
    out = np.zeros((len(texts), corpus.image.shape[1]), np.float32)
    rest = [j for j, t in enumerate(texts) if t not in first]
    for j, t in enumerate(texts):
        if t in first:
            out[j] = corpus.text[first[t]]
    if rest:
        out[rest] = embed_texts([texts[j] for j in rest])
    return torch.from_numpy(out)


def ir_block(run, qrels: list[dict[int, int]], ks: Sequence[int]) -> dict:
    """BEIR/trec_eval metrics of one task and direction (metrics/ir.py), MRR over the top 10."""
    from fashiontune.metrics.ir import ir_metrics

    return ir_metrics(run, qrels, ks=list(ks), mrr_k=MRR_K)



def run_k(ks: Sequence[int], n_docs: int) -> int:
    """Top-K depth that every metric needs (the largest K, and MRR's 10), at most the corpus."""
    return min(n_docs, max(max(ks), MRR_K))


def score_task(corpus: Corpus, q: Queries, query_emb: torch.Tensor, image_weight: float, text_weight: float,
               ks: Sequence[int], **kw) -> dict:
    """One task: exact chunked top-K of the queries over all documents, then the IR metrics."""
    from fashiontune.metrics.ir import topk_run

    docs = doc_embeddings(corpus, image_weight, text_weight)
    run = topk_run(query_emb, docs, k=run_k(ks, len(corpus)), **kw)
    out = ir_block(run, q.qrels, ks)
    out.update(docs=len(corpus), image_weight=image_weight, text_weight=text_weight,
               unknown_doc_ids=sum(len(v) for v in q.unknown.values()),
               queries_with_unknown_doc_ids=len(q.unknown))
    return out


def write_beir_qrels(path: Path, q: Queries, keys: Sequence[str]) -> Path:
    """The task's derived ground truth as a BEIR qrels file (re-usable as `retrieval.qrels`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {t: {keys[i]: r for i, r in row.items()} for t, row in zip(q.texts, q.qrels)}
    path.write_text(json.dumps(data, indent=1))
    return path


def pair_qrels(group_ids: Sequence[str], captions: Sequence[str]) -> list[dict[int, int]]:
    """The default text<->image relevance (same group_id or identical non-empty caption) as per-query qrels."""
    from fashiontune.metrics.retrieval import PairRelevance

    n = len(group_ids)
    rows, cols = PairRelevance(group_ids, captions)(0, n, torch.device("cpu"))
    order = np.argsort(rows.numpy(), kind="stable")
    r, c = rows.numpy()[order], cols.numpy()[order]
    bounds = np.searchsorted(r, np.arange(n + 1))
    return [dict.fromkeys(c[bounds[i]:bounds[i + 1]].tolist(), 1) for i in range(n)]  # a pair may repeat


@torch.no_grad()
def embed_texts(loaded, texts: Sequence[str], device, precision: str, batch_size: int = 256) -> np.ndarray:
    """N x d L2-normalised text-tower embeddings of raw strings (queries are embedded as written: no prompt)."""
    from fashiontune.models.precision import Precision

    model = for_inference(loaded.model, device)
    parts = []
    for s in range(0, len(texts), batch_size):
        tokens = loaded.tokenizer(list(texts[s:s + batch_size])).to(device)
        with Precision(precision).autocast(device):
            parts.append(torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(parts).numpy()
