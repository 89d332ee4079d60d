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
class RetrievalTask:
    """One Marqo-style task (eval/protocol.py): unique query strings -> every item of the split, BEIR metrics."""

    name: str = ""  # the results.json key, e.g. "category-to-product"
    query: str = "text"  # "text" = unique non-empty captions; else a label field, queried by its raw values
    pattern: str = ""  # optional regex: only values in which it is found become queries
    max_queries: int = 2000  # sampled with the eval seed when there are more unique values
    image_weight: float = 1.0  # document = normalize(image_weight * image + text_weight * text)
    text_weight: float = 0.0  # category -> product on the leaderboard: 0.9 / 0.1


@dataclass
class RetrievalConfig:
    enabled: bool = True  # text<->image over the split (relevant = same group_id or identical caption), and
    # image->image over its In-shop split (relevant = same group_id) where a product has 2+ images
    # cutoffs of Hit@K (results.json keys R@K, the old any-hit rate) and of BEIR Recall/P/NDCG/MAP@K (+ MRR@10)
    ks: List[int] = field(default_factory=lambda: [1, 5, 10, 50])
    tasks: List[RetrievalTask] = field(default_factory=list)  # Marqo-style tasks, see configs/eval/marqo-*.yaml
    # a BEIR qrels JSON {query_text: {item key: relevance}}: evaluates exactly its queries as task "qrels"
    qrels: str = ""
    qrels_image_weight: float = 1.0  # documents of the qrels task, as a task's image_weight / text_weight
    qrels_text_weight: float = 0.0
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
class RerankEvalConfig:
    # export directory of a task.name=rerank run (reranker.pt + its towers); "" = no re-ranking
    model: str = ""
    k: int = 50  # re-order each query's exact top-k (items below keep their dual-encoder rank)
    pairs_per_batch: int = 2048  # (query, candidate) pairs per cross-encoder forward

    def validate(self, source: str) -> None:  # the eval job's and serve's rerank.* keys
        require(self.k >= 1, source, "rerank.k", self.k, "set an integer >= 1, e.g. 50")
        require(self.pairs_per_batch >= 1, source, "rerank.pairs_per_batch", self.pairs_per_batch,
                "set an integer >= 1")


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
    rerank: RerankEvalConfig = field(default_factory=RerankEvalConfig)

    def validate(self, source: str = "eval config") -> "EvalConfig":
        """Ranges and choices, checked before any work; ConfigError names the key and the allowed range."""
        require(bool(self.name), source, "name", self.name, "set a non-empty run name")
        self.model.validate(source)
        d = self.data
        require(bool(d.shards), source, "data.shards", d.shards, "set the shard directory (holding manifest.json)")
        require(bool(d.split), source, "data.split", d.split, "name a split of the manifest (e.g. test), several (val,test) or all")
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
        _check_tasks(source, r)
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
        self.rerank.validate(source)
        require(not self.rerank.model or r.enabled, source, "rerank.model", self.rerank.model,
                "re-ranking re-orders the retrieval top-K: keep retrieval.enabled=true")
        require(self.plots.grid_k >= 1, source, "plots.grid_k", self.plots.grid_k, "set an integer >= 1")
        return self


def _check_ks(source: str, key: str, ks: List[int], enabled: bool) -> None:
    if enabled:
        require(bool(ks), source, key, ks, "list at least one cutoff K >= 1, e.g. [1, 5, 10]")
    bad = [k for k in ks if k < 1]
    require(not bad, source, key, ks, f"every K must be an integer >= 1 ({bad[0] if bad else ''} is not)")


def _check_tasks(source: str, r: RetrievalConfig) -> None:
    names = [t.name for t in r.tasks] + ["qrels", "t2i", "i2t"]  # results.json "ir" keys
    for i, t in enumerate(r.tasks):
        key = f"retrieval.tasks[{i}]"
        require(bool(t.name), source, f"{key}.name", t.name, "name the task, e.g. text-to-image")
        require(names.count(t.name) == 1, source, f"{key}.name", t.name, "use a name no other task has (nor qrels, t2i, i2t)")
        require(bool(t.query), source, f"{key}.query", t.query, "use text or a label field of the manifest")
        require(t.max_queries >= 1, source, f"{key}.max_queries", t.max_queries, "set an integer >= 1")
        _check_weights(source, f"{key}.", t.image_weight, t.text_weight)
        try:
            re.compile(t.pattern)
        except re.error as e:
            require(False, source, f"{key}.pattern", t.pattern, f"a Python regular expression ({e})")
    _check_weights(source, "retrieval.qrels_", r.qrels_image_weight, r.qrels_text_weight)


def _check_weights(source: str, prefix: str, wi: float, wt: float) -> None:
    require(wi >= 0 and wt >= 0 and wi + wt > 0, source, f"{prefix}image_weight/text_weight", (wi, wt),
            "set weights >= 0, not both 0 (image only: 1 / 0; category -> product: 0.9 / 0.1)")
