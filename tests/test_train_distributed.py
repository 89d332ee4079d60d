"""2 processes on CPU (gloo) through `accelerate launch` against 1 process, at the same global batch.

How the global batches are made equal: the data pipeline cuts a split into contiguous ranges, one per
(rank, worker). With shuffling off, 2 ranks x 1 worker at batch 8 see at step t the batches t of ranges 0 and
1; 1 process x 2 workers at batch 8 with grad_accum=2 sees the same two batches (DataLoader alternates its
workers) as its two micro-batches, and the task weights each micro-batch by its share of the step's samples,
which is what DDP's gradient average does for equal per-rank batches. So the two runs are the same
computation up to float summation order: weights must agree to 1e-4 after 6 AdamW steps.

- DDP: 2 processes == 1 process (weights, val loss).
- Both also prove the collective non-finite check: at step 2 only rank 1 sees a NaN loss, yet both ranks skip
  the step (else one would wait in the all-reduce forever), exactly like the 1-process run skipping it.
- DeepSpeed ZeRO-2, 2 processes: stopped after a checkpoint at step 3 and resumed (a second launch) to step 6,
  equals the same 1-process run: so it trains, saves (partitioned optimizer state) and resumes.
- Contrastive with feature-cache accumulation and DDP no_sync: 2 processes == 1 process.
- DeepSpeed ZeRO-3: the gathered export equals the 1-process weights.
- LoRA (peft adapters on the image tower, base weights frozen): 2 processes == 1 process, merged exports equal.
Cost: ~45-100 s per launch on 2 busy cores (process start-up dominates); 5 launches + 3 in-process runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashiontune.train import load_train_config, run_training
from fashiontune.train.testing import build_tiny_shards

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/tiny-kagl-softmax.yaml"
ACCELERATE = Path(sys.executable).with_name("accelerate")
TOL = 1e-4


@pytest.fixture(scope="module")
def kagl(tmp_path_factory) -> Path:
    return build_tiny_shards("kagl", tmp_path_factory.mktemp("kagl"), n=300)


@pytest.fixture(scope="module")
def reference(kagl, tmp_path_factory) -> Path:
    """1 process, 2 workers, batch 8 x grad_accum 2 = global batch 16."""
    out = tmp_path_factory.mktemp("ref")
    run_training(load_train_config(CONFIG, common(kagl, out, "ref") + ["data.workers=2", "loop.grad_accum=2"]))
    return out / "ref"


def common(shards: Path, out: Path, name: str) -> list[str]:
    return [f"data.shards={shards}", f"out_dir={out}", f"name={name}", "data.batch_size=8",
            "data.shuffle_shards=false", "data.shuffle_buffer=0", "loop.max_steps=6", "checkpoint.every_steps=3",
            "checkpoint.export_best=false", "log.every_steps=1", "log.tensorboard=false", "log.progress=false",
            "loop.nan_steps=[2]"]  # step 2 is skipped everywhere: in 2-process runs only rank 1's loss is NaN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*overrides: str) -> None:
    launch_config(CONFIG, *overrides, "loop.nan_ranks=[1]")


def launch_config(config: Path, *overrides: str) -> None:
    argv = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            str(ROOT / "jobs/train.py"), "--config", str(config), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def weights(run: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(run / "export" / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
    sd.update({f"head.{k}": v for k, v in torch.load(run / "export" / "heads.pt", weights_only=True).items()})
    return sd


def max_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_ddp_two_processes_match_one_process(kagl, reference, tmp_path):
    launch(*common(kagl, tmp_path, "ddp"), "data.workers=0")
    run = tmp_path / "ddp"
    r, ref = results(run), results(reference)
    assert r["world_size"] == 2 and r["step"] == 6 and ref["world_size"] == 1
    assert r["samples_seen"] == ref["samples_seen"] == 6 * 16
    assert max_diff(run, reference) < TOL
    assert r["final"]["loss"] == pytest.approx(ref["final"]["loss"], abs=1e-3)
    assert r["skipped_steps"] == ref["skipped_steps"] == 1
    assert r["final"]["count"] == ref["final"]["count"]  # the whole val split, gathered over both ranks


def test_deepspeed_zero2_trains_saves_and_resumes(kagl, reference, tmp_path):
    ds = ["dist.strategy=deepspeed", f"dist.deepspeed_config={ROOT / 'configs/deepspeed/zero2.json'}", "data.workers=0"]
    launch(*common(kagl, tmp_path, "zero2"), *ds, "loop.stop_after_steps=3")
    ckpt = tmp_path / "zero2" / "checkpoints" / "step_00000003"
    assert (ckpt / "complete.json").is_file()
    parts = sorted(p.name for p in (ckpt / "pytorch_model").iterdir())
    assert [p for p in parts if "optim_states" in p] == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]  # partitioned
    assert not (tmp_path / "zero2" / "results.json").exists()
    launch(*common(kagl, tmp_path, "zero2"), *ds)  # the same command again: resumes from step 3
    r = results(tmp_path / "zero2")
    assert r["resumed_from_step"] == 3 and r["step"] == 6 and r["world_size"] == 2
    assert r["skipped_steps"] == 1  # counted before the checkpoint, restored with it
    assert max_diff(tmp_path / "zero2", reference) < TOL
    assert r["final"]["loss"] == pytest.approx(results(reference)["final"]["loss"], abs=1e-3)


def test_ddp_contrastive_with_accumulation_matches_one_process(kagl, tmp_path):
    """Contrastive (ClipLoss local_loss + gather_with_grad, feature-cache accumulation) with DDP no_sync for all
    but the last micro-batch: 2 ranks x batch 4 x grad_accum 2 == 1 process x batch 4 x grad_accum 4 with 2
    workers. Same 16 (image, caption) pairs per step in a different row order, which a CLIP loss ignores."""
    config = ROOT / "configs/tiny-deepfashion-contrastive.yaml"
    base = [o for o in common(kagl, tmp_path, "x") if not o.startswith(("name=", "data.batch_size", "loop.nan"))]
    base += ["data.batch_size=4", "loop.max_steps=4", "checkpoint.every_steps=0"]
    run_training(load_train_config(config, base + ["name=ref", "data.workers=2", "loop.grad_accum=4"]))
    launch_config(config, *base, "name=ddp", "data.workers=0", "loop.grad_accum=2")
    r, ref = results(tmp_path / "ddp"), results(tmp_path / "ref")
    assert r["world_size"] == 2 and r["samples_seen"] == ref["samples_seen"] == 4 * 16
    assert max_diff(tmp_path / "ddp", tmp_path / "ref") < TOL
    assert r["final"]["loss"] == pytest.approx(ref["final"]["loss"], abs=1e-3)


def test_deepspeed_zero3_export_gathers_the_partitioned_weights(kagl, reference, tmp_path):
    """ZeRO-3 partitions the parameters themselves: the export must gather them (collectively) into a full
    open_clip checkpoint, equal to the 1-process run's weights."""
    launch(*common(kagl, tmp_path, "zero3"), "dist.strategy=deepspeed", "data.workers=0",
           f"dist.deepspeed_config={ROOT / 'configs/deepspeed/zero3.json'}")
    assert results(tmp_path / "zero3")["skipped_steps"] == 1
    assert max_diff(tmp_path / "zero3", reference) < TOL


def test_ddp_lora_matches_one_process(kagl, tmp_path):
    """DDP over a model whose base weights are frozen (requires_grad=False) and adapters train."""
    lora = ["model.lora.rank=4", "model.lora.targets=[attn,c_fc]", "model.lora.towers=[image]", "optim.lr=1e-2"]
    run_training(load_train_config(CONFIG, common(kagl, tmp_path, "ref") + ["data.workers=2", "loop.grad_accum=2", *lora]))
    launch(*common(kagl, tmp_path, "ddp"), "data.workers=0", *lora)
    r, ref = results(tmp_path / "ddp"), results(tmp_path / "ref")
    assert r["world_size"] == 2 and r["trainable_params"] == ref["trainable_params"] < ref["total_params"] / 10
    assert max_diff(tmp_path / "ddp", tmp_path / "ref") < TOL
