"""DataConfig: how the training/validation streams are read from a shard directory."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union

from fashiontune.config import ConfigError


class EpochMode(str, enum.Enum):
    # exact: every sample of the split once per epoch across all ranks x workers (split at sample level).
    exact = "exact"
    # resampled: shards drawn with replacement; a fixed number of batches per rank per epoch (multi-node).
    resampled = "resampled"


@dataclass
class DataConfig:
    shards: str = "shards/synthetic"  # directory holding manifest.json (+ train/ val/ test/ shards)
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 32  # per rank (micro-batch); the global batch is batch_size x world_size x accumulation
    val_batch_size: int = 0  # 0 = batch_size
    # DataLoader worker processes per rank: auto (or -1) = the CPUs this rank may use - 1, capped at 12
    # (data/workers.py); 0 = read in the training process
    workers: Union[int, str] = "auto"
    prefetch_factor: int = 2
    pin_memory: Union[bool, str] = "auto"  # page-locked batches (async host-to-device copies); auto = when CUDA is there
    # keep the worker processes between epochs and validation passes (no re-fork, no re-import, warm caches)
    persistent_workers: bool = True
    # ship uint8 images from the workers and normalise on the device in to_device (4x fewer bytes through the
    # queues, pinning and PCIe; bit-identical); transforms not ending in ToTensor, Normalize ship floats
    uint8_batches: bool = True
    epoch_mode: EpochMode = EpochMode.exact  # validation always reads exactly, unshuffled
    samples_per_epoch: int = 0  # resampled: samples per epoch over ALL ranks (0 = the split's count)
    shuffle_buffer: int = 1000  # per worker, holds still-encoded samples (so it is cheap)
    shuffle_shards: bool = True
    # Views-per-product batching (data/groups.py), training only: 0 = off (plain shuffle buffer); K >= 1 =
    # each batch takes a product's (group_id's) views in one run of up to K and holds at most one run per
    # product, reordered within shuffle_buffer items. K > 1 puts same-product views in one batch (what
    # task.contrastive.positives=group is for); K = 1 keeps a product's views in different batches.
    # Keep batch_size a multiple of K so runs stay whole.
    views_per_group: int = 0
    seed: int = 0
    drop_last: bool = False  # drop each worker's partial last batch (exact mode; resampled batches are full)
    even_batches: bool = True  # exact mode: pad short ranks so every rank yields len(loader) batches (DDP)
    label_fields: list[str] = field(default_factory=list)  # [] = every field of the manifest (or the task's)
    balance_field: str = ""  # "" = off; else a label field to class-balance (needs epoch_mode=resampled)
    balance_power: float = 1.0  # acceptance ~ freq^-power: 1 = uniform classes, 0.5 = sqrt-balanced
    # Train on a deterministic subset of the train split (data/subset.py): 0 = all of it. Smaller subsets are
    # contained in larger ones; subset_field class-balances the choice over that label field.
    max_train_items: int = 0
    subset_field: str = ""
    # Training: decode JPEGs at 1/2..1/8 scale when shards are stored >= 2x larger than the transform needs
    # (PIL draft mode; the size comes from the transform's first resize/crop, so the crop keeps its resolution;
    # 2-4x faster for 64 px models on 256 px shards). Validation always decodes in full, like the eval job.
    jpeg_draft: bool = True

    def validate(self, source: str = "data config") -> "DataConfig":
        """Cross-field checks the type system cannot do; raise ConfigError naming the key and the fix."""
        if self.batch_size < 1:
            raise ConfigError(f"{source}: data.batch_size={self.batch_size} must be >= 1.")
        if self.val_batch_size < 0:
            raise ConfigError(f"{source}: data.val_batch_size={self.val_batch_size} must be >= 0 (0 = batch_size).")
        from fashiontune.data.workers import resolve_pin_memory, resolve_workers

        resolve_workers(self.workers, f"{source}: data.workers", environ={})  # raises on a bad value
        resolve_pin_memory(self.pin_memory, f"{source}: data.pin_memory")
        if self.samples_per_epoch < 0:
            raise ConfigError(f"{source}: data.samples_per_epoch={self.samples_per_epoch} must be >= 0.")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"{source}: data.shuffle_buffer={self.shuffle_buffer} must be >= 0 (0/1 = off).")
        if self.views_per_group < 0:
            raise ConfigError(
                f"{source}: data.views_per_group={self.views_per_group} must be >= 0 (0 = off, K = up to K views "
                "of a product per batch, in one run)."
            )
        if self.views_per_group > self.batch_size:
            raise ConfigError(
                f"{source}: data.views_per_group={self.views_per_group} is larger than data.batch_size="
                f"{self.batch_size}; a run of views must fit one batch: lower it or raise the batch size."
            )
        if self.balance_field and self.epoch_mode != EpochMode.resampled:
            raise ConfigError(
                f"{source}: data.balance_field={self.balance_field!r} needs data.epoch_mode=resampled "
                "(balanced sampling drops and repeats samples, so an exact epoch is impossible); "
                "set data.epoch_mode=resampled or data.balance_field=''."
            )
        if not self.train_split:
            raise ConfigError(f"{source}: data.train_split is empty; name a split of the manifest (e.g. train).")
        if self.workers != 0 and self.prefetch_factor < 1:
            raise ConfigError(f"{source}: data.prefetch_factor={self.prefetch_factor} must be >= 1 with data.workers > 0.")
        if self.max_train_items < 0:
            raise ConfigError(f"{source}: data.max_train_items={self.max_train_items} must be >= 0 (0 = the whole split).")
        if self.balance_power < 0:
            raise ConfigError(f"{source}: data.balance_power={self.balance_power} must be >= 0.")
        return self
