"""The eval job's embeddings go to the scoring rank only, and the cache remembers the precision really used."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_eval_job import cfg_for, shards  # noqa: F401 (fixture)

from fashiontune.eval import embed as E


def _part(rank: int, start: int, end: int, text: bool) -> dict:
    idx = list(range(start, end))
    g = torch.Generator().manual_seed(rank)
    return {"index": idx, "key": [f"k{i}" for i in idx], "group_id": [f"g{i}" for i in idx],
            "caption": [f"c{i}" for i in idx], "labels": [{"n": i} for i in idx],
            "image": torch.randn(end - start, 4, generator=g), "text": torch.randn(end - start, 4, generator=g) if text else None}


def _gather_worker(rank: int, world: int, port: int, total: int, bs: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ranges = [E.batch_range(total, bs, r, world) for r in range(world)]
        state = SimpleNamespace(num_processes=world, process_index=rank, device=torch.device("cpu"))
        for text in (True, False):  # a model with a text tower, an image-only one
            merged = E.gather_ranks(_part(rank, *ranges[rank], text), state, [e - s for s, e in ranges])
            out[(rank, text)] = None if merged is None else {
                k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in merged.items()}
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed  # two forked gloo processes, no model (a few seconds)
def test_gather_goes_to_rank_zero_only():
    total, bs, world = 13, 3, 2  # 5 batches: rank 0 holds 6 items, rank 1 holds 7 (uneven parts)
    with mp.Manager() as manager:
        out = manager.dict()
        # fork: no re-import of torch and the test modules in the children
        mp.start_processes(_gather_worker, args=(world, _free_port(), total, bs, out), nprocs=world,
                           start_method="fork")
        got = dict(out)
    ranges = [E.batch_range(total, bs, r, world) for r in range(world)]
    for text in (True, False):
        assert got[(1, text)] is None  # the other ranks get nothing (and do not score)
        parts = [_part(r, *ranges[r], text) for r in range(world)]
        main = got[(0, text)]
        assert main["index"] == list(range(total)) and main["key"] == [f"k{i}" for i in range(total)]
        assert main["image"] == torch.cat([p["image"] for p in parts]).tolist()  # rank order, padding cut off
        assert main["text"] == (torch.cat([p["text"] for p in parts]).tolist() if text else None)


def test_cache_fingerprint_holds_the_resolved_precision(shards, tmp_path):  # noqa: F811
    """A cache embedded on CPU with precision=auto (= fp32) is not reused by a CUDA run, where auto means bf16;
    an explicit fp32 on CUDA does reuse it."""
    from fashiontune.eval import run as R
    from fashiontune.eval.model import fingerprint
    from fashiontune.shards.manifest import load_manifest

    cfg = cfg_for(shards, tmp_path / "c", "data.split=val", "plots.grid_queries=0")
    assert R.run_eval(cfg)["embeddings_cached"] is False  # CPU, auto -> fp32
    manifest = load_manifest(shards)
    fields = R.label_fields(cfg, manifest)

    def fp(c, device_type: str) -> dict:
        return R.cache_fingerprint(c, manifest, fields, fingerprint(c.model), device_type)

    cache = tmp_path / "c" / "embeddings"
    assert fp(cfg, "cpu")["precision"] == "fp32" and E.cache_matches(cache, fp(cfg, "cpu")) == (True, "")
    ok, why = E.cache_matches(cache, fp(cfg, "cuda"))
    assert not ok and why == "cache made with different precision"
    explicit = cfg_for(shards, tmp_path / "c", "data.split=val", "plots.grid_queries=0", "precision=fp32")
    assert E.cache_matches(cache, fp(explicit, "cuda"))[0]
