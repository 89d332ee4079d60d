"""data.max_train_items: a deterministic subset of the train split (nested: a smaller one is inside a larger
one), optionally class-balanced (data.subset_field), split exactly over ranks, also in resampled epochs, and
read without the rest of the split (an epoch reads the subset's bytes only).
Cost: ~10 s (shards ~2 s, a few passes over 220 tiny items)."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from torchvision import transforms

from fashiontune.config import ConfigError
from fashiontune.data import DataConfig, make_loader, read_manifest, split_shards
from fashiontune.data import samples as shard_samples
from fashiontune.train.testing import build_tiny_shards

TINY = transforms.Compose([transforms.Resize(8), transforms.CenterCrop(8), transforms.ToTensor()])


@pytest.fixture(scope="module")
def kagl(tmp_path_factory) -> Path:
    return build_tiny_shards("kagl", tmp_path_factory.mktemp("kagl"), n=300)


def keys(shards: Path, rank: int = 0, world: int = 1, **kw) -> list[str]:
    cfg = DataConfig(shards=str(shards), batch_size=16, workers=0, shuffle_buffer=0, **kw)
    loader = make_loader(cfg, train=True, transform=TINY, fields=["subCategory"], rank=rank, world_size=world)
    out = [k for b in loader for k, ok in zip(b["key"], b.get("valid", [True] * len(b["key"]))) if ok]
    assert len(loader) == -(-len(out) // 16) or world > 1
    return out


def labels(shards: Path) -> dict[str, str]:
    out = {}
    for b in make_loader(DataConfig(shards=str(shards), batch_size=64, workers=0, shuffle_buffer=0), train=True,
                         transform=TINY, fields=["subCategory"]):
        vocab = json.loads((shards / "manifest.json").read_text())["labels"]["subCategory"]["vocab"]
        out.update({k: vocab[int(y)] for k, y in zip(b["key"], b["labels"]["subCategory"])})
    return out


def test_subset_is_deterministic_nested_and_split_over_ranks(kagl):
    small, large = keys(kagl, max_train_items=20), keys(kagl, max_train_items=50)
    assert len(set(small)) == len(small) == 20 and len(set(large)) == len(large) == 50
    assert set(small) <= set(large) and keys(kagl, max_train_items=50) == large
    assert set(keys(kagl, max_train_items=50, seed=1)) != set(large)  # the seed draws another subset
    r0, r1 = (keys(kagl, rank=r, world=2, max_train_items=50) for r in (0, 1))
    assert not set(r0) & set(r1) and set(r0) | set(r1) == set(large)
    n_train = json.loads((kagl / "manifest.json").read_text())["splits"]["train"]["count"]
    assert len(keys(kagl, max_train_items=0)) == len(keys(kagl, max_train_items=10_000)) == n_train


def test_balanced_subset_takes_classes_in_turn(kagl):
    y = labels(kagl)
    full = Counter(y.values())
    got = Counter(y[k] for k in keys(kagl, max_train_items=40, subset_field="subCategory"))
    share = min(c for c in got.values())  # every class gets the same share unless it runs out
    assert all(got[c] == full[c] or got[c] - share <= 1 for c in full), (got, full)
    unbalanced = Counter(y[k] for k in keys(kagl, max_train_items=40))
    assert max(got.values()) - min(got.values()) < max(unbalanced.values()) - min(unbalanced.values())


def test_resampled_epochs_read_only_the_subset(kagl):
    chosen = set(keys(kagl, max_train_items=30))
    drawn = keys(kagl, max_train_items=30, epoch_mode="resampled", samples_per_epoch=64)
    assert len(drawn) == 64 and set(drawn) <= chosen


class ByteCounter:
    """Counts the bytes read from every file that fashiontune.data.samples opens (the one shard reader)."""

    def __init__(self, monkeypatch) -> None:
        self.bytes = 0
        monkeypatch.setattr(shard_samples, "open", self.open, raising=False)  # module global shadows the builtin

    def open(self, path, mode="r", *a, **kw):
        f, counter = open(path, mode, *a, **kw), self  # noqa: SIM115 (closed by Counted.__exit__)

        class Counted:
            def read(self, n=-1):
                data = f.read(n)
                counter.bytes += len(data)
                return data

            def __getattr__(self, name):
                return getattr(f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

        return Counted()


@pytest.mark.parametrize("mode", ["exact", "resampled"])
def test_epochs_read_only_the_subsets_bytes(kagl, monkeypatch, mode):
    """Choosing the subset reads the split's tar headers once; each epoch then reads the subset's samples at
    their byte offsets, not every shard that holds one (which is the whole split: 20 items over 4 shards)."""
    counter = ByteCounter(monkeypatch)
    cfg = DataConfig(shards=str(kagl), batch_size=8, workers=0, shuffle_buffer=0, max_train_items=20,
                     epoch_mode=mode, samples_per_epoch=40 if mode == "resampled" else 0)
    loader = make_loader(cfg, train=True, transform=TINY, fields=["subCategory"])
    train = split_shards(read_manifest(kagl), "train", kagl)
    split_bytes = sum(sh.path.stat().st_size for sh in train)
    counter.bytes, got = 0, set()
    for epoch in range(3):
        loader.set_epoch(epoch)
        got |= {k for b in loader for k in b["key"]}
    per_epoch = counter.bytes / 3
    assert len(train) == 4 and (len(got) == 20 if mode == "exact" else 10 <= len(got) <= 20)
    assert per_epoch < split_bytes / 4, f"an epoch of 20 of {sum(s.count for s in train)} items read " \
                                        f"{per_epoch:.0f} of the split's {split_bytes} bytes"
    # exact: exactly the chosen samples' bytes; resampled draws 40 samples (whole shards' subsets, ~5 each)
    subset = sum(sp.length for sh in loader.shards for sp in sh.spans)
    assert per_epoch == subset if mode == "exact" else per_epoch <= 3 * subset


def test_a_shard_changed_after_the_choice_is_named(kagl, tmp_path):
    """Spans are checked on read: bytes that no longer hold the chosen sample raise a ShardDataError naming
    the shard, never a silently different sample."""
    copy = tmp_path / "kagl"
    shutil.copytree(kagl, copy)
    cfg = DataConfig(shards=str(copy), batch_size=8, workers=0, shuffle_buffer=0, max_train_items=20)
    loader = make_loader(cfg, train=True, transform=TINY, fields=["subCategory"])
    victim = loader.shards[0]
    with open(victim.path, "r+b") as f:  # shift the shard's content by one block
        data = f.read()
        f.seek(0)
        f.write(bytes(512) + data)
    with pytest.raises(shard_samples.ShardDataError, match=re.escape(str(victim.path)) + ".*changed after the subset was chosen"):
        list(loader)


def test_bad_values_name_the_key(kagl):
    with pytest.raises(ConfigError, match="data.max_train_items"):
        DataConfig(max_train_items=-1).validate()
    with pytest.raises(ConfigError, match="data.subset_field='nope'"):
        keys(kagl, max_train_items=10, subset_field="nope")
