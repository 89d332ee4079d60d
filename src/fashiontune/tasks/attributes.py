"""attributes: several label fields at once (colour, sleeve length, neckline, pattern, fabric ...), one head
each (linear, or label prompts with task.head=prompts); metrics per field and their mean. Items missing
a field's label are ignored for that field only."""

from __future__ import annotations

from ..models import LoadedModel
from .base import TaskError, field_spec
from .config import TaskConfig
from .heads import HeadsTask


def build(cfg: TaskConfig, loaded: LoadedModel, manifest: dict, rank: int = 0, world_size: int = 1) -> HeadsTask:
    names = list(cfg.fields) or sorted(manifest.get("labels", {}))
    if not names:
        raise TaskError("task.name=attributes: the manifest has no label fields; list them in task.fields.")
    specs = [field_spec(manifest, n, key="task.fields") for n in names]
    return HeadsTask("attributes", cfg, loaded, specs, cfg.head, rank, world_size)
