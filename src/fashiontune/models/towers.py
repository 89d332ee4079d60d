"""Image-tower stages and partial freezing that stays valid under DDP.

Freezing by flipping `requires_grad` after DDP/DeepSpeed has wrapped the model silently breaks gradient
sync (DDP registers its hooks once). So schedules that change over training (gradual unfreezing,
freeze-then-unfreeze) keep every parameter `requires_grad=True` and instead cut the graph: the input of
the first trainable stage is detached, so earlier stages get no gradient (grad stays None; AdamW skips
them). The loop must then wrap with DDP(find_unused_parameters=True): tasks say so in
`Task.find_unused_parameters`. Permanent freezing (linear probe) just sets requires_grad=False at build.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn


def _timm_stages(model: nn.Module) -> list[nn.Module]:
    """Stages of a timm model in forward order, from its coarse parameter groups (stem excluded)."""
    from timm.models import group_modules

    groups = group_modules(model, model.group_matcher(coarse=True))
    ordered = [names for gid, names in sorted(groups.items()) if gid != 0]  # group 0 is the stem
    stages: list[nn.Module] = []
    for names in ordered:
        # a group's entry module: the common prefix of its names under the first name's top-level module
        # (the last group also holds trailing modules, e.g. ViT's final "norm", that are not part of a stage)
        top = names[0].split(".")[0]
        prefix = os.path.commonprefix([n.split(".") for n in names if n.split(".")[0] == top])
        path = ".".join(prefix)
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if mod is model or not list(mod.parameters()):
            continue
        if not stages or mod is not stages[-1]:
            stages.append(mod)
    return stages


def image_stages(visual: nn.Module) -> list[nn.Module]:
    """The trunk stages of an image tower, first to last (transformer blocks / ResNet layers)."""
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):  # open_clip VisionTransformer
        return list(transformer.resblocks)
    if all(hasattr(visual, f"layer{i}") for i in range(1, 5)) and hasattr(visual, "attnpool"):  # ModifiedResNet
        return [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
    if hasattr(visual, "trunk"):  # open_clip TimmModel
        return _timm_stages(visual.trunk)
    if hasattr(visual, "group_matcher"):
        return _timm_stages(visual)
    raise TypeError(f"don't know the stages of image tower {type(visual).__name__}")


def _detach_inputs(_module: nn.Module, args: tuple[Any, ...]):
    return tuple(a.detach() if hasattr(a, "detach") else a for a in args)


class StageFreezer:
    """Train only the last `n` stages of an image tower (plus whatever follows them: norm, projection).

    n = 0 freezes the whole tower (its output is detached by the caller via `tower_frozen`);
    n >= number of stages trains everything.
    """

    def __init__(self, visual: nn.Module):
        self.visual = visual
        self.stages = image_stages(visual)
        self._handle = None
        self.n_trainable = len(self.stages)

    @property
    def tower_frozen(self) -> bool:
        return self.n_trainable <= 0

    def set_trainable(self, n: int) -> None:
        n = max(0, min(n, len(self.stages)))
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.n_trainable = n
        if 0 < n < len(self.stages):
            self._handle = self.stages[len(self.stages) - n].register_forward_pre_hook(_detach_inputs)

    def frozen_modules(self) -> list[nn.Module]:
        """Stages that receive no gradient now (kept in eval mode so BatchNorm stats stay put)."""
        return self.stages[: len(self.stages) - self.n_trainable]
