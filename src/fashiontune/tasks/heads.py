"""Image tower + one head per label field: the engine behind classify, labeltext, multilabel, attributes
and zeroshot. Heads are linear layers (softmax / sigmoid) or label-prompt heads (cosine similarity to
text embeddings of "a photo of a {label}" prompts, initialised from open_clip's zero-shot classifier).

Labels: single-label fields are LongTensor B (-1 = missing), multi-label fields float B×V multi-hot
(a row of -1 = missing). Missing labels count neither in the loss nor in the metrics.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ..models import LoadedModel, StageFreezer, export_model, save_heads
from ..models.prompts import label_text, prompt_logits
from . import metrics as M
from .base import (
    FieldSpec,
    Task,
    TaskError,
    device_of,
    expand_templates,
    gather_rows,
    merged_model_state,
    require_text_model,
    trainable_stages,
)
from .config import FreezeMode, HeadKind, MultiLabelLoss, TaskConfig, TextMode


class PromptHead(nn.Module):
    """logits = scale · normalize(image features) · normalize(label embeddings)ᵀ."""

    def __init__(self, zs_weights: Tensor, tokens: Optional[Tensor], n_templates: int, mode: TextMode,
                 log_scale: float, train_scale: bool, bias: bool = False):
        super().__init__()
        self.mode = mode
        self.n_templates = n_templates
        emb = zs_weights.T.contiguous().clone()  # V×D
        if mode == TextMode.embeddings:
            self.emb = nn.Parameter(emb)
        else:
            self.register_buffer("emb", emb)
        if mode == TextMode.tower:
            self.register_buffer("tokens", tokens, persistent=False)
        scale = torch.tensor(float(log_scale))
        if train_scale:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)
        # sigmoid (multi-label) prompt heads need an offset: scaled cosines are not calibrated probabilities
        self.logit_bias = nn.Parameter(torch.zeros(())) if bias else None

    def label_embeddings(self, encode_text: Optional[Callable] = None) -> Tensor:
        if self.mode == TextMode.tower:
            e = encode_text(self.tokens, normalize=True)  # same ensembling as build_zero_shot_classifier
            e = e.reshape(-1, self.n_templates, e.shape[-1]).mean(1)
            return F.normalize(e, dim=-1)
        return F.normalize(self.emb, dim=-1)

    def forward(self, feats: Tensor, encode_text: Optional[Callable] = None) -> Tensor:
        w = self.label_embeddings(encode_text)
        if self.mode == TextMode.tower and not self.training:
            # what export writes under ZeRO-3, where the text tower cannot be run outside a collective forward
            self.last_label_emb = w.detach().float().cpu()
        return prompt_logits(feats, w, self.logit_scale, self.logit_bias)


def head_key(field: str) -> str:
    return field.replace(".", "_")  # ModuleDict keys cannot hold dots


class HeadsModule(nn.Module):
    """What the loop prepares: the image tower (or the whole CLIP when the text tower trains) + heads."""

    def __init__(self, loaded: LoadedModel, heads: Mapping[str, nn.Module], hold_clip: bool):
        super().__init__()
        if hold_clip:
            self.clip = loaded.model
        else:
            self.visual = loaded.visual
        self.heads = nn.ModuleDict(dict(heads))
        self.freezer = StageFreezer(self.tower)
        self.tower_locked = False  # linear probe: frozen for good

    @property
    def tower(self) -> nn.Module:
        clip = self._modules.get("clip")
        return clip.visual if clip is not None else self._modules["visual"]

    @property
    def tower_frozen(self) -> bool:
        return self.tower_locked or self.freezer.tower_frozen

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:  # frozen parts keep eval behaviour (BatchNorm running stats, dropout off)
            for m in [self.tower] if self.tower_frozen else self.freezer.frozen_modules():
                m.eval()
        return self

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        if self.tower_frozen:
            with torch.no_grad():
                feats = self.tower(image)
        else:
            feats = self.tower(image)
        clip = self._modules.get("clip")
        enc = clip.encode_text if clip is not None else None
        return {k: (h(feats, enc) if isinstance(h, PromptHead) else h(feats)) for k, h in self.heads.items()}


def build_prompt_head(loaded: LoadedModel, spec: FieldSpec, cfg: TaskConfig, task: str, text_mode: TextMode,
                      train_scale: bool) -> PromptHead:
    require_text_model(loaded, task)
    templates = expand_templates(cfg.prompts)
    names = [label_text(v) for v in spec.vocab]
    clip = loaded.model
    dev = device_of(clip)
    was_training = clip.training
    clip.eval()
    zs = open_clip.build_zero_shot_classifier(clip, loaded.tokenizer, names, templates, device=dev)  # D×V
    clip.train(was_training)
    tokens = None
    if text_mode == TextMode.tower:
        tokens = loaded.tokenizer([t(c) for c in names for t in templates]).to(dev)
    return PromptHead(zs, tokens, len(templates), text_mode, float(clip.logit_scale.detach().reshape(())), train_scale,
                      bias=spec.multi and train_scale)


class HeadsTask(Task):
    def __init__(self, name: str, cfg: TaskConfig, loaded: LoadedModel, specs: Sequence[FieldSpec],
                 head_kind: HeadKind, rank: int = 0, world_size: int = 1, trainable: bool = True):
        super().__init__(cfg, loaded, rank, world_size)
        if not specs:
            raise TaskError(f"task.name={name}: no label fields selected (task.field / task.fields).")
        self.name = name
        self.specs = list(specs)
        self.fields = [s.name for s in specs]
        self.trainable = trainable
        self.head_kind = head_kind
        text_mode = cfg.prompts.text_mode if trainable else TextMode.frozen
        heads: dict[str, nn.Module] = {}
        for s in self.specs:
            if head_kind == HeadKind.prompts:
                heads[head_key(s.name)] = build_prompt_head(
                    loaded, s, cfg, name, text_mode, train_scale=trainable and cfg.prompts.train_logit_scale)
            else:
                heads[head_key(s.name)] = nn.Linear(loaded.image_dim, len(s.vocab))
        hold_clip = head_kind == HeadKind.prompts and text_mode == TextMode.tower
        self.module = HeadsModule(loaded, heads, hold_clip).to(device_of(loaded.model))
        self._totals: dict[str, int] = {}  # begin_step's valid-label counts of this step
        self.step = 0  # the optimiser step about to run (lp_ft's schedule)
        self.text_mode = text_mode
        self.thresholds = {s.name: cfg.multilabel.threshold for s in self.specs if s.multi}
        self.pos_weight = {s.name: self._pos_weight(s) for s in self.specs if s.multi}

        mode = cfg.freeze.mode
        if not trainable:  # zero-shot: no graph is built (no_grad tower, fixed heads); the shared model is untouched
            for p in self.module.heads.parameters():
                p.requires_grad_(False)
            self.module.tower_locked = True
        elif mode == FreezeMode.linear_probe:
            for p in self.module.tower.parameters():
                p.requires_grad_(False)
            self.module.tower_locked = True
        # schedules that change which stages train cut the graph instead of flipping requires_grad (see towers.py)
        self.find_unused_parameters = trainable and (
            mode in (FreezeMode.gradual, FreezeMode.freeze_then_unfreeze, FreezeMode.lp_ft) or hold_clip)
        multi_fields = any(s.multi for s in self.specs)
        single = len(self.specs) == 1
        self.primary_metric = ("macro_f1" if multi_fields else "accuracy") if single else (
            "mean/accuracy" if not all(s.multi for s in self.specs) else "mean/macro_f1")
        self.on_epoch_start(0)

    # --- schedule -------------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self._set_stages()

    def on_step_start(self, step: int) -> None:
        self.step = step
        if self.cfg.freeze.mode == FreezeMode.lp_ft:
            self._set_stages()

    def _set_stages(self) -> None:
        n = trainable_stages(self.cfg.freeze, self.epoch, len(self.module.freezer.stages), self.step)
        if n != self.module.freezer.n_trainable:
            self.module.freezer.set_trainable(n)
            self.module.train(self.module.training)  # re-apply eval mode to what is now frozen

    # --- losses ---------------------------------------------------------------------------------------
    def _pos_weight(self, s: FieldSpec) -> Optional[Tensor]:
        ml = self.cfg.multilabel
        if not ml.pos_weight or ml.loss != MultiLabelLoss.bce:
            return None
        pos = torch.tensor([float(s.counts.get(v, 0)) for v in s.vocab])
        n = float(s.n_train) if s.n_train > 0 else float(pos.max())
        # negatives / positives, bounded both ways: rare classes up to max, near-universal ones down to 1/max
        return ((n - pos).clamp(min=0.0) / pos.clamp(min=1.0)).clamp(1.0 / ml.max_pos_weight, ml.max_pos_weight)

    @staticmethod
    def _valid(s: FieldSpec, y: Tensor, batch: Optional[dict] = None) -> Tensor:
        """Rows that count: the label is present, and the row is not padding (batch["valid"] False marks the
        repeated samples that keep ranks in step at the end of an uneven exact epoch)."""
        ok = (y >= 0).all(1) if s.multi else y >= 0
        if batch is not None and "valid" in batch:
            ok = ok & batch["valid"].to(ok.device)
        return ok

    def _loss_sum(self, s: FieldSpec, logits: Tensor, y: Tensor, valid: Tensor) -> Tensor:
        """Sum over valid items of the per-item loss (multi-label: mean over classes per item). Masked, not
        indexed: `logits[valid]` needs the number of valid rows on the host, a GPU sync per micro-batch.
        Invalid rows get a stand-in label (0) and a loss of exactly 0 (torch.where: no gradient either)."""
        logits = logits.float()
        if not s.multi:
            per = F.cross_entropy(logits, torch.where(valid, y, 0), reduction="none",
                                  label_smoothing=self.cfg.label_smoothing)
        else:
            ml = self.cfg.multilabel
            target = torch.where(valid[:, None], y, 0).float()
            if ml.loss == MultiLabelLoss.focal:
                per = sigmoid_focal_loss(logits, target, alpha=ml.focal_alpha, gamma=ml.focal_gamma, reduction="none")
            else:
                pw = self.pos_weight[s.name]
                per = F.binary_cross_entropy_with_logits(
                    logits, target, pos_weight=None if pw is None else pw.to(logits.device), reduction="none")
            per = per.mean(1)
        return torch.where(valid, per, 0.0).sum()

    # --- the trainer's side (tasks/base.py) -----------------------------------------------------------
    def begin_step(self, model: nn.Module, micro_batches: Sequence[dict]) -> None:
        """Count the valid labels of the whole accumulated batch: each micro-batch's loss sum is divided by
        them, so k micro-batches give the gradient of one big batch. The counts stay tensors (no host sync)."""
        if not self.trainable:
            raise TaskError(f"task.name={self.name} does not train; the loop should only call evaluate().")
        self._totals = {s.name: sum(self._valid(s, mb["labels"][s.name], mb).sum() for mb in micro_batches).clamp(min=1)
                        for s in self.specs}

    def loss(self, model: nn.Module, i: int, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        dev = device_of(self.module)
        out = model(batch["image"].to(dev, non_blocking=True))
        loss, logs = 0.0, {}
        for s in self.specs:
            y = batch["labels"][s.name].to(dev, non_blocking=True)
            part = self._loss_sum(s, out[head_key(s.name)], y, self._valid(s, y, batch)) / self._totals[s.name].to(dev)
            logs[f"loss/{s.name}"] = part.detach()
            loss = loss + part / len(self.specs)
        logs["loss"] = sum(logs.values()) / len(self.specs)
        if len(self.specs) == 1:
            logs = {"loss": logs["loss"]}
        return loss, logs

    # --- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict], accelerator: Any = None) -> dict[str, float]:
        was_training = self.module.training
        self.module.eval()
        dev = device_of(self.module)
        logits: dict[str, list[Tensor]] = {s.name: [] for s in self.specs}
        labels: dict[str, list[Tensor]] = {s.name: [] for s in self.specs}
        for b in batches:
            out = self.module(b["image"].to(dev, non_blocking=True))
            for s in self.specs:
                logits[s.name].append(out[head_key(s.name)].float())
                y = b["labels"][s.name].to(dev)
                if "valid" in b:  # padding rows: mark their labels missing
                    y = torch.where(self._valid(s, y, b).reshape(-1, *([1] * (y.dim() - 1))), y, torch.full_like(y, -1))
                labels[s.name].append(y)
        self.module.train(was_training)

        results: dict[str, float] = {}
        self.last_eval = {}
        loss_total = 0.0
        for s in self.specs:
            V = len(s.vocab)
            lg = torch.cat(logits[s.name]) if logits[s.name] else torch.zeros(0, V, device=dev)
            y = torch.cat(labels[s.name]) if labels[s.name] else torch.zeros((0, V) if s.multi else (0,), device=dev)
            lg, y = gather_rows(accelerator, lg), gather_rows(accelerator, y)
            valid = self._valid(s, y)
            n = int(valid.sum())
            loss_total += float(self._loss_sum(s, lg, y, valid)) / max(n, 1)
            lg, y = lg[valid].cpu(), y[valid].cpu()
            if s.multi:
                probs = torch.sigmoid(lg).numpy()
                yt = y.numpy().astype(np.int64)
                fixed = M.multi_label(yt, probs, 0.5)
                if self.cfg.multilabel.tune_threshold and n > 0:
                    self.thresholds[s.name] = M.tune_threshold(yt, probs, metric=self.cfg.multilabel.tune_metric)
                m = M.multi_label(yt, probs, self.thresholds[s.name])
                m.update({"micro_f1@0.5": fixed["micro_f1"], "macro_f1@0.5": fixed["macro_f1"],
                          "threshold": self.thresholds[s.name]})
                y_pred = (probs >= self.thresholds[s.name]).astype(np.int64)
                scores = probs
            else:
                m = M.single_label(y.numpy(), lg.numpy())
                y_pred, yt, scores = lg.argmax(1).numpy(), y.numpy(), lg.numpy()
            m["count"] = float(n)
            self.last_eval[s.name] = {"y_true": yt, "y_pred": y_pred, "scores": scores, "vocab": s.vocab,
                                      "multi": s.multi}
            prefix = "" if len(self.specs) == 1 else f"{s.name}/"
            results.update({prefix + k: v for k, v in m.items()})
        results["loss"] = loss_total / len(self.specs)
        if len(self.specs) > 1:
            for key in ("accuracy", "macro_f1", "micro_f1", "mAP", "top5"):
                vals = [results[f"{s.name}/{key}"] for s in self.specs if f"{s.name}/{key}" in results]
                vals = [v for v in vals if not math.isnan(v)]
                if vals:
                    results[f"mean/{key}"] = float(np.mean(vals))
        return results

    # --- export ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, out_dir: str | Path, state_dict: Optional[Mapping[str, Tensor]] = None) -> None:
        state = dict(state_dict) if state_dict is not None else self.module.state_dict()
        export_model(self.loaded, out_dir, merged_model_state(self.loaded, state))
        heads = {k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")}
        clip = self.module._modules.get("clip")
        for s in self.specs:  # prompt heads: store the label embeddings in use, so no text tower is needed
            h = self.module.heads[head_key(s.name)]
            if isinstance(h, PromptHead):
                cached = getattr(h, "last_label_emb", None) if state_dict is not None else None
                emb = cached if cached is not None else h.label_embeddings(clip.encode_text if clip is not None else None)
                heads[f"{head_key(s.name)}.emb"] = emb
        meta = {
            "task": self.name,
            "model": self.loaded.name,
            "backbone": self.loaded.backbone.value,
            "head": self.head_kind.value,
            "text_mode": self.text_mode.value,
            "templates": list(self.cfg.prompts.templates),
            "template_set": self.cfg.prompts.template_set,
            "fields": {s.name: {"key": head_key(s.name), "vocab": s.vocab, "multi": s.multi,
                                "threshold": self.thresholds.get(s.name)} for s in self.specs},
        }
        save_heads(out_dir, heads, meta)
