"""`make_loader`: one rank's DataLoader over a shard split, with exact or resampled epochs and a resumable position.

The loader splits data itself (rank/world_size passed in, workers from the config): do NOT hand it to
`accelerator.prepare` (that would shard it a second time); move batches to the device in the loop.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from fashiontune.data.balance import ClassBalancer
from fashiontune.data.config import DataConfig, EpochMode
from fashiontune.data.images import ImageNorm, split_transform
from fashiontune.data.labels import build_encoders
from fashiontune.data.manifest import ManifestError, read_manifest, split_shards
from fashiontune.data.plan import exact_worker_batches, resampled_worker_batches, round_robin_position
from fashiontune.data.samples import iter_shard
from fashiontune.data.stream import Collator, ShardStream, StreamPosition, draft_size, sample_seed
from fashiontune.data.subset import subset_shards
from fashiontune.data.workers import plan_workers, resolve_pin_memory, resolve_workers

log = logging.getLogger(__name__)


class ShardLoader:
    """Iterate for one epoch; `len()` batches on every rank (when even_batches); resumable via state_dict."""

    def __init__(
        self,
        cfg: DataConfig,
        *,
        split: str,
        train: bool,
        transform: Callable,
        tokenizer: Callable | None = None,
        fields: Sequence[str] | None = None,
        rank: int = 0,
        world_size: int = 1,
        manifest: dict | None = None,
    ) -> None:
        cfg.validate()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.cfg, self.split, self.train, self.rank, self.world_size = cfg, split, train, rank, world_size
        self.manifest = manifest if manifest is not None else read_manifest(cfg.shards)
        self.shards = split_shards(self.manifest, split, cfg.shards)
        if train and cfg.max_train_items:
            self.shards = subset_shards(self.shards, cfg.max_train_items, cfg.seed, cfg.subset_field, self.manifest)
        self.total = sum(s.count for s in self.shards)
        if self.total == 0:
            raise ManifestError(f"{Path(cfg.shards) / 'manifest.json'}: split {split!r} has no samples.")
        # Validation is always an exact, unshuffled pass with every sample kept.
        self.mode = cfg.epoch_mode if train else EpochMode.exact
        self.batch_size = cfg.batch_size if train else (cfg.val_batch_size or cfg.batch_size)
        self.num_workers = resolve_workers(cfg.workers)  # DataLoader processes ("auto": from the allocation)
        self.workers = plan_workers(cfg.workers)  # the plan's worker slots: num_workers=0 reads one in-process
        self.encoders = build_encoders(self.manifest, fields or cfg.label_fields)
        # Draft decoding only for training: validation decodes in full, like the eval job, so metrics agree.
        draft = draft_size(transform) if cfg.jpeg_draft and train else None
        worker_transform, norm = _ship(transform, cfg.uint8_batches)
        self.collate = Collator(worker_transform, self.encoders, tokenizer, draft, norm)
        self.balancer = (
            ClassBalancer(self.manifest, cfg.balance_field, split, cfg.balance_power)
            if train and cfg.balance_field else None
        )
        if self.mode == EpochMode.exact:
            per_worker = exact_worker_batches(self.total, world_size, self.workers, self.batch_size, cfg.drop_last and train)
            self.worker_batches = per_worker[rank]
            self.rank_batches = [sum(r) for r in per_worker]
        else:
            self.worker_batches = resampled_worker_batches(
                cfg.samples_per_epoch or self.total, world_size, self.workers, self.batch_size
            )
            self.rank_batches = [sum(self.worker_batches)] * world_size
        # Uneven exact epochs: pad short ranks with batches marked valid=False so all ranks step together.
        self.num_batches = max(self.rank_batches) if cfg.even_batches else self.rank_batches[rank]
        self.epoch, self._skip, self._consumed = 0, 0, 0
        self._pad: dict | None = None
        self._position = StreamPosition(self.workers)
        self._dl: DataLoader | None = None  # built on first use; with persistent workers, kept for every pass

    # -- position -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration reads; a position loaded for this same epoch is kept."""
        if epoch != self.epoch:
            self.epoch, self._skip = epoch, 0

    def _plan_key(self) -> dict:
        key = {"split": self.split, "mode": self.mode.value, "world_size": self.world_size, "workers": self.workers,
               "batch_size": self.batch_size, "seed": self.cfg.seed, "samples": self.total}
        if self.train and self.cfg.views_per_group:  # another order (absent when off: older checkpoints still match)
            key["views_per_group"] = self.cfg.views_per_group
        return key

    def state_dict(self) -> dict:
        """{"epoch", "batches"}: batches of this epoch already yielded (== len(self) when the epoch is done)."""
        return {"epoch": self.epoch, "batches": self._consumed, "plan": self._plan_key()}

    def position(self) -> dict:
        """Where the next batch comes from, for a checkpoint: state_dict() with a used-up epoch turned into the
        start of the next one ({"epoch": e + 1, "batches": 0}). The one place that normalises it."""
        state = self.state_dict()
        if state["batches"] >= self.num_batches:
            state.update(epoch=self.epoch + 1, batches=0)
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Resume: the next iteration of epoch state["epoch"] starts after state["batches"] batches."""
        if state.get("plan", self._plan_key()) != self._plan_key():
            if strict:
                raise ValueError(
                    f"data position was saved for {state['plan']} but this loader is {self._plan_key()}; the same "
                    "batch sequence cannot be reproduced. Resume with the same data config and world size (with "
                    "data.workers=auto the count comes from the CPUs; pin it with data.workers=N), or "
                    "pass strict=False to restart the saved epoch from its beginning."
                )
            self.epoch, self._skip = int(state["epoch"]), 0
            return
        if not 0 <= int(state["batches"]) <= self.num_batches:
            raise ValueError(f"data position {state} is outside an epoch of {self.num_batches} batches")
        self.epoch, self._skip = int(state["epoch"]), int(state["batches"])

    # -- iteration ------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        """One DataLoader for the loader's lifetime. Its stream reads (epoch, resume offsets) from the shared
        position at the start of each pass, so persistent workers serve every epoch, resume and validation pass
        without being forked again, and yield the same batches as fresh ones (tests/test_data_persistent.py)."""
        if self._dl is None:
            stream = ShardStream(
                shards=self.shards, collate=self.collate, mode=self.mode, batch_size=self.batch_size,
                rank=self.rank, world_size=self.world_size, workers=self.workers,
                worker_batches=self.worker_batches, position=self._position, seed=self.cfg.seed,
                shuffle_buffer=self.cfg.shuffle_buffer if self.train else 0,
                shuffle_shards=self.cfg.shuffle_shards and self.train, balancer=self.balancer,
                views_per_group=self.cfg.views_per_group if self.train else 0,
                seeded_augment=self.train,
            )
            n = self.num_workers
            self._dl = DataLoader(
                stream, batch_size=None, num_workers=n, pin_memory=resolve_pin_memory(self.cfg.pin_memory),
                prefetch_factor=self.cfg.prefetch_factor if n else None,
                persistent_workers=bool(n and self.cfg.persistent_workers),
                # its own generator: DataLoader would otherwise draw worker seeds from the training RNG (the data
                # does not depend on it: shuffles and augmentations are seeded per epoch/worker/sample)
                generator=torch.Generator().manual_seed(hash((self.cfg.seed, self.rank)) % 2**62),
            )
        return self._dl

    def padding_batch(self) -> dict:
        """The first samples of the split (manifest order; of its subset with data.max_train_items), marked
        valid=False: what short ranks repeat."""
        if self._pad is None:
            raw = itertools.islice(itertools.chain.from_iterable(iter_shard(s) for s in self.shards), self.batch_size)
            self._pad = self.collate(
                [self.collate.decode(s, sample_seed(self.cfg.seed, -1, s["__key__"])) for s in raw], valid=False
            )
        return self._pad

    def __iter__(self) -> Iterator[dict]:
        skip, self._skip = self._skip, 0
        self._consumed = skip
        real = self.rank_batches[self.rank]
        if skip < real:
            taken, nxt = round_robin_position(self.worker_batches, skip)
            self._position.set(self.epoch, nxt, taken)  # before iter(): the workers read it as their pass starts
            for batch in self._loader():
                self._consumed += 1
                yield batch
            if self._consumed != real:  # a silent shortfall would hang DDP at the next collective
                raise RuntimeError(
                    f"rank {self.rank} read {self._consumed} batches of split {self.split!r} but planned {real}; "
                    f"check the shards in {self.cfg.shards} with `fashiontune shards verify`."
                )
        for _ in range(self.num_batches - max(real, skip)):
            self._consumed += 1
            yield self.padding_batch()

    @property
    def rank_samples(self) -> int:
        """Samples this rank yields per epoch (real ones, without padding)."""
        if self.mode == EpochMode.resampled:
            return self.rank_batches[self.rank] * self.batch_size
        per = self.total * (self.rank + 1) // self.world_size - self.total * self.rank // self.world_size
        return per if not (self.cfg.drop_last and self.train) else self.rank_batches[self.rank] * self.batch_size


def make_loader(
    cfg: DataConfig,
    split: str | None = None,
    *,
    train: bool,
    transform: Callable,
    tokenizer: Callable | None = None,
    fields: Sequence[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    manifest: dict | None = None,
) -> ShardLoader:
    """A loader for `split` (default: cfg.train_split if train else cfg.val_split) at the start of epoch 0;
    `load_state_dict` positions it elsewhere."""
    return ShardLoader(
        cfg, split=split or (cfg.train_split if train else cfg.val_split), train=train, transform=transform,
        tokenizer=tokenizer, fields=fields, rank=rank, world_size=world_size, manifest=manifest,
    )


def _ship(transform: Callable, uint8: bool) -> tuple[Callable, ImageNorm | None]:
    """(worker transform, device normalisation): uint8 batches when the transform allows it (data/images.py)."""
    if not uint8:
        return transform, None
    worker, norm, why = split_transform(transform)
    if norm is None:
        log.warning("data loader ships float32 images (4x the bytes of uint8): %s", why)
    return worker, norm


def to_device(batch: dict, device: torch.device | str, non_blocking: bool = True) -> dict:
    """Move the tensors of a batch (including the labels dict) to `device`; lists stay as they are. A uint8
    "image" (data.uint8_batches) is turned into the normalised float32 image there: the batch contract after
    this call is the same either way."""
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=non_blocking)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        return x
    norm = batch.get("image_norm")
    out = move({k: v for k, v in batch.items() if k != "image_norm"})
    if norm is not None:
        out["image"] = norm.apply(batch["image"], device, non_blocking)
    return out
