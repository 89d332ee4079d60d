"""Views-per-product batching (`data.views_per_group: K`): a seeded reorder of one worker's stream so that
each batch takes a product's views in one run of up to K, and holds at most one run per product.

K > 1 puts several views of a product in the same batch (what `task.contrastive.positives: group` needs to
matter: plain CLIP takes them as negatives); K = 1 allows at most one view of a product per batch (no
same-product false negatives for plain CLIP). It replaces the sample shuffle buffer and, like it, works on
still-encoded samples within a window of `window` items, so:

- it is a permutation of the stream: every item once per exact epoch, on any rank/worker layout (each worker
  reorders only its own slot of the epoch, plan.py), and batch counts are unchanged;
- batches stay full: a run that does not fit the rest of a batch is swapped for one that does, or split;
- it is a pure function of (stream, rng): resumes (which skip whole batches of the reordered stream) and
  every rank reproduce it.

A product's views are found in the window: consecutive in the shards (DeepFashion-MM writes them one after
another) or close. A product with fewer than K views (or views further apart than the window) forms shorter
runs; "at most one run per product" yields only when nothing else in the window fits (rare with window >> batch).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def group_batched(items: Iterable[T], views: int, batch_size: int, window: int, rng: random.Random,
                  group_of: Callable[[T], Hashable]) -> Iterator[T]:
    """`items` reordered into batches of `batch_size` made of runs of up to `views` items of one group."""
    if views < 1 or batch_size < 1:
        raise ValueError(f"views={views} and batch_size={batch_size} must be >= 1")
    window = max(window, batch_size, views)
    pending: dict[Hashable, list[T]] = {}  # group -> views still collecting (insertion order = oldest first)
    runs: list[tuple[Hashable, list[T]]] = []  # ready runs, drawn at random
    held, state = 0, _Batch(batch_size, views)
    for it in items:
        g = group_of(it)
        pending.setdefault(g, []).append(it)
        held += 1
        if len(pending[g]) == views:
            runs.append((g, pending.pop(g)))
        while held > window:  # emit one run (the oldest collecting group becomes a run when none is ready)
            if not runs:
                g0 = next(iter(pending))
                runs.append((g0, pending.pop(g0)))
            out = state.take(runs, rng)
            held -= len(out)
            yield from out
    runs.extend(pending.items())
    while runs:
        yield from state.take(runs, rng)


class _Batch:
    """The batch being filled: room left and the groups it already holds."""

    def __init__(self, size: int, views: int) -> None:
        self.size, self.views, self.room, self.groups = size, views, size, set()

    def _rank(self, g: Hashable, n: int) -> int:
        """0: fits and keeps the rest of the batch a multiple of K (a short run waits for a room it fills,
        rather than forcing splits down the line); 1: fits; 2: a new group to split; 3: anything."""
        if g in self.groups:
            return 3
        if n > self.room:
            return 2
        return 0 if (self.room - n) % self.views == 0 else 1

    def take(self, runs: list[tuple[Hashable, list]], rng: random.Random) -> list:
        """Remove and return the next run (or the head of one) for this batch, from `runs` (non-empty)."""
        start, best, pick = rng.randrange(len(runs)), 4, 0
        for k in range(len(runs)):
            i = (start + k) % len(runs)
            r = self._rank(runs[i][0], len(runs[i][1]))
            if r < best:
                best, pick = r, i
                if r == 0:
                    break
        g, run = runs[pick]
        out, rest = run[:self.room], run[self.room:]
        if rest:
            runs[pick] = (g, rest)
        else:
            runs[pick] = runs[-1]
            runs.pop()
        self.groups.add(g)
        self.room -= len(out)
        if self.room == 0:
            self.room, self.groups = self.size, set()
        return out
