"""labeltext: logits = scale · image embedding · label-prompt text embeddings, initialised from zero-shot.

task.prompts.text_mode picks what trains besides the image tower: nothing on the text side (frozen), the
label embeddings as parameters (embeddings), or the text tower itself (tower).
"""

from __future__ import annotations

from ..models import LoadedModel
from .base import require_text_model, single_field_spec
from .config import HeadKind, TaskConfig
from .heads import HeadsTask


def build(cfg: TaskConfig, loaded: LoadedModel, manifest: dict, rank: int = 0, world_size: int = 1) -> HeadsTask:
    require_text_model(loaded, "labeltext")
    spec = single_field_spec(manifest, "labeltext", cfg.field)
    return HeadsTask("labeltext", cfg, loaded, [spec], HeadKind.prompts, rank, world_size)
