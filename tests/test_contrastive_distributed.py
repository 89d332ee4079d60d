"""Two CPU processes (gloo): the same-product losses (supcon and mask, group ids gathered with the features)
and SigLIP (open_clip's neighbour exchange), each with feature-cache accumulation of 2 micro-batches per rank,
give after DDP-style gradient averaging the gradient of the single-process loss on the concatenated batch.
The synthetic batches' 16 groups repeat across ranks, so cross-rank positives are exercised (checked).

Cost: ~33 s on 2 busy cores (two interpreters importing torch + open_clip; 4 objectives)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_tasks_distributed import WORLD, _free_port, _grads, _micro_batches, _tiny
from test_tasks_synthetic import manifest

from fashiontune.tasks import ContrastiveConfig, TaskConfig, TaskName, build_task
from fashiontune.tasks.config import GroupLoss, Positives
from fashiontune.train.backend import LocalBackend
from fashiontune.train.step import forward_backward

CONFIGS = {
    "group-supcon": ContrastiveConfig(positives=Positives.group),
    "group-mask": ContrastiveConfig(positives=Positives.group, group_loss=GroupLoss.mask),
    "caption-global": ContrastiveConfig(positives=Positives.group_or_caption, local_loss=False),
    "siglip": ContrastiveConfig(loss="siglip"),
}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    result = {}
    for key, ccfg in CONFIGS.items():
        loaded = _tiny()
        task = build_task(TaskConfig(name=TaskName.contrastive, contrastive=ccfg), loaded, manifest(), rank, WORLD)
        forward_backward(task, LocalBackend(task.module), _micro_batches(rank, loaded.tokenizer))
        grads = _grads(task)
        for g in grads.values():  # what DDP does: average gradients over ranks
            dist.all_reduce(g)
            g /= WORLD
        result[key] = grads
    if rank == 0:
        torch.save(result, out)
    dist.barrier()
    dist.destroy_process_group()


def _big_batch(tokenizer) -> dict:
    mbs = [mb for r in range(WORLD) for mb in _micro_batches(r, tokenizer)]
    return {k: torch.cat([m[k] for m in mbs]) if torch.is_tensor(mbs[0][k]) else sum((m[k] for m in mbs), [])
            for k in ("image", "text", "group_id", "key", "caption")}


@pytest.mark.distributed
def test_distributed_objectives_equal_the_big_batch_gradient(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    got = torch.load(out, weights_only=False)

    for key, ccfg in CONFIGS.items():
        loaded = _tiny()
        task = build_task(TaskConfig(name=TaskName.contrastive, contrastive=ccfg), loaded, manifest())
        big = _big_batch(loaded.tokenizer)
        if key == "group-supcon":  # a product seen on both ranks: the gathered ids matter
            half = len(big["group_id"]) // 2
            assert set(big["group_id"][:half]) & set(big["group_id"][half:])
        forward_backward(task, LocalBackend(task.module), [big])
        ref = _grads(task)
        assert got[key].keys() == ref.keys() and len(ref) > 20
        for n in ref:
            torch.testing.assert_close(got[key][n], ref[n], rtol=1e-4, atol=1e-6, msg=lambda m, k=key, n=n: f"{k} {n}: {m}")
