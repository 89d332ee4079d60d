"""Text search re-ranked by a cross-encoder (issue 14): `fashiontune serve INDEX rerank.model=EXPORT rerank.k=50`.

Per batch of text queries (serve/batching.py): one text-tower pass giving each query's pooled embedding and its
tokens (eval/rerank.text_bank), one faiss search for the dual encoder's top-max(k, rerank.k), one cross-encoder
pass over the batch's (query, candidate) pairs re-ordering each query's first rerank.k candidates
(eval/rerank.rerank_topk, the eval job's code path). Results beyond rerank.k keep the dual encoder's order;
every result keeps its dual-encoder cosine as `score`.

The catalogue's image patch tokens are read from the index (`index build tokens=true`, fp16, memory-mapped),
computed there by the index's own towers. The re-ranker export's towers must be those towers, weight for weight
(checked at start-up): its tokens and the index's tokens are then the same, and the stored tokens never go stale
under a re-trained cross-encoder (the towers are frozen in task.name=rerank).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fashiontune.errors import UserError
from fashiontune.eval.config import RerankEvalConfig
from fashiontune.models.cross import (
    RERANKER_INFO,
    RERANKER_WEIGHTS,
    TokenError,
    check_tokens,
    load_reranker,
)


class Reranker:
    def __init__(self, cat, cfg: RerankEvalConfig):
        from fashiontune.eval.config import EvalModelConfig
        from fashiontune.eval.model import load_eval_model

        export = cfg.model
        if not cat.info.get("has_text"):
            raise UserError(f"rerank.model={export}: index {cat.dir} has no text tower; re-ranking is for text search.")
        try:
            self.cross, self.meta = load_reranker(export)  # weights via torch.load(weights_only=True): no code runs
        except FileNotFoundError as e:
            raise UserError(str(e)) from e
        except (pickle.UnpicklingError, ValueError, KeyError, TypeError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise UserError(f"rerank.model={export}: {Path(export) / RERANKER_INFO} / {RERANKER_WEIGHTS} do not load "
                            f"as a weights-only re-ranker ({type(e).__name__}: {first}); nothing in them was run. "
                            "Export the task.name=rerank run again.") from e
        towers, _ = load_eval_model(EvalModelConfig(checkpoint=export))  # the re-ranker's own towers
        self.export, self.k, self.pairs_per_batch = export, cfg.k, cfg.pairs_per_batch
        _check_towers(cat, towers.model, self.cross, export, self.meta.get("model"))
        self.loaded = cat.model()[0]  # equal to them, weight for weight (checked): one copy of the towers serves
        self.bank = _catalogue_bank(cat, self.cross, export)

    def describe(self, n_items: int) -> dict:
        return {"model": self.export, "k": min(self.k, n_items)}

    def search_texts(self, cat, texts: Sequence[str], ks: Sequence[int]) -> list:
        """Top-ks[i] hits of each text, the first rerank.k re-ordered by the cross-encoder (one call per batch)."""
        from fashiontune.eval.rerank import rerank_topk, text_bank
        from fashiontune.serve.catalogue import CPU, Hit

        q = text_bank(self.loaded, texts, CPU, cat._precision())
        rows = cat.search_many(q.text.numpy(), [max(max(ks), self.k)] * len(texts))
        k = min([self.k, *map(len, rows)])
        head = torch.tensor([[h.pos for h in r[:k]] for r in rows], dtype=torch.long).view(len(rows), k)
        order = rerank_topk(self.cross, self.bank, head, k, True, self.pairs_per_batch, queries=q).tolist()
        out = []
        for r, new, want in zip(rows, order, ks):
            score = {h.pos: h.score for h in r[:k]}
            out.append(([Hit(p, score[p]) for p in new] + r[k:])[:want])
        return out


def _check_towers(cat, towers: torch.nn.Module, cross, export: str, name) -> None:
    """The re-ranker's towers must be the index's (same parameters, equal weights) and fit its cross-encoder."""
    try:
        check_tokens(towers)
    except TokenError as e:
        raise UserError(f"rerank.model={export}: {e}") from e
    for field, want, got in (("text_width", towers.token_embedding.embedding_dim, cross.text_width),
                             ("image_width", towers.visual.conv1.out_channels, cross.image_width)):
        if want != got:
            raise UserError(f"rerank.model={export}: {Path(export) / RERANKER_INFO} {field}={got}, but the export's "
                            f"towers have {want}; export the task.name=rerank run again.")
    why = _weights_differ(cat.model()[0].model, towers)
    if why:
        raise UserError(
            f"rerank.model={export}: its towers (model {name!r} in {Path(export) / RERANKER_INFO}) are not the towers "
            f"that built index {cat.dir} (model {cat.info.get('model')!r} in {cat.dir / 'index.json'}): {why}. Fix: "
            "serve the re-ranker trained on the index's model (task.name=rerank with model.checkpoint=<that export>), "
            f"or build an index from the re-ranker's towers: `fashiontune index build --model {export} "
            "--shards DIR --out INDEX tokens=true`.")


def _weights_differ(a: torch.nn.Module, b: torch.nn.Module) -> str:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return f"another architecture ({len(sa.keys() ^ sb.keys())} parameter names differ)"
    for key, t in sa.items():
        if t.shape != sb[key].shape:
            return f"{key} has shape {tuple(sb[key].shape)}, the index's model {tuple(t.shape)}"
        if not torch.equal(t, sb[key]):
            return f"other weights (first: {key})"
    return ""


def _catalogue_bank(cat, cross, export: str):
    """The index's items as a TokenBank: pooled image embeddings (the faiss vectors) + the stored patch tokens."""
    from fashiontune.eval.rerank import TokenBank

    spec = cat.info.get("tokens")
    if not spec:
        raise UserError(f"rerank.model={export}: {cat.dir / 'index.json'} has no image tokens (field \"tokens\"); "
                        f"rebuild the index with them: `fashiontune index build ... --out {cat.dir} tokens=true`.")
    path = cat.dir / spec["image"]
    try:
        tok = np.load(path, mmap_mode="c")  # copy-on-write map: pages read as queries touch them; no pickle
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); rebuild the index with tokens=true.") from e
    if tok.ndim != 3 or tok.shape[0] != len(cat) or tok.shape[2] != cross.image_width or tok.dtype != np.float16:
        raise UserError(f"{path}: {tok.dtype} {tok.shape}, expected float16 ({len(cat)}, patches, "
                        f"{cross.image_width}) for rerank.model={export}; rebuild the index with tokens=true.")
    n = len(cat)
    return TokenBank([it["id"] for it in cat.items], [it["group"] for it in cat.items],
                     [it["caption"] for it in cat.items], torch.from_numpy(cat.vectors), torch.zeros(n, 0),
                     torch.from_numpy(tok), torch.zeros(n, 0, 0).half(), torch.zeros(n, 0, dtype=torch.bool))
