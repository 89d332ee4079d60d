"""data.views_per_group (data/groups.py): batches of runs of up to K views of a product, a seeded permutation
of each worker's slot: every item once per exact epoch on any rank layout, resumable, full batches."""

from __future__ import annotations

import collections
import random

import pytest
from test_data_pipeline import RANDOM_AUG, TO_TENSOR, _resume_check, cfg, write_shards

from fashiontune.config import ConfigError
from fashiontune.data import DataConfig, make_loader
from fashiontune.data.groups import group_batched


def _batches(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def _stream(n_groups=30, views=4):
    return [(f"g{g}", v) for g in range(n_groups) for v in range(views)]  # a product's views one after another


def test_runs_of_k_views_fill_whole_batches():
    items = _stream() + [("odd", 0), ("odd", 1), ("odd", 2)] + [(f"single{i}", 0) for i in range(5)]
    out = list(group_batched(items, 4, 8, 40, random.Random(0), group_of=lambda it: it[0]))
    assert sorted(out) == sorted(items)  # a permutation
    assert out != items and out == list(group_batched(items, 4, 8, 40, random.Random(0), lambda it: it[0]))
    whole = 0
    for b in _batches(out, 8):
        counts = collections.Counter(g for g, _ in b)
        assert all(n <= 4 for n in counts.values()), counts  # one run per product: at most K views
        whole += sum(n == 4 for n in counts.values())
    assert whole == 30  # every 4-view product sits whole in one batch
    assert out[:8] != items[:8]  # reordered across the window, not just the input order


def test_one_view_per_group_keeps_views_apart():
    items = _stream(n_groups=40, views=4)  # 160 items, window 64: plenty of other products to fill with
    out = list(group_batched(items, 1, 8, 64, random.Random(1), group_of=lambda it: it[0]))
    assert sorted(out) == sorted(items)
    clashes = sum(8 - len({g for g, _ in b}) for b in _batches(out, 8))
    assert clashes <= 2, clashes  # only at the very end can the window run out of other products
    plain = [it for b in _batches(items, 8) for it in b]
    assert sum(8 - len({g for g, _ in b}) for b in _batches(plain, 8)) == 120  # what it replaces: 2 products a batch


@pytest.mark.parametrize("world", [1, 2, 3])
def test_loader_batches_hold_k_views_and_every_item_once(tmp_path, world):
    shards = write_shards(tmp_path, [24, 20, 28], views=4)  # 72 items = 18 products x 4 views, 3 shards
    c = cfg(shards, batch_size=8, views_per_group=4, shuffle_buffer=24)
    seen, whole = [], 0
    for rank in range(world):
        ld = make_loader(c, train=True, transform=TO_TENSOR, rank=rank, world_size=world)
        ld.set_epoch(1)
        batches = [b["group_id"] for b in ld]
        again = make_loader(c, train=True, transform=TO_TENSOR, rank=rank, world_size=world)
        again.set_epoch(1)
        assert [b["group_id"] for b in again] == batches  # deterministic on every rank
        for b in batches:
            counts = collections.Counter(b)
            assert max(counts.values()) <= 4
            whole += sum(n == 4 for n in counts.values())
        seen += [k for b in make_loader(c, train=True, transform=TO_TENSOR, rank=rank, world_size=world) for k in b["key"]]
    assert sorted(seen) == [f"s{i:04d}" for i in range(72)]  # every item once per epoch across the ranks
    # products cut by a rank's slot edge (rank slots split at sample level) form shorter runs; the rest are whole
    assert whole >= 18 - 2 * (world - 1), whole


def test_loader_off_and_resume(tmp_path):
    shards = write_shards(tmp_path, [24, 20, 28], views=4)
    plain = make_loader(cfg(shards, batch_size=8), train=True, transform=TO_TENSOR)
    assert max(max(collections.Counter(b["group_id"]).values()) for b in plain) < 4  # shuffle scatters views
    _resume_check(cfg(shards, batch_size=8, views_per_group=4, shuffle_buffer=24), world=2, rank=1)
    val = make_loader(cfg(shards, batch_size=8, views_per_group=4), "train", train=False, transform=RANDOM_AUG)
    assert [k for b in val for k in b["key"]] == [f"s{i:04d}" for i in range(72)]  # validation: manifest order


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="data.views_per_group"):
        DataConfig(views_per_group=-1).validate()
    with pytest.raises(ConfigError, match="data.views_per_group=64 is larger than data.batch_size=32"):
        DataConfig(views_per_group=64, batch_size=32).validate()



@pytest.mark.distributed
def test_worker_processes_keep_runs_and_read_every_item_once(tmp_path):
    shards = write_shards(tmp_path, [24, 20, 28], views=4)
    c = cfg(shards, batch_size=8, views_per_group=4, shuffle_buffer=24, workers=2, persistent_workers=False)
    seen = []
    for rank in range(2):  # 2 ranks x 2 DataLoader worker processes = 4 slots of 18 items
        ld = make_loader(c, train=True, transform=TO_TENSOR, rank=rank, world_size=2)
        batches = list(ld)
        assert [b["key"] for b in ld] == [b["key"] for b in batches]  # the same again (fresh worker processes)
        assert all(max(collections.Counter(b["group_id"]).values()) <= 4 for b in batches)
        assert sum(len(b["key"]) == 8 and len(set(b["group_id"])) == 2 for b in batches) >= 4  # whole runs of 4
        seen += [k for b in batches for k in b["key"]]
    assert sorted(seen) == [f"s{i:04d}" for i in range(72)]
