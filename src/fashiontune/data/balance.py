"""Class-balanced sampling on a stream: rejection sampling with acceptance ~ freq^-power.

A sample of class c is kept with probability (min_freq / freq(c)) ** power, so with power=1 every class is
emitted at the rate of the rarest one (uniform classes); power=0.5 softens it. Frequencies come from the
manifest's per-split counts (never re-derived). Items without a value form their own "missing" class. A
multi-label item takes the acceptance of its rarest label. Rejected samples are dropped before decoding,
so the cost is reading their bytes; the acceptance rate is about n_classes * min_freq / N (logged).
Because it drops and (with resampled shards) repeats samples, it needs epoch_mode=resampled.
"""

from __future__ import annotations

import logging
from typing import Any

from fashiontune.data.manifest import ManifestError

log = logging.getLogger(__name__)


class ClassBalancer:
    def __init__(self, manifest: dict, field: str, split: str, power: float = 1.0) -> None:
        spec = manifest.get("labels", {}).get(field)
        if spec is None:
            raise ManifestError(
                f"data.balance_field={field!r} is not a label field of the manifest; "
                f"it has {sorted(manifest.get('labels', {}))}."
            )
        self.field, self.multi = field, bool(spec.get("multi", False))
        counts = (spec.get("split_counts") or {}).get(split) or spec.get("counts") or {}
        counts = {str(k): int(v) for k, v in counts.items() if int(v) > 0}
        if not counts:
            raise ManifestError(f"manifest.json: labels.{field} has no counts to balance on; rebuild the shards.")
        total = int(manifest.get("splits", {}).get(split, {}).get("count", 0))
        # Only a single-label field tells us how many items lack a value (the rest of the split).
        missing = total - sum(counts.values()) if not self.multi else 0
        floor = min(list(counts.values()) + ([missing] if missing > 0 else []))
        self.accept = {c: (floor / n) ** power for c, n in counts.items()}
        # multi-label items with no label: treat like the most frequent class (we cannot count them).
        self.accept_missing = (floor / missing) ** power if missing > 0 else min(self.accept.values())
        n_classes = len(counts) + (missing > 0)
        rate = sum(n * self.accept[c] for c, n in counts.items()) + max(missing, 0) * self.accept_missing
        self.expected_rate = rate / max(total if not self.multi else sum(counts.values()), 1)
        log.info("balanced sampling on %r: %d classes, expected acceptance %.3f", field, n_classes, self.expected_rate)

    def probability(self, labels: dict[str, Any]) -> float:
        value = labels.get(self.field)
        if value is None or value == []:
            return self.accept_missing
        values = value if isinstance(value, list) else [value]
        probs = [self.accept[str(v)] for v in values if str(v) in self.accept]
        return max(probs) if probs else self.accept_missing
