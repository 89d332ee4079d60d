"""Build an open_clip model (or a timm image backbone) with its transforms and tokenizer.

Weights come from a pretrained tag (downloaded on clusters), a local checkpoint file, or nowhere (random
init). When a tag cannot be fetched (offline, not cached) we raise ModelLoadError saying exactly what to
pass instead, because open_clip's own error ("Failed to download weights ...") does not.
"""

from __future__ import annotations

import difflib
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import open_clip
import torch
from torch import nn

from .config import Backbone, ModelConfig
from .errors import ModelLoadError, UnsafeFileError
from .safeload import refused

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
TINY_MODELS = ("ft-tiny-vit", "ft-tiny-rn")
_registered = False


def register_model_configs() -> None:
    """Make the shipped tiny configs (ft-tiny-*) known to open_clip by name; idempotent."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


register_model_configs()


@dataclass
class LoadedModel:
    model: nn.Module  # open_clip CLIP/CustomTextCLIP, or a timm model with its classifier removed
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Optional[Callable]  # None for image-only (timm) backbones
    name: str
    backbone: Backbone = Backbone.open_clip
    cfg: ModelConfig = field(default_factory=ModelConfig)
    model_cfg: dict = field(default_factory=dict)  # open_clip architecture config, or {"timm_name": ...}
    lora: Any = None  # the peft LoraModel over `model` when model.lora.rank > 0 (models/lora.py)

    @property
    def visual(self) -> nn.Module:
        """The image tower: maps B×3×H×W images to B×`image_dim` features."""
        return self.model.visual if self.backbone == Backbone.open_clip else self.model

    @property
    def image_dim(self) -> int:
        if self.backbone == Backbone.open_clip:
            return int(self.model.visual.output_dim)
        return int(self.model.num_features)

    @property
    def has_text(self) -> bool:
        return self.backbone == Backbone.open_clip and self.tokenizer is not None


_TRUST_HINT = ("Pass weights saved as a plain state dict of tensors (fashiontune's export, open_clip or timm "
               "releases) or a .safetensors file.")


def _fix_hint(what: str, example_file: str) -> str:
    return (
        f"Pass instead one of: model.pretrained=/path/to/{example_file} (a local checkpoint of {what}), "
        f"model.cache_dir=/dir/holding/downloaded/weights (if they were fetched on a machine with network), "
        f"or model.pretrained='' to start from random init."
    )


def _load_open_clip(cfg: ModelConfig) -> LoadedModel:
    register_model_configs()
    name = cfg.name
    schema, ident = open_clip.factory.parse_model_name(name)
    if schema is None and open_clip.get_model_config(name.replace("/", "-")) is None:
        near = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise ModelLoadError(
            f"model.name='{name}' is not an open_clip model config. "
            f"{'Did you mean ' + ', '.join(near) + '? ' if near else ''}"
            f"Known tiny configs: {', '.join(TINY_MODELS)}; see open_clip.list_models() for the rest, "
            f"or pass model.name='local-dir:/path' to a folder with open_clip_config.json."
        )
    pretrained = cfg.pretrained or None
    is_file = pretrained is not None and os.path.isfile(pretrained)
    if pretrained and not is_file and schema is None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        looks_like_path = os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors"))
        if looks_like_path:
            raise ModelLoadError(
                f"model.pretrained='{pretrained}': no such checkpoint file for model '{name}'. "
                + _fix_hint(f"'{name}'", "open_clip_pytorch_model.bin")
            )
        if pretrained not in tags:
            raise ModelLoadError(
                f"model.pretrained='{pretrained}' is not a pretrained tag of open_clip model '{name}' "
                f"(known tags: {', '.join(tags) or 'none'}). " + _fix_hint(f"'{name}'", "open_clip_pytorch_model.bin")
            )
    try:
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name,
            pretrained=pretrained,
            cache_dir=cfg.cache_dir,
            force_image_size=cfg.image_size,
            force_context_length=cfg.context_length,
            aug_cfg={"scale": (cfg.aug_scale_min, cfg.aug_scale_max)},
            weights_only=True,  # never run code from a weights file (see models/safeload.py)
        )
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(refused(Path(pretrained), _TRUST_HINT)) from e
    except (RuntimeError, OSError, ValueError) as e:
        src = f"checkpoint file {pretrained}" if is_file else f"pretrained tag '{pretrained}'"
        why = "does not match the architecture" if is_file else "could not be downloaded or found in the cache"
        raise ModelLoadError(
            f"open_clip model '{name}' with {src}: {why} ({str(e).splitlines()[0][:300]}). "
            + _fix_hint(f"'{name}'", "open_clip_pytorch_model.bin")
        ) from e
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    try:  # HF-tokenizer models (SigLIP, hf text towers) fetch their tokenizer too
        tokenizer = open_clip.get_tokenizer(name, context_length=cfg.context_length, cache_dir=cfg.cache_dir)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(
            f"open_clip model '{name}': its tokenizer could not be loaded ({str(e).splitlines()[0][:300]}). "
            f"Fetch it into model.cache_dir on a machine with network, or use a model with open_clip's built-in "
            f"tokenizer (e.g. model.name=ViT-B-32, or the tiny {', '.join(TINY_MODELS)})."
        ) from e
    model_cfg = open_clip.get_model_config(name) if schema is None else None
    if model_cfg is None and schema == "local-dir":
        model_cfg = open_clip.factory.get_model_config(name)
    model_cfg = dict(model_cfg or {})
    if cfg.image_size:
        model_cfg.setdefault("vision_cfg", {})["image_size"] = cfg.image_size
    if cfg.context_length:
        model_cfg.setdefault("text_cfg", {})["context_length"] = cfg.context_length
    loaded = LoadedModel(model, preprocess_train, preprocess_val, tokenizer, name, Backbone.open_clip, cfg, model_cfg)
    if cfg.lora.rank > 0:
        from .lora import apply_lora

        lo = cfg.lora
        loaded.lora = apply_lora(model, lo.rank, lo.alpha, lo.dropout, lo.targets, lo.towers)
    return loaded


def _create_timm(name: str, image_size: Optional[int], **kw: Any) -> nn.Module:
    import timm

    if image_size:
        try:  # ViTs need the size at build time (position embeddings); CNNs take any size
            return timm.create_model(name, num_classes=0, img_size=image_size, **kw)
        except TypeError:
            pass
    return timm.create_model(name, num_classes=0, **kw)


def _load_timm(cfg: ModelConfig) -> LoadedModel:
    import timm
    import timm.data

    name = cfg.timm_name
    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ModelLoadError(
            f"model.timm_name='{name}' is not a timm model."
            + (f" Did you mean {', '.join(near)}?" if near else "")
            + " Baselines: resnet18, resnet101, vit_base_patch16_224, inception_v3."
        )
    pretrained = cfg.pretrained
    try:
        if not pretrained:
            model = _create_timm(name, cfg.image_size, pretrained=False)
        elif os.path.isfile(pretrained):
            # timm's own file loader drops/adapts the classifier for num_classes=0.
            model = _create_timm(name, cfg.image_size, pretrained=True, pretrained_cfg_overlay={"file": pretrained})
        else:
            full = name if pretrained == "default" else f"{name}.{pretrained}"
            model = _create_timm(full, cfg.image_size, pretrained=True, cache_dir=cfg.cache_dir)
    except Exception as e:  # timm/hf raise many types offline (OSError, LocalEntryNotFoundError, RuntimeError)
        if isinstance(e.__cause__, pickle.UnpicklingError):  # timm's weights_only=True load refused the file
            raise UnsafeFileError(refused(Path(pretrained), _TRUST_HINT)) from e
        raise ModelLoadError(
            f"timm model '{name}' with model.pretrained='{pretrained}': weights could not be loaded "
            f"({str(e).splitlines()[0][:300]}). " + _fix_hint(f"timm '{name}'", "pytorch_model.bin")
        ) from e
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    if cfg.image_size:
        data_cfg["input_size"] = (3, cfg.image_size, cfg.image_size)
        data_cfg["crop_pct"] = 1.0
    pt = timm.data.create_transform(**data_cfg, is_training=True, scale=(cfg.aug_scale_min, cfg.aug_scale_max))
    pv = timm.data.create_transform(**data_cfg, is_training=False)
    return LoadedModel(model, pt, pv, None, name, Backbone.timm, cfg, {"timm_name": name, "data_cfg": data_cfg})


def load_clip(cfg: ModelConfig) -> LoadedModel:
    """Build the model in `cfg` (open_clip or timm) with its train/val transforms and tokenizer."""
    if cfg.backbone == Backbone.timm:
        return _load_timm(cfg)
    return _load_open_clip(cfg)


load_model = load_clip  # the name reads better for timm backbones
