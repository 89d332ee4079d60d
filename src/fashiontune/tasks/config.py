"""Typed task config: one `TaskConfig` with a `name` and the sub-configs the tasks read."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from dataclasses import field as _field
from typing import List


class TaskName(str, enum.Enum):
    classify = "classify"  # softmax head on the image tower
    labeltext = "labeltext"  # image · label-prompt text embeddings, initialised from zero-shot
    contrastive = "contrastive"  # CLIP loss on (image, caption) pairs
    multilabel = "multilabel"  # sigmoid head, BCE (pos_weight) or focal loss, tuned threshold
    zeroshot = "zeroshot"  # no training: prompt-ensemble classifier
    attributes = "attributes"  # several label fields at once, one head each


class FreezeMode(str, enum.Enum):
    full = "full"  # train everything from the first step
    linear_probe = "linear_probe"  # image tower frozen for good; only heads train
    gradual = "gradual"  # epoch 0 heads only, then `stages_per_epoch` more tower stages each epoch, last first
    freeze_then_unfreeze = "freeze_then_unfreeze"  # heads only until `unfreeze_epoch`, then everything


class HeadKind(str, enum.Enum):
    linear = "linear"  # a linear layer on the image features (softmax or sigmoid)
    prompts = "prompts"  # cosine similarity to label-prompt text embeddings (needs an open_clip model)


class TextMode(str, enum.Enum):
    frozen = "frozen"  # label embeddings fixed at their zero-shot values
    embeddings = "embeddings"  # label embeddings are trainable parameters, initialised from zero-shot
    tower = "tower"  # the text tower itself trains; prompts are re-encoded every step


class MultiLabelLoss(str, enum.Enum):
    bce = "bce"  # BCEWithLogits, optional pos_weight from the manifest's label counts
    focal = "focal"  # torchvision.ops.sigmoid_focal_loss


@dataclass
class FreezeConfig:
    mode: FreezeMode = FreezeMode.full
    stages_per_epoch: int = 1  # gradual: tower stages (blocks / ResNet layers) unfrozen per epoch
    unfreeze_epoch: int = 1  # freeze_then_unfreeze: first epoch that trains the tower


@dataclass
class PromptConfig:
    # "{label}" (or "{}") is replaced by the label text (underscores become spaces).
    templates: List[str] = _field(default_factory=lambda: ["a photo of a {label}."])
    template_set: str = ""  # "", "openai" (open_clip's 80 ImageNet templates) or "simple" (its short list)
    text_mode: TextMode = TextMode.frozen
    train_logit_scale: bool = True


@dataclass
class ContrastiveConfig:
    local_loss: bool = True  # each rank scores its own rows against all columns (open_clip ClipLoss)
    gather_with_grad: bool = True  # required for correct gradients across ranks
    lock_text: bool = False  # freeze the text tower
    lock_image: bool = False  # freeze the image tower


@dataclass
class MultiLabelConfig:
    loss: MultiLabelLoss = MultiLabelLoss.bce
    pos_weight: bool = True  # weight positives by (negatives / positives) from the train split counts
    max_pos_weight: float = 50.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    threshold: float = 0.5  # starting decision threshold; replaced by the tuned one after each evaluation
    tune_threshold: bool = True
    tune_metric: str = "macro_f1"  # macro_f1 | micro_f1


@dataclass
class TaskConfig:
    name: TaskName = TaskName.classify
    field: str = "subCategory"  # label field for classify / labeltext / multilabel / zeroshot
    fields: List[str] = _field(default_factory=list)  # attributes (and multi-field zeroshot); [] = every field
    head: HeadKind = HeadKind.linear  # attributes: linear heads or label prompts
    label_smoothing: float = 0.0  # single-label cross-entropy
    freeze: FreezeConfig = _field(default_factory=FreezeConfig)
    prompts: PromptConfig = _field(default_factory=PromptConfig)
    contrastive: ContrastiveConfig = _field(default_factory=ContrastiveConfig)
    multilabel: MultiLabelConfig = _field(default_factory=MultiLabelConfig)
