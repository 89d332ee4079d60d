"""Deterministic epoch plans: who reads which samples, how many batches each worker yields, resume offsets.

Everything here is a pure function of (manifest counts, seed, epoch, rank, world_size, workers), so every
rank computes the same plan without talking to the others, and a resumed run recomputes it exactly.

Slots. A rank's DataLoader has `workers` processes (1 when workers=0); slot = rank * workers + worker, and
there are T = world_size * workers slots.

Exact epochs. The split's shards are put in one seeded order (the same on every rank), their samples are
numbered 0..N-1 along that order, and slot s reads the contiguous range [s*N//T, (s+1)*N//T). Counts per slot
differ by at most one and per rank by at most one, whatever the number or sizes of shards, so no worker
starves and nothing is read twice; a slot only opens the shards its range overlaps.

Batch order. Each worker batches its own samples; torch's DataLoader hands out worker batches round-robin,
skipping workers that are exhausted. `round_robin_position` replays that to find, after k batches, how many
batches each worker had yielded and whose turn was next, which is what a resumed loader needs.
"""

from __future__ import annotations

import math
import random
from typing import Sequence


def rng_for(*parts: object) -> random.Random:
    """A private RNG per purpose/seed/epoch/slot (str seeds hash deterministically across processes)."""
    return random.Random(":".join(map(str, parts)))


def shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    order = list(range(n_shards))
    if shuffle:
        rng_for("shards", seed, epoch).shuffle(order)
    return order


def slot_range(total: int, slot: int, n_slots: int) -> tuple[int, int]:
    return total * slot // n_slots, total * (slot + 1) // n_slots


def exact_slot_counts(total: int, world_size: int, workers: int) -> list[list[int]]:
    """Samples per [rank][worker] in an exact epoch."""
    n_slots = world_size * workers
    out = []
    for r in range(world_size):
        out.append([slot_range(total, r * workers + w, n_slots)[1] - slot_range(total, r * workers + w, n_slots)[0]
                    for w in range(workers)])
    return out


def exact_worker_batches(total: int, world_size: int, workers: int, batch_size: int, drop_last: bool) -> list[list[int]]:
    """Batches per [rank][worker] in an exact epoch."""
    div = (lambda c: c // batch_size) if drop_last else (lambda c: math.ceil(c / batch_size))
    return [[div(c) for c in row] for row in exact_slot_counts(total, world_size, workers)]


def resampled_worker_batches(samples_per_epoch: int, world_size: int, workers: int, batch_size: int) -> list[int]:
    """Batches per worker of ANY rank in a resampled epoch: ceil(samples / (world * batch)) per rank, split evenly."""
    per_rank = max(1, math.ceil(samples_per_epoch / (world_size * batch_size)))
    return [per_rank // workers + (w < per_rank % workers) for w in range(workers)]


def round_robin_position(counts: Sequence[int], consumed: int) -> tuple[list[int], int]:
    """After `consumed` batches of a DataLoader whose workers yield counts[w] batches each, round-robin with
    exhausted workers skipped: (batches taken from each worker, the worker whose turn is next)."""
    if consumed > sum(counts):
        raise ValueError(f"cannot skip {consumed} batches: the epoch has only {sum(counts)} on this rank")
    rem, taken, k = list(counts), [0] * len(counts), consumed
    while k > 0:
        active = [w for w, r in enumerate(rem) if r > 0]
        full = min(min(rem[w] for w in active), k // len(active))
        if full == 0:  # a partial round: the first k active workers yield once more
            for w in active[:k]:
                rem[w] -= 1
                taken[w] += 1
            return taken, active[k]
        for w in active:
            rem[w] -= full
            taken[w] += full
        k -= full * len(active)
    nxt = next((w for w, r in enumerate(rem) if r > 0), 0)
    return taken, nxt
