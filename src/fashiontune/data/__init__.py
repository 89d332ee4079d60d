"""Streaming data pipeline over WebDataset shards (format: shards/README.md).

    from fashiontune.data import DataConfig, make_loader, measure_loader_throughput
    train = make_loader(cfg.data, train=True, transform=loaded.preprocess_train,
                        tokenizer=loaded.tokenizer if task.needs_text else None, fields=task.fields,
                        rank=accelerator.process_index, world_size=accelerator.num_processes)
    val = make_loader(cfg.data, train=False, transform=loaded.preprocess_val, ...)

Batches (the contract between the loader and the tasks, after `to_device(batch, device)`):
    "image" float B x 3 x H x W (H, W from the transform), "text" LongTensor B x L (only with a tokenizer),
    "labels" {field: LongTensor B (-1 = missing/unknown) | FloatTensor B x V multi-hot}, "key", "group_id",
    plus "caption" list[str] (the raw text) and "valid" BoolTensor B (False only in padding batches).
With `data.uint8_batches` (default) and a transform ending in ToTensor, Normalize (every open_clip one), the
loader's own batches hold the uint8 "image" ToTensor would have divided, plus "image_norm" (mean, std);
to_device makes the normalised float image on the device, bit-identical to the float pipeline (images.py).

Resources (workers.py): `data.workers: auto` = the CPUs this rank may use (its affinity set, i.e. SLURM's
binding) - 1, capped at 12; `data.pin_memory: auto` = on when CUDA is there; `data.persistent_workers` keeps
one set of worker processes for every epoch, resume and validation pass of a loader (the stream reads its
epoch and resume offsets from shared memory at the start of each pass, so the batches are those of fresh
workers). One pass at a time per loader.

Split. The loader splits itself by (rank, world_size) and by DataLoader worker; don't `accelerator.prepare` it.

Epochs (`data.epoch_mode`):
  exact      every sample of the split exactly once per epoch over all ranks x workers. The split is cut at
             sample level into contiguous ranges, one per (rank, worker) (plan.py), so it works with fewer or
             uneven shards than ranks x workers. Ranks can differ by one sample, hence possibly by a batch:
             with `even_batches` (default) every rank yields exactly len(loader) batches and the short ranks end
             with padding batches whose "valid" mask is all False (the first samples of the split again): eval
             drops them via the mask; training may treat them as ordinary samples (a handful of repeats, as
             accelerate's even_batches does) or scale their loss by 0. `loader.rank_batches` lists real batches
             per rank. A slot reads only the shards its range overlaps; with more slots than shards a
             shard is shared, and each sharer reads (without decoding) the part before its range: at most
             about (slots / shards) / 2 times the split's bytes per epoch. Validation loaders are always exact and unshuffled. Partial last batches exist (one per
             worker) unless `drop_last` (then up to batch-1 samples per worker are skipped; all-gathers that
             need equal batch sizes across ranks, e.g. ClipLoss, want drop_last or resampled mode).
  resampled  shards drawn with replacement (weighted by sample count), seeded per (seed, epoch, rank, worker);
             every rank yields ceil(samples_per_epoch / (world_size * batch)) full batches. Needed for
             class-balanced sampling (`data.balance_field`, balance.py).

Shuffling: shard order seeded by (seed, epoch), sample buffer per worker seeded by (seed, epoch, rank, worker):
the same seed (and world size, workers, batch size) gives the same stream; another epoch another order. Call `loader.set_epoch(epoch)` each epoch.

Augmentation: training transforms run with torch's and Python's RNGs seeded per (seed, epoch, sample key) and
restored afterwards, so a sample gets the same crop whatever the rank/worker layout or a resume, and reading
in the training process (workers=0) never moves the training RNG (nor does the DataLoader: own generator).

Throughput: `measure_loader_throughput(loader)` (samples/s of the loader alone, for bench/train.py), or from a
shell `python -m fashiontune.data SHARDS --model ft-tiny-vit --workers 0 2 [batch_size=64 ...]`.

Resume: the position is (epoch, batches of that epoch already yielded).
    state = loader.position()              # save with the checkpoint: {"epoch", "batches", "plan"}, a used-up
                                           # epoch as the next one's start (state_dict() keeps it as is)
    loader.load_state_dict(state)          # on resume
    for epoch in range(loader.epoch, n_epochs):
        loader.set_epoch(epoch)            # keeps the loaded position when epoch == the saved one
        for batch in loader: ...           # continues with exactly the batch the interrupted run would have read
Skipped batches are not decoded (only their tar bytes are read). The position is valid only for the same data
config, world size and workers (else load_state_dict raises; strict=False restarts the epoch instead).
"""

from fashiontune.data.balance import ClassBalancer
from fashiontune.data.config import DataConfig, EpochMode
from fashiontune.data.labels import MISSING, LabelEncoder, build_encoders
from fashiontune.data.loader import ShardLoader, make_loader, to_device
from fashiontune.data.manifest import ManifestError, ShardInfo, read_manifest, split_shards
from fashiontune.data.throughput import measure_loader_throughput

__all__ = [
    "ClassBalancer", "DataConfig", "EpochMode", "LabelEncoder", "MISSING", "ManifestError", "ShardInfo",
    "ShardLoader", "build_encoders", "make_loader", "measure_loader_throughput", "read_manifest",
    "split_shards", "to_device",
]
