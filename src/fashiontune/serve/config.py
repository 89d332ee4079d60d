"""Typed config of `fashiontune serve` beyond its flags: key=value overrides after the index directories,
named as the eval job's (e.g. `fashiontune serve INDEX rerank.model=EXPORT rerank.k=50`)."""

# No `from __future__ import annotations`: fashiontune.config reads the field types to suggest valid keys.
from dataclasses import dataclass, field

from fashiontune.eval.config import RerankEvalConfig


@dataclass
class ServeConfig:
    # the eval job's rerank.* keys (model = a task.name=rerank export trained on the towers that built the index,
    # "" = the dual encoder's order); serve's default pair batch is larger: one text batch's pairs in one forward
    rerank: RerankEvalConfig = field(default_factory=lambda: RerankEvalConfig(pairs_per_batch=4096))

    def validate(self, source: str = "serve") -> "ServeConfig":
        self.rerank.validate(source)
        return self


def is_override(arg: str) -> bool:
    """`key=value` (a dotted lower-case key) rather than an index directory."""
    key, eq, _ = arg.partition("=")
    return bool(eq) and bool(key) and all(part.isidentifier() and part.islower() for part in key.split("."))
