"""Models: open_clip CLIP models (any name/tag, local checkpoints, shipped tiny configs) and timm backbones."""

from .config import Backbone, ModelConfig
from .errors import ModelLoadError, UnsafeFileError
from .export import OPEN_CLIP_WEIGHTS, TIMM_WEIGHTS, export_model, load_heads, save_heads
from .loading import (
    MODEL_CONFIG_DIR,
    TINY_MODELS,
    LoadedModel,
    load_clip,
    load_model,
    register_model_configs,
)
from .safeload import load_tensors
from .towers import StageFreezer, image_stages

__all__ = [
    "Backbone",
    "ModelConfig",
    "LoadedModel",
    "ModelLoadError",
    "UnsafeFileError",
    "load_tensors",
    "load_clip",
    "load_model",
    "register_model_configs",
    "MODEL_CONFIG_DIR",
    "TINY_MODELS",
    "export_model",
    "save_heads",
    "load_heads",
    "OPEN_CLIP_WEIGHTS",
    "TIMM_WEIGHTS",
    "StageFreezer",
    "image_stages",
]
