"""Uploaded images, bounded: at most `max_bytes` read (413 beyond), the pixel count checked from the header
before any decoding (a decompression bomb is a 413, never a decode), anything Pillow cannot read a 400."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from fastapi import HTTPException, UploadFile
from PIL import Image


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 10 << 20  # 10 MiB
    max_pixels: int = 40_000_000  # a 6000 x 6000 photo fits; Pillow's own bomb error starts at 2x its 89M limit


async def read_image(file: UploadFile, limits: UploadLimits) -> Image.Image:
    data = await file.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise HTTPException(413, f"upload {file.filename!r} is over {limits.max_bytes} bytes; send a smaller image")
    if not data:
        raise HTTPException(400, f"upload {file.filename!r} is empty; send a JPEG, PNG or WebP image as field 'file'")
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > limits.max_pixels:
            raise HTTPException(413, f"upload {file.filename!r} is {w} x {h} pixels, over {limits.max_pixels}; "
                                     "send a smaller image")
        im.load()
        return im.convert("RGB")
    except HTTPException:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own header check, past twice its pixel limit
        raise HTTPException(413, f"upload {file.filename!r} is too many pixels ({e}); send a smaller image") from e
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise HTTPException(400, f"upload {file.filename!r} is not an image Pillow can decode "
                                 f"({type(e).__name__}: {e}); send a JPEG, PNG or WebP image") from e
