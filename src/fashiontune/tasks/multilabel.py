"""multilabel: sigmoid head with BCE (pos_weight from the manifest's counts) or focal loss; the decision
threshold is tuned on validation after each evaluation. Pair with task.freeze.mode=freeze_then_unfreeze."""

from __future__ import annotations

from ..models import LoadedModel
from .base import TaskError, field_spec
from .config import HeadKind, TaskConfig
from .heads import HeadsTask


def build(cfg: TaskConfig, loaded: LoadedModel, manifest: dict, rank: int = 0, world_size: int = 1) -> HeadsTask:
    spec = field_spec(manifest, cfg.field)
    if not spec.multi:
        raise TaskError(f"task.field='{cfg.field}' is single-label in the manifest: use task.name=classify for it.")
    return HeadsTask("multilabel", cfg, loaded, [spec], HeadKind.linear, rank, world_size)
