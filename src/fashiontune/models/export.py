"""Export a trained model so open_clip (or timm) loads it directly, with task heads saved beside it.

    out_dir/open_clip_pytorch_model.bin   open_clip.create_model_and_transforms(name, pretrained=<this file>)
    out_dir/open_clip_config.json         {"model_cfg", "preprocess_cfg"}: also loads as name="local-dir:out_dir"
    out_dir/heads.pt + heads.json         task heads (state dict) and their label vocabularies / thresholds
    out_dir/export.json                   {"name", "backbone", ...}: how to rebuild the model
A timm backbone is written as pytorch_model.bin (+ export.json with its timm name) instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..files import replace_atomic, write_json_atomic
from .config import Backbone
from .loading import LoadedModel
from .safeload import load_tensors

OPEN_CLIP_WEIGHTS = "open_clip_pytorch_model.bin"
TIMM_WEIGHTS = "pytorch_model.bin"


def save_tensors(obj: Any, path: Path) -> None:
    replace_atomic(path, lambda tmp: torch.save(obj, tmp))


def export_model(loaded: LoadedModel, out_dir: str | Path, state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write the model weights (`state_dict` if given, e.g. gathered from ZeRO-3; else the live model)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else loaded.model.state_dict()
    sd = {k: v.detach().to("cpu").clone() for k, v in sd.items()}
    info: dict[str, Any] = {"name": loaded.name, "backbone": loaded.backbone.value}
    if loaded.backbone == Backbone.open_clip:
        path = out / OPEN_CLIP_WEIGHTS
        save_tensors(sd, path)
        preprocess_cfg = dict(getattr(loaded.model.visual, "preprocess_cfg", {}) or {})
        write_json_atomic(out / "open_clip_config.json", {"model_cfg": loaded.model_cfg, "preprocess_cfg": preprocess_cfg})
        info["load"] = f"open_clip.create_model_and_transforms({loaded.name!r}, pretrained={str(path)!r})"
    else:
        path = out / TIMM_WEIGHTS
        save_tensors(sd, path)
        info["timm_name"] = loaded.name
        info["data_cfg"] = loaded.model_cfg.get("data_cfg", {})
        info["load"] = f"timm.create_model({loaded.name!r}, num_classes=0, pretrained=True, pretrained_cfg_overlay={{'file': {str(path)!r}}})"
    write_json_atomic(out / "export.json", info)
    return path


def save_heads(out_dir: str | Path, heads: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """heads.pt: head tensors; heads.json: task name, fields, vocabularies, thresholds, prompts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors({k: v.detach().to("cpu").clone() for k, v in heads.items()}, out / "heads.pt")
    write_json_atomic(out / "heads.json", dict(meta))


def load_heads(out_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """heads.pt through the weights-only loader (a crafted file is refused with UnsafeFileError)."""
    out = Path(out_dir)
    heads = load_tensors(out / "heads.pt", hint="Re-export the model (fashiontune train writes heads.pt).")
    return heads, json.loads((out / "heads.json").read_text())
