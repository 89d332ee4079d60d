"""Typed model config: which image(-text) model to build and where its weights come from."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional


class Backbone(str, enum.Enum):
    open_clip = "open_clip"  # a CLIP model (image + text tower) built by open_clip
    timm = "timm"  # an image-only timm backbone, for the classification baselines


@dataclass
class LoraSettings:
    """LoRA adapters through peft (models/lora.py); rank 0 = off. Merged into the weights at export."""

    rank: int = 0
    alpha: float = 16.0  # the adapter output is scaled by alpha / rank
    dropout: float = 0.0
    # module-name suffixes: attn = each nn.MultiheadAttention (in_proj and out_proj); c_fc, c_proj = MLP linears
    targets: List[str] = field(default_factory=lambda: ["attn"])
    towers: List[str] = field(default_factory=lambda: ["image", "text"])  # image and/or text


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
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self, source: str = "model config", prefix: str = "model.") -> "ModelConfig":
        """Range checks before any model is built; raise ConfigError naming the key and the allowed range."""
        from fashiontune.config import require

        require(bool(self.name), source, f"{prefix}name", self.name, "set an open_clip model name, e.g. ft-tiny-vit")
        for key in ("image_size", "context_length"):
            v = getattr(self, key)
            require(v is None or v >= 1, source, prefix + key, v, "set an integer >= 1, or null for the model's own")
        require(0 < self.aug_scale_min <= 1, source, f"{prefix}aug_scale_min", self.aug_scale_min,
                "set a fraction of the image area in (0, 1]")
        require(self.aug_scale_min <= self.aug_scale_max <= 1, source, f"{prefix}aug_scale_max", self.aug_scale_max,
                f"set a fraction in [aug_scale_min={self.aug_scale_min}, 1]")
        lo = self.lora
        require(lo.rank >= 0, source, f"{prefix}lora.rank", lo.rank, "set an integer >= 0 (0 = off)")
        require(lo.alpha > 0, source, f"{prefix}lora.alpha", lo.alpha, "set a value > 0 (scale = alpha / rank)")
        require(0 <= lo.dropout < 1, source, f"{prefix}lora.dropout", lo.dropout, "set a value in [0, 1)")
        require(bool(lo.towers) and set(lo.towers) <= {"image", "text"}, source, f"{prefix}lora.towers", lo.towers,
                "list image and/or text")
        require(bool(lo.targets), source, f"{prefix}lora.targets", lo.targets, "list module-name suffixes, e.g. [attn]")
        require(not lo.rank or self.backbone == Backbone.open_clip, source, f"{prefix}lora.rank", lo.rank,
                "LoRA needs model.backbone=open_clip; set 0 for timm backbones")
        if self.backbone == Backbone.timm:
            require(bool(self.timm_name), source, f"{prefix}timm_name", self.timm_name, "set a timm model name, e.g. resnet18")
        return self
