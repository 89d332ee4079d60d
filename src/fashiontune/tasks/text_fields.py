"""Multi-field contrastive text (Marqo's GCL idea): a sample's text is drawn from several fields - the caption,
or a label field through a template ("a {label} garment") - with the config's weights, so one model learns
text -> image for product names and for attributes.

The draw is a hash of (epoch, item key): the same text in the feature-cache's no-grad pass and its grad pass,
on every rank layout and after a resume; a new draw each epoch. A field the item lacks (-1 / empty) is skipped;
an item with no field left uses its caption."""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

from ..models.prompts import format_prompt, label_text
from .base import field_spec
from .config import TextFieldConfig

CAPTION = "caption"


def _unit(epoch: int, key: str) -> float:
    """A uniform number in [0, 1) from (epoch, key)."""
    return int.from_bytes(hashlib.blake2b(f"{epoch}:{key}".encode(), digest_size=8).digest(), "little") / 2.0**64


class TextFields:
    def __init__(self, specs: Sequence[TextFieldConfig], manifest: Mapping[str, Any]):
        self.specs = list(specs)
        self.vocab = {s.field: field_spec(manifest, s.field, "task.contrastive.text_fields[].field").vocab
                      for s in self.specs if s.field != CAPTION}

    @property
    def label_fields(self) -> list[str]:
        """The label fields the loader must encode into batch["labels"]."""
        return list(self.vocab)

    def _value(self, batch: dict, field: str, i: int) -> str:
        if field == CAPTION:
            return str((batch.get("caption") or [""] * (i + 1))[i]).strip()
        y = batch["labels"][field][i]
        if y.dim() == 0:  # single-label index, -1 = missing
            return label_text(self.vocab[field][int(y)]) if int(y) >= 0 else ""
        return " and ".join(label_text(self.vocab[field][j]) for j, v in enumerate(y.tolist()) if v > 0)

    def texts(self, batch: dict, epoch: int) -> list[str]:
        keys = batch.get("key") or [str(i) for i in range(len(batch["image"]))]
        out = []
        for i, key in enumerate(keys):
            options = [(s, v) for s in self.specs if (v := self._value(batch, s.field, i))]
            if not options:
                out.append(self._value(batch, CAPTION, i))
                continue
            u = _unit(epoch, str(key)) * sum(s.weight for s, _ in options)
            spec, value = options[-1]  # (float rounding can leave u just above the last weight)
            for s, v in options:
                u -= s.weight
                if u < 0:
                    spec, value = s, v
                    break
            out.append(format_prompt(spec.template, value))
        return out
