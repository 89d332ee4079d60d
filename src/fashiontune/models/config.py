"""Typed model config: which image(-text) model to build and where its weights come from."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class Backbone(str, enum.Enum):
    open_clip = "open_clip"  # a CLIP model (image + text tower) built by open_clip
    timm = "timm"  # an image-only timm backbone, for the classification baselines


@dataclass
class ModelConfig:
    # open_clip model name: a built-in ("ViT-B-32"), a shipped tiny one ("ft-tiny-vit", "ft-tiny-rn"),
    # or "local-dir:/path" / "hf-hub:org/repo" (config and weights from there; `pretrained` ignored).
    name: str = "ft-tiny-vit"
    # Weights: an open_clip pretrained tag ("openai", "laion2b_s34b_b79k"; downloaded into cache_dir),
    # a local checkpoint file (e.g. /path/to/open_clip_pytorch_model.bin), or "" for random init.
    # For backbone=timm: a timm pretrained tag ("default" or e.g. "a1_in1k"), a local file, or "".
    pretrained: str = ""
    backbone: Backbone = Backbone.open_clip
    timm_name: str = "resnet18"  # backbone=timm only: resnet18, resnet101, vit_base_patch16_224, inception_v3
    cache_dir: Optional[str] = None  # where tags are downloaded to / looked up in
    grad_checkpointing: bool = False
    image_size: Optional[int] = None  # override the config's input size (and the preprocessing)
    context_length: Optional[int] = None  # override the text context length (open_clip only)
    # Training augmentation (open_clip's AugmentationCfg): random-resized-crop scale range.
    aug_scale_min: float = 0.9
    aug_scale_max: float = 1.0
