"""classify: softmax head on the image tower (linear probe, full fine-tune, or gradual unfreezing)."""

from __future__ import annotations

from ..models import LoadedModel
from .base import single_field_spec
from .config import HeadKind, TaskConfig
from .heads import HeadsTask


def build(cfg: TaskConfig, loaded: LoadedModel, manifest: dict, rank: int = 0, world_size: int = 1) -> HeadsTask:
    spec = single_field_spec(manifest, "classify", cfg.field)
    return HeadsTask("classify", cfg, loaded, [spec], HeadKind.linear, rank, world_size)
