"""multilabel: sigmoid head with BCE (pos_weight from the manifest's counts) or focal loss; the decision
threshold is tuned on validation after each evaluation. Pair with task.freeze.mode=freeze_then_unfreeze."""

from __future__ import annotations

from ..models import LoadedModel
from .base import single_field_spec
from .config import HeadKind, TaskConfig
from .heads import HeadsTask


def build(cfg: TaskConfig, loaded: LoadedModel, manifest: dict, rank: int = 0, world_size: int = 1) -> HeadsTask:
    spec = single_field_spec(manifest, "multilabel", cfg.field)
    return HeadsTask("multilabel", cfg, loaded, [spec], HeadKind.linear, rank, world_size)
