"""Contrastive training on several ranks needs every rank's batch to have the same rows at every step (ClipLoss
all-gathers the features; unequal shapes fail or hang the collective). Checked before any work from the
epoch plan every rank computes alike (data/plan.py), so a bad config stops with the fix instead of a hang.

Which batches can be short in an exact epoch without data.drop_last: each (rank, worker) slot batches its own
contiguous sample range, so each worker's LAST batch holds `count % batch_size` rows. Padding batches (the
valid=False ones that keep short ranks in step) are full: the first batch_size samples of the split. The
DataLoader takes worker batches round-robin, skipping exhausted workers; `rank_batch_sizes` replays that.
"""

from __future__ import annotations

from fashiontune.config import ConfigError
from fashiontune.data.config import EpochMode
from fashiontune.data.plan import exact_slot_counts
from fashiontune.data.workers import plan_workers


def rank_batch_sizes(total: int, world_size: int, workers: int, batch_size: int, drop_last: bool) -> list[list[int]]:
    """The rows of every batch each rank's train loader yields in an exact epoch, in order (padding included)."""
    per_rank = []
    for counts in exact_slot_counts(total, world_size, workers):
        queues = [[batch_size] * (c // batch_size) + ([c % batch_size] if c % batch_size and not drop_last else [])
                  for c in counts]
        order: list[int] = []
        while any(queues):
            for q in queues:  # one round: every worker that still has a batch yields one
                if q:
                    order.append(q.pop(0))
        per_rank.append(order)
    n = max(len(r) for r in per_rank)
    return [r + [min(batch_size, total)] * (n - len(r)) for r in per_rank]


def check_equal_batches(cfg, world_size: int, manifest: dict) -> None:
    """ConfigError when contrastive training on `world_size` ranks could meet batches of unequal rows."""
    from fashiontune.tasks.config import TaskName

    d = cfg.data
    if world_size < 2 or cfg.task.name != TaskName.contrastive or d.epoch_mode != EpochMode.exact or d.drop_last:
        return
    total = int(manifest.get("splits", {}).get(d.train_split, {}).get("count", 0))
    if d.max_train_items:
        total = min(total, d.max_train_items)  # the subset the loader reads (data/subset.py)
    if total == 0:
        return  # the loader reports an empty split with its own message
    workers = plan_workers(d.workers)  # the loader's own count (data.workers=auto: from this rank's CPUs)
    sizes = rank_batch_sizes(total, world_size, workers, d.batch_size, drop_last=False)
    for r, rows in enumerate(sizes[1:], start=1):
        for step, (a, b) in enumerate(zip(sizes[0], rows)):
            if a != b:
                raise ConfigError(
                    f"task.name=contrastive on {world_size} ranks: ClipLoss all-gathers features, so every rank's "
                    f"batch needs the same rows at every step, but data.drop_last=false over {total} "
                    f"{d.train_split} samples ({world_size} ranks x {workers} workers, data.batch_size={d.batch_size}) "
                    f"gives rank 0 a batch of {a} and rank {r} one of {b} (batch {step + 1} of "
                    f"{len(rows)} in the epoch). Set data.drop_last=true (drops up to batch_size-1 "
                    "samples per worker and epoch) or data.epoch_mode=resampled.")
