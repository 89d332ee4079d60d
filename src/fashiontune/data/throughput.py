"""Loader-only throughput: how many samples/s the data pipeline delivers with no model attached."""

from __future__ import annotations

import time
from typing import Iterable


def measure_loader_throughput(loader: Iterable[dict], max_batches: int | None = None, warmup_batches: int = 2) -> dict:
    """Iterate `loader` (one epoch, or `max_batches` after warm-up) and time everything after the first
    `warmup_batches` (worker start-up and shuffle-buffer fill excluded). Padding batches are not counted.
    Returns {"samples_per_s", "batches", "samples", "seconds"}."""
    it = iter(loader)
    for _ in range(warmup_batches):
        if next(it, None) is None:
            break
    n_batches = n_samples = 0
    start = time.perf_counter()
    for batch in it:
        n_batches += 1
        n_samples += int(batch["valid"].sum()) if "valid" in batch else len(batch["key"])
        if max_batches is not None and n_batches >= max_batches:
            break
    seconds = time.perf_counter() - start
    return {
        "samples_per_s": n_samples / seconds if seconds > 0 and n_samples else 0.0,
        "batches": n_batches,
        "samples": n_samples,
        "seconds": seconds,
    }

