"""Task objects on synthetic tensors: step/evaluate/export of every task, accumulation equivalence,
freeze schedules, missing labels, zero-shot initialisation, configs, metrics.

Cost: ~25 s on 2 cores (tiny ViT CLIP at 32 px, batches of 8-16)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from test_tasks_synthetic import NAMES, batch, manifest

from fashiontune.config import load_config
from fashiontune.models import Backbone, ModelConfig, load_clip, load_heads
from fashiontune.tasks import (
    FreezeConfig,
    FreezeMode,
    HeadKind,
    MultiLabelConfig,
    MultiLabelLoss,
    PromptConfig,
    TaskConfig,
    TaskError,
    TaskName,
    TextMode,
    build_task,
)
from fashiontune.tasks import metrics as M
from fashiontune.train.backend import LocalBackend
from fashiontune.train.step import forward_backward

REPO = Path(__file__).resolve().parents[1]


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return load_clip(ModelConfig(name="ft-tiny-vit", image_size=32))


def step(task, micro_batches) -> dict[str, float]:
    """One step's forwards and backwards as the trainer runs them (no optimiser): the task's summed logs."""
    logs, ok = forward_backward(task, LocalBackend(task.module), micro_batches)
    assert bool(ok)
    return {k: float(v) for k, v in logs.items()}


def grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


CASES = [
    TaskConfig(name=TaskName.classify, field="colour"),
    TaskConfig(name=TaskName.classify, field="colour", freeze=FreezeConfig(mode=FreezeMode.gradual)),
    TaskConfig(name=TaskName.labeltext, field="colour"),
    TaskConfig(name=TaskName.labeltext, field="colour", prompts=PromptConfig(text_mode=TextMode.tower)),
    TaskConfig(name=TaskName.labeltext, field="colour", prompts=PromptConfig(text_mode=TextMode.embeddings)),
    TaskConfig(name=TaskName.multilabel, field="colours"),
    TaskConfig(name=TaskName.multilabel, field="colours", multilabel=MultiLabelConfig(loss=MultiLabelLoss.focal)),
    TaskConfig(name=TaskName.attributes, fields=["colour", "shape", "colours"]),
    TaskConfig(name=TaskName.attributes, fields=["colour", "shape"], head=HeadKind.prompts),
    TaskConfig(name=TaskName.zeroshot, field="colour"),
    TaskConfig(name=TaskName.contrastive),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.name.value}-{c.freeze.mode.value}-{c.prompts.text_mode.value}-{c.head.value}")
def test_every_task_steps_evaluates_and_exports(cfg, tmp_path):
    loaded = tiny()
    task = build_task(cfg, loaded, manifest())
    tok = loaded.tokenizer if task.needs_text else None
    if task.trainable:
        out = step(task, [batch(8, seed=1, tokenizer=tok), batch(8, seed=2, tokenizer=tok)])
        assert math.isfinite(out["loss"]) and out["loss"] > 0
        g = grads(task.module)
        assert g and all(torch.isfinite(v).all() for v in g.values())
        assert any(n.startswith("heads.") for n in g) or cfg.name == TaskName.contrastive
    else:
        assert cfg.name == TaskName.zeroshot
        assert not any(p.requires_grad for p in task.module.heads.parameters())
        assert not task.module(batch(2)["image"])["colour"].requires_grad  # no graph at all
        assert all(p.requires_grad for p in loaded.model.parameters())  # the shared model is left as it was
    res = task.evaluate([batch(16, seed=3, tokenizer=tok), batch(5, seed=4, tokenizer=tok)], None)
    assert task.primary_metric in res and math.isfinite(res["loss"])
    for f in task.fields:
        ev = task.last_eval[f]
        assert len(ev["y_true"]) == len(ev["y_pred"]) == 21 and ev["vocab"]
    task.export(tmp_path)
    assert (tmp_path / "open_clip_pytorch_model.bin").is_file() and (tmp_path / "heads.json").is_file()
    heads, meta = load_heads(tmp_path)
    assert meta["task"] == cfg.name.value and set(meta["fields"]) == set(task.fields)


def test_manifest_and_model_mismatches_are_clear_errors():
    loaded = tiny()
    with pytest.raises(TaskError, match="task.field='colr'.*colour, colours, shape"):
        build_task(TaskConfig(field="colr"), loaded, manifest())
    with pytest.raises(TaskError, match="multi-label.*task.name=multilabel"):
        build_task(TaskConfig(field="colours"), loaded, manifest())
    with pytest.raises(TaskError, match="single-label.*task.name=classify"):
        build_task(TaskConfig(name=TaskName.multilabel, field="colour"), loaded, manifest())
    with pytest.raises(TaskError, match="template_set"):
        build_task(TaskConfig(name=TaskName.zeroshot, field="colour", prompts=PromptConfig(template_set="x")),
                   loaded, manifest())
    timm = load_clip(ModelConfig(backbone=Backbone.timm, timm_name="resnet18", image_size=32))
    with pytest.raises(TaskError, match="no text tower"):
        build_task(TaskConfig(name=TaskName.labeltext, field="colour"), timm, manifest())
    # but a timm backbone classifies
    task = build_task(TaskConfig(field="colour"), timm, manifest())
    assert math.isfinite(step(task, [batch(4)])["loss"])


def _accum_vs_big(cfg, seed_data=5, tol=1e-5):
    loaded = tiny()
    task = build_task(cfg, loaded, manifest())
    tok = loaded.tokenizer if task.needs_text else None
    big = batch(16, seed=seed_data, tokenizer=tok, missing=0.2)
    halves = [{k: (v[:8] if torch.is_tensor(v) else v[:8] if isinstance(v, list) else {f: t[:8] for f, t in v.items()})
               for k, v in big.items()},
              {k: (v[8:] if torch.is_tensor(v) else v[8:] if isinstance(v, list) else {f: t[8:] for f, t in v.items()})
               for k, v in big.items()}]
    task.module.zero_grad(set_to_none=True)
    l1 = step(task, [big])["loss"]
    g1 = grads(task.module)
    task.module.zero_grad(set_to_none=True)
    l2 = step(task, halves)["loss"]
    g2 = grads(task.module)
    assert g1.keys() == g2.keys() and len(g1) > 5
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], rtol=tol * 10, atol=tol, msg=lambda m: f"{n}: {m}")
    return l1, l2, g1


def test_contrastive_accumulation_equals_big_batch_gradient():
    l1, l2, g = _accum_vs_big(TaskConfig(name=TaskName.contrastive))
    assert abs(l1 - l2) < 1e-5  # every pass scores against the whole accumulated batch
    assert "clip.logit_scale" in g  # counted once, not once per micro-batch


def test_every_contrastive_pass_takes_an_equal_share_of_the_logit_scale_gradient():
    """Each micro-batch's backward reaches logit_scale (1/k of its gradient each), so under DDP the synced last
    pass uses every parameter and accumulation needs no find_unused_parameters (test_tasks_distributed.py
    runs it under DDP with find_unused_parameters=False)."""
    loaded = tiny()
    task = build_task(TaskConfig(name=TaskName.contrastive), loaded, manifest())
    seen = []
    task.module.clip.logit_scale.register_hook(lambda g: seen.append(float(g)))
    step(task, [batch(6, seed=s, tokenizer=loaded.tokenizer) for s in (1, 2, 3)])
    assert len(seen) == 3 and seen[0] != 0
    assert seen[1] == pytest.approx(seen[0], rel=1e-4) and seen[2] == pytest.approx(seen[0], rel=1e-4)
    assert not task.find_unused_parameters


def test_naive_contrastive_accumulation_would_differ():
    """Control: averaging two independent half-batch CLIP losses is NOT the big-batch loss (fewer negatives),
    so the equality above is not automatic."""
    loaded = tiny()
    task = build_task(TaskConfig(name=TaskName.contrastive), loaded, manifest())
    b = batch(16, seed=5, tokenizer=loaded.tokenizer)
    big = step(task, [b])["loss"]
    halves = [{"image": b["image"][s], "text": b["text"][s]} for s in (slice(0, 8), slice(8, 16))]
    naive = sum(step(task, [h])["loss"] for h in halves) / 2
    assert abs(big - naive) > 1e-3


@pytest.mark.parametrize("cfg", [TaskConfig(field="colour", label_smoothing=0.1),
                                 TaskConfig(name=TaskName.attributes, fields=["colour", "shape", "colours"])],
                         ids=["classify", "attributes"])
def test_heads_accumulation_equals_big_batch_gradient(cfg):
    _accum_vs_big(cfg)


def test_missing_labels_are_ignored_in_loss_and_metrics():
    loaded = tiny()
    task = build_task(TaskConfig(name=TaskName.attributes, fields=["colour", "colours"]), loaded, manifest())
    b = batch(8, seed=1)
    b["labels"]["colour"][:] = -1  # nobody has this field in this batch
    out = step(task, [b])
    assert out["loss/colour"] == 0.0 and out["loss/colours"] > 0
    assert task.module.heads["colour"].weight.grad.abs().sum() == 0  # zero, not NaN, and DDP-safe (used)
    ev_batch = batch(20, seed=2, missing=0.5)
    res = task.evaluate([ev_batch])
    n_col = int((ev_batch["labels"]["colour"] >= 0).sum())
    n_mul = int((ev_batch["labels"]["colours"] >= 0).all(1).sum())
    assert res["colour/count"] == n_col and res["colours/count"] == n_mul
    assert len(task.last_eval["colour"]["y_true"]) == n_col and (task.last_eval["colour"]["y_true"] >= 0).all()


def test_padding_rows_do_not_count():
    """batch["valid"] False marks padding that keeps ranks in step: no loss, no gradient, not in metrics."""
    loaded = tiny()
    task = build_task(TaskConfig(name=TaskName.attributes, fields=["colour", "colours"]), loaded, manifest())
    pad = batch(6, seed=1)
    pad["valid"] = torch.zeros(6, dtype=torch.bool)
    assert step(task, [pad])["loss"] == 0.0
    assert all(float(g.abs().sum()) == 0 for g in grads(task.module).values())
    real = batch(10, seed=2)
    real["valid"] = torch.tensor([True] * 7 + [False] * 3)
    res = task.evaluate([real, pad])
    assert res["colour/count"] == 7 and res["colours/count"] == 7
    ct = build_task(TaskConfig(name=TaskName.contrastive), loaded, manifest())
    real_t, pad_t = batch(10, seed=2, tokenizer=loaded.tokenizer), batch(6, seed=1, tokenizer=loaded.tokenizer)
    real_t["valid"], pad_t["valid"] = real["valid"], pad["valid"]
    assert ct.evaluate([real_t, pad_t])["count"] == 7


def test_freeze_schedules():
    loaded = tiny()
    task = build_task(TaskConfig(field="colour", freeze=FreezeConfig(mode=FreezeMode.gradual)), loaded, manifest())
    assert task.find_unused_parameters  # the loop must tell DDP
    blocks = loaded.visual.transformer.resblocks
    seen = []
    for epoch in range(3):
        task.on_epoch_start(epoch)
        task.module.zero_grad(set_to_none=True)
        step(task, [batch(4)])
        seen.append((blocks[0].attn.in_proj_weight.grad is not None, blocks[1].attn.in_proj_weight.grad is not None,
                     loaded.visual.proj.grad is not None, task.module.heads["colour"].weight.grad is not None))
    assert seen == [(False, False, False, True), (False, True, True, True), (True, True, True, True)]
    # every parameter stays registered as trainable, so DDP/optimizer built once cover the unfrozen ones
    assert all(p.requires_grad for p in task.module.parameters())

    lp = build_task(TaskConfig(field="colour", freeze=FreezeConfig(mode=FreezeMode.linear_probe)), tiny(), manifest())
    trainable = [n for n, p in lp.module.named_parameters() if p.requires_grad]
    assert trainable == ["heads.colour.weight", "heads.colour.bias"] and not lp.find_unused_parameters

    ft = build_task(TaskConfig(name=TaskName.multilabel, field="colours",
                               freeze=FreezeConfig(mode=FreezeMode.freeze_then_unfreeze, unfreeze_epoch=2)),
                    tiny(), manifest())
    for epoch, tower_grads in ((0, False), (1, False), (2, True)):
        ft.on_epoch_start(epoch)
        ft.module.zero_grad(set_to_none=True)
        step(ft, [batch(4)])
        assert (ft.module.tower.conv1.weight.grad is not None) == tower_grads


def test_zeroshot_uses_open_clip_classifier_and_labeltext_starts_from_it():
    loaded = tiny()
    prompts = PromptConfig(templates=["a photo of a {label}.", "a {label} garment"], template_set="simple")
    zs = build_task(TaskConfig(name=TaskName.zeroshot, field="colour", prompts=prompts), loaded, manifest())
    templates = ["a photo of a {}.", "a {} garment"] + list(open_clip.SIMPLE_IMAGENET_TEMPLATES)
    templates = [t if callable(t) else (lambda c, t=t: t.format(c)) for t in templates]
    ref = open_clip.build_zero_shot_classifier(loaded.model, loaded.tokenizer, NAMES, templates)
    torch.testing.assert_close(zs.module.heads["colour"].emb.T, ref)
    b = batch(6, seed=9)
    with torch.no_grad():
        f = torch.nn.functional.normalize(loaded.model.encode_image(b["image"]), dim=-1)
        expected = loaded.model.logit_scale.exp() * f @ ref
    zs.evaluate([b])
    torch.testing.assert_close(torch.as_tensor(zs.last_eval["colour"]["scores"]), expected[b["labels"]["colour"] >= 0])
    lt = build_task(TaskConfig(name=TaskName.labeltext, field="colour", prompts=prompts), loaded, manifest())
    lt.evaluate([b])
    torch.testing.assert_close(torch.as_tensor(lt.last_eval["colour"]["scores"]), expected)
    tower = build_task(TaskConfig(name=TaskName.labeltext, field="colour",
                                  prompts=PromptConfig(templates=prompts.templates, template_set="simple",
                                                       text_mode=TextMode.tower)), loaded, manifest())
    with torch.no_grad():
        torch.testing.assert_close(tower.module.heads["colour"].label_embeddings(loaded.model.encode_text), ref.T)


def test_export_reloads_in_open_clip_with_heads(tmp_path):
    loaded = tiny()
    task = build_task(TaskConfig(field="colour"), loaded, manifest())
    opt = torch.optim.AdamW([p for p in task.module.parameters() if p.requires_grad], lr=1e-3)
    for i in range(3):
        step(task, [batch(8, seed=i)])
        opt.step()
        opt.zero_grad()
    task.export(tmp_path)
    model, _, _ = open_clip.create_model_and_transforms("ft-tiny-vit", pretrained=str(tmp_path / "open_clip_pytorch_model.bin"),
                                                        force_image_size=32)
    heads, meta = load_heads(tmp_path)
    assert meta["fields"]["colour"]["vocab"] == NAMES
    b = batch(5, seed=7)
    task.module.eval()
    with torch.no_grad():
        ours = task.module(b["image"])["colour"]
        theirs = model.encode_image(b["image"]) @ heads["colour.weight"].T + heads["colour.bias"]
    torch.testing.assert_close(theirs, ours)
    assert json.loads((tmp_path / "export.json").read_text())["name"] == "ft-tiny-vit"


def test_pos_weight_from_manifest_counts():
    m = manifest(400)
    m["labels"]["colours"]["counts"] = {"red": 100, "green": 4, "blue": 400, "yellow": 0}
    task = build_task(TaskConfig(name=TaskName.multilabel, field="colours"), tiny(), m)
    torch.testing.assert_close(task.pos_weight["colours"], torch.tensor([3.0, 50.0, 0.02, 50.0]))  # within [1/50, 50]


def test_task_yamls_load_and_build():
    files = sorted((REPO / "configs/task").glob("*.yaml"))
    assert len(files) >= 6
    for f in files:
        cfg = load_config(TaskConfig, f)
        names = list(cfg.fields) or [cfg.field]
        texts = [t.field for t in cfg.contrastive.text_fields if t.field != "caption"]  # multi-field contrastive
        multi = cfg.name == TaskName.multilabel
        m = {"source": "synthetic", "splits": {"train": {"count": 10}},
             "labels": {n: {"multi": multi, "vocab": ["a_b", "c"], "counts": {"a_b": 4, "c": 6}} for n in names + texts}}
        task = build_task(cfg, tiny(), m)  # every shipped task config builds against shards with its fields
        want = texts if cfg.name == TaskName.contrastive else [] if cfg.name == TaskName.rerank else names
        assert task.fields == want, f


def test_metrics():
    y = np.array([0, 1, 2, 2])
    logits = np.array([[3, 2, 1, 0, 0, 0], [0, 3, 1, 0, 0, 0], [0, 0, 1, 3, 0, 0], [1, 0, 3, 0, 0, 0]], float)
    m = M.single_label(y, logits)
    assert m["accuracy"] == 0.75 and m["top5"] == 1.0
    # scikit-learn's macro average (labels=None): class 3, predicted but never true, counts with F1 0
    assert m["macro_f1"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    yt = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    probs = np.array([[0.3, 0.1], [0.35, 0.32], [0.1, 0.31], [0.05, 0.2]])
    assert M.multi_label(yt, probs, 0.5)["micro_f1"] == 0.0
    t = M.tune_threshold(yt, probs)
    assert 0.2 < t <= 0.3 and M.multi_label(yt, probs, t)["macro_f1"] == 1.0
    assert M.multi_label(yt, probs, t)["mAP"] == 1.0
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0, 1], [1, 0.1]]), dim=1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0, 1], [0.9, 0.5]]), dim=1)
    assert M.retrieval(img, txt, None)["i2t_R@1"] == pytest.approx(2 / 3)  # item 2's caption loses to caption 0
    assert M.retrieval(img, txt, ["a", "b", "a"])["i2t_R@1"] == 1.0  # same product counts as a hit
