"""The one precision enum, for training (`loop.precision`) and the eval job (`precision`)."""

from __future__ import annotations

import enum
from contextlib import nullcontext

import torch


class Precision(str, enum.Enum):
    auto = "auto"  # bf16 on CUDA, fp32 on CPU (CPU bf16 is slow without AMX and changes numbers)
    fp32 = "fp32"
    bf16 = "bf16"  # autocast bf16 (CPU and recent GPUs); no loss scaling needed
    fp16 = "fp16"  # autocast fp16, CUDA only (training adds a dynamic loss scaler)

    def resolve(self, device_type: str) -> "Precision":
        """auto -> what it means on this device ("cuda" or "cpu"); the others stay."""
        if self is Precision.auto:
            return Precision.bf16 if device_type == "cuda" else Precision.fp32
        return self

    def autocast(self, device: torch.device):
        """The autocast context of this precision on `device` (nothing for fp32)."""
        p = self.resolve(device.type)
        if p is Precision.fp32:
            return nullcontext()
        if p is Precision.fp16 and device.type != "cuda":
            raise ValueError("precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU.")
        return torch.autocast(device.type, dtype=torch.bfloat16 if p is Precision.bf16 else torch.float16)


def set_fast_math(tf32: bool, cudnn_benchmark: bool) -> None:
    """TF32 matmuls/convolutions and cuDNN's autotuner, as open_clip's trainer sets them (process-wide torch
    flags; no effect on CPU). TF32 keeps fp32's range with a 10-bit mantissa in matmul inputs: on A100/H100
    fp32 matmuls run on tensor cores (several times faster); bf16/fp16 autocast regions are unaffected.
    cudnn.benchmark times the convolution algorithms once per input shape (the patch embedding, ResNets)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark
