"""One optimiser step: the trainer drives the task's losses, runs backward itself, then steps or skips.

Per step the task sees `begin_step(model, micro_batches)` once and `loss(model, i, batch)` per micro-batch
(tasks/base.py documents the contract; the contrastive task's feature cache lives behind it). Each micro-batch's
forward and backward run inside `backend.sync(last)`, so DDP all-reduces only on the last one and DeepSpeed
reaches its accumulation boundary there.

Non-finite losses (loop.check_finite): each micro-batch's loss is checked on the device (no sync); once per
step, after the last backward and before the optimiser step, one all-reduce of the step's flag tells every
rank whether any rank saw a NaN/inf loss. Then the step is discarded on every rank (the gradients dropped, the
schedule kept in place), and `loop.max_bad_steps` such steps in a row abort the run.

Host syncs (the CPU waiting for the GPU) per step, so that the CPU can queue the next step's work while the
GPU runs this one:
- 0 with loop.check_finite=false (logs stay device tensors; the grad norm of optim.grad_clip stays a tensor:
  torch's clip scales by a clamped factor on the device; the sample count comes from the CPU-side batch);
- 1 with loop.check_finite=true: the `.item()` of the step's non-finite flag (after one all-reduce of it with
  several ranks). It cannot go: whether to step the optimiser and the schedule is a host decision, and
  open_clip, which never checks, applies a NaN step;
- log steps (log.every_steps) add 1: one all-reduce of all the step's logs stacked, and one `.tolist()`
  (train/loop.py `_log_step`);
- fp16 only: torch's GradScaler reads its found-inf flag on the host in step/update (loss scaling needs it);
  DeepSpeed: whatever its engine does in step() (overflow check, grad norm).
tests/test_train_syncs.py counts them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from fashiontune.errors import UserError
from fashiontune.train.state import TrainState


class NonFiniteLossError(UserError, RuntimeError):
    """loop.max_bad_steps optimiser steps in a row had a non-finite loss: the run stops (one line, no traceback)."""


def all_ranks_finite(finite: Tensor) -> bool:
    """Whether `finite` (a 0-d bool tensor of this rank) is true on every rank: one all-reduce, one host sync."""
    bad = (~finite).to(torch.float32).reshape(1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(bad)  # collective: every rank learns whether any rank saw a bad loss
    return bool(bad.item() == 0)


def forward_backward(task, backend, micro_batches: Sequence[dict], poison: bool = False
                     ) -> tuple[dict[str, Tensor], Tensor]:
    """Forward and backward of every micro-batch of one step, without a host sync. Returns the task's logs
    summed over the micro-batches (detached device tensors) and a 0-d bool tensor: whether every loss of this
    rank was finite. `poison` (the loop.nan_steps test hook) turns the first micro-batch's loss into NaN."""
    task.begin_step(backend.model, micro_batches)
    logs: dict[str, Tensor] = {}
    finite: Optional[Tensor] = None
    n = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        with backend.sync(last=i == n - 1):
            loss, part = task.loss(backend.model, i, batch)
            if poison and i == 0:
                loss = loss * float("nan")
            ok = torch.isfinite(loss.detach()).all()
            finite = ok if finite is None else finite & ok
            backend.backward(loss)  # a NaN loss too: every rank runs the same collectives; the step is dropped after
        for k, v in part.items():
            logs[k] = logs[k] + v if k in logs else v
    return logs, finite if finite is not None else torch.ones((), dtype=torch.bool)


def train_step(task, backend, scheduler, micro_batches: Sequence[dict], state: TrainState, max_bad_steps: int,
               poison: bool = False, check_finite: bool = True) -> dict[str, Tensor | float]:
    """One optimiser step at `state.step` (not advanced here); returns the logs plus grad_norm / skipped, as
    device tensors or floats (the loop converts them on log steps only)."""
    logs, finite = forward_backward(task, backend, micro_batches, poison)
    if check_finite and not all_ranks_finite(finite):  # the step's one host sync
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
    return {**logs, "skipped": 0.0, "grad_norm": float("nan") if grad_norm is None else grad_norm}  # None: no clip
