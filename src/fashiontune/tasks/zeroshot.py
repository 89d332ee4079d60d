"""zeroshot: no training. Each label's prompts (task.prompts.templates, plus open_clip's template set if
named) are encoded and averaged with open_clip.build_zero_shot_classifier; images are scored by cosine."""

from __future__ import annotations

from ..models import LoadedModel
from .base import field_spec, require_text_model
from .config import HeadKind, TaskConfig
from .heads import HeadsTask


def build(cfg: TaskConfig, loaded: LoadedModel, manifest: dict, rank: int = 0, world_size: int = 1) -> HeadsTask:
    require_text_model(loaded, "zeroshot")
    names = list(cfg.fields) or [cfg.field]
    specs = [field_spec(manifest, n, key="task.fields" if cfg.fields else "task.field") for n in names]
    return HeadsTask("zeroshot", cfg, loaded, specs, HeadKind.prompts, rank, world_size, trainable=False)
