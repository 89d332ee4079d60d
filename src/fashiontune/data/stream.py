"""The per-worker sample stream: raw tar samples -> (balance) -> shuffle -> skip -> decode -> batch.

Shuffling, balancing and resume-skipping all happen on still-encoded samples, so a resumed loader reproduces
the uninterrupted stream exactly while paying only tar reading (not JPEG decoding) for the skipped part.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import shuffle as wds_shuffle

from fashiontune.data.balance import ClassBalancer
from fashiontune.data.config import EpochMode
from fashiontune.data.groups import group_batched
from fashiontune.data.images import ImageNorm
from fashiontune.data.labels import LabelEncoder
from fashiontune.data.manifest import ShardInfo
from fashiontune.data.plan import rng_for, shard_order, slot_range
from fashiontune.data.samples import decode_rgb, iter_range, iter_shard, sample_caption, sample_meta


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """Augmentation seed of one sample: the same crop/flip whatever the rank/worker layout or a resume."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest(), "little")


def seeded(seed: int, fn: Callable, *args: Any) -> Any:
    """fn(*args) with torch's and Python's global RNGs seeded, then restored (with workers=0 this runs in the
    training process, whose RNG streams - dropout, init - must not be disturbed)."""
    torch_state, py_state = torch.random.get_rng_state(), random.getstate()
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would also reseed CUDA
    random.seed(seed)
    try:
        return fn(*args)
    finally:
        torch.random.set_rng_state(torch_state)
        random.setstate(py_state)


def draft_size(transform: Callable) -> int | None:
    """The smallest decoded side that loses nothing for `transform`'s first geometric step, or None if unknown.

    JPEG decoding at 1/2, 1/4 or 1/8 scale (PIL's draft mode) is much cheaper when shards are stored larger
    than the model's input. Only scale-free first steps qualify. A random-resized crop keeps at least `scale[0]` of the area, so the crop needs
    size / sqrt(scale[0]) source pixels a side to stay sharp; a resize needs its target size."""
    first = transform.transforms[0] if isinstance(transform, T.Compose) and transform.transforms else transform
    if isinstance(first, T.RandomResizedCrop):
        return math.ceil(max(first.size) / math.sqrt(max(first.scale[0], 1e-3)))
    if isinstance(first, T.Resize):  # (not a plain crop: on a smaller decode it would cover more of the picture)
        size = first.size
        return size if isinstance(size, int) else max(size)
    return None


@dataclass
class Collator:
    """Decoded samples -> the training batch dict (`fashiontune.data` docstring; plus "caption" strings and a "valid" mask)."""

    transform: Callable[[Image.Image], torch.Tensor]
    encoders: dict[str, LabelEncoder]
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None
    draft: int | None = None  # decode JPEGs at reduced scale when they are >= 2x this size (see draft_size)
    # uint8 batches: `transform` gives uint8 (images.split_transform) and to_device applies this on the device
    norm: ImageNorm | None = None

    def decode(self, sample: dict, aug_seed: int | None = None) -> dict:
        meta = sample_meta(sample)
        rgb = decode_rgb(sample, self.draft)
        image = self.transform(rgb) if aug_seed is None else seeded(aug_seed, self.transform, rgb)
        return {
            "image": image,
            "caption": sample_caption(sample),
            "labels": meta.get("labels", {}),
            "key": sample["__key__"],
            "group_id": str(meta.get("group_id", sample["__key__"])),
            "index": sample.get("__index__", -1),
        }

    def __call__(self, items: Sequence[dict], valid: bool = True) -> dict[str, Any]:
        captions = [it["caption"] for it in items]
        batch = {
            "image": torch.stack([it["image"] for it in items]),
            "labels": {f: enc.encode([it["labels"].get(f) for it in items]) for f, enc in self.encoders.items()},
            "key": [it["key"] for it in items],
            "group_id": [it["group_id"] for it in items],
            "index": [it["index"] for it in items],  # exact epochs: the sample's position (evaluation orders by it)
            "caption": captions,
            "valid": torch.full((len(items),), valid, dtype=torch.bool),
        }
        if self.norm is not None:
            batch["image_norm"] = self.norm  # uint8 "image": to_device normalises it (data/images.py)
        if self.tokenizer is not None:
            batch["text"] = self.tokenizer(captions)
        return batch


def _group_of(sample: dict) -> str:
    """A raw sample's product: its json's group_id (as Collator.decode reads it), else its key."""
    return str(sample_meta(sample).get("group_id", sample["__key__"]))


