"""DeepSpeed ZeRO 1/2/3 trains every task the way DDP does (issue 18), and its precision settings.

Unit (~10 s, mostly importing accelerate and DeepSpeed; one tiny model): the generated DeepSpeed config's
precision blocks; fp16 refused on CPU before any process group starts; 0-dim parameters (open_clip's
logit_scale) reshaped for the engine and restored for export.

Distributed (one `accelerate launch` of 2 CPU processes that runs every configuration in turn, this file
being its script): contrastive (ClipLoss across ranks, feature-cache accumulation: trainable 0-dim
logit_scale), labeltext, attributes and multilabel (trainable prompt heads: 0-dim logit_scale, sigmoid
heads' 0-dim logit_bias, label embeddings) under DDP and ZeRO-1/2/3, each with grad_accum=2 and the same
data. Every ZeRO run must equal the DDP run of its task: the per-step training losses, the final validation
metrics and the exported weights to 1e-4 (measured: <= 1e-6 on the losses). The contrastive ZeRO-2 and
ZeRO-3 runs stop after a checkpoint at step 2 and resume from it (the same command again), so they also
prove that a ZeRO checkpoint holding the reshaped logit_scale resumes; their exports load in plain open_clip
with logit_scale of shape []. (The softmax task's ZeRO runs, resumed by a fresh launch, are in
test_train_distributed.py.)
Cost: shards ~20 s + one launch of 18 short runs (3-11 s each, printed with `pytest -s`; start-up ~50 s):
~3 min on 2 busy cores (measured 183 s for the whole file at load 4).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
TOL = 1e-4
STAGES = ("zero1", "zero2", "zero3")
RESUMED = {("contrastive", "zero2"), ("contrastive", "zero3")}  # stopped at step 2, resumed to the end
TASKS = {  # task -> (config, shard format, overrides)
    "contrastive": ("tiny-deepfashion-contrastive.yaml", "deepfashion-mm", ["data.batch_size=4"]),
    "labeltext": ("tiny-kagl-labeltext.yaml", "kagl", ["data.batch_size=8"]),
    "attributes": ("tiny-attributes.yaml", "kagl",
                   ["data.batch_size=8", "task.head=prompts", "task.prompts.text_mode=embeddings"]),
    # sigmoid prompt heads add a 0-dim logit_bias; the ViT tower: DeepSpeed does not broadcast BatchNorm
    # buffers as DDP does, so the config's ResNet would validate rank 1 with other running statistics
    "multilabel": ("tiny-imaterialist-multilabel.yaml", "imaterialist",
                   ["data.batch_size=8", "model.name=ft-tiny-vit", "task.head=prompts"]),
}


# -- unit ----------------------------------------------------------------------------------------------------
def _ds_cfg(*overrides: str, file: Path = ROOT / "configs/deepspeed/zero2.json"):
    from fashiontune.train.config import load_train_config

    return load_train_config(None, ["dist.strategy=deepspeed", f"dist.deepspeed_config={file}", *overrides])


def test_generated_deepspeed_config_precision_blocks(monkeypatch, tmp_path):
    """fp16: DeepSpeed's fp16 mode WITH auto_cast (images cast to the fp16 parameters' dtype), the file's
    loss-scaler keys kept; bf16: torch_autocast as before; fp32: no fp16 block at all; a file enabling
    another precision than loop.precision is refused naming both."""
    from fashiontune.config import ConfigError
    from fashiontune.train.accel import deepspeed_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what a GPU node resolves
    ds = deepspeed_config(_ds_cfg("loop.precision=fp16"), world_size=2)
    assert ds["fp16"] == {"enabled": True, "auto_cast": True}
    assert "torch_autocast" not in ds and ds["bf16"] == {"enabled": False}

    tuned = tmp_path / "zero2-fp16.json"
    tuned.write_text(json.dumps({**json.loads((ROOT / "configs/deepspeed/zero2.json").read_text()),
                                 "fp16": {"initial_scale_power": 12, "loss_scale_window": 500}}))
    ds = deepspeed_config(_ds_cfg("loop.precision=fp16", file=tuned), world_size=2)
    assert ds["fp16"] == {"enabled": True, "auto_cast": True, "initial_scale_power": 12, "loss_scale_window": 500}

    for precision in ("fp32", "bf16"):
        ds = deepspeed_config(_ds_cfg(f"loop.precision={precision}", file=tuned), world_size=2)
        assert "fp16" not in ds and ds["bf16"] == {"enabled": False}
        assert ds.get("torch_autocast") == ({"enabled": True, "dtype": "bfloat16"} if precision == "bf16" else None)
    assert "fp16" not in deepspeed_config(_ds_cfg("loop.precision=auto"), world_size=2)  # auto -> bf16 on CUDA

    wrong = tmp_path / "zero2-fp16-on.json"
    wrong.write_text(json.dumps({"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}}))
    with pytest.raises(ConfigError, match=r"zero2-fp16-on\.json: fp16\.enabled=true disagrees with loop\.precision=bf16"):
        deepspeed_config(_ds_cfg("loop.precision=bf16", file=wrong), world_size=2)


def test_fp16_is_refused_on_cpu_before_the_process_group(monkeypatch):
    """On CPU, DeepSpeed's own refusal ("Type fp16 is not supported on your device") would come from inside
    accelerator.prepare on every rank; ours is one line naming loop.precision and what to use instead, and
    comes before process_state() sets anything up (no ACCELERATE_USE_DEEPSPEED, no process group)."""
    import torch.distributed as dist

    from fashiontune.config import ConfigError
    from fashiontune.train.accel import deepspeed_config, make_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    cfg = _ds_cfg("loop.precision=fp16")
    for call in (lambda: make_accelerator(cfg), lambda: deepspeed_config(cfg, world_size=2)):
        with pytest.raises(ConfigError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("loop.precision=fp16 needs a GPU") and "bf16 or fp32" in msg
    assert "ACCELERATE_USE_DEEPSPEED" not in os.environ and not (dist.is_available() and dist.is_initialized())


def test_zero_dim_parameters_are_reshaped_for_the_engine_and_restored_for_export():
    """DeepSpeed views every parameter as bytes to broadcast it, which a 0-dim tensor cannot do. The backend
    gives them shape [1] in place (same Parameter objects: the optimiser keeps them; the forward is
    unchanged) and its export state dict has them 0-dim again, loadable by open_clip (strict)."""
    import open_clip

    from fashiontune.models import load_clip
    from fashiontune.models.config import ModelConfig
    from fashiontune.tasks.contrastive import ContrastiveTask
    from fashiontune.tasks.config import TaskConfig
    from fashiontune.train.backend import scalars_restored, scalars_to_vectors

    torch.manual_seed(0)
    loaded = load_clip(ModelConfig(name="ft-tiny-vit", pretrained=""))
    task = ContrastiveTask(TaskConfig(name="contrastive"), loaded)
    module = task.module.eval()
    image, text = torch.randn(2, 3, 64, 64), loaded.tokenizer(["a red dress", "blue jeans"])
    before = module(image, text)
    param = module.clip.logit_scale
    names = scalars_to_vectors(module)
    assert "clip.logit_scale" in names and module.clip.logit_scale is param and param.shape == (1,)
    assert all(p.dim() > 0 for p in module.parameters())  # nothing left for DeepSpeed to fail on
    after = module(image, text)
    assert all(torch.allclose(a.reshape(-1), b.reshape(-1)) for a, b in zip(before[:3], after[:3]))
    state = scalars_restored(module.state_dict(), names)
    assert state["clip.logit_scale"].shape == ()
    fresh = open_clip.create_model("ft-tiny-vit")
    fresh.load_state_dict({k[len("clip."):]: v for k, v in state.items()})  # strict: shapes must match


# -- distributed: one launch, every configuration ------------------------------------------------------------
def _overrides(task: str, shards: Path, out: Path, name: str, strategy: str) -> list[str]:
    extra = TASKS[task][2]
    common = [f"data.shards={shards}", f"out_dir={out}", f"name={name}", "data.workers=0", "loop.grad_accum=2",
              "data.shuffle_shards=false", "data.shuffle_buffer=0", "loop.max_steps=4", "checkpoint.every_steps=0",
              "checkpoint.export_best=false", "log.every_steps=1", "log.tensorboard=false", "log.progress=false",
              "log.plots=false", *extra]
    if strategy != "ddp":
        common += ["dist.strategy=deepspeed", f"dist.deepspeed_config={ROOT / 'configs/deepspeed' / strategy}.json"]
    return common


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Builds the two tiny corpora, then one 2-process launch runs DDP and ZeRO-1/2/3 for every task."""
    from fashiontune.train.testing import build_tiny_shards

    base = tmp_path_factory.mktemp("ds")
    shards = {fmt: build_tiny_shards(fmt, base / fmt, n=200) for fmt in {t[1] for t in TASKS.values()}}
    spec = []
    for strategy in ("ddp", *STAGES):  # DDP first: accelerate's state cannot go back from DeepSpeed to DDP
        for task, (config, fmt, _) in TASKS.items():
            spec.append({"config": str(ROOT / "configs" / config), "stop": 2 if (task, strategy) in RESUMED else 0,
                         "overrides": _overrides(task, shards[fmt], base / "runs", f"{task}-{strategy}", strategy)})
    (base / "spec.json").write_text(json.dumps(spec))
    argv = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            __file__, str(base / "spec.json")]
    t0 = time.time()
    proc = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    print(f"\none launch, {len(spec)} configurations: {time.time() - t0:.0f} s")
    print(proc.stdout[-2000:])
    return base / "runs"


