"""`TrainState`: where a run stands, besides weights, optimiser, schedule and RNG. Saved in every checkpoint
(trainer_state.json) and restored on resume; the final results are read from it, not from metrics.jsonl."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class TrainState:
    step: int = 0  # optimiser steps done (skipped ones included)
    samples_seen: int = 0  # over all ranks, padding rows left out
    # the train loader's state_dict: the epoch and batch the next step reads (the loader turns "end of
    # epoch e" into "epoch e + 1, batch 0")
    position: dict = field(default_factory=lambda: {"epoch": 0, "batches": 0})
    best: dict = field(default_factory=lambda: {"metric": None, "value": None, "step": None})
    last_val_step: int = -1  # the step of the latest validation (a resumed run does not repeat it)
    last_val: dict = field(default_factory=dict)  # its metrics
    skipped_total: int = 0  # steps skipped for a non-finite loss
    skipped_in_row: int = 0

    @property
    def epoch(self) -> int:
        return int(self.position["epoch"])

    def better(self, value: Optional[float], higher: bool) -> bool:
        """Whether `value` beats the best validation so far (NaN never does)."""
        if value is None or not math.isfinite(value):
            return False
        best = self.best["value"]
        return best is None or (value > best if higher else value < best)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Raises KeyError / TypeError / ValueError for a state this class did not write."""
        for f in dataclasses.fields(self):
            value = state[f.name]
            if not isinstance(value, type(getattr(self, f.name))):
                raise TypeError(f"{f.name}={value!r}")
            setattr(self, f.name, value)
