"""The validation metric names each task reports, known from its config (and the manifest's label fields)
without building a model: what `checkpoint.best_metric` is checked against before any work starts.

Mirrors `HeadsTask.evaluate` and `ContrastiveTask.evaluate`; tests/test_config.py holds the two together
(every task's real evaluate() keys == the names declared here).
"""

from __future__ import annotations

from typing import Mapping, Optional

from .base import TaskError, field_spec, single_field_spec
from .config import TaskConfig, TaskName
from .metrics import MULTI_LABEL, RETRIEVAL_KS, SINGLE_LABEL

# besides the per-field metrics, HeadsTask reports these for every field
_SINGLE_EXTRA = ("count",)
_MULTI_EXTRA = ("count", "micro_f1@0.5", "macro_f1@0.5", "threshold")
_MEAN_OF = ("accuracy", "macro_f1", "micro_f1", "mAP", "top5")


def _task_fields(cfg: TaskConfig) -> Optional[list[str]]:
    """The label fields a heads task scores, or None when they come from the manifest (attributes, fields=[])."""
    name = TaskName(cfg.name)
    if name in (TaskName.classify, TaskName.labeltext, TaskName.multilabel):
        return [cfg.field]
    if name == TaskName.zeroshot:
        return list(cfg.fields) or [cfg.field]
    return list(cfg.fields) or None  # attributes


def validation_metrics(cfg: TaskConfig, manifest: Optional[Mapping] = None) -> Optional[list[str]]:
    """Sorted metric names the task's validation reports, or None when they depend on a manifest not given.

    With a manifest, a label field that is unknown or of the wrong kind raises TaskError naming the key."""
    name = TaskName(cfg.name)
    if name == TaskName.rerank:
        from .rerank import RERANK_METRICS

        return list(RERANK_METRICS)
    if name == TaskName.contrastive:
        return sorted([f"{d}_R@{k}" for d in ("i2t", "t2i", "mean", "i2i") for k in RETRIEVAL_KS] + ["loss", "count"])
    fields = _task_fields(cfg)
    if manifest is None:
        if fields is None or len(fields) != 1:
            return None
        if name == TaskName.multilabel:
            multi = [True]
        elif name in (TaskName.classify, TaskName.labeltext):
            multi = [False]
        else:
            return None  # zeroshot on one field: single or multi-label, the manifest says which
    elif name in (TaskName.classify, TaskName.labeltext, TaskName.multilabel):
        multi = [single_field_spec(manifest, name.value, cfg.field).multi]
    else:
        key = "task.fields" if cfg.fields or name == TaskName.attributes else "task.field"
        fields = fields if fields is not None else sorted(manifest.get("labels", {}))
        if not fields:
            raise TaskError(f"task.name={name.value}: the manifest has no label fields; list them in task.fields.")
        multi = [field_spec(manifest, f, key=key).multi for f in fields]
    per_field = [set(MULTI_LABEL + _MULTI_EXTRA) if m else set(SINGLE_LABEL + _SINGLE_EXTRA) for m in multi]
    if len(fields) == 1:
        return sorted(per_field[0] | {"loss"})
    out = {f"{f}/{k}" for f, ks in zip(fields, per_field) for k in ks}
    out |= {f"mean/{k}" for k in _MEAN_OF if any(k in ks for ks in per_field)}
    return sorted(out | {"loss"})
