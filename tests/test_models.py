"""Model loading: shipped tiny configs, local checkpoints, clear offline errors, export round trips.

Cost: ~10 s on 2 cores (tiny CLIP builds ~0.3 s each; timm resnet18 / vit_tiny built without weights; the
ViT-B/16 baseline shares the vit code path)."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from fashiontune.config import load_config
from fashiontune.models import (
    Backbone,
    ModelConfig,
    ModelLoadError,
    StageFreezer,
    export_model,
    image_stages,
    load_clip,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may download: a known tag must fail fast, as on an offline cluster node."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_clip(ModelConfig(name="ft-tiny-vit"))


def test_tiny_configs_registered_and_sized_from_config(tiny):
    assert {"ft-tiny-vit", "ft-tiny-rn"} <= set(open_clip.list_models())
    assert tiny.name == "ft-tiny-vit" and tiny.backbone == Backbone.open_clip
    assert tiny.image_dim == 64
    cfg = json.loads((REPO / "src/fashiontune/model_configs/ft-tiny-vit.json").read_text())
    size = cfg["vision_cfg"]["image_size"]
    from PIL import Image

    x = tiny.preprocess_val(Image.new("RGB", (100, 80), (200, 10, 10)))
    assert x.shape == (3, size, size)
    assert tiny.preprocess_train(Image.new("RGB", (100, 80))).shape == (3, size, size)
    toks = tiny.tokenizer(["a red dress", "shoes"])
    assert toks.shape == (2, cfg["text_cfg"]["context_length"])
    with torch.no_grad():
        img, txt, scale = tiny.model(x[None], toks[:1])
    assert img.shape == txt.shape == (1, 64)


def test_tiny_resnet_and_image_size_override():
    rn = load_clip(ModelConfig(name="ft-tiny-rn"))
    assert len(image_stages(rn.visual)) == 4
    small = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32))
    with torch.no_grad():
        assert small.model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    assert small.model_cfg["vision_cfg"]["image_size"] == 32
    ckpt = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32, grad_checkpointing=True))
    assert ckpt.model.visual.transformer.grad_checkpointing
    ckpt.model.encode_image(torch.randn(2, 3, 32, 32)).sum().backward()
    assert ckpt.model.visual.conv1.weight.grad is not None


def test_export_round_trip_through_open_clip(tiny, tmp_path):
    path = export_model(tiny, tmp_path)
    assert path.name == "open_clip_pytorch_model.bin"
    x, t = torch.randn(2, 3, 64, 64), tiny.tokenizer(["a photo of a dress", "a shoe"])
    model, _, pv = open_clip.create_model_and_transforms("ft-tiny-vit", pretrained=str(path))
    model2, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")  # config travels with it
    with torch.no_grad():
        ref = tiny.model.encode_image(x), tiny.model.encode_text(t)
        for m in (model, model2):
            torch.testing.assert_close(m.encode_image(x), ref[0])
            torch.testing.assert_close(m.encode_text(t), ref[1])
    # and back in through our own loader, as a local checkpoint path
    again = load_clip(ModelConfig(name="ft-tiny-vit", pretrained=str(path)))
    with torch.no_grad():
        torch.testing.assert_close(again.model.encode_image(x), ref[0])


def test_known_tag_offline_says_what_to_pass(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_clip(ModelConfig(name="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path)))
    msg = str(e.value)
    assert "ViT-B-32" in msg and "'openai'" in msg
    assert "model.pretrained=/path/to/open_clip_pytorch_model.bin" in msg and "model.pretrained=''" in msg


@pytest.mark.parametrize(
    "cfg, needle",
    [
        (ModelConfig(name="ViT-B-32", pretrained="no_such_tag"), "not a pretrained tag"),
        (ModelConfig(name="ft-tiny-vit", pretrained="/nowhere/open_clip_pytorch_model.bin"), "no such checkpoint file"),
        (ModelConfig(name="ft-tiny-vitt"), "Did you mean ft-tiny-vit"),
        (ModelConfig(backbone=Backbone.timm, timm_name="resnet18", pretrained="default"), "model.pretrained=''"),
        (ModelConfig(backbone=Backbone.timm, timm_name="resnet-18"), "not a timm model"),
    ],
)
def test_bad_model_configs_name_the_fix(cfg, needle, tmp_path):
    if cfg.backbone == Backbone.timm:
        cfg.cache_dir = str(tmp_path)
    with pytest.raises(ModelLoadError) as e:
        load_clip(cfg)
    assert needle in str(e.value)


def test_checkpoint_of_other_architecture_is_a_clear_error(tiny, tmp_path):
    path = export_model(tiny, tmp_path)
    with pytest.raises(ModelLoadError, match="ft-tiny-rn.*does not match the architecture"):
        load_clip(ModelConfig(name="ft-tiny-rn", pretrained=str(path)))


@pytest.mark.parametrize("name, dim, stages", [("resnet18", 512, 4), ("vit_tiny_patch16_224", 192, 12)])
def test_timm_backbones_random_init_and_local_file(name, dim, stages, tmp_path):
    cfg = ModelConfig(backbone=Backbone.timm, timm_name=name, image_size=32)
    m = load_clip(cfg)
    assert m.tokenizer is None and m.image_dim == dim and len(image_stages(m.visual)) == stages
    from PIL import Image

    assert m.preprocess_val(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    # partial freezing cuts the graph right before the last stage
    names = {id(mod): n for n, mod in m.visual.named_modules()}
    assert names[id(image_stages(m.visual)[-1])] == ("layer4" if name == "resnet18" else "blocks.11")
    fr = StageFreezer(m.visual)
    fr.set_trainable(1)
    m.model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in fr.stages[0].parameters())
    assert all(p.grad is not None for p in fr.stages[-1].parameters())
    fr.set_trainable(len(fr.stages))
    path = export_model(m, tmp_path)
    cfg.pretrained = str(path)
    m2 = load_clip(cfg)
    x = torch.randn(2, 3, 32, 32)
    m.model.eval(), m2.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(m2.model(x), m.model(x))


def test_stage_freezer_cuts_gradient_before_last_stage(tiny):
    visual = tiny.visual
    fr = StageFreezer(visual)
    fr.set_trainable(1)
    try:
        visual.zero_grad(set_to_none=True)
        visual(torch.randn(2, 3, 64, 64)).sum().backward()
        first, last = fr.stages
        assert all(p.grad is None for p in first.parameters())
        assert visual.conv1.weight.grad is None
        assert all(p.grad is not None for p in last.parameters())
        assert visual.proj.grad is not None
    finally:
        fr.set_trainable(len(fr.stages))
        visual.zero_grad(set_to_none=True)
    visual(torch.randn(2, 3, 64, 64)).sum().backward()
    assert visual.conv1.weight.grad is not None
    visual.zero_grad(set_to_none=True)


def test_shipped_model_yamls_load():
    files = sorted((REPO / "configs/model").glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config(ModelConfig, f)
        assert cfg.name and (cfg.backbone != Backbone.timm or cfg.timm_name)
