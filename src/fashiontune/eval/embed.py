"""Embed every item of a split on all ranks, gather to the scoring rank (0), cache on disk.

Partition: the split's items, in manifest shard order and file order within a shard, are cut into batches of
`batch_size` at GLOBAL positions 0, B, 2B, ...; rank r embeds the contiguous run of batches
[r*nb/W, (r+1)*nb/W). Every item lands in exactly one rank (any world size, any count), gathering in rank
order restores the global order, and each batch holds the same items whatever the world size, so one process
and several produce bit-identical embeddings. Within a rank, DataLoader worker w decodes a contiguous run of
the rank's batches (same rule again) and the rank puts the interleaved batches back in order by item index.
A rank or worker opens only the shards that hold its items.

Keeping the GPU busy: decode workers sized from the allocation ship uint8 images (data/images.py) into pinned
memory, copied without blocking; features stay on the device until the rank's range is done (one transfer at
the end, no sync per batch); only rank 0, which scores, receives the other ranks' parts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fashiontune.data.images import ImageNorm, split_transform
from fashiontune.data.manifest import ShardInfo, split_shards
from fashiontune.data.samples import ShardDataError, decode_rgb, iter_range, sample_caption, sample_meta
from fashiontune.models.precision import Precision
from fashiontune.models.prompts import label_text, prompt_makers

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    """A split's items in global order with their (L2-normalised) embeddings."""

    keys: list[str]
    group_ids: list[str]
    captions: list[str]
    labels: list[dict]  # raw {field: value | [values]} per item
    image: np.ndarray  # N x d float32, raw image features (what exported heads take); normalise for cosine
    text: np.ndarray | None  # N x d float32, None for image-only models
    prompts: dict[str, np.ndarray] = field(default_factory=dict)  # field -> V x d label-prompt embeddings

    def __len__(self) -> int:
        return len(self.keys)


def split_names(manifest: dict, split: str) -> list[str]:
    """`data.split` as split names: one name, several ("val,test"), or `all` = every split of the manifest
    (the whole corpus: the leaderboard's documents are every item of a dataset)."""
    if split.strip() == "all":
        return list(manifest.get("splits", {}))
    return [s.strip() for s in split.split(",") if s.strip()]


def eval_shards(manifest: dict, shards_dir: Path, split: str) -> list[ShardInfo]:
    """The shards of data.split's splits, each in manifest order, one split after the other (the training loader's
    list, with the eval config's key): the global item order the eval embeds, gathers and scores in."""
    return [sh for name in split_names(manifest, split) for sh in split_shards(manifest, name, shards_dir, key="data.split")]


def split_count(manifest: dict, split: str) -> int:
    """Items of data.split's splits, as manifest.json counts them (what the embedding must reach)."""
    return sum(int(manifest["splits"][name].get("count", 0)) for name in split_names(manifest, split))


