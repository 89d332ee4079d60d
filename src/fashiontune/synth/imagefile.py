"""Writing a rendered image the way real downloads store them, including the broken ways.

Image quirks (what a builder must repair or report):
  grayscale          mode L JPEG                                   -> repair (convert to RGB)
  cmyk               CMYK JPEG                                     -> repair
  palette_png_alpha  palette PNG with a transparent colour          -> repair (composite/convert to RGB)
                     (kagl: saved under the `.jpg` name, as scraped sets do)
  truncated          JPEG cut to half its bytes                    -> report (corrupt image)
  exif_rotated       pixels stored rotated, EXIF Orientation set    -> repair (exif_transpose gives the
                     so that applying it restores the upright image     upright portrait back)
  missing_image      file not written although listed              -> report (missing image)
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_QUIRKS = ("grayscale", "cmyk", "palette_png_alpha", "truncated", "exif_rotated", "missing_image")

# what the shard builder is expected to do with each quirk (tests on both sides read this)
QUIRK_OUTCOME = {
    "grayscale": "repaired",
    "cmyk": "repaired",
    "palette_png_alpha": "repaired",
    "exif_rotated": "repaired",
    "truncated": "error",
    "missing_image": "error",
}

# exif_transpose applies this to orientation n; we store the inverse so that it yields the upright image
_EXIF_STORE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # viewer rotates 90° clockwise (ROTATE_270) -> upright
    8: Image.Transpose.ROTATE_270,
}


def encode(img: Image.Image, quirk: str | None, rng: random.Random, quality: int = 92) -> bytes | None:
    """Bytes of the file to write for `img` with an optional quirk (None for missing_image)."""
    buf = io.BytesIO()
    if quirk is None or quirk == "truncated":
        img.save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
        return data if quirk is None else data[: len(data) // 2]
    if quirk == "missing_image":
        return None
    if quirk == "grayscale":
        img.convert("L").save(buf, "JPEG", quality=quality)
    elif quirk == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=quality)
    elif quirk == "palette_png_alpha":
        # the background colour (top-left pixel) becomes transparent, the rest a 64-colour palette
        arr = np.asarray(img.convert("RGB"))
        alpha = np.where((arr == arr[0, 0]).all(axis=2), 0, 255).astype(np.uint8)
        rgba = Image.fromarray(np.dstack([arr, alpha]), "RGBA")
        rgba.quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(buf, "PNG")
    elif quirk == "exif_rotated":
        orientation = rng.choice(sorted(_EXIF_STORE))
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.transpose(_EXIF_STORE[orientation]).save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    else:
        raise ValueError(f"unknown image quirk {quirk!r}")
    return buf.getvalue()


def write(img: Image.Image, path: Path, quirk: str | None, rng: random.Random, quality: int = 92) -> bool:
    """Write `img` at `path` (with `quirk`); False when the quirk is that the file is missing."""
    data = encode(img, quirk, rng, quality)
    if data is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True
