"""contrastive: CLIP fine-tuning on (image, text) pairs. The objective is a config choice (README "Contrastive
objectives"): loss clip (open_clip ClipLoss, symmetric CE) or siglip (open_clip SigLipLoss, its neighbour
exchange across ranks, logit_bias trained); positives pair | group | group_or_caption (positives.py: views of
one product are not negatives); text_fields (text_fields.py: the text drawn from several fields).

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
from open_clip.loss import SigLipLoss
from torch import Tensor, nn

from ..models import LoadedModel, StageFreezer, export_model, save_heads
from ..models.prompts import LOG_SCALE_MAX
from . import metrics as M
from .base import Task, device_of, gather_objects, gather_rows, merged_model_state, require_text_model, trainable_stages
from .config import ContrastiveConfig, ContrastiveLoss, FreezeMode, Positives, TaskConfig
from .positives import MultiPositiveLoss, positive_ids
from .text_fields import TextFields


class ContrastiveModule(nn.Module):
    def __init__(self, clip: nn.Module, bias: Optional[float] = None):
        """bias: train a logit bias (SigLIP); the model's own logit_bias when it has one, else a new one here
        (left out of the export: a plain open_clip model has none, and retrieval ranks do not depend on it)."""
        super().__init__()
        self.clip = clip
        self.freezer = StageFreezer(clip.visual)
        self.image_locked = False
        own = getattr(clip, "logit_bias", None)
        if own is not None:
            own.requires_grad_(bias is not None)  # ClipLoss has no bias term: frozen unless SigLIP
        self.bias = None if bias is None or own is not None else nn.Parameter(torch.tensor(float(bias)))

    def logit_bias(self) -> Optional[Tensor]:
        own = getattr(self.clip, "logit_bias", None)
        return self.bias if self.bias is not None else (own if own is not None and own.requires_grad else None)

    @property
    def image_frozen(self) -> bool:
        return self.image_locked or self.freezer.tower_frozen

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for m in [self.clip.visual] if self.image_frozen else self.freezer.frozen_modules():
                m.eval()
        return self

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
        if self.image_frozen:
            with torch.no_grad():
                img = self.clip.encode_image(image, normalize=True)
        else:
            img = self.clip.encode_image(image, normalize=True)
        txt = self.clip.encode_text(text, normalize=True)
        # clamp as CLIP does (ln 100), here in the forward so the loop needs no post-step hook
        return img, txt, self.clip.logit_scale.clamp(max=LOG_SCALE_MAX).exp(), self.logit_bias()


class ContrastiveTask(Task):
    name = "contrastive"
    needs_text = True
    primary_metric = "mean_R@1"

    def __init__(self, cfg: TaskConfig, loaded: LoadedModel, rank: int = 0, world_size: int = 1,
                 manifest: Optional[Mapping[str, Any]] = None):
        super().__init__(cfg, loaded, rank, world_size)
        require_text_model(loaded, "contrastive")
        c = cfg.contrastive
        self.siglip = ContrastiveLoss(c.loss) == ContrastiveLoss.siglip
        self.positives = Positives(c.positives)
        self.text_fields = TextFields(c.text_fields, manifest or {}) if c.text_fields else None
        self.fields = self.text_fields.label_fields if self.text_fields else []
        self.module = ContrastiveModule(loaded.model, c.init_logit_bias if self.siglip else None)
        if c.lock_text:
            loaded.model.lock_text_tower()
        if c.lock_image:
            loaded.model.lock_image_tower()
            self.module.image_locked = True
        self.loss_fn = self._loss_fn(c, rank, world_size)
        self.eval_loss = self._loss_fn(c, 0, 1)  # per-batch, no collectives: ranks may hold different batch counts
        self.find_unused_parameters = cfg.freeze.mode in (FreezeMode.gradual, FreezeMode.freeze_then_unfreeze)
        self._cache: list[tuple[Tensor, Tensor]] = []  # begin_step's no-grad features of this step
        self._ids: list[Tensor] = []  # and the positive ids of its micro-batches
        self.on_epoch_start(0)

    def _loss_fn(self, c: ContrastiveConfig, rank: int, world_size: int) -> nn.Module:
        if self.siglip:
            return SigLipLoss(rank=rank, world_size=world_size)
        if self.positives == Positives.pair:
            return ClipLoss(local_loss=c.local_loss, gather_with_grad=c.gather_with_grad, cache_labels=True,
                            rank=rank, world_size=world_size)
        return MultiPositiveLoss(c.group_loss, c.local_loss, c.gather_with_grad, rank, world_size)

    def _score(self, loss_fn: nn.Module, img: Tensor, txt: Tensor, scale: Tensor, bias: Optional[Tensor],
               ids: Optional[Tensor]) -> Tensor:
        if self.siglip:
            return loss_fn(img, txt, scale, bias)
        return loss_fn(img, txt, scale) if ids is None else loss_fn(img, txt, scale, ids)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self.module.freezer.set_trainable(trainable_stages(self.cfg.freeze, epoch, len(self.module.freezer.stages)))
        self.module.train(self.module.training)

    # -- the trainer's side (tasks/base.py): open_clip's feature-cache accumulation ------------------------
    def begin_step(self, model: nn.Module, micro_batches: Sequence[dict]) -> None:
        """With k > 1 micro-batches: embed every one without grad (the negatives of the whole batch)."""
        self._cache, self._ids = [], []
        if len(micro_batches) > 1:
            with torch.no_grad():
                self._cache = [model(*self._inputs(mb))[:2] for mb in micro_batches]
            self._ids = [self._positive_ids(mb) for mb in micro_batches]

    def loss(self, model: nn.Module, i: int, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Re-embed micro-batch i with grad and score it against the cached rest: the k backward passes add up
        to the gradient of the one big-batch loss. Logs (detached tensors) come from the first micro-batch only."""
        img, txt, scale, bias = model(*self._inputs(batch))
        ids = self._positive_ids(batch)
        if self._cache:
            imgs = torch.cat([c[0] for c in self._cache[:i]] + [img] + [c[0] for c in self._cache[i + 1:]])
            txts = torch.cat([c[1] for c in self._cache[:i]] + [txt] + [c[1] for c in self._cache[i + 1:]])
            img, txt = imgs, txts
            ids = None if ids is None else torch.cat(self._ids)
            # Every pass sees the same loss, so each one's d loss / d scale is the big batch's: take 1/k of it per
            # pass (value exactly `scale`: detached + 0 / k). Then the synced last pass uses logit_scale too.
            scale, bias = (None if t is None else t.detach() + (t - t.detach()) / len(self._cache) for t in (scale, bias))
        loss = self._score(self.loss_fn, img, txt, scale, bias, ids)
        logs = {"loss": loss.detach(), "logit_scale": scale.detach()}
        if bias is not None:
            logs["logit_bias"] = bias.detach()
        return loss, (logs if i == 0 else {})

    def _texts(self, batch: dict) -> list[str]:
        """The text each item trains with: its caption, or the field drawn for it (text_fields)."""
        return self.text_fields.texts(batch, self.epoch) if self.text_fields else list(batch.get("caption") or [])

    def _positive_ids(self, batch: dict, texts: Optional[Sequence[str]] = None) -> Optional[Tensor]:
        """(group, text) ids for MultiPositiveLoss (texts: the ones embedded; default the training texts);
        None for the pair losses."""
        if self.siglip or self.positives == Positives.pair:
            return None
        n = len(batch["image"])
        texts = list(self._texts(batch) if texts is None else texts) or [""] * n
        return positive_ids(list(batch.get("group_id") or batch.get("key") or map(str, range(n))), texts, self.positives)

    def _inputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        dev = device_of(self.module)
        text = self.loaded.tokenizer(self._texts(batch)) if self.text_fields else batch["text"]
        return batch["image"].to(dev, non_blocking=True), text.to(dev, non_blocking=True)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict], accelerator: Any = None) -> dict[str, float]:
        was_training = self.module.training
        self.module.eval()
        dev = device_of(self.module)
        imgs, txts, groups, captions, order = [], [], [], [], []
        loss_sum, n = 0.0, 0
        for b in batches:
            img, txt, scale, bias = self.module(b["image"].to(dev, non_blocking=True), b["text"].to(dev, non_blocking=True))
            keep = b["valid"].to(img.device) if "valid" in b else torch.ones(img.shape[0], dtype=torch.bool, device=dev)
            if not bool(keep.any()):
                continue
            img, txt = img[keep], txt[keep]
            pids = self._positive_ids(b, b.get("caption") or [])  # evaluation embeds the captions
            pids = None if pids is None else pids[keep.cpu()]
            loss_sum += float(self._score(self.eval_loss, img, txt, scale, bias, pids)) * img.shape[0]
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
