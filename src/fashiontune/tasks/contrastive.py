"""contrastive: CLIP fine-tuning on (image, caption) pairs with open_clip's ClipLoss (symmetric CE).

Across ranks the loss needs an autograd-aware all-gather: ClipLoss(local_loss=True, gather_with_grad=True)
(accelerator.gather carries no gradient). Gradient accumulation uses open_clip's feature cache: embed every
micro-batch without grad, then re-embed one micro-batch at a time with grad and score it against the cached
rest, so the k backward passes add up to the gradient of the one big-batch loss (the negatives of the whole
accumulated batch are used). Each of the k passes takes a 1/k share of the logit scale's gradient (its full
gradient each time would multiply it by k, as open_clip's trainer does), so every pass uses every parameter and
DDP needs no find_unused_parameters for accumulation.

Padding rows (batch["valid"] False, the repeated samples that keep ranks in step at the end of an uneven
exact epoch) train like DistributedSampler's padding does (the all-gather needs equal shapes on every
rank); evaluation drops them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from open_clip import ClipLoss
from torch import Tensor, nn

from ..models import LoadedModel, StageFreezer, export_model, save_heads
from ..models.prompts import LOG_SCALE_MAX
from . import metrics as M
from .base import Task, device_of, gather_objects, gather_rows, merged_model_state, require_text_model, trainable_stages
from .config import FreezeMode, TaskConfig


class ContrastiveModule(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        self.freezer = StageFreezer(clip.visual)
        self.image_locked = False

    @property
    def image_frozen(self) -> bool:
        return self.image_locked or self.freezer.tower_frozen

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for m in [self.clip.visual] if self.image_frozen else self.freezer.frozen_modules():
                m.eval()
        return self

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.image_frozen:
            with torch.no_grad():
                img = self.clip.encode_image(image, normalize=True)
        else:
            img = self.clip.encode_image(image, normalize=True)
        txt = self.clip.encode_text(text, normalize=True)
        # clamp as CLIP does (ln 100), here in the forward so the loop needs no post-step hook
        return img, txt, self.clip.logit_scale.clamp(max=LOG_SCALE_MAX).exp()


class ContrastiveTask(Task):
    name = "contrastive"
    needs_text = True
    primary_metric = "mean_R@1"

    def __init__(self, cfg: TaskConfig, loaded: LoadedModel, rank: int = 0, world_size: int = 1):
        super().__init__(cfg, loaded, rank, world_size)
        require_text_model(loaded, "contrastive")
        c = cfg.contrastive
        self.fields = []
        self.module = ContrastiveModule(loaded.model)
        if getattr(loaded.model, "logit_bias", None) is not None:
            loaded.model.logit_bias.requires_grad_(False)  # SigLIP-style bias: ClipLoss has no bias term
        if c.lock_text:
            loaded.model.lock_text_tower()
        if c.lock_image:
            loaded.model.lock_image_tower()
            self.module.image_locked = True
        self.loss_fn = ClipLoss(local_loss=c.local_loss, gather_with_grad=c.gather_with_grad, cache_labels=True,
                             rank=rank, world_size=world_size)
        self.eval_loss = ClipLoss()  # per-batch, no collectives: ranks may hold different batch counts
        self.find_unused_parameters = cfg.freeze.mode in (FreezeMode.gradual, FreezeMode.freeze_then_unfreeze)
        self._cache: list[tuple[Tensor, Tensor]] = []  # begin_step's no-grad features of this step
        self.on_epoch_start(0)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self.module.freezer.set_trainable(trainable_stages(self.cfg.freeze, epoch, len(self.module.freezer.stages)))
        self.module.train(self.module.training)

    # -- the trainer's side (tasks/base.py): open_clip's feature-cache accumulation ------------------------
    def begin_step(self, model: nn.Module, micro_batches: Sequence[dict]) -> None:
        """With k > 1 micro-batches: embed every one without grad (the negatives of the whole batch)."""
        self._cache = []
        if len(micro_batches) > 1:
            with torch.no_grad():
                self._cache = [model(*self._inputs(mb))[:2] for mb in micro_batches]

    def loss(self, model: nn.Module, i: int, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Re-embed micro-batch i with grad and score it against the cached rest: the k backward passes add up
        to the gradient of the one big-batch loss. Logs (detached tensors) come from the first micro-batch only."""
        img, txt, scale = model(*self._inputs(batch))
        if self._cache:
            imgs = torch.cat([c[0] for c in self._cache[:i]] + [img] + [c[0] for c in self._cache[i + 1:]])
            txts = torch.cat([c[1] for c in self._cache[:i]] + [txt] + [c[1] for c in self._cache[i + 1:]])
            img, txt = imgs, txts
            # Every pass sees the same loss, so each one's d loss / d scale is the big batch's: take 1/k of it per
            # pass (value exactly `scale`: detached + 0 / k). Then the synced last pass uses logit_scale too.
            scale = scale.detach() + (scale - scale.detach()) / len(self._cache)
        loss = self.loss_fn(img, txt, scale)
        return loss, ({"loss": loss.detach(), "logit_scale": scale.detach()} if i == 0 else {})

    def _inputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        dev = device_of(self.module)
        return batch["image"].to(dev, non_blocking=True), batch["text"].to(dev, non_blocking=True)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict], accelerator: Any = None) -> dict[str, float]:
        was_training = self.module.training
        self.module.eval()
        dev = device_of(self.module)
        imgs, txts, groups, captions, order = [], [], [], [], []
        loss_sum, n = 0.0, 0
        for b in batches:
            img, txt, scale = self.module(b["image"].to(dev, non_blocking=True), b["text"].to(dev, non_blocking=True))
            keep = b["valid"].to(img.device) if "valid" in b else torch.ones(img.shape[0], dtype=torch.bool, device=dev)
            if not bool(keep.any()):
                continue
            img, txt = img[keep], txt[keep]
            loss_sum += float(self.eval_loss(img, txt, scale)) * img.shape[0]
            n += img.shape[0]
            imgs.append(img.float())
            txts.append(txt.float())
            ids = list(b.get("group_id") or b.get("key") or [None] * len(keep))
            groups += [g for g, k in zip(ids, keep.tolist()) if k]
            captions += [c for c, k in zip(b.get("caption") or [""] * len(keep), keep.tolist()) if k]
            order += [i for i, k in zip(b.get("index") or [-1] * len(keep), keep.tolist()) if k]
        self.module.train(was_training)
        D = self.module.clip.visual.output_dim
        img = gather_rows(accelerator, torch.cat(imgs) if imgs else torch.zeros(0, D, device=dev)).cpu()
        txt = gather_rows(accelerator, torch.cat(txts) if txts else torch.zeros(0, D, device=dev)).cpu()
        stats = gather_rows(accelerator, torch.tensor([[loss_sum, float(n)]], device=dev)).sum(0)
        groups, captions = gather_objects(accelerator, groups), gather_objects(accelerator, captions)
        order = gather_objects(accelerator, order)
        use_groups = groups if all(g not in (None, "") for g in groups) else None
        res = M.retrieval(img, txt, use_groups, captions, order=order)  # the eval job's relevance and tie rule
        res["loss"] = float(stats[0] / max(float(stats[1]), 1.0))
        res["count"] = float(img.shape[0])
        self.last_eval = {"n": img.shape[0]}
        return res

    @torch.no_grad()
    def export(self, out_dir: str | Path, state_dict: Optional[Mapping[str, Tensor]] = None) -> None:
        state = dict(state_dict) if state_dict is not None else self.module.state_dict()
        export_model(self.loaded, out_dir, merged_model_state(self.loaded, state))
        save_heads(out_dir, {}, {"task": "contrastive", "model": self.loaded.name, "backbone": "open_clip", "fields": {}})
