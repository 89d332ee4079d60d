"""rerank: train a cross-encoder (models/cross.py) to re-order the dual encoder's top-K (issue 14).

The open_clip towers are the dual encoder to re-rank (model.pretrained = a contrastive export) and stay
FROZEN: only the cross-encoder trains. Because the towers never change, everything they produce is computed
once, at the first epoch start, and cached for the run (eval/rerank.py's TokenBank):

- mining: every rank embeds its globally aligned run of the train split's batches (the eval job's partition,
  so the items and their features do not depend on the world size), the parts are all-gathered so every rank
  holds the whole split, and every rank computes the same exact top-`mine_k` (metrics/topk.py) of each
  caption over all train images. Relevant items (same group_id or same non-empty caption) are dropped from a
  caption's list: what is left are its hard negatives. Mining is a pure function of the split, the towers,
  mine_k and the seed: two processes mine exactly the negatives one process does (tests/test_rerank.py).
- each epoch draws `negatives` of them per caption (a generator seeded by loop seed and epoch: the same on
  every rank and after a resume); a caption with fewer hard negatives than that is topped up with random
  non-relevant items.
- a training batch only supplies item keys: caption i is scored against [its own image, its negatives] from
  the cached tokens and the loss is the cross-entropy of the positive (listwise). Batches come from the
  trainer's loader, so the loop's features (DDP, accumulation, checkpoints, resume, bf16 autocast) apply.

Validation re-ranks the val split's own text->image top-K (the eval job's code: eval/rerank.py) and reports
R@K before (dual_*) and after. The export is the towers' open_clip export plus reranker.pt / reranker.json.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models import LoadedModel, export_model, save_heads
from ..models.cross import CrossConfig, build_cross, image_tokens, listwise_loss, save_reranker, text_tokens
from .base import Task, TaskError, device_of, gather_objects, gather_rows, require_text_model
from .config import TaskConfig

RERANK_KS = (1, 5, 10)
RERANK_METRICS = sorted([f"{p}t2i_R@{k}" for p in ("", "dual_") for k in RERANK_KS] + ["count"])


def mine_negatives(bank, mine_k: int) -> list[list[int]]:
    """Per caption i of `bank`: the images of its dual-encoder top-`mine_k` that are not relevant to it (same
    group or same non-empty caption), best first."""
    from fashiontune.metrics.retrieval import codes
    from fashiontune.metrics.topk import chunked_rank

    top = chunked_rank(bank.text, bank.image, min(mine_k + 1, len(bank)), device="cpu").topk_indices
    g = torch.from_numpy(codes(bank.group_ids))
    c = torch.from_numpy(codes(bank.captions, empty_unique=True))
    rel = (g[top] == g[:, None]) | (c[top] == c[:, None])
    return [[int(j) for j, r in zip(row, rr) if not r][:mine_k] for row, rr in zip(top.tolist(), rel.tolist())]


def draw_negatives(hard: Sequence[Sequence[int]], bank, n: int, seed: int) -> Tensor:
    """N x n negatives: a seeded random `n` of each caption's hard negatives, topped up with random
    non-relevant items when it has fewer."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(len(hard), n, dtype=torch.long)
    for i, h in enumerate(hard):
        pick = [h[j] for j in torch.randperm(len(h), generator=gen)[:n].tolist()]
        while len(pick) < n:
            j = int(torch.randint(len(bank), (1,), generator=gen))
            if bank.group_ids[j] != bank.group_ids[i] and (not bank.captions[i] or bank.captions[j] != bank.captions[i]):
                pick.append(j)
        out[i] = torch.tensor(pick)
    return out


def mine_bank(loaded: LoadedModel, shards_dir: str, split: str, batch_size: int, device, rank: int, world: int):
    """The whole split's TokenBank on every rank: each embeds its batch range, then all-gather."""
    from fashiontune.data import read_manifest
    from fashiontune.eval import embed as E
    from fashiontune.eval.rerank import all_gather_bank, embed_bank

    manifest = read_manifest(shards_dir)
    shards = E.eval_shards(manifest, Path(shards_dir), split)
    total = E.split_count(manifest, split)
    s, e = E.batch_range(total, batch_size, rank, world)
    local = embed_bank(loaded, shards, s, e, batch_size, device)
    counts = [b - a for a, b in (E.batch_range(total, batch_size, r, world) for r in range(world))]
    return all_gather_bank(local, counts)


