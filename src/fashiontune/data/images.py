"""uint8 batches between processes, normalised on the device.

open_clip's transforms end with `ToTensor()` (uint8 -> float / 255) and `Normalize(mean, std)`. Run in a
DataLoader worker, they turn every pixel into 4 bytes that then cross a shared-memory queue, the pin-memory
copy and PCIe. `split_transform` keeps the PIL steps in the worker and stops at the uint8 tensor ToTensor
would have divided; `ImageNorm.apply` does the division and the normalisation where the batch lands (the
GPU), with the same float32 operations in the same order, so the result is bit-identical to the float
pipeline (tests/test_data_uint8.py). A transform of another shape keeps shipping floats, with the reason logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

# PIL modes whose pixels are uint8 (ToTensor divides those by 255; "1", "I", "I;16" and "F" it does not)
UINT8_MODES = ("RGB", "RGBA", "L", "LA")


@dataclass(frozen=True)
class ImageNorm:
    """The device half of a split transform: (x / 255 - mean) / std per channel, as ToTensor + Normalize."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, images: torch.Tensor, device: torch.device | str | None = None,
              non_blocking: bool = True) -> torch.Tensor:
        """uint8 B x C x H x W (on any device) -> normalised float32 on `device` (default: where it is)."""
        x = images.to(device if device is not None else images.device, non_blocking=non_blocking)
        # ToTensor: float32, then x / 255. A Python-scalar divisor on CUDA becomes x * (1/255), which can be one
        # bit off; a 0-dim tensor on the same device keeps a true division (CPU divides either way).
        x = x.to(torch.float32).div(torch.full((), 255.0, dtype=torch.float32, device=x.device))
        # Normalize: sub_ then div_ by float32 per-channel tensors (torchvision's functional normalize)
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


@dataclass
class ToUint8:
    """The worker half: the transform's PIL steps, then the uint8 C x H x W tensor ToTensor would have divided."""

    pil_steps: T.Compose

    def __call__(self, pic: Image.Image) -> torch.Tensor:
        pic = self.pil_steps(pic)
        if not isinstance(pic, Image.Image) or pic.mode not in UINT8_MODES:
            what = f"a PIL image of mode {pic.mode!r}" if isinstance(pic, Image.Image) else type(pic).__name__
            raise ValueError(f"the image transform's steps before ToTensor gave {what}, not 8-bit pixels; "
                             "set data.uint8_batches=false to ship float batches")
        return TF.pil_to_tensor(pic).contiguous()


def _tensor(values) -> tuple[float, ...]:
    return tuple(float(v) for v in torch.as_tensor(values, dtype=torch.float32).flatten().tolist())


def split_transform(transform: Callable) -> tuple[Callable, ImageNorm | None, str]:
    """(worker transform giving uint8, ImageNorm for the device, "") for a torchvision Compose that ends with
    ToTensor, Normalize (open_clip's train and val transforms, timm's without random erasing); else
    (transform unchanged, None, why not)."""
    if not isinstance(transform, T.Compose):
        return transform, None, f"{type(transform).__name__} is not a torchvision.transforms.Compose"
    steps = list(transform.transforms)
    if len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or not isinstance(steps[-1], T.Normalize):
        tail = ", ".join(type(s).__name__ for s in steps[-2:]) or "nothing"
        return transform, None, f"the transform ends with {tail}, not ToTensor, Normalize"
    if any(isinstance(s, (T.ToTensor, T.PILToTensor, T.Normalize, T.ConvertImageDtype)) for s in steps[:-2]):
        return transform, None, "the transform has tensor steps before its final ToTensor"
    norm = steps[-1]
    mean, std = _tensor(norm.mean), _tensor(norm.std)
    if len(mean) != len(std) or any(s == 0 for s in std):
        return transform, None, f"Normalize(mean={norm.mean}, std={norm.std}) is not a per-channel normalisation"
    return ToUint8(T.Compose(steps[:-2])), ImageNorm(mean, std), ""
