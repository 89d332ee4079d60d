"""Same-product positives for the contrastive loss: items that share a group_id (views of one product) or,
optionally, an identical text are positives, not negatives (open_clip issue #869).

Each item carries two int64 ids, hashed from strings so that every rank maps a string to the same number:
its group and its text (0 = no text id). Across ranks the ids are gathered alongside the features, which go
through open_clip's `gather_features` exactly as in `ClipLoss(local_loss, gather_with_grad)`, so gradients
across ranks are those of the one big-batch loss. Two forms over the logits (both directions, averaged):
  supcon  -mean over the row's positives of log softmax  (multi-positive, SupCon-style)
  mask    cross-entropy on the own pair with the other positives removed from the row (no false negatives)
With one positive per row (every group and text distinct) both equal ClipLoss exactly."""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import gather_features
from torch import Tensor, nn

from .config import GroupLoss, Positives


def string_id(s: str) -> int:
    """A stable, non-zero int64 for a string (the same on every rank and run)."""
    h = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little", signed=True)
    return h or 1


def positive_ids(groups: Sequence[str], texts: Sequence[str], positives: Positives) -> Tensor:
    """B x 2 int64: (group id, text id); the text id is 0 (matches nothing) unless positives is
    group_or_caption and the text is non-empty."""
    use_text = Positives(positives) == Positives.group_or_caption
    rows = [(string_id("g:" + g), string_id("t:" + t) if use_text and t.strip() else 0) for g, t in zip(groups, texts)]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 2)


def positive_mask(row_ids: Tensor, col_ids: Tensor) -> Tensor:
    """R x N bool: same group, or same non-zero text id."""
    same_group = row_ids[:, None, 0] == col_ids[None, :, 0]
    same_text = (row_ids[:, None, 1] == col_ids[None, :, 1]) & (row_ids[:, None, 1] != 0)
    return same_group | same_text


def _gather_ids(ids: Tensor, world_size: int) -> Tensor:
    parts = [torch.zeros_like(ids) for _ in range(world_size)]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


def _row_loss(logits: Tensor, pos: Tensor, own: Tensor, form: GroupLoss) -> Tensor:
    if form == GroupLoss.mask:
        return F.cross_entropy(logits.masked_fill(pos & ~own, float("-inf")), own.float().argmax(1))
    logp = logits.log_softmax(1)
    return -(logp.masked_fill(~pos, 0.0).sum(1) / pos.sum(1)).mean()


class MultiPositiveLoss(nn.Module):
    """ClipLoss with same-product positives: forward(image, text, logit_scale, ids) with ids from positive_ids."""

    def __init__(self, form: GroupLoss = GroupLoss.supcon, local_loss: bool = True, gather_with_grad: bool = True,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        self.form, self.local_loss, self.gather_with_grad = GroupLoss(form), local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size

    def forward(self, image: Tensor, text: Tensor, logit_scale: Tensor, ids: Tensor) -> Tensor:
        ids = ids.to(image.device)
        if self.world_size > 1:
            all_img, all_txt = gather_features(image, text, self.local_loss, self.gather_with_grad, self.rank,
                                               self.world_size)
            all_ids = _gather_ids(ids, self.world_size)
        else:
            all_img, all_txt, all_ids = image, text, ids
        if self.local_loss:  # this rank's rows against every column
            rows_img, rows_txt, row_ids, offset = image, text, ids, self.rank * image.shape[0]
        else:
            rows_img, rows_txt, row_ids, offset = all_img, all_txt, all_ids, 0
        pos = positive_mask(row_ids, all_ids)
        own = torch.zeros_like(pos)
        own[torch.arange(pos.shape[0], device=pos.device), offset + torch.arange(pos.shape[0], device=pos.device)] = True
        per_image = _row_loss(logit_scale * rows_img @ all_txt.T, pos, own, self.form)
        per_text = _row_loss(logit_scale * rows_txt @ all_img.T, pos, own, self.form)
        return (per_image + per_text) / 2
