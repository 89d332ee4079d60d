"""The model under evaluation: an open_clip name + pretrained tag, a local weights file, a tiny random-init
config, or a training export directory (weights + export.json [+ heads]). All through fashiontune.models."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from fashiontune.models import OPEN_CLIP_WEIGHTS, TIMM_WEIGHTS, LoadedModel, ModelConfig, ModelLoadError, load_clip


def _read_json(path: Path, ckpt: str) -> dict:
    """A JSON object written by training's export, or ModelLoadError naming the file and the fix."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"model.checkpoint={ckpt}: {path} is not valid JSON ({e}); re-export the model "
                             "(the run's export step) or copy the export directory again.") from e
    if not isinstance(info, dict):
        raise ModelLoadError(f"model.checkpoint={ckpt}: {path} is not a JSON object; re-export the model.")
    return info


def resolve_model_config(cfg) -> tuple[ModelConfig, Path | None]:
    """ModelConfig to build + the export directory (for heads), from an EvalModelConfig."""
    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)}
    ckpt = getattr(cfg, "checkpoint", "")
    if not ckpt:
        return ModelConfig(**base), None
    p = Path(ckpt)
    if p.is_dir():
        info_path = p / "export.json"
        if not info_path.is_file():
            raise ModelLoadError(
                f"model.checkpoint={ckpt}: a directory without export.json; pass a training export directory "
                f"(runs/<name>/export) or the weights file itself (e.g. {p / OPEN_CLIP_WEIGHTS})."
            )
        info = _read_json(info_path, ckpt)
        backbone = info.get("backbone", "open_clip")
        base["backbone"] = backbone
        if backbone == "timm":
            base["timm_name"] = info.get("timm_name", base["timm_name"])
            base["pretrained"] = str(p / TIMM_WEIGHTS)
            size = (info.get("data_cfg") or {}).get("input_size")  # (3, H, W) the backbone was trained at
            base["image_size"] = base["image_size"] or (int(size[-1]) if size else None)
        else:
            base["name"] = info.get("name", base["name"])
            base["pretrained"] = str(p / OPEN_CLIP_WEIGHTS)
            oc = p / "open_clip_config.json"  # sizes the model was trained at (e.g. a model.image_size override)
            if oc.is_file():
                mcfg = _read_json(oc, ckpt).get("model_cfg", {})
                size = mcfg.get("vision_cfg", {}).get("image_size")
                ctx = mcfg.get("text_cfg", {}).get("context_length")
                base["image_size"] = base["image_size"] or (size if isinstance(size, int) else None)
                base["context_length"] = base["context_length"] or (ctx if isinstance(ctx, int) else None)
        if not os.path.isfile(base["pretrained"]):
            raise ModelLoadError(f"model.checkpoint={ckpt}: {base['pretrained']} is missing; re-export the model.")
        return ModelConfig(**base), p
    if p.is_file():
        base["pretrained"] = str(p)
        return ModelConfig(**base), p.parent
    raise ModelLoadError(
        f"model.checkpoint={ckpt}: no such file or directory. Pass an export directory, a weights file, "
        "or leave it empty and set model.name / model.pretrained."
    )


def load_eval_model(cfg) -> tuple[LoadedModel, Path | None]:
    mc, export_dir = resolve_model_config(cfg)
    return load_clip(mc), export_dir


def fingerprint(cfg) -> dict:
    """What the embeddings depend on, for the on-disk cache (weights identified by size + mtime)."""
    mc, _ = resolve_model_config(cfg)
    out = {k: (v.value if hasattr(v, "value") else v) for k, v in dataclasses.asdict(mc).items()
           if k not in ("grad_checkpointing", "aug_scale_min", "aug_scale_max", "cache_dir")}
    if mc.pretrained and os.path.isfile(mc.pretrained):
        st = os.stat(mc.pretrained)
        out["weights_file"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out
