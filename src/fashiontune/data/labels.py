"""Label encoders built from the manifest's vocabularies (never re-derived from the data).

single-label field -> class index (LongTensor B), -1 when the item has no value or an unknown one;
multi-label field  -> multi-hot (FloatTensor B x V), all zeros when the item has no value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from fashiontune.data.manifest import ManifestError, label_fields

MISSING = -1


@dataclass
class LabelEncoder:
    name: str
    vocab: list[str]
    multi: bool = False
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {v: i for i, v in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode_one(self, value: Any) -> int | list[int]:
        """Single: an index or -1. Multi: the list of known indices (unknown values are dropped)."""
        if self.multi:
            if value is None:
                return []
            values = value if isinstance(value, (list, tuple)) else [value]
            return sorted({self.index[v] for v in map(str, values) if v in self.index})
        if value is None:
            return MISSING
        if isinstance(value, (list, tuple)):
            raise ValueError(
                f"label field {self.name!r} is single-label in the manifest but a sample holds a list {value!r}; "
                "the shards and manifest disagree: rebuild the shards."
            )
        return self.index.get(str(value), MISSING)

    def encode(self, values: Sequence[Any]) -> torch.Tensor:
        """A batch of raw values (None = missing) -> LongTensor B or FloatTensor B x V."""
        if not self.multi:
            return torch.tensor([self.encode_one(v) for v in values], dtype=torch.long)
        out = torch.zeros(len(values), len(self.vocab), dtype=torch.float32)
        for row, v in enumerate(values):
            idx = self.encode_one(v)
            if idx:
                out[row, idx] = 1.0
        return out

    def decode(self, index: int) -> str | None:
        return self.vocab[index] if 0 <= index < len(self.vocab) else None


def build_encoders(manifest: dict, fields: Sequence[str] | None = None) -> dict[str, LabelEncoder]:
    """One encoder per requested field (all manifest fields when `fields` is empty/None)."""
    labels = label_fields(manifest)
    names = list(fields) if fields else sorted(labels)
    unknown = [f for f in names if f not in labels]
    if unknown:
        raise ManifestError(
            f"label field(s) {unknown} are not in the manifest (source {manifest.get('source', '?')!r}); "
            f"it has {sorted(labels)}. Fix data.label_fields or the task's fields."
        )
    out = {}
    for name in names:
        spec = labels[name]
        vocab = spec.get("vocab")
        if not isinstance(vocab, list):
            raise ManifestError(f"manifest.json: labels.{name}.vocab is missing; rebuild the shards.")
        out[name] = LabelEncoder(name, [str(v) for v in vocab], bool(spec.get("multi", False)))
    return out