class RerankTask(Task):
    name = "rerank"
    needs_text = True
    primary_metric = "t2i_R@1"

    def __init__(self, cfg: TaskConfig, loaded: LoadedModel, rank: int = 0, world_size: int = 1):
        super().__init__(cfg, loaded, rank, world_size)
        require_text_model(loaded, "rerank")
        r = cfg.rerank
        try:
            self.module = build_cross(loaded.model, CrossConfig(r.width, r.layers, r.heads, r.dropout))
        except TypeError as e:
            raise TaskError(f"task.name=rerank: {e}") from e
        loaded.model.requires_grad_(False).eval()  # the dual encoder under the re-ranker stays as it is
        self.fields: list[str] = []
        self.bank = None
        self.hard: list[list[int]] = []
        self.negs: Tensor | None = None
        self.row: dict[str, int] = {}
        self.data: tuple[str, str, int] | None = None
        self.seed = 0
        self._k = 1

    def bind_data(self, shards: str, split: str, batch_size: int, seed: int = 0) -> None:
        """Where the train split lives (the trainer calls this before the first epoch)."""
        self.data, self.seed = (shards, split, self.cfg.rerank.mine_batch_size or batch_size), seed

    def mine(self) -> None:
        """Bank + hard negatives of the train split, once (frozen towers: they cannot change)."""
        if self.bank is not None:
            return
        if self.data is None:
            raise TaskError("task.name=rerank: no train split bound to mine from (bind_data was not called).")
        dev = device_of(self.module)
        self.loaded.model.to(dev)
        self.bank = mine_bank(self.loaded, *self.data, dev, self.rank, self.world_size)
        self.row = {k: i for i, k in enumerate(self.bank.keys)}
        self.hard = mine_negatives(self.bank, self.cfg.rerank.mine_k)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if self.data is not None:
            self.mine()
            self.negs = draw_negatives(self.hard, self.bank, self.cfg.rerank.negatives, self.seed * 100003 + epoch)

    def begin_step(self, model: nn.Module, micro_batches: Sequence[dict]) -> None:
        self._k = len(micro_batches)

    def loss(self, model: nn.Module, i: int, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Each caption against [its image, its negatives of this epoch]; cross-entropy of the positive."""
        if self.negs is None:
            raise TaskError("task.name=rerank: no negatives mined (the trainer did not start an epoch).")
        b = self.bank
        q = torch.tensor([self.row[k] for k in batch["key"]])
        cand = torch.cat([q[:, None], self.negs[q]], dim=1)  # Q x (1 + n), positive first
        a, c = q[:, None].expand_as(cand).reshape(-1), cand.reshape(-1)
        dev = device_of(self.module)
        cos = (b.text[a] * b.image[c]).sum(-1)
        s = model(b.text_tok[a].to(dev), b.text_pad[a].to(dev), b.image_tok[c].to(dev), cos.to(dev))
        loss = listwise_loss(s.float().view(cand.shape)) / self._k
        return loss, ({"loss": loss.detach() * self._k} if i == 0 else {})

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict], accelerator: Any = None) -> dict[str, float]:
        """The val split's text->image R@K before (dual_*) and after re-ranking its top-mine_k (gathered ranks)."""
        from fashiontune.eval.rerank import TokenBank, first_relevant, rerank_topk
        from fashiontune.metrics.retrieval import rank_metrics, retrieval_ranks

        was = self.module.training
        self.module.eval()
        clip, dev = self.loaded.model, device_of(self.module)
        parts: dict[str, list] = {k: [] for k in ("img", "txt", "itok", "ttok", "pad")}
        keys, groups, caps, order = [], [], [], []
        for b in batches:
            keep = b["valid"].cpu() if "valid" in b else torch.ones(len(b["key"]), dtype=torch.bool)
            img, itok = image_tokens(clip, b["image"].to(dev)[keep.to(dev)])
            txt, ttok, pad = text_tokens(clip, b["text"].to(dev)[keep.to(dev)])
            for k, v in zip(parts, (img, txt, itok.float(), ttok.float(), pad.to(torch.uint8))):
                parts[k].append(v)
            kept = keep.tolist()
            keys += [x for x, m in zip(b["key"], kept) if m]
            groups += [x for x, m in zip(b.get("group_id") or b["key"], kept) if m]
            caps += [x for x, m in zip(b.get("caption") or [""] * len(kept), kept) if m]
            order += [x for x, m in zip(b.get("index") or [-1] * len(kept), kept) if m]
        self.module.train(was)
        full = {k: gather_rows(accelerator, torch.cat(v)).cpu() for k, v in parts.items() if v}
        keys, groups, caps, order = (gather_objects(accelerator, x) for x in (keys, groups, caps, order))
        if not full:
            return {**{m: float("nan") for m in RERANK_METRICS}, "count": 0.0}
        perm = sorted(range(len(keys)), key=lambda i: (order[i], keys[i]))  # the split's order, whatever the ranks
        idx = torch.tensor(perm)
        bank = TokenBank([keys[i] for i in perm], [groups[i] for i in perm], [caps[i] for i in perm],
                         full["img"][idx], full["txt"][idx], full["itok"][idx], full["ttok"][idx],
                         full["pad"][idx].bool())
        r = retrieval_ranks(bank.image, bank.text, bank.group_ids, bank.captions,
                            k=min(len(bank), self.cfg.rerank.mine_k), device="cpu")["t2i"]
        new = rerank_topk(self.module, bank, r.topk_indices, self.cfg.rerank.mine_k, t2i=True)
        before, after = rank_metrics(r.first_rank, RERANK_KS), rank_metrics(
            first_relevant(new, bank.group_ids, bank.captions, r.first_rank), RERANK_KS)
        out = {f"t2i_R@{k}": after[f"R@{k}"] for k in RERANK_KS}
        out.update({f"dual_t2i_R@{k}": before[f"R@{k}"] for k in RERANK_KS})
        out["count"] = float(len(bank))
        self.last_eval = {"n": len(bank)}
        return out

    @torch.no_grad()
    def export(self, out_dir: str | Path, state_dict: Mapping[str, Tensor] | None = None) -> None:
        """The towers' open_clip export (unchanged: loadable by open_clip) + reranker.pt / reranker.json."""
        export_model(self.loaded, out_dir)
        if state_dict is not None:
            self.module.load_state_dict(dict(state_dict))
        save_reranker(out_dir, self.module, self.loaded.name, {"mine_k": self.cfg.rerank.mine_k})
        save_heads(out_dir, {}, {"task": "rerank", "model": self.loaded.name, "backbone": "open_clip", "fields": {}})
