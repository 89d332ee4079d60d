"""Persistent loader workers: one set of worker processes serves every epoch, resume and validation pass of a
loader, and yields exactly the batches fresh workers would (the stream reads its position from shared memory)."""

from __future__ import annotations

import pytest
import torch
from test_data_pipeline import RANDOM_AUG, TO_TENSOR, cfg, write_shards

from fashiontune.data import EpochMode, make_loader

pytestmark = pytest.mark.distributed  # starts DataLoader worker processes (~1-2 s)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("uneven"), [7, 3, 12, 5, 9])  # 36 samples, 5 uneven shards


def _batches(loader, limit: int | None = None) -> list[tuple]:
    out = []
    for b in loader:
        out.append((tuple(b["key"]), b["image"].clone(), bool(b["valid"].all())))
        if limit is not None and len(out) == limit:
            break
    return out


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and torch.equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b))


def _worker_pids(loader) -> list[int]:
    it = loader._dl._iterator  # DataLoader keeps its iterator (and its workers) only when persistent
    return [w.pid for w in it._workers] if it is not None else []


@pytest.mark.parametrize("mode", [EpochMode.exact, EpochMode.resampled])
def test_persistent_workers_yield_the_batches_of_fresh_ones(uneven, mode):
    c = {"batch_size": 4, "workers": 2, "epoch_mode": mode, "samples_per_epoch": 30}
    kept = make_loader(cfg(uneven, persistent_workers=True, **c), train=True, transform=RANDOM_AUG, rank=1, world_size=2)

    def fresh(epoch: int, state: dict | None = None) -> list[tuple]:
        ld = make_loader(cfg(uneven, persistent_workers=False, **c), train=True, transform=RANDOM_AUG, rank=1,
                         world_size=2)
        if state:
            ld.load_state_dict(state)
        ld.set_epoch(epoch)
        return _batches(ld)

    assert _same(_batches(kept), fresh(0))  # epoch 0
    pids = _worker_pids(kept)
    assert len(pids) == 2
    kept.set_epoch(1)
    head = _batches(kept, limit=3)  # an interrupted pass: the workers still hold prefetched batches of it
    state = kept.state_dict()
    kept.set_epoch(1)
    assert _same(_batches(kept), fresh(1))  # the whole epoch again, from its start
    kept.load_state_dict(state)  # resume after 3 batches, on the same workers
    kept.set_epoch(1)
    assert _same(head + _batches(kept), fresh(1))
    kept.set_epoch(2)
    assert _same(_batches(kept), fresh(2, state={"epoch": 2, "batches": 0, "plan": state["plan"]}))
    assert _worker_pids(kept) == pids  # never forked again


def test_validation_reuses_its_workers(uneven):
    """The validation loader (exact, unshuffled) keeps its workers too: every pass the same batches."""
    ld = make_loader(cfg(uneven, workers=2, val_split="train"), train=False, transform=TO_TENSOR)
    first = _batches(ld)
    pids = _worker_pids(ld)
    assert _same(_batches(ld), first) and _worker_pids(ld) == pids and len(pids) == 2
    assert sorted(k for b in first for k in b[0]) == [f"s{i:04d}" for i in range(36)]


def test_fresh_workers_when_persistence_is_off(uneven):
    ld = make_loader(cfg(uneven, workers=2, persistent_workers=False), train=True, transform=TO_TENSOR)
    _batches(ld)
    assert _worker_pids(ld) == []
