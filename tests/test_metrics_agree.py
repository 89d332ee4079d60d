"""A run's validation numbers equal `fashiontune eval`'s on the same checkpoint and split (to 1e-6).

Each case trains a tiny run on tiny synthetic shards for fewer steps than an epoch (so its one validation,
at the last step, is also the best one and the export holds those weights), then runs the `fashiontune eval`
command on that export and the val split, and compares every metric the two report under a shared meaning:
classify (accuracy, top-5, macro F1), contrastive (R@1/5/10 image->text, text->image and image->image), multilabel (micro /
macro F1 at the threshold tuned in training and exported with the head, mAP).

Cost (2 busy CPU cores): shards ~2 s per corpus, each training run ~5-15 s, each eval ~3-5 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashiontune.cli import main
from fashiontune.train import load_train_config, run_training
from fashiontune.train.testing import build_tiny_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(fmt: str) -> Path:
        if fmt not in cache:
            cache[fmt] = build_tiny_shards(fmt, tmp_path_factory.mktemp(fmt), n=160)
        return cache[fmt]

    return get


def train_and_eval(config: str, shard_dir: Path, tmp_path: Path, *overrides: str) -> tuple[dict, dict]:
    """(the run's final validation metrics, the eval job's results.json) on the val split."""
    cfg = load_train_config(ROOT / "configs" / config, [
        f"data.shards={shard_dir}", f"out_dir={tmp_path}", "name=run", "data.workers=0", "log.tensorboard=false",
        "checkpoint.every_steps=0", "loop.max_steps=3", *overrides])
    res = run_training(cfg)
    assert res["best"]["step"] == res["step"] == 3  # one validation: the export holds the validated weights
    export = tmp_path / "run" / "export"
    assert main(["eval", "--config", str(ROOT / "configs/eval/tiny.yaml"), f"data.shards={shard_dir}",
                 "data.split=val", f"model.checkpoint={export}", f"out_dir={tmp_path / 'eval'}", "precision=fp32",
                 "category.enabled=false", "classification.zero_shot=false", "plots.grid_queries=0",
                 "retrieval.ks=[1,5,10]", "cache=false"]) == 0
    return res["final"], json.loads((tmp_path / "eval" / "results.json").read_text())


def assert_equal(train: dict, evaluated: dict, names: dict[str, str]) -> None:
    """names: training metric -> eval metric; every pair equal to 1e-6 (and really computed: not NaN)."""
    for t, e in names.items():
        assert train[t] == pytest.approx(evaluated[e], abs=1e-6), (t, train[t], e, evaluated[e])


def test_classify_validation_equals_eval(shards, tmp_path):
    final, ev = train_and_eval("tiny-kagl-softmax.yaml", shards("kagl"), tmp_path)
    rep = ev["classification"]["subCategory/classify"]
    top = next(k for k in rep if k.startswith("top") and k.endswith("_accuracy"))
    assert_equal(final, rep, {"accuracy": "accuracy", "top5": top, "macro_f1": "macro_f1", "count": "items"})
    assert 0 < final["macro_f1"] < 1  # a non-trivial case: errors in some classes, not others


def test_contrastive_validation_equals_eval(shards, tmp_path):
    final, ev = train_and_eval("tiny-deepfashion-contrastive.yaml", shards("deepfashion-mm"), tmp_path)
    ret = ev["retrieval"]  # several views per product: image -> image (i2i) is scored too
    names = {f"{d}_R@{k}": f"{d}/R@{k}" for d in ("i2t", "t2i", "i2i") for k in (1, 5, 10)}
    flat = {f"{d}/{m}": v for d, ms in ret.items() for m, v in ms.items()}
    assert_equal(final, flat, names)
    assert final["count"] == ev["items"] == ret["t2i"]["queries"]
    assert 0 < final["mean_R@10"] < 1
    assert 0 < ret["i2i"]["queries"] < ev["items"] and 0 < final["i2i_R@10"]


def test_multilabel_validation_equals_eval(shards, tmp_path):
    final, ev = train_and_eval("tiny-imaterialist-multilabel.yaml", shards("imaterialist"), tmp_path)
    rep = ev["classification"]["category/multilabel"]
    assert rep["threshold_source"].startswith("exported")
    assert rep["threshold"] == pytest.approx(final["threshold"], abs=0)
    assert_equal(final, rep, {"micro_f1": "micro_f1", "macro_f1": "macro_f1", "mAP": "mAP", "count": "items"})
    assert 0 < final["micro_f1"] < 1
