"""The trainer's setup decisions, without training (issue 18 items 6, 8, 9):
- setup turns on TF32 and cudnn.benchmark (loop.tf32 / loop.cudnn_benchmark), before the model is built;
- contrastive training on several ranks whose batches could differ in rows is refused before any work, naming
  data.drop_last / data.epoch_mode; the rule replays the loader's batch plan (padding batches are full);
- DDP's find_unused_parameters comes from the task, not from grad_accum;
- whether a checkpoint step is already saved is decided from the run's state (the same on every rank), not
  from the file system.
Cost: ~10 s, nearly all of it importing the trainer (no model is built, no data is read)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fashiontune.config import ConfigError
from fashiontune.train import loop
from fashiontune.train.batch_shapes import check_equal_batches, rank_batch_sizes
from fashiontune.train.config import TrainConfig, load_train_config


class ModelBuilt(Exception):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """setup() up to the model build, which raises ModelBuilt: anything it does before that has happened."""
    world = SimpleNamespace(num_processes=1, process_index=0, train_samples=100)
    monkeypatch.setattr(loop, "process_state", lambda cfg: world)
    monkeypatch.setattr(loop, "read_manifest", lambda shards: {"splits": {"train": {"count": world.train_samples}}})
    monkeypatch.setattr(loop, "load_clip", lambda cfg: (_ for _ in ()).throw(ModelBuilt()))
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield world
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags


def fast_math() -> tuple[bool, bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark


def test_setup_turns_on_tf32_and_cudnn_benchmark_unless_switched_off(no_work, tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = False
    with pytest.raises(ModelBuilt):
        loop.setup(load_train_config(None, [f"out_dir={tmp_path}", f"data.shards={tmp_path}"]))
    assert fast_math() == (True, True, True)
    with pytest.raises(ModelBuilt):
        loop.setup(load_train_config(None, [f"out_dir={tmp_path}", f"data.shards={tmp_path}", "loop.tf32=false",
                                            "loop.cudnn_benchmark=false"]))
    assert fast_math() == (False, False, False)


def test_train_precision_defaults_to_auto():
    from fashiontune.models.precision import Precision

    assert TrainConfig().loop.precision is Precision.auto  # bf16 on CUDA, fp32 on CPU (results.json says which)


def test_contrastive_on_several_ranks_with_short_batches_is_refused_before_any_work(no_work, tmp_path):
    no_work.num_processes = 2
    base = [f"out_dir={tmp_path}", f"data.shards={tmp_path}", "task.name=contrastive", "data.batch_size=16",
            "data.workers=0"]
    # 100 samples over 2 ranks: 50 each = 3 full batches + 2 rows; equal on both ranks, so allowed
    with pytest.raises(ModelBuilt):
        loop.setup(load_train_config(None, base))
    # 2 workers per rank: 25 per worker, batches 16, 16, 9, 9 on both ranks: allowed as well
    with pytest.raises(ModelBuilt):
        loop.setup(load_train_config(None, [*base, "data.workers=2"]))
    # 101 samples: rank 0 holds 51 (last batch 3 rows), rank 1 holds 50 (2 rows)
    no_work.train_samples = 101
    refused = r"task.name=contrastive on 2 ranks.*data.drop_last=true.*data.epoch_mode=resampled"
    with pytest.raises(ConfigError, match=refused):
        loop.setup(load_train_config(None, base))
    for fix in ("data.drop_last=true", "data.epoch_mode=resampled"):
        with pytest.raises(ModelBuilt):
            loop.setup(load_train_config(None, [*base, fix]))
    with pytest.raises(ModelBuilt):  # softmax heads all-gather nothing in training
        loop.setup(load_train_config(None, [*base, "task.name=classify"]))


def test_batch_rows_replay_the_loader_plan():
    # 101 samples, 2 ranks x 1 worker: 50 and 51 -> 16,16,16,2 and 16,16,16,3
    assert rank_batch_sizes(101, 2, 1, 16, drop_last=False) == [[16, 16, 16, 2], [16, 16, 16, 3]]
    # 20 samples, 2 ranks x 2 workers at batch 4: 5 per worker -> workers alternate 4,4,1,1
    assert rank_batch_sizes(20, 2, 2, 4, drop_last=False) == [[4, 4, 1, 1]] * 2
    # 13, 13, 14 samples: rows differ in the last batch only
    assert rank_batch_sizes(40, 3, 1, 4, drop_last=False) == [[4, 4, 4, 1], [4, 4, 4, 1], [4, 4, 4, 2]]
    # a rank with one batch fewer is padded with a full batch (the split's first samples): 8, 9 at batch 4
    assert rank_batch_sizes(17, 2, 1, 4, drop_last=True) == [[4, 4], [4, 4]]
    assert rank_batch_sizes(17, 2, 1, 4, drop_last=False) == [[4, 4, 4], [4, 4, 1]]
    assert rank_batch_sizes(36, 3, 1, 8, drop_last=False) == [[8, 4], [8, 4], [8, 4]]
    assert rank_batch_sizes(101, 2, 1, 16, drop_last=True) == [[16, 16, 16]] * 2
    cfg = load_train_config(None, ["task.name=contrastive", "data.batch_size=16", "data.workers=0"])
    with pytest.raises(ConfigError, match="rank 0 a batch of 2 and rank 1 one of 3"):
        check_equal_batches(cfg, 2, {"splits": {"train": {"count": 101}}})
    check_equal_batches(cfg, 1, {"splits": {"train": {"count": 101}}})  # one rank gathers nothing
    cfg.data.max_train_items = 64  # the loader reads a 64-item subset: 2 x 32, every batch full
    check_equal_batches(cfg, 2, {"splits": {"train": {"count": 101}}})


def test_find_unused_parameters_comes_from_the_task_not_from_accumulation():
    cfg = load_train_config(None, ["loop.grad_accum=4"])
    assert loop._find_unused(cfg, SimpleNamespace(find_unused_parameters=False)) is False
    assert loop._find_unused(cfg, SimpleNamespace(find_unused_parameters=True)) is True  # freeze schedules
    cfg.dist.find_unused_parameters = True
    assert loop._find_unused(cfg, SimpleNamespace(find_unused_parameters=False)) is True


class OneProcess:
    """What CheckpointManager needs from an accelerate.Accelerator in one process."""

    is_main_process, process_index, num_processes, distributed_type, scaler = True, 0, 1, "NO", None

    @staticmethod
    def wait_for_everyone():
        pass

    @staticmethod
    def unwrap_model(m):
        return m


def test_whether_a_step_is_already_saved_is_the_runs_state_not_the_file_system(tmp_path, monkeypatch):
    from fashiontune.train.checkpoint import CheckpointManager

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stale = tmp_path / "ck" / "step_00000002"  # complete, but from an earlier run (checkpoint.resume=false)
    stale.mkdir(parents=True)
    (stale / "complete.json").write_text("{}")
    mgr = CheckpointManager(OneProcess(), tmp_path / "ck", 3, model, opt, sched)
    writes = []
    write = mgr._write_state
    monkeypatch.setattr(mgr, "_write_state", lambda tmp: (writes.append(tmp), write(tmp)))
    state = {"step": 2}
    mgr.save(2, state)
    assert (stale / "model.pt").is_file() and len(writes) == 1  # written anew: a marker on disk decides nothing
    mgr.save(2, state)  # the final save right after the periodic one: skipped by what this run knows
    assert len(writes) == 1
    resumed = CheckpointManager(OneProcess(), tmp_path / "ck", 3, model, opt, sched)
    assert resumed.load_latest()["step"] == 2 and resumed.saved_step == 2  # a finished run started again
