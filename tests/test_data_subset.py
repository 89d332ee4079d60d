"""data.max_train_items: a deterministic subset of the train split (nested: a smaller one is inside a larger
one), optionally class-balanced (data.subset_field), split exactly over ranks, also in resampled epochs.
Cost: ~10 s (shards ~2 s, a few passes over 220 tiny items)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from torchvision import transforms

from fashiontune.config import ConfigError
from fashiontune.data import DataConfig, make_loader
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


def test_bad_values_name_the_key(kagl):
    with pytest.raises(ConfigError, match="data.max_train_items"):
        DataConfig(max_train_items=-1).validate()
    with pytest.raises(ConfigError, match="data.subset_field='nope'"):
        keys(kagl, max_train_items=10, subset_field="nope")
