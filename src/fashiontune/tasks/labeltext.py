"""labeltext: logits = scale · image embedding · label-prompt text embeddings, initialised from zero-shot.

task.prompts.text_mode picks what trains besides the image tower: nothing on the text side (frozen), the
label embeddings as parameters (embeddings), or the text tower itself (tower).
"""

from __future__ import annotations

from ..models import LoadedModel
from .base import TaskError, field_spec, require_text_model
from .config import HeadKind, TaskConfig
from .heads import HeadsTask


def build(cfg: TaskConfig, loaded: LoadedModel, manifest: dict, rank: int = 0, world_size: int = 1) -> HeadsTask:
    require_text_model(loaded, "labeltext")
    spec = field_spec(manifest, cfg.field)
    if spec.multi:
        raise TaskError(f"task.field='{cfg.field}' is multi-label: labeltext scores one label per image; "
                        "use task.name=attributes with task.head=prompts, or task.name=multilabel.")
    return HeadsTask("labeltext", cfg, loaded, [spec], HeadKind.prompts, rank, world_size)
