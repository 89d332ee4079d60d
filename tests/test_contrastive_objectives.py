"""The contrastive objectives (tasks/positives.py, text_fields.py, SigLIP): exact values against references
written here, exact feature-cache accumulation, config checks, and learning with stated margins.

Measured when written (tiny ViT, 32 px, steps x 32, held-out 128): siglip (100 steps) mean R@1 0.09 -> 0.79
(floor 0.6; 0.48 after 50 steps, where CLIP reaches 1.0: identical captions are its negatives);
multi-field (caption + colour prompt, 50 steps) zero-shot colour accuracy from "a {colour} garment" 0.52 -> 1.0
(floor 0.9 and +0.3) and caption mean R@1 0.89 (floor 0.8: about half the steps drew the caption).

Cost: ~40 s on 2 busy cores (siglip ~13 s, multi-field ~7 s, end-to-end run ~9 s, the rest ~3 s), plus the
slow same-product margin test (~160 s on one busy core: 6 runs of 300 steps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from open_clip import ClipLoss
from test_tasks_learning import fit, held_out, tiny
from test_tasks_synthetic import batch, manifest

from fashiontune.config import ConfigError, load_config
from fashiontune.tasks import ContrastiveConfig, PromptConfig, TaskConfig, TaskName, build_task
from fashiontune.tasks.config import ContrastiveLoss, GroupLoss, Positives, TextFieldConfig
from fashiontune.tasks.positives import MultiPositiveLoss, positive_ids
from fashiontune.tasks.text_fields import TextFields
from fashiontune.train.backend import LocalBackend
from fashiontune.train.step import forward_backward

ROOT = Path(__file__).resolve().parents[1]


def _feats(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img, txt = (torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1) for _ in range(2))
    return img, txt


def _brute(img, txt, scale, groups, texts, form: str, use_text: bool) -> float:
    """The definition, one pair at a time: j is a positive of i when they share the group (or the non-empty
    text); supcon = -mean over positives of log softmax, mask = CE on the own pair with the other positives
    left out of the denominator; both directions averaged."""
    n = len(groups)
    pos = [[groups[i] == groups[j] or (use_text and texts[i] != "" and texts[i] == texts[j]) for j in range(n)]
           for i in range(n)]
    total = 0.0
    for a, b in ((img, txt), (txt, img)):
        s = (scale * a @ b.T).tolist()
        for i in range(n):
            if form == "supcon":
                lse = math.log(sum(math.exp(x) for x in s[i]))
                ps = [j for j in range(n) if pos[i][j]]
                total += -sum(s[i][j] - lse for j in ps) / len(ps) / n
            else:
                keep = [j for j in range(n) if j == i or not pos[i][j]]
                total += -(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in keep))) / n
    return total / 2


@pytest.mark.parametrize("form", ["supcon", "mask"])
@pytest.mark.parametrize("positives", [Positives.group, Positives.group_or_caption])
def test_multi_positive_loss_equals_brute_force_reference(form, positives):
    img, txt = _feats(9)
    groups = ["a", "a", "b", "c", "a", "b", "d", "e", "f"]
    texts = ["x", "y", "y", "z", "", "w", "z", "", "q"]  # captions link b-a (y) and c-d (z); empty links nothing
    ids = positive_ids(groups, texts, positives)
    got = MultiPositiveLoss(GroupLoss(form))(img, txt, torch.tensor(7.0), ids)
    want = _brute(img, txt, 7.0, groups, texts, form, positives == Positives.group_or_caption)
    assert float(got) == pytest.approx(want, rel=1e-5)
    plain = float(ClipLoss()(img, txt, torch.tensor(7.0)))
    assert abs(want - plain) > 1e-3  # the reference is not plain CLIP here: the test can fail


@pytest.mark.parametrize("form", ["supcon", "mask"])
def test_one_view_per_product_is_plain_clip(form):
    img, txt = _feats(12, seed=1)
    ids = positive_ids([f"p{i}" for i in range(12)], [f"t{i}" for i in range(12)], Positives.group_or_caption)
    got = MultiPositiveLoss(GroupLoss(form))(img, txt, torch.tensor(10.0), ids)
    torch.testing.assert_close(got, ClipLoss()(img, txt, torch.tensor(10.0)))


def test_supcon_with_one_caption_per_product_is_plain_clip():
    """Identical captions have identical embeddings: the multi-positive loss then sums to CLIP's, whatever the
    views (why bench/contrastive.py needs per-view captions, or the mask form, to see a difference)."""
    img, txt = _feats(10, seed=2)
    groups = ["a", "a", "a", "b", "b", "c", "d", "d", "d", "d"]
    first = {g: i for i, g in reversed(list(enumerate(groups)))}
    txt = txt[[first[g] for g in groups]]  # one text embedding per product
    ids = positive_ids(groups, groups, Positives.group)
    clip = ClipLoss()(img, txt, torch.tensor(5.0))
    torch.testing.assert_close(MultiPositiveLoss(GroupLoss.supcon)(img, txt, torch.tensor(5.0), ids), clip)
    assert abs(float(MultiPositiveLoss(GroupLoss.mask)(img, txt, torch.tensor(5.0), ids)) - float(clip)) > 1e-3


def _grads(task) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in task.module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ccfg", [ContrastiveConfig(positives=Positives.group),
                                  ContrastiveConfig(positives=Positives.group_or_caption, group_loss=GroupLoss.mask),
                                  ContrastiveConfig(loss="siglip")], ids=["group-supcon", "caption-mask", "siglip"])
def test_feature_cache_accumulation_is_the_big_batch_gradient(ccfg):
    out = {}
    for k in (1, 3):
        loaded = tiny()
        task = build_task(TaskConfig(name=TaskName.contrastive, contrastive=ccfg), loaded, manifest())
        mbs = [batch(4, seed=70 + j, tokenizer=loaded.tokenizer) for j in range(3)]
        mbs = mbs if k == 3 else [{key: (torch.cat([m[key] for m in mbs]) if torch.is_tensor(mbs[0][key])
                                         else sum((m[key] for m in mbs), []))
                                   for key in ("image", "text", "group_id", "key", "caption")}]
        forward_backward(task, LocalBackend(task.module), mbs)
        out[k] = _grads(task)
    assert out[1].keys() == out[3].keys() and len(out[1]) > 20
    if ccfg.loss == "siglip":
        assert "bias" in out[1]  # the SigLIP logit bias trains
    for n in out[1]:
        torch.testing.assert_close(out[3][n], out[1][n], rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_config_refuses_what_is_not_built():
    with pytest.raises(ConfigError, match="task.contrastive.positives"):
        TaskConfig(name=TaskName.contrastive, contrastive=ContrastiveConfig(loss="siglip", positives="group")).validate()
    bad = ContrastiveConfig(text_fields=[TextFieldConfig(field="colour", template="a {colour} thing")])
    with pytest.raises(ConfigError, match=r"text_fields\[0\].template"):
        TaskConfig(name=TaskName.contrastive, contrastive=bad).validate()


EXAMPLES = {"contrastive-group": lambda c: c.positives != Positives.pair,
            "contrastive-siglip": lambda c: c.loss == ContrastiveLoss.siglip,
            "contrastive-multifield": lambda c: len(c.text_fields) > 1}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_task_configs_load_and_validate(name):
    path = Path(__file__).resolve().parents[1] / "configs" / "task" / f"{name}.yaml"
    cfg = load_config(TaskConfig, path).validate(str(path))
    assert cfg.name == TaskName.contrastive and EXAMPLES[name](cfg.contrastive)


def test_text_fields_draw_by_weight_and_skip_missing_values():
    fields = TextFields([TextFieldConfig(field="caption", weight=1.0),
                         TextFieldConfig(field="colour", template="a {label} garment", weight=3.0)], manifest())
    b = batch(400, seed=5, missing=0.5)
    b["caption"] = [f"item {i}" for i in range(400)]
    texts = fields.texts(b, epoch=0)
    assert texts == fields.texts(b, epoch=0) and texts != fields.texts(b, epoch=1)  # per (epoch, key)
    has = b["labels"]["colour"] >= 0
    drawn = [t.endswith("garment") for t in texts]
    assert not any(d for d, h in zip(drawn, has.tolist()) if not h)  # missing colour: never drawn
    share = sum(drawn) / int(has.sum())
    assert 0.65 < share < 0.85  # weight 3 of 4 = 0.75


def test_siglip_learns_and_trains_its_bias():
    loaded = tiny()
    task = build_task(TaskConfig(name=TaskName.contrastive, contrastive=ContrastiveConfig(loss="siglip")), loaded,
                      manifest())
    tok = loaded.tokenizer
    before = held_out(task, tok)
    fit(task, 100, tokenizer=tok)  # slower than CLIP's 50 here: sigmoid pairs, duplicated captions as negatives
    after = held_out(task, tok)
    assert after["mean_R@1"] >= 0.6 and after["mean_R@1"] > before["mean_R@1"] + 0.4, (before, after)
    assert float(task.module.bias.detach()) != -10.0


def test_multi_field_training_learns_names_and_attributes():
    """Trained on captions and "a {colour} garment" prompts drawn per item: both kinds of text find images."""
    loaded = tiny()
    tok = loaded.tokenizer
    zs = TaskConfig(name=TaskName.zeroshot, field="colour", prompts=PromptConfig(templates=["a {label} garment"]))
    zs_before = held_out(build_task(zs, loaded, manifest()))["accuracy"]
    fields = [TextFieldConfig(field="caption"), TextFieldConfig(field="colour", template="a {label} garment")]
    ccfg = ContrastiveConfig(text_fields=fields, positives=Positives.group_or_caption)
    task = build_task(TaskConfig(name=TaskName.contrastive, contrastive=ccfg), loaded, manifest())
    assert task.fields == ["colour"]  # the loader encodes the label fields the texts need

    fit(task, 50, tokenizer=tok)
    after = held_out(task, tok)
    zs_after = held_out(build_task(zs, loaded, manifest()))["accuracy"]
    assert zs_after >= 0.9 and zs_after > zs_before + 0.3, (zs_before, zs_after)
    assert after["mean_R@1"] >= 0.8, after  # about half the steps drew the caption


def test_multi_field_group_run_end_to_end_exports_a_plain_open_clip_model(tmp_path):
    """`run_training` on synthetic KAGL shards (product names as captions) with group_or_caption positives and
    name + colour-prompt texts: the loader encodes the field, the run learns (mean R@1 >= 4x chance 1/N, as the
    plain contrastive end-to-end test in test_train_tasks.py asks) and the export loads in plain open_clip.
    Measured: mean R@1 0.10 vs 4/N = 0.05 (chance 0.0125). Cost: ~9 s (shards + 40 steps)."""
    import open_clip
    import yaml

    from fashiontune.train import load_train_config, run_training
    from fashiontune.train.testing import build_tiny_shards

    root = Path(__file__).resolve().parents[1]
    sh = build_tiny_shards("kagl", tmp_path / "kagl")
    cfg = yaml.safe_load((root / "configs" / "tiny-deepfashion-contrastive.yaml").read_text())
    cfg["task"] = {"name": "contrastive", "contrastive": {"positives": "group_or_caption", "text_fields": [
        {"field": "caption", "weight": 2.0}, {"field": "baseColour", "template": "a {label} item"}]}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    def run(name: str, steps: int) -> dict:
        return run_training(load_train_config(tmp_path / "cfg.yaml", [
            f"data.shards={sh}", f"out_dir={tmp_path}", "data.workers=0", "log.tensorboard=false",
            "checkpoint.every_steps=0", f"name={name}", f"loop.max_steps={steps}"]))["final"]
    res = run("mf", 40)
    n_val = json.loads((sh / "manifest.json").read_text())["splits"]["val"]["count"]
    assert res["mean_R@1"] >= 4.0 / n_val, res
    open_clip.create_model_and_transforms("ft-tiny-vit", pretrained=str(tmp_path / "mf" / "export" /
                                                                         "open_clip_pytorch_model.bin"))


@pytest.mark.slow
def test_masking_same_product_negatives_beats_clip_on_a_multi_view_corpus():
    """bench/contrastive.py's corpus (a caption per view, 2 views of a product per batch, 300 steps): masking
    the same-product "negatives" beats plain CLIP loss on full-corpus Hit@1 at equal steps and batches.
    Measured (seeds 10-19): mask - clip Hit@1 +0.067 (every seed ahead), supcon +0.071; Hit@10 ties (±0.01);
    at 100 steps neither is ahead. The one-view control is test_one_view_per_product_is_plain_clip."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_contrastive", ROOT / "bench" / "contrastive.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    a = bench.parser().parse_args(["--seeds", "3", "--first-seed", "10", "--steps", "300", "--views-per-batch", "2"])
    runs = bench.compare(8, a.products, True, 2, ["clip", "group-mask"], a)
    margins = [m["Hit@1"] - c["Hit@1"] for m, c in zip(runs["group-mask"], runs["clip"])]
    assert sum(margins) / len(margins) >= 0.02, margins  # measured on these seeds: +0.062, +0.099, +0.026