def batch_range(total: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) item range of `rank`: a contiguous run of globally aligned batches."""
    nb = -(-total // batch_size)
    b0, b1 = rank * nb // world, (rank + 1) * nb // world
    return min(total, b0 * batch_size), min(total, b1 * batch_size)


def parse_sample(sample: dict) -> tuple[str, str, str, dict]:
    key, meta = sample["__key__"], sample_meta(sample)
    return key, str(meta.get("group_id", key)), sample_caption(sample), meta.get("labels", {}) or {}


class RangeBatches(IterableDataset):
    """Decoded, collated batches of items [start, end), batches aligned to global multiples of batch_size."""

    def __init__(self, shards, start, end, batch_size, transform: Callable, tokenizer: Callable | None):
        self.shards, self.start, self.end, self.bs = shards, start, end, batch_size
        self.transform, self.tokenizer = transform, tokenizer

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        # worker w: a contiguous run of this rank's batches, so it opens only the shards that hold them
        w0, w1 = batch_range(self.end - self.start, self.bs, wid, nw)
        items: list = []
        for g, sample in iter_range(self.shards, self.start + w0, self.start + w1):
            b = (g - self.start) // self.bs
            key, group, caption, labels = parse_sample(sample)
            items.append((g, key, group, caption, labels, self.transform(decode_rgb(sample))))
            if g + 1 == min(self.end, self.start + (b + 1) * self.bs):
                yield self._collate(items)
                items = []
        if items:  # only reachable when the shards end early (caught by iter_range's count check)
            yield self._collate(items)

    def _collate(self, items):
        idx, keys, groups, caps, labels, images = zip(*items)
        out = {"index": list(idx), "key": list(keys), "group_id": list(groups), "caption": list(caps),
               "labels": list(labels), "image": torch.stack(images)}
        if self.tokenizer is not None:
            out["text"] = self.tokenizer(list(caps))
        return out


@torch.no_grad()
def embed_range(loaded, shards, start, end, batch_size, num_workers, device, precision, pin_memory=False,
                uint8: bool = True) -> dict:
    """Embed items [start, end) of the split on this rank. Image features stay raw (unnormalised, fp32): exported
    linear heads need them; scoring normalises. Text features are L2-normalised. `uint8=False` ships float
    images from the workers (bench/eval.py --embed compares)."""
    for_inference(loaded.model, device)
    has_text = bool(getattr(loaded, "has_text", loaded.tokenizer is not None))
    worker_transform, norm, why = split_transform(loaded.preprocess_val) if uint8 else (loaded.preprocess_val, None, "")
    if norm is None and why:
        log.warning("eval decode workers ship float32 images (4x the bytes of uint8): %s", why)
    ds = RangeBatches(shards, start, end, batch_size, worker_transform, loaded.tokenizer if has_text else None)
    dl = DataLoader(ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False)
    out = {"index": [], "key": [], "group_id": [], "caption": [], "labels": [], "image": [], "text": []}
    for batch in dl:
        for k in ("index", "key", "group_id", "caption", "labels"):
            out[k].extend(batch[k])
        img, txt = _embed_batch(loaded, batch, device, precision, norm, has_text)
        out["image"].append(img)  # on the device: no host sync per batch
        if txt is not None:
            out["text"].append(txt)
    d = _out_dim(loaded)
    # one device-to-host transfer per tower for the whole range
    out["image"] = torch.cat(out["image"]).cpu() if out["image"] else torch.empty(0, d)
    out["text"] = (torch.cat(out["text"]).cpu() if out["text"] else torch.empty(0, d)) if has_text else None
    # workers' batches arrive interleaved: restore the split order
    order = sorted(range(len(out["index"])), key=out["index"].__getitem__)
    for k in ("index", "key", "group_id", "caption", "labels"):
        out[k] = [out[k][i] for i in order]
    idx = torch.tensor(order, dtype=torch.long)
    out["image"] = out["image"][idx] if len(order) else out["image"]
    if out["text"] is not None and len(order):
        out["text"] = out["text"][idx]
    if out["index"] != list(range(start, end)):
        raise ShardDataError(f"rank range {start}:{end}: read {len(out['index'])} items out of order or incomplete")
    return out


def _embed_batch(loaded, batch: dict, device, precision, norm: ImageNorm | None, has_text: bool):
    """(raw image features, normalised text features or None), fp32, left on `device`."""
    images = norm.apply(batch["image"], device) if norm is not None else batch["image"].to(device, non_blocking=True)
    with Precision(precision).autocast(device):
        img = _image_features(loaded, images)
        txt = loaded.model.encode_text(batch["text"].to(device, non_blocking=True)) if has_text else None
    return img.float(), (torch.nn.functional.normalize(txt.float(), dim=-1) if txt is not None else None)


def _image_features(loaded, images: torch.Tensor) -> torch.Tensor:
    model = loaded.model
    return model.encode_image(images) if hasattr(model, "encode_image") else model(images)


def _out_dim(loaded) -> int:
    try:
        return int(loaded.image_dim)
    except Exception:
        return 0


@torch.no_grad()
def embed_prompts(loaded, class_names: Sequence[str], templates: Sequence[str], device, precision) -> np.ndarray:
    """V x d label-prompt embeddings: open_clip's zero-shot classifier (mean of the normalised template
    embeddings, renormalised), with the training tasks' prompt dialect and label text (models/prompts.py)."""
    import open_clip

    if not class_names:
        return np.zeros((0, _out_dim(loaded)), np.float32)
    model = for_inference(loaded.model, device)
    names = [label_text(c) for c in class_names]
    with Precision(precision).autocast(device):
        w = open_clip.build_zero_shot_classifier(model, loaded.tokenizer, names, prompt_makers(templates),
                                                 device=device)
    return torch.nn.functional.normalize(w.T.float(), dim=-1).cpu().numpy()


