"""Host syncs per training step, counted on CPU (issue 18 item 5).

On a GPU every read of a device value on the host (`.item()`, `float()`, `bool()`, `.tolist()`, a boolean-mask
index, ...) makes the CPU wait until the GPU has caught up, so it can never queue work ahead. CPU tensors make
no such wait, but the same Python-level reads happen: `HostReads` (a TorchFunctionMode) records each one, plus
every torch.distributed collective. train/step.py states the budget; this checks it on a real train_step with
grad_accum 2 (classify, labeltext, contrastive):
- 0 reads on a non-log step with loop.check_finite=false (optim.grad_clip on: the clip keeps its norm on device);
- exactly 1 read (the non-finite flag) and, with several ranks, 1 all-reduce with loop.check_finite=true;
- a log step's conversion of all logs: 1 read (and 1 all-reduce with several ranks).
Controls: a task that reads its loss with float(), and the masked loss written as `logits[valid]`, are counted.
The loop itself counts samples on the CPU-side batch: `test_the_loop_reads_no_device_value_between_log_steps`.
Cost: ~25 s on 2 busy cores (tiny ViT CLIP at 32 px, batches of 4; two 4-step runs on 120-item tiny shards).
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
import torch.distributed as dist
from test_tasks_synthetic import batch, manifest
from torch.overrides import TorchFunctionMode

from fashiontune.models import ModelConfig, load_clip
from fashiontune.tasks import PromptConfig, TaskConfig, TaskName, TextMode, build_task
from fashiontune.train.config import OptimConfig, ScheduleConfig
from fashiontune.train.optim import build_optimizer, build_scheduler
from fashiontune.train.state import TrainState
from fashiontune.train.step import train_step

# Tensor methods that hand a value (or a shape that depends on values) to the host.
READS = {"item", "__bool__", "__float__", "__int__", "__index__", "__format__", "tolist", "numpy", "cpu",
         "nonzero", "masked_select", "unique", "repeat_interleave", "argwhere"}
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "broadcast_object_list", "reduce", "reduce_scatter", "barrier", "gather", "scatter")


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostReads(TorchFunctionMode):
    """Records every host read of a tensor value made through torch's Python API while active."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS or (name in ("__getitem__", "__setitem__") and len(args) > 1 and _bool_index(args[1])):
            self.events.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting(monkeypatch, world_size: int = 1):
    """HostReads plus torch.distributed collectives; world_size > 1 fakes an initialised group whose
    collectives are counted no-ops (a tensor all-reduced over identical ranks keeps its max/mean)."""
    calls: list[str] = []
    if world_size > 1:
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: world_size)
    for name in COLLECTIVES:
        monkeypatch.setattr(dist, name, lambda *a, _n=name, **k: calls.append(_n))
    with HostReads() as reads:
        yield SimpleNamespace(reads=reads.events, collectives=calls)


class LocalAccelerator:
    """What DDPBackend and log_values need from an accelerate.Accelerator in one CPU process."""

    num_processes, device, optimizer_step_was_skipped = 1, torch.device("cpu"), False

    @staticmethod
    def prepare(module, optimizer):
        return module, optimizer

    @staticmethod
    def backward(loss):
        loss.backward()

    @staticmethod
    def clip_grad_norm_(params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


TASKS = {
    "classify": TaskConfig(name=TaskName.classify, field="colour"),
    "labeltext": TaskConfig(name=TaskName.labeltext, field="colour",
                            prompts=PromptConfig(text_mode=TextMode.embeddings)),
    "contrastive": TaskConfig(name=TaskName.contrastive),
}


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return {k: _to(v, device) for k, v in x.items()} if isinstance(x, dict) else x


def setup_step(name: str, grad_clip: float, device: str = "cpu"):
    from fashiontune.train.backend import DDPBackend

    torch.manual_seed(0)
    loaded = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32))
    task = build_task(TASKS[name], loaded, manifest())
    task.module.to(device)
    tok = loaded.tokenizer if task.needs_text else None
    micro = [batch(4, seed=s, tokenizer=tok) for s in (1, 2)]  # grad_accum 2
    for b in micro:
        b["valid"] = torch.tensor([True, True, True, False])  # a padding row: masks, not indexing
    micro = [_to(b, device) for b in micro]
    optimizer = build_optimizer(task.module, OptimConfig(lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.98,
                                                         eps=1e-6, fused=True))
    backend = DDPBackend(LocalAccelerator(), task.module, optimizer, grad_clip)
    return task, backend, build_scheduler(optimizer, 10, ScheduleConfig()), micro


@pytest.fixture(scope="module", params=list(TASKS))
def stepper(request):
    return setup_step(request.param, grad_clip=1.0)


def run_step(stepper, check_finite: bool, poison: bool = False):
    task, backend, scheduler, micro = stepper
    train_step(task, backend, scheduler, micro, TrainState(), max_bad_steps=5, check_finite=check_finite,
               poison=poison)  # warm-up: lazy optimiser state, label caches
    state = TrainState()
    return lambda: train_step(task, backend, scheduler, micro, state, max_bad_steps=5, check_finite=check_finite,
                              poison=poison)


def test_a_step_without_the_finite_check_reads_nothing_on_the_host(stepper, monkeypatch):
    step = run_step(stepper, check_finite=False)
    with counting(monkeypatch, world_size=2) as c:
        logs = step()
    assert c.reads == [] and c.collectives == []
    assert isinstance(logs["loss"], torch.Tensor) and isinstance(logs["grad_norm"], torch.Tensor)  # clip on


