"""Re-rank each query's exact dual-encoder top-K with a cross-encoder (models/cross.py), and what it shares
with training (tasks/rerank.py): the token bank of a split and the batched re-ordering.

- `TokenBank`: every item of a split through the (frozen) towers once: pooled normalised embeddings and the
  text / image tokens the cross-encoder attends over (fp16 on the CPU). `embed_bank` fills it for an item
  range with the eval job's own reader (embed.RangeBatches: same partition, same order); `all_gather_bank`
  gives every rank the whole split (training's mining: each rank then mines the same negatives).
- `rerank_topk`: re-orders the first `k` columns of each query's top-K list by cross-encoder score, in batches
  of query x candidate pairs. It only permutes within those k columns: the candidate set is unchanged, and
  items outside the top k keep their dual-encoder rank.
- `rerank_block`: results.json's `rerank: {t2i|i2t: {before, after}}` with every retrieval metric of the eval
  job (Hit@K / MRR / ranks and the BEIR block), and the cost per query.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fashiontune.metrics.retrieval import codes, rank_metrics
from fashiontune.metrics.topk import RankResult
from fashiontune.models.cross import CrossEncoder, image_tokens, text_tokens
from fashiontune.models.precision import Precision


@dataclass
class TokenBank:
    keys: list[str]
    group_ids: list[str]
    captions: list[str]
    image: Tensor  # N x D normalised pooled image embeddings (fp32)
    text: Tensor  # N x D normalised pooled text embeddings (fp32)
    image_tok: Tensor  # N x P x Wv (fp16)
    text_tok: Tensor  # N x T x Wt (fp16)
    text_pad: Tensor  # N x T bool, True = after end-of-text

    def __len__(self) -> int:
        return len(self.keys)


_TENSORS = ("image", "text", "image_tok", "text_tok", "text_pad")


@torch.no_grad()
def embed_bank(loaded, shards, start: int, end: int, batch_size: int, device, precision: str = "fp32") -> TokenBank:
    """Items [start, end) of a split (global order) through the towers, in the main process."""
    from torch.utils.data import DataLoader

    from fashiontune.eval.embed import RangeBatches  # the eval job's reader

    clip = loaded.model.to(device).eval()
    ds = RangeBatches(shards, start, end, batch_size, loaded.preprocess_val, loaded.tokenizer)
    parts: dict[str, list] = {k: [] for k in ("keys", "group_ids", "captions", *_TENSORS)}
    for b in DataLoader(ds, batch_size=None, num_workers=0):
        with Precision(precision).autocast(device):
            img, itok = image_tokens(clip, b["image"].to(device))
            txt, ttok, pad = text_tokens(clip, b["text"].to(device))
        for k, v in (("keys", b["key"]), ("group_ids", b["group_id"]), ("captions", b["caption"])):
            parts[k] += list(v)
        for k, v in zip(_TENSORS, (img.float(), txt.float(), itok.half(), ttok.half(), pad)):
            parts[k].append(v.cpu())
    gh, gw = clip.visual.grid_size
    (t_len, t_w), d = clip.positional_embedding.shape, clip.visual.output_dim
    empty = [torch.zeros(0, d), torch.zeros(0, d), torch.zeros(0, gh * gw, clip.visual.conv1.out_channels).half(),
             torch.zeros(0, t_len, t_w).half(), torch.zeros(0, t_len, dtype=torch.bool)]
    tensors = [torch.cat(parts[k]) if parts[k] else e for k, e in zip(_TENSORS, empty)]
    return TokenBank(parts["keys"], parts["group_ids"], parts["captions"], *tensors)


@torch.no_grad()
def text_bank(loaded, texts: Sequence[str], device, precision: str = "fp32") -> TokenBank:
    """Free-text queries (serve's text search) as a TokenBank without images: embed_bank's text pass (same
    tokenizer, text_tokens, autocast) on raw strings. Its pooled `text` is the query's dual-encoder embedding."""
    from fashiontune.eval.embed import for_inference

    clip = for_inference(loaded.model, device)
    with Precision(precision).autocast(device):
        txt, ttok, pad = text_tokens(clip, loaded.tokenizer(list(texts)).to(device))
    n, d = len(texts), txt.shape[1]
    return TokenBank([""] * n, [""] * n, list(texts), torch.zeros(0, d), txt.float().cpu(),
                     torch.zeros(0, 0, 0).half(), ttok.half().cpu(), pad.cpu())


def all_gather_bank(local: TokenBank, counts: Sequence[int]) -> TokenBank:
    """Every rank's part, concatenated in rank order, on EVERY rank (`counts`: items per rank, known to all)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    world = dist.get_world_size()
    lists: list = [None] * world
    dist.all_gather_object(lists, (local.keys, local.group_ids, local.captions))
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = []
    for name in _TENSORS:
        t = getattr(local, name)
        shape = [max(counts), *t.shape[1:]]
        wire = torch.uint8 if t.dtype == torch.bool else t.dtype
        pad = torch.zeros(shape, dtype=wire, device=dev)
        pad[: t.shape[0]] = t.to(dev, wire)
        parts = [torch.empty_like(pad) for _ in range(world)]
        dist.all_gather(parts, pad)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu().to(t.dtype))
    keys, groups, caps = ([x for part in lists for x in part[i]] for i in range(3))
    return TokenBank(keys, groups, caps, *out)


@torch.no_grad()
def pair_scores(cross: CrossEncoder, bank_q: TokenBank, q: Tensor, bank_c: TokenBank, c: Tensor, t2i: bool,
                pairs_per_batch: int = 4096) -> Tensor:
    """Cross-encoder scores of pairs (query q[m], candidate c[m]); t2i: queries are captions, else images."""
    ti, ii = (q, c) if t2i else (c, q)
    tb, ib = (bank_q, bank_c) if t2i else (bank_c, bank_q)
    dev = next(cross.parameters()).device
    out = []
    for s in range(0, len(q), pairs_per_batch):
        a, b = ti[s:s + pairs_per_batch], ii[s:s + pairs_per_batch]
        cos = (tb.text[a] * ib.image[b]).sum(-1)
        out.append(cross(tb.text_tok[a].to(dev), tb.text_pad[a].to(dev), ib.image_tok[b].to(dev), cos.to(dev)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def rerank_topk(cross: CrossEncoder, bank: TokenBank, topk: Tensor, k: int, t2i: bool,
                pairs_per_batch: int = 4096, queries: TokenBank | None = None) -> Tensor:
    """Q x K' top-K lists with their first min(k, K') columns re-ordered by cross-encoder score (ties keep the
    dual-encoder order); columns after k are untouched. Candidates are items of `bank`; query i is row i of
    `queries` (serve's text queries, text_bank), else item i of `bank` (the eval job)."""
    k = min(k, topk.shape[1])
    head = topk[:, :k]
    q = torch.arange(topk.shape[0]).repeat_interleave(k)
    s = pair_scores(cross, bank if queries is None else queries, q, bank, head.reshape(-1), t2i,
                    pairs_per_batch).view(-1, k)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    return torch.cat([head.gather(1, order), topk[:, k:]], dim=1)


def first_relevant(topk: Tensor, group_ids: Sequence[str], captions: Sequence[str], before: Tensor) -> Tensor:
    """1-based rank of the best relevant item (same group or same non-empty caption) in each query's
    (re-ordered) top-K list; a query whose relevant items are all outside its list keeps its dual-encoder rank
    `before` (which is then > K). Query i is item i (the eval job's caption and image queries)."""
    g = torch.from_numpy(codes(group_ids))
    c = torch.from_numpy(codes(captions, empty_unique=True))
    q = torch.arange(topk.shape[0])[:, None]
    hit = (g[topk] == g[q]) | (c[topk] == c[q])
    return torch.where(hit.any(1), hit.float().argmax(1) + 1, before)


def rerank_block(cross: CrossEncoder, bank: TokenBank, ranks: dict[str, RankResult], k: int, ks: Sequence[int],
                 pairs_per_batch: int = 4096) -> dict:
    """{direction: {before, after, k, seconds_per_query}} for the eval job's ranks (t2i / i2t) of `bank`'s items."""
    from fashiontune.eval import protocol as P
    from fashiontune.metrics.ir import IRRun

    qrels = P.pair_qrels(bank.group_ids, bank.captions)
    out = {}
    for d, r in ranks.items():
        t0 = time.perf_counter()
        new = rerank_topk(cross, bank, r.topk_indices, k, d == "t2i", pairs_per_batch)
        dt = time.perf_counter() - t0
        after = first_relevant(new, bank.group_ids, bank.captions, r.first_rank)
        pseudo = torch.arange(new.shape[1], 0, -1, dtype=torch.float32).expand(new.shape[0], -1).contiguous()
        ir_after = P.ir_block(IRRun(new, pseudo, len(bank)), qrels, ks)
        ir_before = P.ir_block(IRRun.from_rank(r, len(bank)), qrels, ks)
        out[d] = {"before": {**rank_metrics(r.first_rank, ks), "ir": ir_before},
                  "after": {**rank_metrics(after, ks), "ir": ir_after},
                  "k": min(k, new.shape[1]), "queries": int(new.shape[0]),
                  "seconds_per_query": dt / max(1, new.shape[0])}
    return out


def same_candidates(before: Tensor, after: Tensor, k: int) -> bool:
    """True when each row's first k items are the same set (and the rest the same list): only the order moved."""
    k = min(k, before.shape[1])
    return bool(torch.equal(before[:, :k].sort(1).values, after[:, :k].sort(1).values)
                and torch.equal(before[:, k:], after[:, k:]))
