"""Tasks: one small object per training objective, all driven by the same loop (see base.py for the contract).

    task = build_task(task_cfg, loaded, manifest, rank, world_size)
    task.module / .trainable / .fields / .needs_text / .find_unused_parameters / .primary_metric
    task.begin_step(model, micro_batches) · task.loss(model, i, batch) · task.on_epoch_start(epoch) · task.evaluate(batches, accelerator)
    task.export(out_dir) · task.last_eval (y_true / y_pred per field, for confusion matrices)
"""

from __future__ import annotations

from ..models import LoadedModel
from . import attributes, classify, labeltext, multilabel, zeroshot
from .base import FieldSpec, Task, TaskError, field_spec
from .config import (
    ContrastiveConfig,
    FreezeConfig,
    FreezeMode,
    HeadKind,
    MultiLabelConfig,
    MultiLabelLoss,
    PromptConfig,
    TaskConfig,
    TaskName,
    TextMode,
)
from .contrastive import ContrastiveTask
from .heads import HeadsTask


def build_task(cfg: TaskConfig, loaded: LoadedModel, manifest: dict, rank: int = 0, world_size: int = 1) -> Task:
    name = TaskName(cfg.name)
    if name == TaskName.contrastive:
        return ContrastiveTask(cfg, loaded, rank, world_size, manifest)
    if name == TaskName.rerank:
        from .rerank import RerankTask

        return RerankTask(cfg, loaded, rank, world_size)
    builders = {
        TaskName.classify: classify.build,
        TaskName.labeltext: labeltext.build,
        TaskName.multilabel: multilabel.build,
        TaskName.attributes: attributes.build,
        TaskName.zeroshot: zeroshot.build,
    }
    return builders[name](cfg, loaded, manifest, rank, world_size)


__all__ = [
    "build_task",
    "Task",
    "TaskError",
    "HeadsTask",
    "ContrastiveTask",
    "FieldSpec",
    "field_spec",
    "TaskConfig",
    "TaskName",
    "FreezeConfig",
    "FreezeMode",
    "HeadKind",
    "TextMode",
    "PromptConfig",
    "ContrastiveConfig",
    "MultiLabelConfig",
    "MultiLabelLoss",
]
