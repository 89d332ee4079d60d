"""Every shipped experiment config runs at its REAL size: its real architecture (ViT-B-32, ViT-B-16, timm
ResNet-18 at 224 px) from a random-init checkpoint saved by open_clip / timm itself, as a user's downloaded
weights look on disk, pointed at by `model.pretrained`; small synthetic shards in the config's corpus layout at
the model's image size; 2 optimiser steps, one validation batch and the export (the config's precision, bf16 on
CPU, kept), then `fashiontune eval` loads the export. Only the sizes that do not change the model are
overridden: batch 4, workers 0, 2 steps.

Cost (2 shared CPU cores): 4-28 s per config, 133 s for the module (slow); one checkpoint per architecture (~600 MB each
for the ViTs, in the test's tmp dir)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fashiontune.config import load_config
from fashiontune.eval.config import EvalConfig
from fashiontune.eval.run import run_eval
from fashiontune.train import load_train_config, run_training
from fashiontune.train.testing import build_tiny_shards

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# config -> the synthetic layout of its corpus
CORPUS = {
    "kagl-subcategory-softmax": "kagl", "kagl-subcategory-labeltext": "kagl",
    "deepfashion-contrastive": "deepfashion-mm", "attributes": "deepfashion-mm",
    "imaterialist-multilabel": "imaterialist", "fewshot-resnet18": "folder", "fewshot-zeroshot": "folder",
}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state, fixed by the first Accelerator (bf16 here, fp32 for the next
    config or the next test module): reset it around each run, as each run builds its own."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state()
    GradientState._reset_state()


def test_every_shipped_config_is_listed():
    shipped = {p.stem for p in (ROOT / "configs").glob("*.yaml") if not p.stem.startswith("tiny-")}
    assert shipped == set(CORPUS), "a new experiment config needs its corpus layout here"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The random-init weights file of an architecture, saved once: open_clip's state dict (as
    open_clip_pytorch_model.bin), or timm's (as pytorch_model.bin). Removed after the module: ~1.2 GB."""
    root, made = tmp_path_factory.mktemp("weights"), {}

    def get(model) -> str:
        key = model.timm_name if model.backbone.value == "timm" else model.name
        if key not in made:
            torch.manual_seed(0)
            if model.backbone.value == "timm":
                import timm

                net, name = timm.create_model(key, pretrained=False), "pytorch_model.bin"
            else:
                import open_clip

                net, name = open_clip.create_model(key, pretrained=None), "open_clip_pytorch_model.bin"
            (root / key).mkdir()
            made[key] = root / key / name
            torch.save(net.state_dict(), made[key])
        return str(made[key])

    yield get
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    cache: dict[tuple[str, int], Path] = {}

    def get(fmt: str, image_size: int) -> Path:
        if (fmt, image_size) not in cache:
            cache[fmt, image_size] = build_tiny_shards(fmt, tmp_path_factory.mktemp(fmt), n=40, image_size=image_size,
                                                       splits="train=0.5,val=0.25,test=0.25", shard_size=16)
        return cache[fmt, image_size]

    return get


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_config_runs_at_real_size(name, weights, corpora, tmp_path):
    cfg = load_train_config(ROOT / "configs" / f"{name}.yaml")
    size = cfg.model.image_size or 224  # every shipped architecture takes 224 px
    shards = corpora(CORPUS[name], size)
    overrides = [f"model.pretrained={weights(cfg.model)}", f"data.shards={shards}", f"out_dir={tmp_path}",
                 "data.batch_size=4", "data.workers=0", "loop.max_steps=2", "loop.grad_accum=1", "log.every_steps=1",
                 "log.eval_every_steps=0", "log.eval_max_batches=1", "checkpoint.every_steps=0",
                 "log.tensorboard=false", "log.progress=false"]
    cfg = load_train_config(ROOT / "configs" / f"{name}.yaml", overrides)
    res = run_training(cfg)
    export = Path(cfg.run_dir) / "export"
    assert res["step"] == (0 if cfg.task.name.value == "zeroshot" else 2), res
    assert res["final"], res  # the validation ran
    ev = load_config(EvalConfig, ROOT / "configs/eval/trained.yaml", [
        f"name={name}", f"data.shards={shards}", "data.split=test", "data.num_workers=0", "data.batch_size=8",
        f"out_dir={tmp_path / 'eval'}", f"model.checkpoint={export}", "plots.grid_queries=0"])
    out = run_eval(ev)
    assert out["items"] > 0 and out["classification"], out.keys()
