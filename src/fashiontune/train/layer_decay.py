"""Per-parameter learning-rate scales: layer-wise LR decay (`optim.layer_decay`, as BEiT / timm's
`param_groups_layer_decay`) and LP-FT's lower tower LR (`task.freeze.tower_lr_scale`).

Depth of a tower parameter: 0 for the stem (patch/token embeddings, ResNet stem), i + 1 for stage i
(transformer block / ResNet layer, from models/towers.image_stages), n + 1 for what follows the last stage
(final norm, projection, attention pool). Its scale is decay ** (n + 1 - depth): the top keeps the full LR,
each level down is multiplied once more. Heads and the logit scale sit outside the towers at scale 1.
Text towers of a CLIP model get the same rule over their own blocks.
"""

from __future__ import annotations

from typing import Iterator

from torch import nn

from fashiontune.models.towers import image_stages

# tower-relative top-level names of stem parameters (before the first stage in the forward)
_STEM = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "class_embedding", "positional_embedding", "ln_pre",
         "patch_embed", "cls_token", "pos_embed", "reg_token", "stem", "token_embedding"}


def _towers(module: nn.Module) -> Iterator[tuple[dict[int, nn.Parameter], list[nn.Module], str]]:
    """(parameters by id with their tower-relative names, stages) of the image tower and a CLIP text tower."""
    clip = module._modules.get("clip")
    visual = clip.visual if clip is not None else getattr(module, "tower", None) or module._modules.get("visual")
    if visual is not None:
        yield dict(visual.named_parameters()), image_stages(visual), "image"
    text_blocks = getattr(getattr(clip, "transformer", None), "resblocks", None)
    if clip is not None and text_blocks is not None:  # open_clip CLIP: the text tower lives on the model itself
        vis = {id(p) for p in clip.visual.parameters()}
        params = {n: p for n, p in clip.named_parameters() if id(p) not in vis and n not in ("logit_scale", "logit_bias")}
        yield params, list(text_blocks), "text"


def _depth(name: str, pid: int, stage_of: dict[int, int], n: int) -> int:
    if pid in stage_of:
        return stage_of[pid]
    parts = name.split(".")
    top = parts[1] if parts[0] == "trunk" and len(parts) > 1 else parts[0]  # open_clip's TimmModel wraps a trunk
    return 0 if top in _STEM else n + 1


def lr_scales(module: nn.Module, layer_decay: float = 1.0, tower_scale: float = 1.0) -> dict[int, float]:
    """id(parameter) -> LR multiplier for every tower parameter (absent = 1)."""
    out: dict[int, float] = {}
    if layer_decay == 1.0 and tower_scale == 1.0:
        return out
    for params, stages, _ in _towers(module):
        stage_of = {id(p): i + 1 for i, s in enumerate(stages) for p in s.parameters()}
        n = len(stages)
        for name, p in params.items():
            out[id(p)] = tower_scale * layer_decay ** (n + 1 - _depth(name, id(p), stage_of, n))
    return out
