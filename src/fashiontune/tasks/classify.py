"""classify: softmax head on the image tower (linear probe, full fine-tune, or gradual unfreezing)."""

from __future__ import annotations

from ..models import LoadedModel
from .base import TaskError, field_spec
from .config import HeadKind, TaskConfig
from .heads import HeadsTask


def build(cfg: TaskConfig, loaded: LoadedModel, manifest: dict, rank: int = 0, world_size: int = 1) -> HeadsTask:
    spec = field_spec(manifest, cfg.field)
    if spec.multi:
        raise TaskError(f"task.field='{cfg.field}' is multi-label in the manifest: use task.name=multilabel for it.")
    return HeadsTask("classify", cfg, loaded, [spec], HeadKind.linear, rank, world_size)
