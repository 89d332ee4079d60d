"""What every task shares: the Task interface, label fields from the manifest, prompts, gathering, export.

The trainer's side of the contract (train/step.py drives it, train/backend.py wraps the module):
- `task.module` is the task's nn.Module, never replaced. The trainer's backend wraps it (DDP, DeepSpeed engine,
  torch.compile) and hands the wrapped one to `begin_step` / `loss` as `model`: every training forward runs
  through `model`, so DDP's hooks fire; evaluation and export use `task.module` itself.
- per optimiser step of k micro-batches: `begin_step(model, micro_batches)` once, then for each i in order
  `loss(model, i, micro_batches[i]) -> (loss, logs)`; the trainer runs backward on each loss before the next
  forward. A loss is already scaled so that the k backward passes give the gradient of the one big-batch loss
  (never divide again); logs are detached tensors (never float()/item(): reading a device value on the host
  stalls the GPU queue), summed over the k micro-batches by the trainer and read on log steps only. Every
  micro-batch uses every trainable parameter (DDP needs no find_unused_parameters for accumulation).
- `begin_step` is where a loss over the whole accumulated batch gets what it needs: label counts (heads.py) or,
  for exact big-batch contrastive accumulation, a no-grad feature cache of every micro-batch that `loss`
  scores the micro-batch's features (recomputed with grad) against (contrastive.py; open_clip's pattern).
- optimise all of `task.module.parameters()`; AdamW skips params whose grad is None; wrap DDP with
  `find_unused_parameters=task.find_unused_parameters` (True when a freeze schedule cuts the graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..models import Backbone, LoadedModel
from ..models.prompts import prompt_makers
from .config import FreezeConfig, FreezeMode, PromptConfig, TaskConfig


class TaskError(UserError, ValueError):
    """A task config that does not fit the model or the shards; the message names the key and the fix."""


@dataclass
class FieldSpec:
    name: str
    vocab: list[str]
    multi: bool
    counts: dict[str, int]  # train-split counts when the manifest has them, else all splits
    n_train: int  # train items (for pos_weight); 0 when unknown


def field_spec(manifest: Mapping[str, Any], name: str, key: str = "task.field") -> FieldSpec:
    labels = manifest.get("labels", {})
    if name not in labels:
        raise TaskError(
            f"{key}='{name}' is not a label field of these shards (source '{manifest.get('source', '?')}'); "
            f"the manifest has: {', '.join(sorted(labels)) or 'no label fields'}. Set {key} to one of those."
        )
    info = labels[name]
    vocab = [str(v) for v in info["vocab"]]
    if not vocab:
        raise TaskError(f"{key}='{name}': the manifest's vocabulary for this field is empty.")
    counts = info.get("split_counts", {}).get("train") or info.get("counts", {})
    n_train = int(manifest.get("splits", {}).get("train", {}).get("count", 0))
    return FieldSpec(name, vocab, bool(info.get("multi", False)), {str(k): int(v) for k, v in counts.items()}, n_train)


# the one-field tasks and the label kind they need (multi-label or not), with the fix when it does not fit
_FIELD_KIND = {
    "classify": (False, "is multi-label in the manifest: use task.name=multilabel for it."),
    "labeltext": (False, "is multi-label: labeltext scores one label per image; use task.name=attributes with "
                         "task.head=prompts, or task.name=multilabel."),
    "multilabel": (True, "is single-label in the manifest: use task.name=classify for it."),
}


def single_field_spec(manifest: Mapping[str, Any], task: str, name: str) -> FieldSpec:
    """The label field of a one-field task (classify / labeltext / multilabel), of the kind the task needs."""
    spec = field_spec(manifest, name)
    multi, fix = _FIELD_KIND[task]
    if spec.multi != multi:
        raise TaskError(f"task.field='{name}' {fix}")
    return spec


def expand_templates(cfg: PromptConfig) -> list[Callable[[str], str]]:
    """task.prompts as callables, in the one template dialect (models/prompts.py), plus a named template set."""
    try:
        out = prompt_makers(cfg.templates, cfg.template_set)
    except ValueError as e:
        raise TaskError(f"task.prompts.{e}.") from e
    if not out:
        raise TaskError("task.prompts.templates is empty and no template_set is named: give at least one template.")
    return out


def require_text_model(loaded: LoadedModel, task: str) -> None:
    if loaded.backbone != Backbone.open_clip or loaded.tokenizer is None:
        raise TaskError(
            f"task.name={task} needs an image-text (open_clip) model, but model.backbone={loaded.backbone.value} "
            f"('{loaded.name}') has no text tower. Use model.backbone=open_clip, or task.name=classify."
        )


def device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def gather_rows(accelerator: Any, x: Tensor) -> Tensor:
    """Concatenate `x` (rows) from every rank. Ranks may hold different row counts (a streamed val split
    need not divide evenly), so we pad to the largest, gather once, and trim; gather_for_metrics assumes a
    prepared map-style loader and equal shapes, which a WebDataset stream does not give."""
    if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = accelerator.gather(n).tolist()
    padded = accelerator.pad_across_processes(x.contiguous(), dim=0)
    full = accelerator.gather(padded)
    m = max(counts)
    return torch.cat([full[i * m : i * m + c] for i, c in enumerate(counts)])


def gather_objects(accelerator: Any, items: list) -> list:
    if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def trainable_stages(freeze: FreezeConfig, epoch: int, n_stages: int, step: int = 0) -> int:
    """How many of the tower's last stages train in `epoch` at optimiser step `step` under the freeze schedule."""
    if freeze.mode == FreezeMode.lp_ft:
        return 0 if step < freeze.lp_steps else n_stages
    if freeze.mode == FreezeMode.gradual:
        return epoch * freeze.stages_per_epoch  # epoch 0: heads only
    if freeze.mode == FreezeMode.freeze_then_unfreeze:
        return 0 if epoch < freeze.unfreeze_epoch else n_stages
    return n_stages


