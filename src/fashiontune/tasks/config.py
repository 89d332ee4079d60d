"""Typed task config: one `TaskConfig` with a `name` and the sub-configs the tasks read."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from dataclasses import field as _field
from typing import List

from fashiontune.metrics.classification import TUNE_METRICS  # what tune_threshold can maximise
from fashiontune.models.prompts import TEMPLATE_HELP, TEMPLATE_SETS, template_ok


class TaskName(str, enum.Enum):
    classify = "classify"  # softmax head on the image tower
    labeltext = "labeltext"  # image · label-prompt text embeddings, initialised from zero-shot
    contrastive = "contrastive"  # CLIP loss on (image, caption) pairs
    multilabel = "multilabel"  # sigmoid head, BCE (pos_weight) or focal loss, tuned threshold
    zeroshot = "zeroshot"  # no training: prompt-ensemble classifier
    attributes = "attributes"  # several label fields at once, one head each
    rerank = "rerank"  # cross-encoder re-ranker over the frozen towers' tokens, hard negatives from their top-K


class FreezeMode(str, enum.Enum):
    full = "full"  # train everything from the first step
    linear_probe = "linear_probe"  # image tower frozen for good; only heads train
    gradual = "gradual"  # epoch 0 heads only, then `stages_per_epoch` more tower stages each epoch, last first
    freeze_then_unfreeze = "freeze_then_unfreeze"  # heads only until `unfreeze_epoch`, then everything
    # LP-FT (Kumar et al. 2022): heads only for `lp_steps` optimiser steps (a linear probe), then everything, the
    # towers at `tower_lr_scale` x the LR so the probed head is not wrecked by large early tower updates
    lp_ft = "lp_ft"


class HeadKind(str, enum.Enum):
    linear = "linear"  # a linear layer on the image features (softmax or sigmoid)
    prompts = "prompts"  # cosine similarity to label-prompt text embeddings (needs an open_clip model)


class TextMode(str, enum.Enum):
    frozen = "frozen"  # label embeddings fixed at their zero-shot values
    embeddings = "embeddings"  # label embeddings are trainable parameters, initialised from zero-shot
    tower = "tower"  # the text tower itself trains; prompts are re-encoded every step


class ContrastiveLoss(str, enum.Enum):
    clip = "clip"  # open_clip ClipLoss: softmax over the batch (symmetric cross-entropy)
    siglip = "siglip"  # open_clip SigLipLoss: a sigmoid per pair, with a trained logit bias


class Positives(str, enum.Enum):
    pair = "pair"  # only an item's own caption is positive (plain CLIP)
    group = "group"  # items sharing group_id (views of one product) are positives, not negatives
    group_or_caption = "group_or_caption"  # ... or items whose (drawn) text is identical


class GroupLoss(str, enum.Enum):
    supcon = "supcon"  # multi-positive: every positive is a target (SupCon-style mean of log-probabilities)
    mask = "mask"  # the own pair is the target; the other positives are dropped from the negatives


class MultiLabelLoss(str, enum.Enum):
    bce = "bce"  # BCEWithLogits, optional pos_weight from the manifest's label counts
    focal = "focal"  # torchvision.ops.sigmoid_focal_loss


@dataclass
class FreezeConfig:
    mode: FreezeMode = FreezeMode.full
    stages_per_epoch: int = 1  # gradual: tower stages (blocks / ResNet layers) unfrozen per epoch
    unfreeze_epoch: int = 1  # freeze_then_unfreeze: first epoch that trains the tower
    lp_steps: int = 100  # lp_ft: optimiser steps of the linear probe (heads only)
    tower_lr_scale: float = 0.1  # lp_ft: the towers' LR after the probe, as a fraction of optim.lr


@dataclass
class PromptConfig:
    # one dialect with the eval job (models/prompts.py): {label} (or {}) = the label text, underscores as spaces
    templates: List[str] = _field(default_factory=lambda: ["a photo of a {label}."])
    template_set: str = ""  # "", "openai" (open_clip's 80 ImageNet templates) or "simple" (its short list)
    text_mode: TextMode = TextMode.frozen
    train_logit_scale: bool = True


@dataclass
class TextFieldConfig:
    field: str = "caption"  # "caption" (the sample's text) or a label field of the manifest
    template: str = "{label}"  # prompt dialect of models/prompts.py: {label} = the value (multi-label: joined)
    weight: float = 1.0  # relative chance that this field is drawn as the sample's text


@dataclass
class ContrastiveConfig:
    loss: ContrastiveLoss = ContrastiveLoss.clip
    positives: Positives = Positives.pair
    group_loss: GroupLoss = GroupLoss.supcon  # how positives other than the own pair count (positives != pair)
    text_fields: List[TextFieldConfig] = _field(default_factory=list)  # [] = the caption
    init_logit_bias: float = -10.0  # siglip, when the model has no logit_bias of its own (SigLIP paper's value)
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
class RerankConfig:
    width: int = 128  # the cross-encoder's width (models/cross.py)
    layers: int = 2  # decoder layers: text self-attention + text -> image patch cross-attention + MLP
    heads: int = 4
    dropout: float = 0.0
    negatives: int = 7  # hard negatives per caption, drawn each epoch from its dual-encoder top mine_k
    mine_k: int = 50  # depth of the dual encoder's exact top-K over the whole train split
    mine_batch_size: int = 0  # items per embedding batch when mining; 0 = data.batch_size


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
    rerank: RerankConfig = _field(default_factory=RerankConfig)

    def validate(self, source: str = "task config") -> "TaskConfig":
        """Range and choice checks before any model is built; ConfigError names the key and the allowed values.
        (Label fields are checked against the manifest by TrainConfig.validate via metric_names.)"""
        from fashiontune.config import require

        name = TaskName(self.name)
        if name not in (TaskName.contrastive, TaskName.rerank) and not (name in (TaskName.attributes, TaskName.zeroshot) and self.fields):
            require(bool(self.field), source, "task.field", self.field, "name a label field of the shards' manifest")
        require(0 <= self.label_smoothing < 1, source, "task.label_smoothing", self.label_smoothing, "set a value in [0, 1)")
        require(self.freeze.stages_per_epoch >= 1, source, "task.freeze.stages_per_epoch", self.freeze.stages_per_epoch,
                "set an integer >= 1")
        require(self.freeze.unfreeze_epoch >= 0, source, "task.freeze.unfreeze_epoch", self.freeze.unfreeze_epoch,
                "set an integer >= 0")
        if self.freeze.mode == FreezeMode.lp_ft:
            require(name != TaskName.contrastive, source, "task.freeze.mode", "lp_ft",
                    "LP-FT probes a head first and contrastive has none; use freeze_then_unfreeze or gradual")
            require(self.freeze.lp_steps >= 1, source, "task.freeze.lp_steps", self.freeze.lp_steps, "set an integer >= 1")
            require(0 < self.freeze.tower_lr_scale <= 1, source, "task.freeze.tower_lr_scale",
                    self.freeze.tower_lr_scale, "set a fraction of optim.lr in (0, 1]")
        p = self.prompts
        require(p.template_set in TEMPLATE_SETS, source, "task.prompts.template_set", p.template_set,
                "use one of '', 'openai', 'simple'")
        require(bool(p.templates) or bool(p.template_set), source, "task.prompts.templates", p.templates,
                "give at least one template such as 'a photo of a {label}.', or name a template_set")
        for i, t in enumerate(p.templates):
            require(template_ok(t), source, f"task.prompts.templates[{i}]", t, TEMPLATE_HELP)
        self._validate_contrastive(source)
        r = self.rerank
        require(r.width >= 1 and r.heads >= 1 and r.width % r.heads == 0, source, "task.rerank.width", r.width,
                f"set a width divisible by task.rerank.heads={r.heads}")
        require(r.layers >= 1, source, "task.rerank.layers", r.layers, "set an integer >= 1")
        require(r.negatives >= 1, source, "task.rerank.negatives", r.negatives, "set an integer >= 1")
        require(r.mine_k >= r.negatives, source, "task.rerank.mine_k", r.mine_k,
                f"set an integer >= task.rerank.negatives={r.negatives}")
        require(r.mine_batch_size >= 0, source, "task.rerank.mine_batch_size", r.mine_batch_size,
                "set an integer >= 0 (0 = data.batch_size)")
        m = self.multilabel
        require(m.max_pos_weight >= 1, source, "task.multilabel.max_pos_weight", m.max_pos_weight, "set a value >= 1")
        require(m.focal_alpha < 0 or 0 <= m.focal_alpha <= 1, source, "task.multilabel.focal_alpha", m.focal_alpha,
                "set a value in [0, 1] (or < 0 for no class weighting)")
        require(m.focal_gamma >= 0, source, "task.multilabel.focal_gamma", m.focal_gamma, "set a value >= 0")
        require(0 <= m.threshold <= 1, source, "task.multilabel.threshold", m.threshold, "set a probability in [0, 1]")
        require(m.tune_metric in TUNE_METRICS, source, "task.multilabel.tune_metric", m.tune_metric,
                f"use one of {', '.join(TUNE_METRICS)}")
        return self

    def _validate_contrastive(self, source: str) -> None:
        from fashiontune.config import require

        c = self.contrastive
        require(not (ContrastiveLoss(c.loss) == ContrastiveLoss.siglip and Positives(c.positives) != Positives.pair),
                source, "task.contrastive.positives", c.positives,
                "use 'pair' with loss 'siglip' (same-product positives are implemented for loss 'clip')")
        for i, f in enumerate(c.text_fields):
            key = f"task.contrastive.text_fields[{i}]"
            require(bool(f.field), source, f"{key}.field", f.field, "name 'caption' or a label field of the manifest")
            require(template_ok(f.template), source, f"{key}.template", f.template, TEMPLATE_HELP)
            require(f.weight > 0, source, f"{key}.weight", f.weight, "set a weight > 0")
