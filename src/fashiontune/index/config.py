"""Typed config of `fashiontune index build` (defaults <- YAML <- key=value overrides; also `submit index`)."""

# No `from __future__ import annotations`: fashiontune.config reads the field types to suggest valid keys.
from dataclasses import dataclass, field
from typing import List

from fashiontune.config import require
from fashiontune.eval.config import CategoryConfig, EvalConfig, EvalDataConfig, EvalModelConfig
from fashiontune.models.precision import Precision

KINDS = ("flat", "hnsw", "ivf")


@dataclass
class ApproxConfig:
    """The approximate index for big catalogues (kind=hnsw or ivf); its recall@10 against the exact one is
    measured at build time and written into index.json."""

    hnsw_m: int = 32  # graph degree
    ef_construction: int = 80
    ef_search: int = 128  # candidates per query: recall against speed
    nlist: int = 0  # IVF cells; 0 = 4 * sqrt(items)
    nprobe: int = 16  # IVF cells visited per query
    recall_queries: int = 1000  # queries (the items' text embeddings, else image ones) for the recall@10 check


@dataclass
class IndexConfig:
    out: str = ""  # the index directory to write
    seed: int = 0  # random-init models: the weights the eval job would build
    precision: Precision = Precision.auto
    cache: bool = True  # reuse <out>/embeddings when model, shards and split match
    kind: str = "flat"  # flat = exact faiss IndexFlatIP; hnsw / ivf = approximate
    approx: ApproxConfig = field(default_factory=ApproxConfig)
    results: str = ""  # the model's eval results.json, copied in (per-class metrics in the app)
    # also store the items' image patch tokens (fp16, tokens/image.npy) of the model's own towers: what
    # `fashiontune serve INDEX rerank.model=EXPORT` re-ranks with (a ViT CLIP model; N x P x W x 2 bytes)
    tokens: bool = False
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    data: EvalDataConfig = field(default_factory=lambda: EvalDataConfig(shards=""))
    # zero-shot label prompts (the eval job's category.templates): classify uploads without heads
    templates: List[str] = field(default_factory=lambda: list(CategoryConfig().templates))

    def validate(self, source: str = "index config") -> "IndexConfig":
        require(bool(self.out), source, "out", self.out, "set the index directory to write (--out)")
        require(self.kind in KINDS, source, "kind", self.kind, f"use one of {', '.join(KINDS)}")
        a = self.approx
        for key in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "recall_queries"):
            require(getattr(a, key) >= 1, source, f"approx.{key}", getattr(a, key), "set an integer >= 1")
        require(a.nlist >= 0, source, "approx.nlist", a.nlist, "set an integer >= 0 (0 = 4 * sqrt(items))")
        self.as_eval().validate(source)
        return self

    def as_eval(self) -> EvalConfig:
        """The eval config whose embedding pass (and cache) this index reuses: same model, data and prompts."""
        cfg = EvalConfig(name="index", out_dir=self.out, seed=self.seed, precision=self.precision, cache=self.cache,
                         model=self.model, data=self.data)
        cfg.category.templates = list(self.templates)
        return cfg