def test_the_finite_check_is_one_read_and_one_all_reduce_per_step(stepper, monkeypatch):
    step = run_step(stepper, check_finite=True)
    with counting(monkeypatch, world_size=2) as c:
        logs = step()
    assert c.reads == ["item"] and c.collectives == ["all_reduce"]
    assert logs["skipped"] == 0.0


def test_a_non_finite_step_is_found_with_the_same_one_read(stepper, monkeypatch):
    task, backend, scheduler, micro = stepper
    before = {n: p.detach().clone() for n, p in task.module.named_parameters()}
    state = TrainState()
    with counting(monkeypatch) as c:
        logs = train_step(task, backend, scheduler, micro, state, max_bad_steps=5, poison=True)
    assert c.reads == ["item"] and logs["skipped"] == 1.0 and state.skipped_in_row == 1
    assert all(torch.equal(p, before[n]) for n, p in task.module.named_parameters())  # not applied


def test_a_log_step_converts_every_log_with_one_read(stepper, monkeypatch):
    from fashiontune.train.loop import log_values

    logs = run_step(stepper, check_finite=False)()
    acc = SimpleNamespace(num_processes=2, device=torch.device("cpu"), reduce=lambda t, op: (dist.all_reduce(t), t)[1])
    with counting(monkeypatch, world_size=2) as c:
        values = log_values(logs, acc)
    assert c.reads == ["tolist"] and c.collectives == ["all_reduce"]
    assert set(values) >= {"loss", "grad_norm", "skipped"} and all(isinstance(v, float) for v in values.values())


def test_controls_a_float_of_the_loss_and_a_boolean_index_are_counted(monkeypatch):
    """The counter can fail: the reads the old code made (float(loss) in the task, logits[valid]) show up."""
    task, backend, scheduler, micro = setup_step("classify", grad_clip=0.0)
    loss_fn = task.loss

    def reading_loss(model, i, b):
        loss, logs = loss_fn(model, i, b)
        return loss, {**logs, "loss": float(loss.detach())}  # the old tasks' log

    monkeypatch.setattr(task, "loss", reading_loss)
    with counting(monkeypatch) as c:
        train_step(task, backend, scheduler, micro, TrainState(), max_bad_steps=5, check_finite=False)
    assert c.reads == ["__float__", "__float__"]
    x, valid = torch.randn(4, 3), micro[0]["valid"]
    with counting(monkeypatch) as c:
        x[valid].sum()
    assert c.reads == ["__getitem__"]


class OnDevice(torch.Tensor):
    """A CPU tensor standing for one on the GPU: what is computed from it stays OnDevice, and every host read
    of one is recorded. The loop's batches become OnDevice in to_device, so reads of the CPU-side batch
    (the sample count) are not recorded, and reads of anything computed from the moved batch are."""

    reads: ClassVar[list[str]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS or (name in ("__getitem__", "__setitem__") and len(args) > 1 and _bool_index(args[1])):
            cls.reads.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


def _on_device(x):
    if isinstance(x, torch.Tensor):
        return x.as_subclass(OnDevice)
    return {k: _on_device(v) for k, v in x.items()} if isinstance(x, dict) else x


@pytest.mark.parametrize("check_finite", [True, False])
def test_the_loop_reads_no_device_value_between_log_steps(tmp_path_factory, monkeypatch, check_finite):
    """4 steps of 2 micro-batches through run_training, the last one a log step: the reads of device values
    are the finite checks (one per step) and the log step's one conversion; the sample count is taken from
    the CPU-side batch (counting `valid` after to_device would add one read per micro-batch)."""
    from pathlib import Path

    from fashiontune.train import load_train_config, loop, run_training
    from fashiontune.train.testing import build_tiny_shards

    shards = build_tiny_shards("kagl", tmp_path_factory.getbasetemp() / "sync-kagl", n=120)
    out = tmp_path_factory.mktemp("runs")
    moved = loop.to_device  # the real move (uint8 images normalised there), then marked as on the device
    monkeypatch.setattr(loop, "to_device", lambda b, device: _on_device(moved(b, device)))
    monkeypatch.setattr(OnDevice, "reads", [])
    cfg = load_train_config(Path(__file__).resolve().parents[1] / "configs/tiny-kagl-softmax.yaml", [
        f"data.shards={shards}", f"out_dir={out}", "name=syncs", "data.workers=0", "data.batch_size=8",
        "loop.grad_accum=2", "loop.max_steps=4", "log.every_steps=100", "data.val_split=none",
        "checkpoint.every_steps=0", "checkpoint.save_final=false", "log.tensorboard=false", "log.progress=false",
        "log.plots=false", f"loop.check_finite={str(check_finite).lower()}"])
    res = run_training(cfg)
    assert res["step"] == 4 and res["samples_seen"] == 4 * 16
    assert OnDevice.reads == ["item"] * (4 if check_finite else 0) + ["tolist"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(TASKS))
def test_on_cuda_a_step_without_the_finite_check_never_synchronises(name):
    """What HostReads approximates, from CUDA itself: set_sync_debug_mode("error") raises on any synchronising
    CUDA call (implicit ones included: nonzero, boolean masks, D2H copies) in a step with grad_accum 2,
    a padding row and gradient clipping (fused AdamW)."""
    task, backend, scheduler, micro = setup_step(name, grad_clip=1.0, device="cuda")
    train_step(task, backend, scheduler, micro, TrainState(), max_bad_steps=5, check_finite=False)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logs = train_step(task, backend, scheduler, micro, TrainState(), max_bad_steps=5, check_finite=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert logs["grad_norm"].device.type == "cuda" and bool(torch.isfinite(logs["loss"]))