def merged_model_state(loaded: LoadedModel, module_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The full open_clip/timm state dict with the trained tower(s) from a task module's state dict.

    Task modules hold either the whole CLIP model as `clip.*` or only the image tower as `visual.*`. LoRA
    adapters are merged into the weights (a plain open_clip state dict)."""
    full = {k: v for k, v in loaded.model.state_dict().items()}
    for k, v in module_state.items():
        if k.startswith("clip."):
            full[k[len("clip.") :]] = v
        elif k.startswith("visual."):
            key = k if loaded.backbone == Backbone.open_clip else k[len("visual.") :]
            full[key] = v
    if loaded.lora is not None:
        from ..models.lora import merged_state

        full = merged_state(loaded.lora, full)
    return full


class Task:
    """Base: the attributes and methods the loop relies on. Subclasses fill them in."""

    name: str = ""
    module: nn.Module  # unwrapped; the trainer wraps it for training forwards (see above)
    trainable: bool = True
    fields: list[str]
    needs_text: bool = False
    find_unused_parameters: bool = False
    primary_metric: str = "loss"
    higher_is_better: bool = True
    last_eval: dict

    def __init__(self, cfg: TaskConfig, loaded: LoadedModel, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.loaded = loaded
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.last_eval = {}

    def begin_step(self, model: nn.Module, micro_batches: Sequence[dict]) -> None:
        """Once per optimiser step, before its losses: what the micro-batch losses share (see above)."""

    def loss(self, model: nn.Module, i: int, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Micro-batch i's loss (forward through `model`, scaled for accumulation) and its logs (detached)."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def on_step_start(self, step: int) -> None:
        """Before optimiser step `step` (0-based; also the first step after a resume): step-based schedules."""

    def evaluate(self, batches: Iterable[dict], accelerator: Any = None) -> dict[str, float]:
        raise NotImplementedError

    def export(self, out_dir: str | Path, state_dict: Optional[Mapping[str, Tensor]] = None) -> None:
        raise NotImplementedError