# --------------------------------------------------------------------------- gather to the scoring rank
def gather_ranks(local: dict, state, counts: Sequence[int]) -> dict | None:
    """Every rank's part concatenated in rank order, on rank 0 only (None on the others: they do not score).
    `counts`: items per rank (batch_range's partition, known to every rank), for equal-shaped padded parts."""
    if state.num_processes == 1:
        return local
    import torch.distributed as dist

    main = state.process_index == 0
    meta = [None] * state.num_processes if main else None
    dist.gather_object({k: local[k] for k in ("index", "key", "group_id", "caption", "labels")}, meta, dst=0)
    merged = {k: [x for m in meta for x in m[k]] for k in meta[0]} if main else None
    for name in ("image", "text"):
        t = local[name]
        if t is None:
            if main:
                merged[name] = None
            continue
        dev = state.device if state.device.type == "cuda" else torch.device("cpu")  # NCCL gathers device tensors
        pad = torch.zeros(max(counts), t.shape[1], dtype=t.dtype, device=dev)
        pad[: t.shape[0]] = t.to(dev)
        parts = [torch.empty_like(pad) for _ in counts] if main else None
        dist.gather(pad, parts, dst=0)
        if main:
            merged[name] = torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu()
    return merged


# --------------------------------------------------------------------------- cache
CACHE_FILES = ("meta.json", "items.json", "image.npy")


def save_cache(corpus: Corpus, cache_dir: Path, fingerprint: dict) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache_dir / "image.npy", corpus.image)
    if corpus.text is not None:
        np.save(cache_dir / "text.npy", corpus.text)
    for f, arr in corpus.prompts.items():
        np.save(cache_dir / f"prompts.{f}.npy", arr)
    items = {"keys": corpus.keys, "group_ids": corpus.group_ids, "captions": corpus.captions,
             "labels": corpus.labels, "prompt_fields": sorted(corpus.prompts)}
    (cache_dir / "items.json").write_text(json.dumps(items))
    # meta.json last: its presence marks a complete cache
    (cache_dir / "meta.json").write_text(json.dumps(fingerprint, indent=2, sort_keys=True))


def cache_matches(cache_dir: Path, fingerprint: dict) -> tuple[bool, str]:
    """(True, "") when a complete cache made for this fingerprint exists, else (False, why not). Cheap: every
    rank can ask, only the scoring rank loads the arrays."""
    if not all((cache_dir / f).is_file() for f in CACHE_FILES):
        return False, "no complete cache"
    try:
        old = json.loads((cache_dir / "meta.json").read_text())
    except ValueError:  # a cache cut short by a full disk or a kill: embed again
        return False, "unreadable cache meta.json"
    new = json.loads(json.dumps(fingerprint, sort_keys=True))
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return False, f"cache made with different {', '.join(diff)}"
    return True, ""


def load_cache(cache_dir: Path, fingerprint: dict) -> tuple[Corpus | None, str]:
    """(corpus, "") when the cache matches the fingerprint, else (None, why not)."""
    ok, why = cache_matches(cache_dir, fingerprint)
    if not ok:
        return None, why
    items = json.loads((cache_dir / "items.json").read_text())
    text = cache_dir / "text.npy"
    return Corpus(
        keys=items["keys"], group_ids=items["group_ids"], captions=items["captions"], labels=items["labels"],
        image=np.load(cache_dir / "image.npy"), text=np.load(text) if text.is_file() else None,
        prompts={f: np.load(cache_dir / f"prompts.{f}.npy") for f in items["prompt_fields"]},
    ), ""


def for_inference(model: torch.nn.Module, device) -> torch.nn.Module:
    """The model on `device` in eval mode, touching it only when it is not already: `.to()` and `.eval()` walk
    every module, which costs more than the forward itself for a served tiny model's one-query batches."""
    if next(model.parameters()).device != torch.device(device):
        model = model.to(device)
    if model.training:
        model.eval()
    return model


@torch.no_grad()
def embed_images(loaded, images: Sequence, device, precision: str) -> np.ndarray:
    """N x d raw image features of PIL RGB images through embed_range's own transform and normalisation, so an
    uploaded copy of a catalogue image gets the features the index holds for it (serve's search and classify)."""
    for_inference(loaded.model, device)
    transform, norm, _ = split_transform(loaded.preprocess_val)
    batch = torch.stack([transform(im) for im in images])
    x = norm.apply(batch, device) if norm is not None else batch.to(device)
    with Precision(precision).autocast(device):
        return _image_features(loaded, x).float().cpu().numpy()