def _metrics(run: Path) -> tuple[list[dict], dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = sorted((x for x in lines if x["kind"] == "train"), key=lambda x: x["step"])
    return train, json.loads((run / "results.json").read_text())


def _export(run: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(run / "export" / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
    heads = run / "export" / "heads.pt"
    if heads.is_file():
        sd.update({f"head.{k}": v for k, v in torch.load(heads, weights_only=True).items()})
    return sd


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("task", list(TASKS))
def test_zero_trains_like_ddp(runs, task, stage):
    ddp_train, ddp = _metrics(runs / f"{task}-ddp")
    ds_train, ds = _metrics(runs / f"{task}-{stage}")
    ddp_loss, ds_loss = [x["loss"] for x in ddp_train], [x["loss"] for x in ds_train]
    assert ds["world_size"] == ddp["world_size"] == 2 and ds["step"] == ddp["step"] == 4
    assert ds["samples_seen"] == ddp["samples_seen"] and ds["skipped_steps"] == 0
    assert ds["resumed_from_step"] == (2 if (task, stage) in RESUMED else 0)
    assert len(ds_loss) == len(ddp_loss) == 4 and ds_loss == pytest.approx(ddp_loss, abs=TOL)
    # backend.step() hands the grad norm over as a tensor; metrics.jsonl has numbers, the same under both
    ddp_gn, ds_gn = [x["grad_norm"] for x in ddp_train], [x["grad_norm"] for x in ds_train]
    assert all(isinstance(g, float) and g > 0 for g in ddp_gn + ds_gn), (ddp_gn, ds_gn)
    assert ds_gn == pytest.approx(ddp_gn, rel=1e-3)
    assert ds["final"].keys() == ddp["final"].keys()
    for k, v in ddp["final"].items():
        assert ds["final"][k] == pytest.approx(v, abs=TOL), k
    a, b = _export(runs / f"{task}-{stage}"), _export(runs / f"{task}-ddp")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)  # 0-dim ones 0-dim again
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert diff < TOL, diff


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_resumed_zero_contrastive_export_loads_in_open_clip(runs, stage):
    """The stopped-and-resumed ZeRO run's checkpoint held logit_scale as [1] (what the engine trains); its
    export is plain open_clip again: logit_scale of shape [] and the value the DDP run learnt."""
    import open_clip

    import fashiontune.models  # noqa: F401  (registers the tiny model configs with open_clip)

    run = runs / f"contrastive-{stage}"
    assert (run / "checkpoints" / "step_00000002" / "complete.json").is_file()
    path = run / "export" / "open_clip_pytorch_model.bin"
    assert torch.load(path, map_location="cpu", weights_only=True)["logit_scale"].shape == ()
    model, _, _ = open_clip.create_model_and_transforms("ft-tiny-vit", pretrained=str(path))
    ddp, scale = _export(runs / "contrastive-ddp")["logit_scale"], model.logit_scale.detach()
    assert scale.shape == () and float(scale) == pytest.approx(float(ddp), abs=TOL)
    assert float(scale) != pytest.approx(float(torch.log(torch.tensor(1 / 0.07))), abs=1e-6)  # it trained


def _drive(spec_path: str) -> None:
    """The launched script: every configuration of the spec in turn, in these 2 processes (start-up, the
    expensive part on CPU, is paid once). Accelerate's state singletons are reset between runs, as each
    run builds its own Accelerator (DDP, or DeepSpeed with another config); the DDP runs come first."""
    from accelerate.state import AcceleratorState, GradientState

    from fashiontune.train import load_train_config, run_training

    for run in json.loads(Path(spec_path).read_text()):
        for stop in ([run["stop"]] if run["stop"] else []) + [0]:
            t0 = time.time()
            AcceleratorState._reset_state()
            GradientState._reset_state()
            extra = [f"loop.stop_after_steps={stop}"] if stop else []
            run_training(load_train_config(run["config"], run["overrides"] + extra))
            if int(os.environ.get("RANK", "0")) == 0:
                name = next(o for o in run["overrides"] if o.startswith("name="))[5:]
                print(f"{name}{' (stopped at %d)' % stop if stop else ''}: {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    _drive(sys.argv[1])
