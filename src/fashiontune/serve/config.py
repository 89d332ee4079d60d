"""Typed config of `fashiontune serve` beyond its flags: key=value overrides after the index directories,
named as the eval job's (e.g. `fashiontune serve INDEX rerank.model=EXPORT rerank.k=50`)."""

# No `from __future__ import annotations`: fashiontune.config reads the field types to suggest valid keys.
from dataclasses import dataclass, field

from fashiontune.config import require


@dataclass
class ServeRerankConfig:
    # export directory of a task.name=rerank run trained on the towers that built the index (model 0's);
    # "" = text search returns the dual encoder's order
    model: str = ""
    k: int = 50  # re-order each text query's top-k (results beyond k keep the dual encoder's order)
    pairs_per_batch: int = 4096  # (query, candidate) pairs per cross-encoder forward


@dataclass
class ServeConfig:
    rerank: ServeRerankConfig = field(default_factory=ServeRerankConfig)

    def validate(self, source: str = "serve") -> "ServeConfig":
        r = self.rerank
        require(r.k >= 1, source, "rerank.k", r.k, "set an integer >= 1, e.g. 50")
        require(r.pairs_per_batch >= 1, source, "rerank.pairs_per_batch", r.pairs_per_batch, "set an integer >= 1")
        return self


def is_override(arg: str) -> bool:
    """`key=value` (a dotted lower-case key) rather than an index directory."""
    key, eq, _ = arg.partition("=")
    return bool(eq) and bool(key) and all(part.isidentifier() and part.islower() for part in key.split("."))
