"""theta(alpha) = (1 - alpha) * theta_base + alpha * theta_fine_tuned, written as an export per alpha.

The fine-tuned side is a training export (export.json + weights [+ heads]); the base is another export, a
weights file, or a pretrained tag of the fine-tuned model's architecture (e.g. `openai`: the zero-shot
model it started from). Heads: interpolated too when the base export has the same ones (e.g. prompt heads
initialised from the zero-shot classifier), else the fine-tuned heads are carried over unchanged (a linear
head has no zero-shot counterpart).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from ..errors import UserError
from ..files import write_json_atomic
from ..models import OPEN_CLIP_WEIGHTS, TIMM_WEIGHTS, ModelLoadError, load_clip, load_tensors
from ..models.export import save_tensors

_HINT = "Pass a training export directory (runs/<name>/export) or an open_clip/timm weights file."


class WiseError(UserError, ValueError):
    """Two models that cannot be interpolated, or a bad alpha; the message names both and the fix."""


def _weights_file(export_dir: Path) -> Path:
    info_path = export_dir / "export.json"
    if not info_path.is_file():
        raise WiseError(f"{export_dir}: no export.json; {_HINT}")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    return export_dir / (TIMM_WEIGHTS if info.get("backbone") == "timm" else OPEN_CLIP_WEIGHTS)


def load_export_state(export_dir: str | Path) -> dict[str, Tensor]:
    return load_tensors(_weights_file(Path(export_dir)), hint=_HINT)


def load_base_state(base: str, fine_tuned: str | Path) -> dict[str, Tensor]:
    """The base weights: an export directory, a weights file, or a pretrained tag of the fine-tuned export's
    architecture (built with its image size and context length)."""
    p = Path(base)
    if p.is_dir():
        return load_export_state(p)
    if p.is_file():
        return load_tensors(p, hint=_HINT)
    from ..eval.config import EvalModelConfig
    from ..eval.model import resolve_model_config

    mc, _ = resolve_model_config(EvalModelConfig(checkpoint=str(fine_tuned)))
    mc.pretrained = base
    try:
        return load_clip(mc).model.state_dict()
    except ModelLoadError as e:
        raise WiseError(f"--base {base}: no such export directory or weights file, and not a usable pretrained tag "
                        f"of {mc.name} ({e})") from e


def blend_state(base: Mapping[str, Tensor], tuned: Mapping[str, Tensor], alpha: float,
                what: str = "model") -> dict[str, Tensor]:
    """Interpolate every floating tensor; integer buffers (token ids, counters) come from the fine-tuned side.
    alpha 0 and 1 return the endpoints bit for bit (no arithmetic on them)."""
    missing, extra = sorted(set(tuned) - set(base)), sorted(set(base) - set(tuned))
    if missing or extra:
        raise WiseError(f"{what}: the base and fine-tuned models have different tensors (only fine-tuned: "
                        f"{missing[:3]}, only base: {extra[:3]}); interpolate two models of one architecture.")
    out: dict[str, Tensor] = {}
    for k, t in tuned.items():
        b = base[k]
        if b.shape != t.shape:
            raise WiseError(f"{what}: tensor {k} has shape {tuple(b.shape)} in the base and {tuple(t.shape)} "
                            "fine-tuned; interpolate two models of one architecture (same model.name and sizes).")
        if alpha == 1 or not t.is_floating_point():
            out[k] = t.clone()
        elif alpha == 0:
            out[k] = b.to(t.dtype).clone()
        else:
            out[k] = torch.lerp(b.to(torch.float32), t.to(torch.float32), alpha).to(t.dtype)
    return out


def _heads(base: str, tuned_dir: Path, alpha: float) -> dict[str, Tensor] | None:
    if not (tuned_dir / "heads.pt").is_file():
        return None
    tuned = load_tensors(tuned_dir / "heads.pt", hint=_HINT)
    base_heads = Path(base) / "heads.pt"
    if base_heads.is_file():
        other = load_tensors(base_heads, hint=_HINT)
        if set(other) == set(tuned) and all(other[k].shape == tuned[k].shape for k in tuned):
            return blend_state(other, tuned, alpha, what="heads.pt")
    return tuned


def write_blend(base: str, base_state: Mapping[str, Tensor], fine_tuned: str | Path, alpha: float,
                out_dir: str | Path) -> Path:
    """One export directory for `alpha`: the fine-tuned export's files with blended weights (and heads)."""
    tuned_dir, out = Path(fine_tuned), Path(out_dir)
    if not 0 <= alpha <= 1:
        raise WiseError(f"--alphas: {alpha} is outside [0, 1]; give mixing weights such as 0,0.25,0.5,0.75,1.")
    weights = _weights_file(tuned_dir)
    state = blend_state(base_state, load_tensors(weights, hint=_HINT), alpha)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("open_clip_config.json", "heads.json"):
        if (tuned_dir / name).is_file():
            shutil.copy(tuned_dir / name, out / name)
    save_tensors(state, out / weights.name)
    heads = _heads(base, tuned_dir, alpha)
    if heads is not None:
        save_tensors(heads, out / "heads.pt")
    info = json.loads((tuned_dir / "export.json").read_text(encoding="utf-8"))
    info["wise"] = {"alpha": alpha, "base": str(base), "fine_tuned": str(tuned_dir)}
    info["load"] = info.get("load", "").replace(str(weights), str(out / weights.name))
    write_json_atomic(out / "export.json", info)
    return out
