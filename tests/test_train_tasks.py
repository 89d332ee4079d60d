"""Every task learns end to end through `run_training` on synthetic shards (synth corpus -> shard builder ->
loader -> tiny random-init CLIP), beating chance by a stated margin within a stated step budget; and the run
directory holds what the contract promises.

Budgets (2 busy CPU cores): shards ~2 s per corpus (module fixtures), each training run 10-25 s.
Chance levels come from the manifest's val-split counts (majority class; label prevalence for mAP;
1/N for retrieval), so the margins do not depend on the synthetic class balance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fashiontune.train import load_train_config, run_training
from fashiontune.train.testing import build_tiny_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(fmt: str, n: int = 300) -> Path:
        if fmt not in cache:
            cache[fmt] = build_tiny_shards(fmt, tmp_path_factory.mktemp(fmt), n=n)
        return cache[fmt]

    return get


def train(config: str, shard_dir: Path, out: Path, *overrides: str) -> dict:
    cfg = load_train_config(ROOT / "configs" / config, [
        f"data.shards={shard_dir}", f"out_dir={out}", "data.workers=0", "log.tensorboard=false",
        "checkpoint.every_steps=0", *overrides])
    return run_training(cfg)


def val_counts(shard_dir: Path, field: str) -> tuple[dict[str, int], int]:
    m = json.loads((shard_dir / "manifest.json").read_text())
    return m["labels"][field]["split_counts"]["val"], m["splits"]["val"]["count"]


def majority(shard_dir: Path, field: str) -> float:
    counts, _ = val_counts(shard_dir, field)
    return max(counts.values()) / sum(counts.values())


def test_classify_learns_and_writes_the_run_directory(shards, tmp_path):
    """Softmax head on kagl subCategory: accuracy >= majority + 0.10 within 40 steps of 16 (measured: 0.60
    against a majority rate of 0.45 on 80 val items)."""
    sh = shards("kagl")
    res = train("tiny-kagl-softmax.yaml", sh, tmp_path, "loop.max_steps=40", "log.eval_every_steps=20")
    chance = majority(sh, "subCategory")
    assert res["final"]["accuracy"] >= chance + 0.10, (res["final"], chance)

    run = tmp_path / "tiny-kagl-softmax"
    assert (run / "config.yaml").read_text().startswith("name: tiny-kagl-softmax")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["kind"] == "train"]
    assert [x["step"] for x in train_lines] == list(range(5, 41, 5))
    assert all(x["samples_per_s"] > 0 and x["lr"] >= 0 for x in train_lines)
    assert [x["step"] for x in lines if x["kind"] == "val"] == [20, 40]
    results = json.loads((run / "results.json").read_text())
    from fashiontune.config import config_hash

    assert results["config_hash"] == config_hash(load_train_config(run / "config.yaml"))
    assert results["best"]["metric"] == "accuracy" and results["skipped_steps"] == 0
    assert results["precision"] == ("bf16" if torch.cuda.is_available() else "fp32")  # loop.precision=auto, resolved
    assert {"plots/loss.png", "plots/metrics.png", "plots/confusion_subCategory.png"} <= set(results["plots"])

    # The best-by-validation export loads with open_clip directly; the head comes with its vocabulary.
    import open_clip

    from fashiontune.models import load_heads

    model, _, preprocess = open_clip.create_model_and_transforms(
        "ft-tiny-vit", pretrained=str(run / "export" / "open_clip_pytorch_model.bin"))
    heads, meta = load_heads(run / "export")
    vocab = json.loads((sh / "manifest.json").read_text())["labels"]["subCategory"]["vocab"]
    assert json.dumps(vocab) in json.dumps(meta)
    weight = next(v for k, v in heads.items() if v.ndim == 2)
    assert weight.shape[0] == len(vocab)


def test_labeltext_learns(shards, tmp_path):
    """Image . label-prompt embeddings on kagl subCategory: accuracy >= majority + 0.10 within 40 steps
    (measured: 0.60 against 0.45)."""
    sh = shards("kagl")
    res = train("tiny-kagl-labeltext.yaml", sh, tmp_path, "loop.max_steps=40")
    assert res["final"]["accuracy"] >= majority(sh, "subCategory") + 0.10, res["final"]


def test_contrastive_learns_and_zeroshot_uses_its_export(shards, tmp_path):
    """Caption contrastive on kagl (product names): mean R@1 >= 4x chance (1/N val) within 40 steps of 2x16
    (feature-cache accumulation). Then zero-shot with that export on baseColour beats majority + 0.10
    (the colour words of the captions are what it learned). Measured: R@1 0.14 vs 0.0125; colour 0.72 vs 0.25."""
    sh = shards("kagl")
    res = train("tiny-deepfashion-contrastive.yaml", sh, tmp_path, "name=contrastive", "loop.max_steps=40",
                "checkpoint.export_best=false")
    _, n_val = val_counts(sh, "subCategory")
    assert res["final"]["mean_R@1"] >= 4.0 / n_val, res["final"]
    exported = tmp_path / "contrastive" / "export" / "open_clip_pytorch_model.bin"
    zs = train("tiny-fewshot-zeroshot.yaml", sh, tmp_path, "name=zeroshot", "task.field=baseColour",
               "task.prompts.templates=['{label}']", f"model.pretrained={exported}")
    assert zs["step"] == 0 and (tmp_path / "zeroshot" / "export" / "heads.json").is_file()
    assert zs["final"]["accuracy"] >= majority(sh, "baseColour") + 0.10, zs["final"]


def random_map(shard_dir: Path, field: str, draws: int = 100) -> float:
    """Expected macro mAP of random scores on the val labels (above the prevalence for rare classes)."""
    from sklearn.metrics import average_precision_score
    from torchvision import transforms

    from fashiontune.data import DataConfig, make_loader

    tiny = transforms.Compose([transforms.Resize(8), transforms.CenterCrop(8), transforms.ToTensor()])
    loader = make_loader(DataConfig(shards=str(shard_dir), batch_size=64, workers=0), train=False, transform=tiny,
                         fields=[field])
    y = torch.cat([b["labels"][field] for b in loader]).numpy().astype(int)
    y = y[:, y.sum(0) > 0]
    rng = np.random.default_rng(0)
    return float(np.mean([average_precision_score(y, rng.random(y.shape), average="macro") for _ in range(draws)]))


def test_multilabel_learns(shards, tmp_path):
    """Sigmoid head, BCE with pos_weight, on iMaterialist categories (tiny ResNet): mAP >= the mAP of random
    scores + 0.06 (~4 sd of the random mAP on this val set) within 60 steps of 16. Measured: 0.43 vs 0.32."""
    sh = shards("imaterialist")
    res = train("tiny-imaterialist-multilabel.yaml", sh, tmp_path, "loop.max_steps=60")
    chance = random_map(sh, "category")
    assert res["final"]["mAP"] >= chance + 0.06, (res["final"], chance)
    assert 0.0 < res["final"]["threshold"] < 1.0  # tuned on val


def test_attributes_learn(shards, tmp_path):
    """Two attribute heads at once (colour, article type) on kagl: mean accuracy over the fields >= mean
    majority rate + 0.10 within 40 steps. Measured: 0.52 vs 0.23."""
    sh = shards("kagl")
    fields = ["baseColour", "articleType"]
    res = train("tiny-attributes.yaml", sh, tmp_path, "loop.max_steps=40")
    chance = float(np.mean([majority(sh, f) for f in fields]))
    assert res["final"]["mean/accuracy"] >= chance + 0.10, (res["final"], chance)
    assert all(f"{f}/accuracy" in res["final"] for f in fields)
