"""One optimiser step: the `backward` callable handed to `Task.step`, then clip + update (or skip).

The non-finite check is collective: every rank reduces a "my loss is bad" flag before any backward, so all
ranks skip together (a rank that skipped alone would leave the others waiting in the DDP all-reduce or the
DeepSpeed reduce-scatter forever). A skipped step changes nothing: no update, no scheduler step, grads
cleared. `max_bad_steps` skips in a row abort the run with NonFiniteLossError.

Accumulation: `Task.step` calls backward once per micro-batch, each forward right before its backward.
Under DDP, gradient sync is switched off for all but the last micro-batch by clearing the wrapper's
`require_backward_grad_sync` flag (what `no_sync()` does), which DDP reads at FORWARD time; so the flag is
cleared before the first forward and set again right after the second-to-last backward. Under DeepSpeed
the engine's accumulation boundary is set per micro-batch instead and the engine steps once.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    pass


class StepRunner:
    def __init__(self, accelerator, task, optimizer, scheduler, grad_clip: float, max_bad_steps: int,
                 nan_steps: Sequence[int] = (), nan_ranks: Sequence[int] = ()):
        self.acc, self.task, self.opt, self.sched = accelerator, task, optimizer, scheduler
        self.grad_clip, self.max_bad_steps = grad_clip, max_bad_steps
        self.nan_steps = set(int(s) for s in nan_steps)
        if nan_ranks and accelerator.process_index not in set(nan_ranks):
            self.nan_steps = set()  # the test hook poisons only the listed ranks: the others must still skip
        self.deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        self.skipped_total = 0
        self.skipped_in_row = 0

    # -- pieces ---------------------------------------------------------------------------------------
    def _any_rank_bad(self, loss: Tensor) -> bool:
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
        if self.acc.num_processes > 1:
            dist.all_reduce(bad)  # collective: every rank learns whether any rank saw a bad loss
        return bool(bad.item() > 0)

    def _ddp(self):
        m = self.task.module
        m = getattr(m, "_orig_mod", m)  # torch.compile wraps the DDP module
        return m if hasattr(m, "require_backward_grad_sync") else None

    def _set_sync(self, sync: bool) -> None:
        if self.deepspeed:
            self.task.module.set_gradient_accumulation_boundary(sync)
        elif (ddp := self._ddp()) is not None:
            ddp.require_backward_grad_sync = sync

    def _params(self):
        return [p for p in self.task.module.parameters() if p.requires_grad]

    # -- the step -------------------------------------------------------------------------------------
    def run(self, micro_batches: list[dict], step: int) -> dict[str, float]:
        """Train on `micro_batches` (one optimiser step at global step `step`); return the task's logs plus
        grad_norm / skipped."""
        n = len(micro_batches)
        calls = {"i": 0, "bad": False}
        inject = step in self.nan_steps

        def backward(loss: Tensor) -> None:
            i = calls["i"]
            calls["i"] += 1
            if calls["bad"]:
                return  # a micro-batch of this step was bad on some rank: every rank skips the rest
            if inject and i == 0:
                loss = loss * float("nan")
            if self._any_rank_bad(loss):
                calls["bad"] = True
                return
            if self.deepspeed:
                self.task.module.set_gradient_accumulation_boundary(i == n - 1)
                self.task.module.backward(loss, scale_wrt_gas=False)  # the task already scaled it
            else:
                self.acc.backward(loss)
            if i == n - 2:
                self._set_sync(True)  # the last micro-batch's forward comes next: sync its gradients

        self._set_sync(n == 1)
        try:
            logs = dict(self.task.step(micro_batches, backward))
        finally:
            self._set_sync(True)
        if calls["i"] != n and not calls["bad"]:
            raise RuntimeError(f"task {self.task.name!r} called backward {calls['i']} times for {n} micro-batches")

        if calls["bad"]:
            self._discard_grads()
            self.skipped_total += 1
            self.skipped_in_row += 1
            if self.skipped_in_row >= self.max_bad_steps:
                raise NonFiniteLossError(
                    f"{self.skipped_in_row} optimiser steps in a row had a non-finite loss (NaN/inf) at step {step}; "
                    f"aborting. Lower optim.lr, raise schedule.warmup_steps, set optim.grad_clip, or use "
                    f"loop.precision=fp32/bf16 instead of fp16 (limit: loop.max_bad_steps={self.max_bad_steps})."
                )
            logs.update(skipped=1.0, grad_norm=float("nan"), loss=float("nan"))  # the loss this step saw
            return logs

        self.skipped_in_row = 0
        grad_norm = float("nan")
        if self.deepspeed:
            self.task.module.step()  # clips (gradient_clipping), steps the optimizer, zeroes grads
            gn = self.task.module.get_global_grad_norm()
            grad_norm = float(gn) if gn is not None else float("nan")
            self.sched.step()  # ours, not the engine's: the schedule counts optimiser steps the same way everywhere
        else:
            if self.grad_clip > 0:
                gn = self.acc.clip_grad_norm_(self._params(), self.grad_clip)
                grad_norm = float(gn) if gn is not None else float("nan")
            self.opt.step()
            if not self.acc.optimizer_step_was_skipped:  # fp16 scaler overflow: keep the schedule in place
                self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        logs.update(skipped=0.0, grad_norm=grad_norm)
        return logs

    def _discard_grads(self) -> None:
        if self.deepspeed:
            engine = self.task.module
            engine.set_gradient_accumulation_boundary(True)
            engine.optimizer.zero_grad()
            avg = getattr(engine.optimizer, "averaged_gradients", None)
            if isinstance(avg, dict):  # ZeRO-1/2 partitions reduced by earlier micro-batches of this step
                for k in list(avg):
                    avg[k] = None
        else:
            self.opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total, "skipped_in_row": self.skipped_in_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total = int(state.get("skipped_total", 0))
        self.skipped_in_row = int(state.get("skipped_in_row", 0))


def finite_or_none(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None
