"""Label prompts and the CLIP logit-scale cap: one dialect for training's label-prompt heads (tasks/heads.py)
and the eval job's zero-shot / category prompts (eval/embed.py), so both embed a label the same way.

A template is a Python format string with exactly one replacement field, where the label text goes:
`{label}` ("a photo of a {label}.") is the documented form; a bare `{}` is accepted as the same field (the
form of CLIP-style template lists, and what `fashiontune eval` used to take). Any other brace is doubled
(`{{`, `}}`). Label text is the manifest's value with underscores as spaces (`label_text`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

LOG_SCALE_MAX = math.log(100)  # CLIP's cap on the logit scale (exp -> 100), in training and when scoring heads
TEMPLATE_SETS = ("", "openai", "simple")  # none, open_clip's 80 ImageNet templates, its short list
TEMPLATE_HELP = "a template must hold exactly one {label} (or {}) where the label goes; double any other brace: {{ }}"


def label_text(label: str) -> str:
    """How a label value reads in a prompt: 'Casual_Shoes' -> 'Casual Shoes'."""
    return str(label).replace("_", " ").strip()


def format_prompt(template: str, label: str) -> str:
    """The template with the label text in its one field ({label} or {})."""
    return template.format(label, label=label)


def template_ok(template: str) -> bool:
    """True when `template` formats and places the label exactly once."""
    try:
        return format_prompt(template, "\0").count("\0") == 1
    except (IndexError, KeyError, ValueError, AttributeError):
        return False


def prompt_makers(templates: Sequence[str], template_set: str = "") -> list[Callable[[str], str]]:
    """Templates as callables (what open_clip.build_zero_shot_classifier takes), plus open_clip's "openai"
    (80 ImageNet templates) or "simple" template set when named."""
    import open_clip

    sets = {"": [], "openai": list(open_clip.OPENAI_IMAGENET_TEMPLATES), "simple": list(open_clip.SIMPLE_IMAGENET_TEMPLATES)}
    if template_set not in TEMPLATE_SETS:
        raise ValueError(f"template_set={template_set!r}: use one of {list(TEMPLATE_SETS)}")
    for t in templates:
        if not template_ok(t):
            raise ValueError(f"templates={t!r}: {TEMPLATE_HELP}")
    return [(lambda c, t=t: format_prompt(t, c)) for t in templates] + sets[template_set]


def prompt_logits(feats: torch.Tensor, label_emb: torch.Tensor, log_scale: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A label-prompt head: exp(min(log_scale, LOG_SCALE_MAX)) * cos(features, label embeddings) [+ bias].
    The trained head (tasks/heads.py PromptHead) and the eval job's scoring of its export use this one formula."""
    cos = F.normalize(feats, dim=-1) @ F.normalize(label_emb, dim=-1).T.to(feats.dtype)
    logits = log_scale.clamp(max=LOG_SCALE_MAX).exp() * cos
    return logits if bias is None else logits + bias
