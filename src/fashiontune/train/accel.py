"""Build the Accelerator for a run: one process, DDP (gloo on CPU, NCCL on GPU) or DeepSpeed ZeRO.

Works under `accelerate launch`, `torchrun`, submitit/SLURM (they all set RANK/WORLD_SIZE/LOCAL_RANK) and
plain `python`. Two things accelerate 1.x does not do on its own here, handled below:
- CPU-only DDP needs `cpu=True`, else a torchrun-started process silently runs as a world of one;
- DeepSpeed without CUDA needs the gloo backend chosen up front (PartialState(backend="gloo")) and the
  ACCELERATE_USE_DEEPSPEED flag, and accelerate's DeepSpeedPlugin imports `transformers` unconditionally
  (only used for ZeRO-3 `from_pretrained` init), which we do not depend on.
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import os
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedDataParallelKwargs, InitProcessGroupKwargs

from fashiontune.config import ConfigError
from fashiontune.models.precision import Precision
from fashiontune.train.config import Strategy, TrainConfig


class _PluginWithoutTransformers(DeepSpeedPlugin):
    def set_deepspeed_weakref(self):  # accelerate imports transformers here; only zero3_init needs it
        if importlib.util.find_spec("transformers") is not None:
            super().set_deepspeed_weakref()


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(cfg: TrainConfig) -> PartialState:
    """Initialise the process group (once) and return accelerate's shared state (rank, world size)."""
    kw = {"timeout": datetime.timedelta(seconds=cfg.dist.timeout_s)}
    if cfg.dist.strategy == Strategy.deepspeed:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            os.environ.setdefault("LOCAL_RANK", "0")  # a single plain `python` process is a world of one
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            if os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]) != os.environ["WORLD_SIZE"]:
                _skip_single_host_shm_op()
            return PartialState(backend="gloo", **kw)
        return PartialState(**kw)
    return PartialState(cpu=not torch.cuda.is_available() and _launched(), **kw)


def _skip_single_host_shm_op() -> None:
    """Ranks on several nodes: DeepSpeed's CPU shared-memory all-reduce (the deepspeed_shm_comm op) only runs
    when every rank shares one host (shm_interface.cpp: LOCAL_SIZE == world size), yet DeepSpeed compiles it
    with ninja on first use (minutes on a small node, racing between nodes over one cache). Marked incompatible,
    DeepSpeed uses torch.distributed (gloo) without building it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """Read the ZeRO config file and fill its "auto" entries from the train config."""
    path = Path(cfg.dist.deepspeed_config)
    try:
        if path.suffix in (".yaml", ".yml"):
            from omegaconf import OmegaConf

            ds = OmegaConf.to_container(OmegaConf.load(path))
        else:
            ds = json.loads(path.read_text())
    except Exception as e:
        raise ConfigError(f"{path}: not a valid DeepSpeed config ({e}); see configs/deepspeed/zero2.json.") from e
    ds = copy.deepcopy(ds)
    micro, gas = cfg.data.batch_size, cfg.loop.grad_accum
    fill = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "train_batch_size": micro * gas * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
    }
    for k, v in fill.items():
        if ds.get(k, "auto") == "auto":
            ds[k] = v
        elif ds[k] != v:
            raise ConfigError(
                f"{path}: {k}={ds[k]} disagrees with the train config ({v}); set it to \"auto\" in the file."
            )
    blocks = _precision_blocks(cfg, path, ds)
    for key in ("fp16", "bf16", "torch_autocast"):
        ds.pop(key, None)
    ds.update(blocks)
    ds.setdefault("zero_allow_untested_optimizer", True)  # we hand it torch's AdamW
    ds.setdefault("steps_per_print", 10**9)
    return ds


def _precision_blocks(cfg: TrainConfig, path: Path, ds: dict) -> dict:
    """loop.precision decides; the file's fp16 block may tune the loss scaler (loss_scale, initial_scale_power...).

    - bf16: autocast over fp32 master weights (DeepSpeed's torch_autocast), not its bf16 mode that casts the
      module to bf16: the tasks feed fp32 images and compute losses outside the engine.
    - fp16: DeepSpeed's fp16 mode (fp16 parameters, fp32 masters in the ZeRO optimizer, its dynamic loss
      scaler) with `auto_cast`, which casts the engine's inputs (images) to fp16; validation runs the module
      under autocast (backend.autocast()). Not torch_autocast with float16: in DeepSpeed 0.19 its ZeRO
      optimizers clip the gradients still multiplied by the GradScaler's scale, and an overflow skips the
      step without ever lowering that scale (every later step is skipped too).
    - fp32: neither (no fp16 block)."""
    precision = resolved_precision(cfg)
    for key, mine in (("fp16", Precision.fp16), ("bf16", Precision.bf16)):
        block = ds.get(key)
        if isinstance(block, dict) and block.get("enabled") is True and precision != mine:
            raise ConfigError(f"{path}: {key}.enabled=true disagrees with loop.precision={precision.value}; "
                              f"remove it (loop.precision decides), or set loop.precision={mine.value}.")
    out: dict = {"bf16": {"enabled": False}}
    if precision == Precision.fp16:
        out["fp16"] = {**(ds.get("fp16") or {}), "enabled": True, "auto_cast": True}
    if precision == Precision.bf16:
        out["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return out


def resolved_precision(cfg: TrainConfig) -> Precision:
    """loop.precision with `auto` made concrete for this machine (bf16 on CUDA, fp32 on CPU); fp16 without
    CUDA is refused here, before any DeepSpeed config or accelerator is made from it."""
    cuda = torch.cuda.is_available()
    precision = cfg.loop.precision.resolve("cuda" if cuda else "cpu")
    if precision == Precision.fp16 and not cuda:
        raise ConfigError("loop.precision=fp16 needs a GPU (fp16 loss scaling, and DeepSpeed's fp16 mode, do not "
                          "run on CPU); use loop.precision=bf16 or fp32 here.")
    return precision


def make_accelerator(cfg: TrainConfig, find_unused_parameters: bool = False) -> Accelerator:
    precision = resolved_precision(cfg)  # first: a refused precision stops before the process group starts
    state = process_state(cfg)
    mixed = {Precision.fp32: "no", Precision.bf16: "bf16", Precision.fp16: "fp16"}[precision]
    handlers = [
        DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters),
        InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.dist.timeout_s)),
    ]
    kw: dict = {}
    if cfg.dist.strategy == Strategy.deepspeed:
        mixed = "fp16" if precision == Precision.fp16 else "no"  # bf16: torch_autocast in the DS config
        kw["deepspeed_plugin"] = _PluginWithoutTransformers(hf_ds_config=deepspeed_config(cfg, state.num_processes))
    else:
        kw["cpu"] = not torch.cuda.is_available()
    # gradient_accumulation_steps stays 1: tasks scale their micro-batch losses themselves (see tasks/base.py).
    return Accelerator(mixed_precision=mixed, kwargs_handlers=handlers,
                       dynamo_backend="inductor" if cfg.loop.compile else "no", **kw)
