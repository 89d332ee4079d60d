"""Which items get which quirk, and the machine-readable list of what was injected.

`_synth_quirks.json` sits beside the corpus (outside the real layout: no real-format reader needs it):
    {"format", "n", "seed", "quirk_rate",
     "items": {record_id: [quirk, ...]},        # record_id as the format's source adapter will emit it
     "files": {relative_path: [quirk, ...]},    # file-level quirks (no trailing newline, stray files)
     "structural": {record_id: [quirk, ...]},   # quirks the real layout always has (quirk_rate ignored)
     "outcome": {quirk: "repaired" | "error" | "kept" | "absent" | "ignored"}}
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

QUIRKS_FILE = "_synth_quirks.json"


def rng_for(seed: int) -> random.Random:
    """The quirk draws' own generator: labels and pixels of unquirked items do not depend on quirk_rate."""
    return random.Random(f"quirks-{seed}")


def assign(ids: Sequence[str], kinds: Sequence[str], rate: float, rng: random.Random) -> dict[str, str]:
    """round(rate * len(ids)) items get one quirk each; kinds are dealt round-robin (in a seeded order) so
    every kind occurs once at least len(kinds) items are quirked."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"quirk_rate must be within [0, 1], got {rate}")
    k = round(rate * len(ids))
    if k == 0 or not kinds:
        return {}
    chosen = rng.sample(list(ids), k)
    order = list(kinds)
    rng.shuffle(order)
    return {item: order[i % len(order)] for i, item in enumerate(chosen)}


def write_log(out_dir: Path, fmt: str, n: int, seed: int, rate: float, items: dict[str, list[str]],
              outcome: dict[str, str], files: dict[str, list[str]] | None = None,
              structural: dict[str, list[str]] | None = None) -> Path:
    log = {
        "format": fmt, "n": n, "seed": seed, "quirk_rate": rate,
        "items": dict(sorted(items.items())),
        "files": dict(sorted((files or {}).items())),
        "structural": dict(sorted((structural or {}).items())),
        "outcome": dict(sorted(outcome.items())),
    }
    path = out_dir / QUIRKS_FILE
    path.write_text(json.dumps(log, indent=1) + "\n")
    return path


def load(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / QUIRKS_FILE).read_text())
