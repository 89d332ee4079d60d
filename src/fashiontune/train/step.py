"""One optimiser step: the trainer drives the task's losses, runs backward itself, then steps or skips.

Per step the task sees `begin_step(model, micro_batches)` once and `loss(model, i, batch)` per micro-batch
(tasks/base.py documents the contract; the contrastive task's feature cache lives behind it). Each micro-batch's
forward and backward run inside `backend.sync(last)`, so DDP all-reduces only on the last one and DeepSpeed
reaches its accumulation boundary there. A non-finite loss on any rank (one all-reduce per micro-batch) stops
the step on every rank before its backward: the gradients are discarded, the schedule stays put, and
`loop.max_bad_steps` such steps in a row abort the run.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from fashiontune.train.state import TrainState


class NonFiniteLossError(RuntimeError):
    pass


def any_rank_nonfinite(loss: Tensor) -> bool:
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(bad)  # collective: every rank learns whether any rank saw a bad loss
    return bool(bad.item() > 0)


def forward_backward(task, backend, micro_batches: Sequence[dict], poison: bool = False) -> tuple[dict, bool]:
    """Forward and backward of every micro-batch of one step. Returns the task's logs (summed over the
    micro-batches) and whether every loss was finite on every rank (if not, the step stopped there).
    `poison` (the loop.nan_steps test hook) turns the first micro-batch's loss into NaN."""
    task.begin_step(backend.model, micro_batches)
    logs: dict[str, float] = {}
    n = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        with backend.sync(last=i == n - 1):
            loss, part = task.loss(backend.model, i, batch)
            if poison and i == 0:
                loss = loss * float("nan")
            if any_rank_nonfinite(loss):
                return logs, False
            backend.backward(loss)
        for k, v in part.items():
            logs[k] = logs.get(k, 0.0) + v
    return logs, True


def train_step(task, backend, scheduler, micro_batches: Sequence[dict], state: TrainState, max_bad_steps: int,
               poison: bool = False) -> dict[str, float]:
    """One optimiser step at `state.step` (not advanced here); returns the logs plus grad_norm / skipped."""
    logs, ok = forward_backward(task, backend, micro_batches, poison)
    if not ok:
        backend.discard()
        state.skipped_total += 1
        state.skipped_in_row += 1
        if state.skipped_in_row >= max_bad_steps:
            raise NonFiniteLossError(
                f"{state.skipped_in_row} optimiser steps in a row had a non-finite loss (NaN/inf) at step "
                f"{state.step}; aborting. Lower optim.lr, raise schedule.warmup_steps, set optim.grad_clip, or use "
                f"loop.precision=fp32/bf16 instead of fp16 (limit: loop.max_bad_steps={max_bad_steps}).")
        return {**logs, "skipped": 1.0, "grad_norm": float("nan"), "loss": float("nan")}
    state.skipped_in_row = 0
    grad_norm, stepped = backend.step()
    if stepped:  # an fp16 overflow skips the update: keep the schedule in place
        scheduler.step()  # ours, not the engine's: one schedule step per optimiser step everywhere
    return {**logs, "skipped": 0.0, "grad_norm": grad_norm}
