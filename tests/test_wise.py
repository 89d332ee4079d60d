"""WiSE-FT (`fashiontune wise`): alpha 0 and 1 reproduce the two endpoints exactly, 0.5 is the weight average,
every export loads with plain open_clip and carries the fine-tuned heads; with --eval, every alpha is evaluated
on two splits and drawn as metric-vs-alpha curves; prompt heads are blended with the zero-shot ones. Cost: ~30 s
(two short training runs, a zero-shot export, 3 x 2 evaluations)."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from fashiontune.cli import main
from fashiontune.models import load_heads
from fashiontune.train import load_train_config, run_training
from fashiontune.train.testing import build_tiny_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A classify export fine-tuned from a saved random init (the 'zero-shot' base of this test)."""
    tmp = tmp_path_factory.mktemp("wise")
    sh = build_tiny_shards("kagl", tmp / "kagl", n=120, splits="train=0.5,val=0.25,test=0.25")
    torch.manual_seed(0)
    base = tmp / "base.bin"
    torch.save(open_clip.create_model("ft-tiny-vit").state_dict(), base)
    cfg = load_train_config(ROOT / "configs" / "tiny-kagl-softmax.yaml", [
        f"data.shards={sh}", f"out_dir={tmp}", "data.workers=0", "log.tensorboard=false", "log.plots=false",
        "checkpoint.every_steps=0", "loop.max_steps=12", f"model.pretrained={base}"])
    run_training(cfg)
    return sh, base, tmp / "tiny-kagl-softmax" / "export"


def weights(d: Path) -> dict:
    return torch.load(d / "open_clip_pytorch_model.bin", weights_only=True)


def test_endpoints_exact_midpoint_average_and_open_clip_loads(tuned, tmp_path, capsys):
    _, base, export = tuned
    out = tmp_path / "wise"
    assert main(["wise", "--base", str(base), "--fine-tuned", str(export), "--alphas", "0,0.5,1",
                 "--out", str(out)]) == 0
    b, t = torch.load(base, weights_only=True), weights(export)
    w0, w5, w1 = (weights(out / f"alpha-{a}") for a in ("0", "0.5", "1"))
    assert any(not torch.equal(b[k], t[k]) for k in t)  # training moved the weights
    for k in t:
        assert torch.equal(w0[k], b[k]) and torch.equal(w1[k], t[k]), k
        if t[k].is_floating_point():
            torch.testing.assert_close(w5[k], (b[k] + t[k]) / 2, rtol=0, atol=1e-6)
    heads, meta = load_heads(out / "alpha-0.5")
    tuned_heads, tuned_meta = load_heads(export)
    assert meta == tuned_meta and all(torch.equal(heads[k], tuned_heads[k]) for k in tuned_heads)
    model, _, _ = open_clip.create_model_and_transforms("ft-tiny-vit", pretrained=str(out / "alpha-0.5" / "open_clip_pytorch_model.bin"))
    assert all(torch.equal(model.state_dict()[k], w5[k]) for k in w5)
    assert json.loads((out / "alpha-0.5" / "export.json").read_text())["wise"]["alpha"] == 0.5


def test_eval_draws_metric_vs_alpha_for_two_splits(tuned, tmp_path):
    sh, base, export = tuned
    out = tmp_path / "wise"
    assert main(["wise", "--base", str(base), "--fine-tuned", str(export), "--alphas", "0,0.5,1", "--out", str(out),
                 "--eval", str(ROOT / "configs" / "eval" / "tiny.yaml"), "--splits", "val,test",
                 f"data.shards={sh}", "data.num_workers=0", "plots.grid_queries=0", "--metrics", "accuracy"]) == 0
    report = json.loads((out / "wise.json").read_text())
    assert {(e["alpha"], e["eval"]) for e in report["evals"]} == {(a, f"tiny:{s}") for a in (0, 0.5, 1)
                                                                  for s in ("val", "test")}
    head_acc = "classification/subCategory/classify/accuracy"
    assert all(head_acc in e["results"] for e in report["evals"])
    assert (out / "plots" / "classification_subCategory_classify_accuracy_vs_alpha.png").stat().st_size > 0
    table = (out / "wise.md").read_text()
    assert table.count("\n| tiny:") == 6 and head_acc in table


def test_architecture_mismatch_is_one_line(tuned, tmp_path, capsys):
    _, _, export = tuned
    other = tmp_path / "rn.bin"
    torch.save(open_clip.create_model("ft-tiny-rn").state_dict(), other)
    assert main(["wise", "--base", str(other), "--fine-tuned", str(export), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "different tensors" in err and "one architecture" in err and len(err.strip().splitlines()) == 1


def test_a_base_that_is_not_a_tag_of_the_architecture_is_one_line(tuned, tmp_path, capsys):
    _, _, export = tuned
    assert main(["wise", "--base", "openai", "--fine-tuned", str(export), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "--base openai: no such export directory" in err and "ft-tiny-vit" in err
    assert len(err.strip().splitlines()) == 1


def test_prompt_heads_are_interpolated_with_the_zero_shot_ones(tuned, tmp_path):
    """A zero-shot export as the base of a labeltext (prompt-head) export: both have the same heads, so the heads
    are blended too (the zero-shot classifier is the head's alpha=0 end)."""
    sh, _, _ = tuned
    common = [f"data.shards={sh}", f"out_dir={tmp_path}", "data.workers=0", "log.tensorboard=false",
              "log.plots=false", "checkpoint.every_steps=0"]
    run_training(load_train_config(ROOT / "configs/tiny-fewshot-zeroshot.yaml", [*common, "name=zs",
                                                                                  "task.field=subCategory"]))
    run_training(load_train_config(ROOT / "configs/tiny-kagl-labeltext.yaml", [*common, "name=lt", "loop.max_steps=6"]))
    zs, lt = (load_heads(tmp_path / n / "export")[0] for n in ("zs", "lt"))
    assert set(zs) == set(lt) and any(not torch.equal(zs[k], lt[k]) for k in lt)
    assert main(["wise", "--base", str(tmp_path / "zs/export"), "--fine-tuned", str(tmp_path / "lt/export"),
                 "--alphas", "0.5", "--out", str(tmp_path / "w")]) == 0
    mid = load_heads(tmp_path / "w" / "alpha-0.5")[0]
    for k in lt:
        torch.testing.assert_close(mid[k], (zs[k] + lt[k]) / 2, rtol=0, atol=1e-6)
