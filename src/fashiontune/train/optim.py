"""AdamW with open_clip's weight-decay exclusions, and a warmup + cosine schedule as a LambdaLR (so accelerate
saves and restores it with the checkpoint)."""

from __future__ import annotations

import math

import torch
from torch import nn

from fashiontune.train.config import OptimConfig, ScheduleConfig, ScheduleName
from fashiontune.train.layer_decay import lr_scales


def _no_decay(name: str, p: nn.Parameter) -> bool:
    # Gains, biases, embeddings of scale and the logit temperature are not decayed (as open_clip_train does).
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def build_optimizer(module: nn.Module, cfg: OptimConfig, tower_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """All parameters, frozen ones included: freeze schedules flip requires_grad later, and AdamW skips a
    parameter whose grad is None (no update, no decay). One group per (weight decay, LR scale): layer-wise LR
    decay and LP-FT's tower LR (train/layer_decay.py); the schedule multiplies each group's own LR."""
    scales = lr_scales(module, cfg.layer_decay, tower_lr_scale)
    groups_by: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        groups_by.setdefault((_no_decay(name, p), scales.get(id(p), 1.0)), []).append(p)
    groups = [{"params": ps, "weight_decay": 0.0 if nd else cfg.weight_decay, "lr": cfg.lr * scale}
              for (nd, scale), ps in sorted(groups_by.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))]
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.fused:
        # One fused kernel per step instead of a Python loop over tensors (torch's CPU default): on this
        # 2-core machine the per-tensor loop was a quarter of a tiny model's step time.
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, ValueError):  # a device/dtype without a fused kernel
            pass
    return torch.optim.AdamW(groups, foreach=cfg.fused or None, **kw)


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == ScheduleName.constant:
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: ScheduleConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
