"""Two CPU processes (gloo, torch.multiprocessing.spawn, a real accelerate.Accelerator in each):

1. the distributed contrastive loss (ClipLoss local_loss + gather_with_grad, with feature-cache accumulation
   of 2 micro-batches per rank) gives, after DDP-style gradient averaging, the gradient of the
   single-process loss on the concatenated batch; the control without gradient through the gather
   (what accelerator.gather would give) does not;
2. gradual unfreezing works under one DDP wrapper (find_unused_parameters): frozen stages keep grad None;
   the contrastive accumulation runs under the trainer's DDP backend with find_unused_parameters=False (every
   micro-batch uses logit_scale): two steps run, and the first one's gradient is the big-batch gradient;
3. evaluation gathers ranks holding different numbers of rows and computes the same metrics as one
   process on all rows.

Cost: ~15 s on 2 cores (two interpreters importing torch + open_clip)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_tasks_synthetic import batch, manifest

from fashiontune.models import ModelConfig, load_clip
from fashiontune.tasks import ContrastiveConfig, FreezeConfig, FreezeMode, TaskConfig, TaskName, build_task
from fashiontune.train.backend import LocalBackend
from fashiontune.train.step import forward_backward

WORLD = 2


def _tiny():
    torch.manual_seed(0)
    return load_clip(ModelConfig(name="ft-tiny-vit", image_size=32))


def _micro_batches(rank: int, tokenizer) -> list[dict]:
    return [batch(4, seed=10 + 2 * rank + j, tokenizer=tokenizer) for j in range(2)]


def _eval_batches(rank: int) -> list[dict]:
    return [batch(7, seed=100)] if rank == 0 else [batch(5, seed=101), batch(3, seed=102)]


def _grads(task) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in task.module.named_parameters() if p.grad is not None}


def _gradual_under_ddp(rank: int) -> list[tuple[bool, bool, bool]]:
    """Gradual unfreezing under a real DDP wrapper built once: frozen stages get no gradient (None, so AdamW
    leaves them alone), unfrozen ones get gradients that are identical on both ranks."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    task = build_task(TaskConfig(field="colour", freeze=FreezeConfig(mode=FreezeMode.gradual)), _tiny(), manifest(),
                      rank, WORLD)
    assert task.find_unused_parameters
    ddp = LocalBackend(DDP(task.module, find_unused_parameters=task.find_unused_parameters))
    blocks = task.module.tower.transformer.resblocks
    seen = []
    for epoch in (0, 1, 2):
        task.on_epoch_start(epoch)
        task.module.zero_grad(set_to_none=True)
        forward_backward(task, ddp, [batch(4, seed=50 + rank)])
        g0, g1 = blocks[0].attn.in_proj_weight.grad, blocks[1].attn.in_proj_weight.grad
        for g in (g0, g1):
            if g is not None:  # synchronised: every rank holds the average
                both = [torch.zeros_like(g) for _ in range(WORLD)]
                dist.all_gather(both, g)
                assert torch.equal(both[0], both[1])
        seen.append((g0 is not None, g1 is not None, task.module.heads["colour"].weight.grad is not None))
    return seen


def _contrastive_accumulation_under_ddp(rank: int, acc) -> dict[str, torch.Tensor]:
    """The trainer's DDPBackend (accelerate's DDP, find_unused_parameters=False as the loop now picks for
    contrastive + grad_accum 2). DDP refuses the second step if the first one's synced pass left a parameter
    without gradient ("Expected to have finished reduction in the prior iteration")."""
    from fashiontune.train.backend import DDPBackend

    loaded = _tiny()
    task = build_task(TaskConfig(name=TaskName.contrastive), loaded, manifest(), rank, WORLD)
    backend = DDPBackend(acc, task.module, torch.optim.SGD(task.module.parameters(), lr=0.0), grad_clip=0.0)
    assert backend._ddp is not None and not backend._ddp.find_unused_parameters
    mbs = _micro_batches(rank, loaded.tokenizer)
    forward_backward(task, backend, mbs)
    grads = _grads(task)  # averaged over ranks by DDP on the last micro-batch
    backend.step()  # lr 0: the weights stay; the gradients are zeroed
    forward_backward(task, backend, mbs)
    return grads


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    assert acc.num_processes == WORLD and dist.get_backend() == "gloo"
    result: dict = {}
    for key, ccfg in (("with_grad", ContrastiveConfig()), ("global_loss", ContrastiveConfig(local_loss=False)),
                      ("no_grad_gather", ContrastiveConfig(gather_with_grad=False))):
        loaded = _tiny()
        task = build_task(TaskConfig(name=TaskName.contrastive, contrastive=ccfg), loaded, manifest(), rank, WORLD)
        out_ = forward_backward(task, LocalBackend(task.module), _micro_batches(rank, loaded.tokenizer))[0]
        grads = _grads(task)
        for g in grads.values():  # what DDP does: average gradients over ranks
            dist.all_reduce(g)
            g /= WORLD
        losses = [None] * WORLD
        dist.all_gather_object(losses, float(out_["loss"]))
        result[key] = {"grads": grads, "losses": losses}
    result["ddp_gradual"] = _gradual_under_ddp(rank)
    result["ddp_accum"] = _contrastive_accumulation_under_ddp(rank, acc)
    task = build_task(TaskConfig(field="colour"), _tiny(), manifest(), rank, WORLD)
    result["eval"] = task.evaluate(_eval_batches(rank), acc)
    result["eval_y_true"] = task.last_eval["colour"]["y_true"]
    if rank == 0:
        torch.save(result, out)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_distributed_contrastive_gradient_and_gathered_eval(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    got = torch.load(out, weights_only=False)

    # single process, the 4 micro-batches of both ranks as one batch, no accumulation
    loaded = _tiny()
    task = build_task(TaskConfig(name=TaskName.contrastive), loaded, manifest())
    mbs = [mb for r in range(WORLD) for mb in _micro_batches(r, loaded.tokenizer)]
    big = {"image": torch.cat([m["image"] for m in mbs]), "text": torch.cat([m["text"] for m in mbs])}
    ref_loss = float(forward_backward(task, LocalBackend(task.module), [big])[0]["loss"])
    ref = _grads(task)

    got["ddp_accum"] = {"grads": got["ddp_accum"]}
    for key in ("with_grad", "global_loss", "ddp_accum"):  # local_loss=False (full matrix on every rank) is exact too
        dd = got[key]["grads"]
        assert dd.keys() == ref.keys() and len(ref) > 20
        for n in ref:
            torch.testing.assert_close(dd[n], ref[n], rtol=1e-4, atol=1e-6, msg=lambda m: f"{key} {n}: {m}")
    # each rank's local loss averages to the global one
    assert sum(got["with_grad"]["losses"]) / WORLD == pytest.approx(ref_loss, abs=1e-5)
    # control: without gradient through the gather the other rank's side of the loss is lost
    bad = got["no_grad_gather"]["grads"]
    rel = max(float((bad[n] - ref[n]).norm() / ref[n].norm().clamp(min=1e-12)) for n in ref if "visual" in n)
    assert rel > 0.05

    assert got["ddp_gradual"] == [(False, False, True), (False, True, True), (True, True, True)]

    one = build_task(TaskConfig(field="colour"), _tiny(), manifest())
    expect = one.evaluate([b for r in range(WORLD) for b in _eval_batches(r)])
    assert got["eval"]["count"] == expect["count"] == 15
    for k, v in expect.items():
        assert got["eval"][k] == pytest.approx(v, abs=1e-5), k
