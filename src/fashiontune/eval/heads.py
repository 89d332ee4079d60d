"""Classification heads exported by training (tasks/heads.py: heads.pt + heads.json beside the weights),
applied to the cached raw image features, so that scoring them needs no model.

heads.json: {"task", "head": "linear" | "prompts", "fields": {field: {"key", "vocab", "multi", "threshold"}}};
heads.pt: "<key>.weight"/"<key>.bias" (linear: logits = W f + b), or "<key>.emb" (label embeddings in use),
"<key>.logit_scale" [, "<key>.logit_bias"] (prompts: logits = exp(min(s, ln 100)) cos(f, emb) [+ b]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fashiontune.models.prompts import LOG_SCALE_MAX, prompt_logits


def load_export_heads(export_dir: Path | None) -> tuple[dict, dict] | None:
    if export_dir is None or not (export_dir / "heads.pt").is_file() or not (export_dir / "heads.json").is_file():
        return None
    from fashiontune.models import load_heads

    return load_heads(export_dir)


def head_logits(heads: dict, spec: dict, feats: np.ndarray) -> np.ndarray:
    """N x V logits of one field's head on raw (unnormalised) image features."""
    key = spec["key"]
    f = torch.from_numpy(feats).float()
    if f"{key}.weight" in heads:
        w, b = heads[f"{key}.weight"].float(), heads.get(f"{key}.bias")
        out = f @ w.T + (b.float() if b is not None else 0.0)
    elif f"{key}.emb" in heads:
        bias = heads.get(f"{key}.logit_bias")
        out = prompt_logits(f, heads[f"{key}.emb"].float(), heads.get(f"{key}.logit_scale", torch.tensor(LOG_SCALE_MAX)).float(),
                            None if bias is None else bias.float())
    else:
        raise KeyError(f"heads.pt has no weights for field key {key!r} (keys: {sorted(heads)[:8]}...)")
    return out.numpy()
