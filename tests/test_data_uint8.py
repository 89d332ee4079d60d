"""uint8 batches: the worker ships the pixels ToTensor would divide, to_device normalises them, and the result
is bit-identical to the float pipeline, for the transforms the models really come with."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image
from test_data_pipeline import cfg, write_shards
from torchvision import transforms as T

from fashiontune.data import make_loader, to_device
from fashiontune.data.images import ImageNorm, split_transform
from fashiontune.data.stream import seeded


def _pictures() -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    sizes = [(80, 60), (61, 97), (300, 200)]  # landscape, portrait, larger than the crop
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()) for w, h in sizes]


def _assert_split_is_exact(transform) -> None:
    worker, norm, why = split_transform(transform)
    assert norm is not None, why
    for seed, pic in enumerate(_pictures()):
        want = seeded(seed, transform, pic)  # today's float pipeline (random steps seeded alike)
        u8 = seeded(seed, worker, pic)
        assert u8.dtype == torch.uint8
        got = norm.apply(u8.unsqueeze(0))[0]
        assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want)


@pytest.fixture(scope="module")
def tiny():
    from fashiontune.models import load_clip
    from fashiontune.models.config import ModelConfig

    return load_clip(ModelConfig(name="ft-tiny-vit", pretrained=""))


@pytest.mark.parametrize("which", ["preprocess_train", "preprocess_val"])
def test_tiny_model_transforms_split_exactly(tiny, which):
    _assert_split_is_exact(getattr(tiny, which))


def test_real_architecture_transforms_split_exactly():
    """A real architecture, random init (OpenAI mean/std, 224 px), built the way training builds it."""
    from fashiontune.models import load_clip
    from fashiontune.models.config import ModelConfig

    real = load_clip(ModelConfig(name="ViT-B-32", pretrained=""))
    _assert_split_is_exact(real.preprocess_train)
    _assert_split_is_exact(real.preprocess_val)


@pytest.mark.parametrize("resize_mode", ["squash", "longest", "shortest"])
def test_other_open_clip_compose_variants_split_exactly(resize_mode):
    """open_clip's other preprocess variants: SigLIP-style 0.5/0.5 with a squash resize, ResizeKeepRatio +
    CenterCropOrPad, bicubic."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp = PreprocessCfg(size=96, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
                       resize_mode=resize_mode)
    _assert_split_is_exact(image_transform_v2(pp, is_train=False))


def test_timm_augmentation_splits_exactly_and_random_erasing_ships_float():
    """open_clip's use_timm train transform (timm's crop, colour jitter, MaybeToTensor, Normalize; also what
    model.backbone=timm gets) splits; with random erasing (a tensor step after Normalize) it cannot."""
    import open_clip

    timm_aug = open_clip.image_transform(96, is_train=True, aug_cfg={"use_timm": True, "color_jitter": 0.4})
    _assert_split_is_exact(timm_aug)
    erasing = open_clip.image_transform(96, is_train=True, aug_cfg={"use_timm": True, "re_prob": 0.25})
    assert split_transform(erasing)[1] is None


def test_unrecognised_transforms_keep_float_with_a_reason(caplog):
    assert split_transform(T.ToTensor())[2] == "ToTensor is not a torchvision.transforms.Compose"
    no_norm = T.Compose([T.CenterCrop(4), T.ToTensor()])
    assert "not ToTensor, Normalize" in split_transform(no_norm)[2]
    erasing = T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3), T.RandomErasing()])  # timm re_prob > 0
    assert split_transform(erasing)[1] is None
    with caplog.at_level(logging.WARNING, logger="fashiontune.data.loader"):
        from fashiontune.data.loader import _ship

        assert _ship(no_norm, True) == (no_norm, None)
    assert "ships float32 images" in caplog.text and "not ToTensor, Normalize" in caplog.text


def test_loader_batches_equal_the_float_pipeline(tmp_path, tiny):
    """End to end: the same shards through the tiny model's train transform (random crops, seeded per sample),
    uint8 + to_device vs float batches: equal bit for bit, and the device batch has no extra key."""
    root = write_shards(tmp_path, [5, 6], size=48)
    out = {}
    for uint8 in (True, False):
        ld = make_loader(cfg(root, uint8_batches=uint8, batch_size=4), train=True, transform=tiny.preprocess_train)
        assert (ld.collate.norm is not None) is uint8
        raw = list(ld)
        assert raw[0]["image"].dtype == (torch.uint8 if uint8 else torch.float32)
        out[uint8] = [to_device(b, "cpu") for b in raw]
    for a, b in zip(out[True], out[False], strict=True):
        assert a.keys() == b.keys() and "image_norm" not in a
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])


def test_image_norm_matches_to_tensor_normalize_on_every_byte():
    """All 256 byte values in each channel: x / 255 then (x - mean) / std, as torchvision computes it."""
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    pixels = torch.arange(256, dtype=torch.uint8).repeat(3, 16, 1)  # 3 x 16 x 256
    want = T.Normalize(mean, std)(T.functional.to_tensor(Image.fromarray(pixels.permute(1, 2, 0).numpy())))
    assert torch.equal(ImageNorm(mean, std).apply(pixels.unsqueeze(0))[0], want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_image_norm_on_cuda_is_bit_identical():
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    pixels = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    norm = ImageNorm(mean, std)
    assert torch.equal(norm.apply(pixels.pin_memory(), "cuda").cpu(), norm.apply(pixels))


def test_timm_backbone_transforms_split_exactly():
    """model.backbone=timm: timm.data.create_transform's train (crop, flip, jitter) and val transforms."""
    from fashiontune.models import load_clip
    from fashiontune.models.config import ModelConfig

    timm = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32, backbone="timm", timm_name="resnet18"))
    _assert_split_is_exact(timm.preprocess_train)
    _assert_split_is_exact(timm.preprocess_val)
