"""LoRA adapters (peft) on the image and/or text tower of an open_clip model, merged back for export.

`model.lora.rank > 0` injects peft LoRA layers in place into `loaded.model` (the same CLIP object the tasks
wrap), so checkpoints hold the adapters (`...lora_A/lora_B...` keys) and resume like any weights, and DDP
sees frozen base weights (requires_grad=False) plus trainable adapters. `merged_state` folds the adapters into
the base weights of a copy and returns a plain open_clip state dict: the export loads without peft.

Targets are module-name suffixes (`attn` = every nn.MultiheadAttention: peft adapts its in_proj AND its
out_proj; `c_fc`, `c_proj` = the MLP linears). They are resolved here to full module names, each wrapped once:
an `out_proj` whose attention module is targeted too is dropped (peft would otherwise wrap it twice).
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import Tensor, nn

from ..errors import UserError

TOWERS = ("image", "text")


class LoraError(UserError, ValueError):
    """A LoRA setting that does not fit the model; the message names the key and the fix."""


def _tower_of(name: str) -> str:
    """The tower of a module or parameter name of an open_clip model (the CLIP-level temperature: neither)."""
    if name in ("logit_scale", "logit_bias"):
        return "none"
    return "image" if name == "visual" or name.startswith("visual.") else "text"


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def resolve_targets(model: nn.Module, targets: list[str], towers: list[str]) -> list[str]:
    """Full names of the modules to adapt: a suffix match in a chosen tower, each module once."""
    if "image" in towers and type(getattr(model, "visual", None)).__name__ == "ModifiedResNet":
        raise LoraError("model.lora.towers includes image, but this model's image tower is a ResNet "
                        "(ModifiedResNet, convolutions): LoRA here adapts attention and linear layers of "
                        "transformers. Use model.lora.towers=[text], a ViT model, or task.freeze / optim.layer_decay.")
    chosen = {n: m for n, m in model.named_modules() if n and _tower_of(n) in towers
              and any(_matches(n, t) for t in targets)}
    mha = {n for n, m in chosen.items() if isinstance(m, nn.MultiheadAttention)}
    names = [n for n in chosen if not any(n.startswith(a + ".") for a in mha)]  # peft adapts MHA's out_proj itself
    bad = [n for n in names if not isinstance(chosen[n], (nn.Linear, nn.MultiheadAttention, nn.Embedding))]
    if bad:
        raise LoraError(f"model.lora.targets={targets} matches {bad[0]} ({type(chosen[bad[0]]).__name__}), which "
                        "LoRA cannot adapt; target attention (attn) or linear layers (c_fc, c_proj).")
    if not names:
        sample = sorted({n.split(".")[-1] for n, m in model.named_modules()
                         if isinstance(m, (nn.Linear, nn.MultiheadAttention)) and _tower_of(n) in towers})
        raise LoraError(f"model.lora.targets={targets} matches no module of the {'/'.join(towers)} tower(s); "
                        f"module names there end with: {', '.join(sample[:12])}.")
    return names


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str],
               towers: list[str]) -> nn.Module:
    """Inject LoRA in place; freeze the adapted towers' base weights. Returns the peft tuner (for merging)."""
    from peft import LoraConfig, LoraModel

    names = resolve_targets(model, list(targets), list(towers))
    keep = {n: p.requires_grad for n, p in model.named_parameters() if _tower_of(n) not in towers}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names)
    tuner = LoraModel(model, config, "default")  # injects into `model` itself
    for n, p in model.named_parameters():
        # adapted towers: only the adapters train; everything else (other tower, logit scale) as before
        p.requires_grad_(keep.get(n, "lora_" in n))
    return tuner


def merged_state(tuner: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A plain open_clip state dict: `state` (the adapted model's, peft keys) loaded into a CPU copy of the
    tuner, adapters merged into the base weights and unloaded."""
    twin = copy.deepcopy(tuner).cpu()
    twin.model.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    with torch.no_grad():
        plain = twin.merge_and_unload()
    return {k: v.detach().clone() for k, v in plain.state_dict().items()}


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of `module`, each tensor once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in module.parameters()}
    return (sum(p.numel() for p in seen.values() if p.requires_grad), sum(p.numel() for p in seen.values()))
