"""Typed config of `fashiontune eval` (defaults <- configs/eval/<name>.yaml <- key=value overrides)."""

# No `from __future__ import annotations`: fashiontune.config reads the field types to suggest valid keys.
import re
from dataclasses import dataclass, field
from typing import List, Union

from fashiontune.config import require
from fashiontune.models import ModelConfig
from fashiontune.models.precision import Precision
from fashiontune.models.prompts import TEMPLATE_HELP, template_ok


@dataclass
class EvalModelConfig(ModelConfig):
    # A trained model: an export directory (open_clip_pytorch_model.bin + export.json [+ heads.pt/heads.json],
    # as written by training's export step) or a weights file for `name`. When set, it replaces `pretrained`
    # and, for a directory, `name` comes from its export.json.
    checkpoint: str = ""


@dataclass
class EvalDataConfig:
    shards: str = "shards/kagl"  # a shard directory with manifest.json (see shards/README.md)
    split: str = "test"
    batch_size: int = 256  # per rank, for embedding (inference: no gradients, so far more fits than in training)
    # decode workers per rank: auto (or -1) = the CPUs this rank may use - 1, at most 12 (data/workers.py);
    # 0 = decode in the main process
    num_workers: Union[int, str] = "auto"
    pin_memory: Union[bool, str] = "auto"  # page-locked batches for asynchronous copies; auto = on CUDA
    label_fields: List[str] = field(default_factory=list)  # empty = every label field in the manifest


@dataclass
class RetrievalConfig:
    enabled: bool = True
    ks: List[int] = field(default_factory=lambda: [1, 5, 10, 50])
    chunk_size: int = 0  # queries per chunk; 0 = as many as fit in memory_budget_mb
    memory_budget_mb: int = 0  # working set of one query chunk (chunk x N pairs); 0 = 1 GiB on CPU, GPU: free/4 <= 8 GiB
    device: str = "auto"  # auto = cuda when present, else cpu


@dataclass
class CategoryConfig:
    enabled: bool = True  # category-to-product P@K / MRR per label field (needs a text tower)
    ks: List[int] = field(default_factory=lambda: [1, 5, 10, 50])
    # prompt templates, averaged per label value; the dialect of task.prompts (models/prompts.py): {label}
    # (or {}) = the label text
    templates: List[str] = field(default_factory=lambda: ["a photo of a {label}.", "a product photo of {label}."])


@dataclass
class ClassificationConfig:
    enabled: bool = True
    zero_shot: bool = True  # classify by similarity to the label prompts (every model with a text tower)
    heads: bool = True  # use the classification heads exported beside model.checkpoint, when present
    # multi-label decision threshold; < 0 = tune on this split (reported as such: optimistic)
    multi_label_threshold: float = -1.0
    max_confusion_classes: int = 150  # skip the confusion PNG above this many classes (unreadable)


@dataclass
class PlotConfig:
    grid_queries: int = 4  # text queries shown in the top-K image grid (0 = no grid)
    grid_k: int = 5


@dataclass
class EvalConfig:
    name: str = "eval"
    out_dir: str = ""  # default runs/<name>/eval-<split>
    seed: int = 0
    precision: Precision = Precision.auto  # for embedding; scoring is always fp32
    cache: bool = True  # reuse embeddings in <out_dir>/embeddings when model, shards and split match
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    category: CategoryConfig = field(default_factory=CategoryConfig)
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    plots: PlotConfig = field(default_factory=PlotConfig)

    def validate(self, source: str = "eval config") -> "EvalConfig":
        """Ranges and choices, checked before any work; ConfigError names the key and the allowed range."""
        require(bool(self.name), source, "name", self.name, "set a non-empty run name")
        self.model.validate(source)
        d = self.data
        require(bool(d.shards), source, "data.shards", d.shards, "set the shard directory (holding manifest.json)")
        require(bool(d.split), source, "data.split", d.split, "name a split of the manifest, e.g. test")
        require(d.batch_size >= 1, source, "data.batch_size", d.batch_size, "set an integer >= 1")
        from fashiontune.data.workers import resolve_pin_memory, resolve_workers

        resolve_workers(d.num_workers, f"{source}: data.num_workers", environ={})  # raises on a bad value
        resolve_pin_memory(d.pin_memory, f"{source}: data.pin_memory")
        r = self.retrieval
        _check_ks(source, "retrieval.ks", r.ks, r.enabled)
        require(r.chunk_size >= 0, source, "retrieval.chunk_size", r.chunk_size, "set an integer >= 0 (0 = auto)")
        require(r.memory_budget_mb >= 0, source, "retrieval.memory_budget_mb", r.memory_budget_mb,
                "set MiB >= 0 (0 = auto)")
        require(bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", r.device)), source, "retrieval.device", r.device,
                "use auto, cpu, cuda or cuda:N")
        c = self.category
        _check_ks(source, "category.ks", c.ks, c.enabled)
        require(bool(c.templates), source, "category.templates", c.templates, "give at least one template with {label}")
        for i, t in enumerate(c.templates):
            require(template_ok(t), source, f"category.templates[{i}]", t, TEMPLATE_HELP)
        cl = self.classification
        th = cl.multi_label_threshold
        require(th < 0 or 0 <= th <= 1, source, "classification.multi_label_threshold", th,
                "set a probability in [0, 1], or a negative value to tune it on this split")
        require(cl.max_confusion_classes >= 0, source, "classification.max_confusion_classes",
                cl.max_confusion_classes, "set an integer >= 0")
        require(self.plots.grid_queries >= 0, source, "plots.grid_queries", self.plots.grid_queries,
                "set an integer >= 0 (0 = no grid)")
        require(self.plots.grid_k >= 1, source, "plots.grid_k", self.plots.grid_k, "set an integer >= 1")
        return self


def _check_ks(source: str, key: str, ks: List[int], enabled: bool) -> None:
    if enabled:
        require(bool(ks), source, key, ks, "list at least one cutoff K >= 1, e.g. [1, 5, 10]")
    bad = [k for k in ks if k < 1]
    require(not bad, source, key, ks, f"every K must be an integer >= 1 ({bad[0] if bad else ''} is not)")
