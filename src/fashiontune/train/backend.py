"""The training backend: one object that holds the wrapped module (DDP / DeepSpeed engine, maybe compiled) and
does for the trainer what depends on the wrapper: gradient sync on the last micro-batch only, backward, clip +
step, discarding a bad step, the full state dict for export.

    backend = make_backend(accelerator, task.module, optimizer, grad_clip)
    backend.model    run training forwards through this (DDP's hooks / the engine's)
    backend.module   the unwrapped module (what tasks, evaluation and export use)

Tasks scale their micro-batch losses for accumulation themselves: accelerate's gradient_accumulation_steps
stays 1 and DeepSpeed's backward gets scale_wrt_gas=False. `LocalBackend` is the same interface without
accelerate (one process, plain `loss.backward()`): what the task tests drive tasks with.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator

import torch
from accelerate.utils import DistributedType
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


class LocalBackend:
    """No wrapper and no accelerator: forwards through `model` (DDP or not), `loss.backward()`."""

    def __init__(self, model: nn.Module):
        self.model = model

    def sync(self, last: bool) -> ContextManager:
        """Enter around a micro-batch's forward AND backward: gradients are synchronised only when `last`."""
        return nullcontext()

    def backward(self, loss: Tensor) -> None:
        loss.backward()


class DDPBackend(LocalBackend):
    """One process or DDP (gloo on CPU, NCCL on GPU), with torch.compile and accelerate's mixed precision."""

    zero3 = False

    def __init__(self, accelerator, module: nn.Module, optimizer, grad_clip: float):
        self.acc, self.grad_clip = accelerator, grad_clip
        self.model, self.optimizer = accelerator.prepare(module, optimizer)
        self.module = module  # prepare wraps it; the object itself stays the one the task holds
        inner = getattr(self.model, "_orig_mod", self.model)  # torch.compile wraps the DDP module
        self._ddp = inner if isinstance(inner, DistributedDataParallel) else None

    def sync(self, last: bool) -> ContextManager:
        # DDP decides at FORWARD time whether the backward all-reduces: no_sync() must hold both
        return nullcontext() if last or self._ddp is None else self._ddp.no_sync()

    def backward(self, loss: Tensor) -> None:
        self.acc.backward(loss)  # fp16: through the grad scaler

    def step(self) -> tuple[Tensor | float, bool]:
        """Clip, step the optimiser, zero the gradients. Returns (grad norm as a device tensor, or NaN; whether
        the optimiser really stepped: False when the fp16 scaler skipped it for an overflow)."""
        grad_norm: Tensor | float = float("nan")
        if self.grad_clip > 0:
            params = [p for p in self.module.parameters() if p.requires_grad]
            gn = self.acc.clip_grad_norm_(params, self.grad_clip)
            grad_norm = gn if gn is not None else grad_norm  # no float(): the loop converts it on log steps
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, not self.acc.optimizer_step_was_skipped

    def discard(self) -> None:
        """Drop the gradients of a step that will not be applied."""
        self.optimizer.zero_grad(set_to_none=True)

    def full_state_dict(self) -> dict[str, Tensor]:
        """The whole module's state dict for export (call on every rank: collective under ZeRO-3)."""
        return self.module.state_dict()


class DeepSpeedBackend(DDPBackend):
    """DeepSpeed ZeRO 1/2/3: the engine clips (gradient_clipping in its config), steps and zeroes itself."""

    def __init__(self, accelerator, module: nn.Module, optimizer, grad_clip: float):
        super().__init__(accelerator, module, optimizer, grad_clip)
        self.zero3 = self.model.zero_optimization_stage() == 3

    @contextmanager
    def _boundary(self, last: bool) -> Iterator[None]:
        self.model.set_gradient_accumulation_boundary(last)
        yield

    def sync(self, last: bool) -> ContextManager:
        return self._boundary(last)

    def backward(self, loss: Tensor) -> None:
        self.model.backward(loss, scale_wrt_gas=False)  # the task already scaled it

    def step(self) -> tuple[float, bool]:
        self.model.step()
        gn = self.model.get_global_grad_norm()
        return (float(gn) if gn is not None else float("nan")), True

    def discard(self) -> None:
        engine = self.model
        engine.set_gradient_accumulation_boundary(True)
        engine.optimizer.zero_grad()
        avg = getattr(engine.optimizer, "averaged_gradients", None)
        if isinstance(avg, dict):  # ZeRO-1/2 partitions reduced by earlier micro-batches of this step
            for k in list(avg):
                avg[k] = None

    def full_state_dict(self) -> dict[str, Tensor]:
        return self.acc.get_state_dict(self.model) if self.zero3 else self.module.state_dict()


def make_backend(accelerator, module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> DDPBackend:
    """Prepare `module` and `optimizer` with the accelerator; the backend class follows its distributed type."""
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    return (DeepSpeedBackend if deepspeed else DDPBackend)(accelerator, module, optimizer, grad_clip)
