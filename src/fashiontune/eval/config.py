"""Typed config of `fashiontune eval` (defaults <- configs/eval/<name>.yaml <- key=value overrides)."""

# No `from __future__ import annotations`: fashiontune.config reads the field types to suggest valid keys.
import enum
from dataclasses import dataclass, field
from typing import List

from fashiontune.models import ModelConfig


class Precision(str, enum.Enum):
    auto = "auto"  # bf16 autocast on CUDA, fp32 on CPU (CPU bf16 is slow without AMX and changes numbers)
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # CUDA only


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
    batch_size: int = 64  # per rank, for embedding
    num_workers: int = 0  # decode workers per rank (0 = decode in the main process)
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
    # prompt templates, averaged per label value ({} = the value); the first is also used alone in plots
    templates: List[str] = field(default_factory=lambda: ["a photo of a {}.", "a product photo of {}."])


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
