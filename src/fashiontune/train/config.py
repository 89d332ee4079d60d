"""TrainConfig: one typed config per training run, composed of the model, data and task configs of their
packages plus the loop's own sections (optimiser, schedule, precision, distribution, checkpoints, logging).

    fashiontune train --config configs/kagl-subcategory-softmax.yaml optim.lr=3e-4 loop.max_steps=200
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from fashiontune.config import ConfigError, load_config, require
from fashiontune.data import DataConfig
from fashiontune.models import Backbone, ModelConfig
from fashiontune.models.precision import Precision
from fashiontune.tasks.config import HeadKind, TaskConfig, TaskName
from fashiontune.tasks.metric_names import validation_metrics


class Strategy(str, enum.Enum):
    ddp = "ddp"  # plain DDP (or a single process)
    deepspeed = "deepspeed"  # DeepSpeed ZeRO from `dist.deepspeed_config`


class ScheduleName(str, enum.Enum):
    cosine = "cosine"  # linear warmup, then cosine decay to min_lr_ratio * lr
    constant = "constant"  # linear warmup, then constant


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    fused: bool = True  # torch's fused AdamW kernel (CPU and CUDA); false = the reference per-tensor loop
    # layer-wise LR decay of the towers (train/layer_decay.py): block i of n trains at lr * decay^(n + 1 - i);
    # 1.0 = off; 0.65-0.85 is usual for ViT fine-tuning
    layer_decay: float = 1.0


@dataclass
class ScheduleConfig:
    name: ScheduleName = ScheduleName.cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class LoopConfig:
    epochs: int = 1  # passes over the train split (exact) or of data.samples_per_epoch (resampled)
    max_steps: int = 0  # optimiser steps for the whole run; 0 = epochs x steps per epoch
    stop_after_steps: int = 0  # end THIS invocation after this global step (tests, time-boxed jobs); 0 = never
    grad_accum: int = 1  # micro-batches of data.batch_size per optimiser step
    precision: Precision = Precision.auto  # bf16 autocast on CUDA, fp32 on CPU; results.json records which
    tf32: bool = True  # TF32 tensor-core matmuls for what runs in fp32 on A100/H100 (as open_clip's trainer)
    cudnn_benchmark: bool = True  # cuDNN picks the fastest convolution algorithm per input shape
    compile: bool = False  # torch.compile the task module
    seed: int = 0
    # Skip a step whose loss is NaN/inf on any rank (one host sync per step, train/step.py); false = apply it
    # as open_clip does, with no sync at all on non-log steps.
    check_finite: bool = True
    max_bad_steps: int = 5  # this many non-finite steps in a row abort the run (with check_finite)
    nan_steps: List[int] = field(default_factory=list)  # TEST HOOK: global steps whose first loss is made NaN
    nan_ranks: List[int] = field(default_factory=list)  # TEST HOOK: ...on these ranks only ([] = every rank)


@dataclass
class DistConfig:
    strategy: Strategy = Strategy.ddp
    # DeepSpeed JSON/YAML (configs/deepspeed/zero{1,2,3}.json); "auto" values are filled from this config.
    deepspeed_config: str = "configs/deepspeed/zero2.json"
    find_unused_parameters: Optional[bool] = None  # None = what the task says (freeze schedules, text tower)
    timeout_s: int = 1800  # collective timeout


@dataclass
class CheckpointConfig:
    every_steps: int = 500  # save every N optimiser steps (0 = only at the end); every rank takes part
    keep_last: int = 2
    resume: bool = True  # continue from the newest complete checkpoint in the run dir, if any
    save_final: bool = True  # also save when the run ends (resume of a finished run is then a no-op)
    export_best: bool = True  # export the best-by-validation model to <run>/export
    best_metric: str = ""  # "" = the task's primary metric


@dataclass
class LogConfig:
    every_steps: int = 10
    eval_every_steps: int = 0  # 0 = at the end of every epoch only
    eval_max_batches: int = 0  # 0 = the whole validation split
    tensorboard: bool = True
    progress: bool = True
    plots: bool = True


@dataclass
class TrainConfig:
    name: str = "run"
    out_dir: str = "runs"  # the run directory is <out_dir>/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def validate(self, source: str = "train config") -> "TrainConfig":
        """Every check that needs no model: ranges, choices, files, and checkpoint.best_metric against the
        task's metric names (label fields from the manifest when the shards are there). Runs before any work."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{source}: {msg}")

        need(bool(self.name) and "/" not in self.name, f"name={self.name!r} must be a non-empty directory name.")
        need(self.loop.grad_accum >= 1, f"loop.grad_accum={self.loop.grad_accum} must be >= 1.")
        need(self.loop.epochs >= 1 or self.loop.max_steps > 0, "set loop.epochs >= 1 or loop.max_steps > 0.")
        need(self.loop.max_bad_steps >= 1, f"loop.max_bad_steps={self.loop.max_bad_steps} must be >= 1.")
        need(self.optim.lr > 0, f"optim.lr={self.optim.lr} must be > 0.")
        need(self.optim.grad_clip >= 0, f"optim.grad_clip={self.optim.grad_clip} must be >= 0 (0 = off).")
        need(0 <= self.schedule.min_lr_ratio <= 1, "schedule.min_lr_ratio must be in [0, 1].")
        need(self.schedule.warmup_steps >= 0, "schedule.warmup_steps must be >= 0.")
        need(self.checkpoint.keep_last >= 1, f"checkpoint.keep_last={self.checkpoint.keep_last} must be >= 1.")
        need(self.checkpoint.every_steps >= 0, "checkpoint.every_steps must be >= 0 (0 = only at the end).")
        need(self.log.every_steps >= 1, "log.every_steps must be >= 1.")
        self._check_ranges(source)
        if self.dist.strategy == Strategy.deepspeed:
            need(Path(self.dist.deepspeed_config).is_file(),
                 f"dist.deepspeed_config={self.dist.deepspeed_config!r} does not exist; pass one of "
                 "configs/deepspeed/zero1.json, zero2.json, zero3.json (paths relative to where you run).")
        self.data.validate(source)
        self.model.validate(source)
        self.task.validate(source)
        self._check_task(source)
        return self

    def _check_ranges(self, source: str) -> None:
        o, lp = self.optim, self.loop
        require(o.weight_decay >= 0, source, "optim.weight_decay", o.weight_decay, "set a value >= 0")
        for key in ("beta1", "beta2"):
            require(0 <= getattr(o, key) < 1, source, f"optim.{key}", getattr(o, key), "set a value in [0, 1)")
        require(o.eps > 0, source, "optim.eps", o.eps, "set a value > 0")
        require(0 < o.layer_decay <= 1, source, "optim.layer_decay", o.layer_decay, "set a value in (0, 1] (1 = off)")
        for key in ("epochs", "max_steps", "stop_after_steps"):
            require(getattr(lp, key) >= 0, source, f"loop.{key}", getattr(lp, key), "set an integer >= 0")
        require(self.dist.timeout_s >= 1, source, "dist.timeout_s", self.dist.timeout_s, "set seconds >= 1")
        for key in ("eval_every_steps", "eval_max_batches"):
            require(getattr(self.log, key) >= 0, source, f"log.{key}", getattr(self.log, key),
                    "set an integer >= 0 (0 = every epoch / the whole split)")

    def _check_task(self, source: str) -> None:
        """The task against the model and the shards: text tower, label fields, checkpoint.best_metric. (Else
        these surface after the model is built, or - for best_metric - after the first validation.)"""
        needs_text = self.task.name in (TaskName.labeltext, TaskName.contrastive, TaskName.zeroshot,
                                      TaskName.rerank) or (
            self.task.name == TaskName.attributes and self.task.head == HeadKind.prompts)
        if needs_text and self.model.backbone == Backbone.timm:
            raise ConfigError(f"{source}: task.name={TaskName(self.task.name).value} needs a text tower but "
                              "model.backbone=timm has none; use model.backbone=open_clip or task.name=classify.")
        manifest = None
        if (Path(self.data.shards) / "manifest.json").is_file():
            from fashiontune.data import ManifestError, read_manifest

            try:
                manifest = read_manifest(self.data.shards)
            except ManifestError:
                manifest = None  # reported with its fix when the run reads the shards
        if manifest is not None and self.data.train_split not in manifest.get("splits", {}):
            raise ConfigError(f"{source}: data.train_split={self.data.train_split!r} is not a split of "
                              f"{self.data.shards}/manifest.json; it has {sorted(manifest.get('splits', {}))}.")
        names = validation_metrics(self.task, manifest)  # checks the label fields against the manifest
        metric = self.checkpoint.best_metric
        if metric and names is not None and metric not in names:
            near = difflib.get_close_matches(metric, names, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ConfigError(
                f"{source}: checkpoint.best_metric={metric!r} is not a validation metric of task.name="
                f"{TaskName(self.task.name).value}.{hint} Choose one of: {', '.join(names)} (or '' for the task's own)."
            )


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults <- YAML experiment file <- `key=value` overrides, validated."""
    cfg = load_config(TrainConfig, path, overrides)
    return cfg.validate(str(path) if path else "train config")
