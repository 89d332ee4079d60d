"""The training backend: one object that holds the wrapped module (DDP / DeepSpeed engine, maybe compiled) and
does for the trainer what depends on the wrapper: gradient sync on the last micro-batch only, backward, clip +
step, discarding a bad step, the full state dict for export.

    backend = make_backend(accelerator, task.module, optimizer, grad_clip)
    backend.model    run training forwards through this (DDP's hooks / the engine's)
    backend.module   the unwrapped module (what tasks, evaluation and export use)
    backend.autocast()  the training precision's autocast, for forwards outside the wrapper (validation)

`step()` returns the grad norm as a 0-dim tensor (None when not clipping): turning it into a number is a
host-device sync, which the caller does on log steps only.

Tasks scale their micro-batch losses for accumulation themselves: accelerate's gradient_accumulation_steps
stays 1 and DeepSpeed's backward gets scale_wrt_gas=False. `LocalBackend` is the same interface without
accelerate (one process, plain `loss.backward()`): what the task tests drive tasks with.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator, Optional

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

    def autocast(self) -> ContextManager:
        return self.acc.autocast()  # accelerate's mixed precision (nothing for fp32)

    def step(self) -> tuple[Optional[Tensor], bool]:
        """Clip, step the optimiser, zero the gradients. Returns (grad norm: a 0-dim tensor, None when not
        clipping; whether the optimiser really stepped: False when the fp16 scaler skipped it for an overflow)."""
        grad_norm = None
        if self.grad_clip > 0:
            params = [p for p in self.module.parameters() if p.requires_grad]
            grad_norm = self.acc.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, not self.acc.optimizer_step_was_skipped

    def discard(self) -> None:
        """Drop the gradients of a step that will not be applied."""
        self.optimizer.zero_grad(set_to_none=True)

    def full_state_dict(self) -> dict[str, Tensor]:
        """The whole module's state dict for export (call on every rank: collective under ZeRO-3)."""
        return self.module.state_dict()


def scalars_to_vectors(module: nn.Module) -> list[str]:
    """Give every 0-dim parameter the shape [1], in place (same Parameter objects, so the optimiser built on
    them still holds them); returns their names, for `scalars_restored`.

    Why: DeepSpeed (0.19) broadcasts parameters as bytes, `p.data.view(torch.uint8)`, at engine start and
    when ZeRO-3 partitions them, and a 0-dim tensor cannot be viewed as bytes (open_clip's `logit_scale`,
    the prompt heads' `logit_scale` / `logit_bias`). Chosen over patching DeepSpeed's broadcast: that code
    sits in three private places (engine, ZeRO-3 Init and GatheredParameters) and changes between releases,
    while [1] against [] only differs where shapes are compared (every use here broadcasts it against a
    matrix). The run keeps [1] in the module, the engine and its own checkpoints (so they resume as they
    were saved); exports go through `scalars_restored`, so open_clip gets logit_scale with shape []."""
    names = []
    for name, p in module.named_parameters():
        if p.dim() == 0:
            p.data = p.data.reshape(1)
            names.append(name)
    return names


def scalars_restored(state: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    """A state dict of a module treated by `scalars_to_vectors`, with those parameters 0-dim again."""
    return {k: v.reshape(()) if k in names else v for k, v in state.items()}


class DeepSpeedBackend(DDPBackend):
    """DeepSpeed ZeRO 1/2/3: the engine clips (gradient_clipping in its config), steps and zeroes itself."""

    def __init__(self, accelerator, module: nn.Module, optimizer, grad_clip: float):
        self.scalars = scalars_to_vectors(module)  # before the engine broadcasts them
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

    def autocast(self) -> ContextManager:
        """What the engine's forward runs under: bf16 is DeepSpeed's torch_autocast; fp16 keeps fp16
        parameters (its `auto_cast` casts only the engine's inputs), so forwards of the unwrapped module
        (validation) need autocast to mix them with fp32 images."""
        engine = self.model
        if engine.torch_autocast_enabled():
            return torch.autocast(engine.device.type, dtype=engine.torch_autocast_dtype())
        if engine.fp16_enabled():
            return torch.autocast(engine.device.type, dtype=torch.float16)
        return nullcontext()

    def step(self) -> tuple[Optional[Tensor], bool]:
        """The engine clips and steps. Returns (its grad norm as a tensor, None when not clipping; whether
        the update was applied: False when the fp16 loss scaler skipped it for an overflow)."""
        self.model.step()
        gn = self.model.get_global_grad_norm() if self.grad_clip > 0 else None
        if gn is not None:  # a Python float is already on the host (inf after an overflow): no sync either way
            gn = gn.detach().reshape(()) if isinstance(gn, Tensor) else torch.tensor(float(gn))
        return gn, self.model.was_step_applied()

    def discard(self) -> None:
        engine = self.model
        engine.set_gradient_accumulation_boundary(True)
        engine.optimizer.zero_grad()
        avg = getattr(engine.optimizer, "averaged_gradients", None)
        if isinstance(avg, dict):  # ZeRO-1/2 partitions reduced by earlier micro-batches of this step
            for k in list(avg):
                avg[k] = None

    def full_state_dict(self) -> dict[str, Tensor]:
        """fp32 and with the module's own shapes (fp16 runs hold fp16 parameters), whatever the engine holds."""
        state = self.acc.get_state_dict(self.model) if self.zero3 else self.module.state_dict()
        state = state or {}  # ZeRO-3 gathers onto the main process only
        return {k: v.float() if v.is_floating_point() else v for k, v in scalars_restored(state, self.scalars).items()}


def make_backend(accelerator, module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> DDPBackend:
    """Prepare `module` and `optimizer` with the accelerator; the backend class follows its distributed type."""
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    return (DeepSpeedBackend if deepspeed else DDPBackend)(accelerator, module, optimizer, grad_clip)