class StreamPosition:
    """Where the next pass of a ShardStream starts: (epoch, rotation, batches each logical worker skips).

    Persistent DataLoader workers keep the dataset object they were started with and call iter() on it again
    for each pass, so the parent cannot hand them a new stream: it writes the position into this shared-memory
    tensor before iter(DataLoader), and each worker reads it when its pass starts."""

    def __init__(self, workers: int) -> None:
        self.tensor = torch.zeros(2 + workers, dtype=torch.int64).share_memory_()

    def set(self, epoch: int, rotation: int, skips: Sequence[int]) -> None:
        self.tensor.copy_(torch.tensor([epoch, rotation, *skips], dtype=torch.int64))

    def get(self) -> tuple[int, int, list[int]]:
        epoch, rotation, *skips = self.tensor.tolist()
        return epoch, rotation, skips


@dataclass
class ShardStream(IterableDataset):
    """One rank's share of one epoch; each DataLoader worker reads its own slot (see plan.py), from the epoch
    and resume offsets `position` holds when its pass starts."""

    shards: list[ShardInfo]
    collate: Collator
    mode: EpochMode
    batch_size: int
    rank: int
    world_size: int
    workers: int  # logical workers per rank (1 when the DataLoader has num_workers=0)
    worker_batches: list[int]  # batches each logical worker yields per epoch
    # epoch; physical worker j plays logical worker (j + rotation) % workers; batches each skips (resume)
    position: StreamPosition
    seed: int = 0
    shuffle_buffer: int = 0
    shuffle_shards: bool = False
    views_per_group: int = 0  # > 0: batches of runs of up to K views of a product (groups.py), not a plain shuffle
    balancer: ClassBalancer | None = None
    seeded_augment: bool = False  # seed random transforms per (seed, epoch, key): resumes reproduce augmentations

    def _exact_samples(self, worker: int, epoch: int) -> Iterator[dict]:
        order = [self.shards[i] for i in shard_order(len(self.shards), self.seed, epoch, self.shuffle_shards)]
        total = sum(s.count for s in order)
        lo, hi = slot_range(total, self.rank * self.workers + worker, self.world_size * self.workers)
        for pos, sample in iter_range(order, lo, hi):
            sample["__index__"] = pos  # position in this epoch's shard order (validation: the manifest's order)
            yield sample

    def _resampled_samples(self, worker: int, epoch: int) -> Iterator[dict]:
        rng = rng_for("resample", self.seed, epoch, self.rank, worker)
        weights = [s.count for s in self.shards]  # a sample, not a shard, is equally likely
        while True:
            shard = rng.choices(self.shards, weights)[0]
            yield from iter_shard(shard)

    def _balanced(self, samples: Iterator[dict], worker: int, epoch: int) -> Iterator[dict]:
        rng = rng_for("balance", self.seed, epoch, self.rank, worker)
        for s in samples:
            if rng.random() < self.balancer.probability(sample_meta(s).get("labels", {})):
                yield s

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical, n_physical = (info.id, info.num_workers) if info else (0, 1)
        if n_physical != self.workers:
            raise RuntimeError(f"ShardStream planned for {self.workers} workers but runs under {n_physical}")
        epoch, rotation, skips = self.position.get()  # what the parent set before this pass
        worker = (physical + rotation) % self.workers
        n, skip = self.worker_batches[worker], skips[worker]
        if skip >= n:
            return
        raw = self._exact_samples(worker, epoch) if self.mode == EpochMode.exact else self._resampled_samples(worker, epoch)
        if self.balancer is not None:  # before the shuffle buffer: rejected samples never occupy it
            raw = self._balanced(raw, worker, epoch)
        if self.views_per_group > 0:
            rng = rng_for("groups", self.seed, epoch, self.rank, worker)
            raw = group_batched(raw, self.views_per_group, self.batch_size, self.shuffle_buffer, rng, _group_of)
        elif self.shuffle_buffer > 1:
            rng = rng_for("samples", self.seed, epoch, self.rank, worker)
            raw = wds_shuffle(self.shuffle_buffer, min(100, self.shuffle_buffer), rng=rng)(iter(raw))
        # Exact: the slot's range ends the stream (the last batch may be partial unless dropped: n says so).
        # Resampled: the stream is endless and n full batches are taken.
        first = skip * self.batch_size
        raw = itertools.islice(raw, first, n * self.batch_size)
        items: list[dict] = []
        for pos, sample in enumerate(raw, first):
            aug = None
            if self.seeded_augment:  # exact: by key (layout-free); resampled: by draw, as a key may recur
                tag = sample["__key__"] if self.mode == EpochMode.exact else f"{self.rank}:{worker}:{pos}"
                aug = sample_seed(self.seed, epoch, tag)
            items.append(self.collate.decode(sample, aug))
            if len(items) == self.batch_size:
                yield self.collate(items)
                items = []
        if items:  # exact mode's partial last batch (resampled takes whole batches)
            yield self.collate(items)
