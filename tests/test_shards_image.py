"""Per-image pipeline: every mode becomes upright RGB, draft decoding, no upscaling, bad files -> reasons.

Cost: well under 1 s (tiny images, one 1200x1600 JPEG).
"""

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from fashiontune.shards.image import ImageError, encode, load_upright_rgb, target_size, to_rgb
from fashiontune.shards.testing import REPAIRED, write_quirk


def _decode(b: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(b))
    im.load()
    return im


def _red_with_black_top(size=(48, 64)) -> Image.Image:
    im = Image.new("RGB", size, (200, 30, 30))
    im.paste((0, 0, 0), (0, 0, size[0], size[1] // 4))  # marks which way is up
    return im


@pytest.mark.parametrize("kind", REPAIRED)
def test_every_repairable_quirk_becomes_upright_rgb(tmp_path, kind):
    path = write_quirk(kind, _red_with_black_top(), tmp_path / "x.jpg")
    enc = encode(str(path), image_size=32, quality=90)
    im = _decode(enc.jpeg)
    assert im.mode == "RGB" and im.format == "JPEG"
    assert enc.orig_size == (48, 64), "orig_size is the upright original size"
    assert im.size == enc.size == (32, 43)  # shorter side -> 32, aspect kept
    a = np.asarray(im).astype(int)
    top, bottom = a[:6].mean(), a[-6:].mean()
    assert top < 0.6 * bottom, f"{kind}: the black band must end up on top (top={top:.0f}, bottom={bottom:.0f})"


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    assert to_rgb(p).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped():
    im = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))  # mid grey in 16 bit
    r, g, b = to_rgb(im).getpixel((0, 0))
    assert r == g == b == 128


def test_large_jpeg_is_decoded_in_draft_mode_and_never_upscaled(tmp_path):
    big = tmp_path / "big.jpg"
    _red_with_black_top((1200, 1600)).save(big, quality=90)
    im, orig = load_upright_rgb(str(big), 128)
    assert orig == (1200, 1600)
    assert im.size == (150, 200), "JPEG draft mode decodes at 1/8 scale when that still covers 128 px"
    enc = encode(str(big), 128, 90)
    assert enc.size == (128, 171)
    small = tmp_path / "small.jpg"
    _red_with_black_top((20, 30)).save(small)
    assert encode(str(small), 128, 90).size == (20, 30)


def test_target_size():
    assert target_size(1800, 2400, 256) == (256, 341)
    assert target_size(2400, 1800, 256) == (341, 256)
    assert target_size(100, 50, 256) == (100, 50)


@pytest.mark.parametrize(
    "kind,reason",
    [("missing", "missing_image"), ("truncated", "truncated_image"), ("garbage", "corrupt_image"),
     ("empty_file", "corrupt_image")],
)
def test_bad_files_raise_image_error_with_reason(tmp_path, kind, reason):
    path = tmp_path / "x.jpg"
    if kind != "missing":
        write_quirk(kind, _red_with_black_top(), path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError) as e:
        encode(str(path), 32, 90)
    assert e.value.reason == reason and e.value.detail


def test_a_directory_is_unreadable(tmp_path):
    with pytest.raises(ImageError) as e:
        encode(str(tmp_path), 32, 90)
    assert e.value.reason == "unreadable_image"
