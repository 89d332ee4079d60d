"""Decode any image fast, make it upright RGB, shrink it, re-encode it as JPEG.

Speed comes from JPEG draft mode: libjpeg decodes straight at 1/2, 1/4 or 1/8 scale (DCT scaling), so a
1800x2400 product photo headed for 256 px is decoded at 450x600 instead of full size, which is most of the
cost of the naive path. Pillow's LOAD_TRUNCATED_IMAGES stays False: a truncated file is an error line,
never a grey half-image in a training shard.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# EXIF orientations 5..8 swap width and height.
_SWAPS = {5, 6, 7, 8}


class ImageError(Exception):
    """An input image that cannot become a sample; `reason` is the errors.jsonl reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Encoded:
    jpeg: bytes
    orig_size: tuple[int, int]  # (w, h) of the original, upright (after EXIF orientation)
    size: tuple[int, int]  # (w, h) written


def to_rgb(im: Image.Image) -> Image.Image:
    """Every Pillow mode to RGB; transparency is composited on white (product shots sit on white)."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info or im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if im.mode.startswith("I") or im.mode == "F":
        # 16/32-bit and float greyscale: Pillow's convert("L") clips at 255 instead of scaling.
        a = np.asarray(im).astype(np.float64)
        if im.mode == "F" and a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        elif a.size and np.nanmax(a) > 255.0:
            a = a / 257.0 if np.nanmax(a) <= 65535.0 else a * (255.0 / np.nanmax(a))
        a = np.nan_to_num(np.clip(a, 0, 255)).round().astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, P without transparency, LAB...


def _reason(e: Exception, default: str) -> str:
    msg = str(e).lower()
    return "truncated_image" if "truncated" in msg or "broken data stream" in msg else default


def target_size(w: int, h: int, image_size: int) -> tuple[int, int]:
    """Shorter side -> image_size keeping aspect; never upscale."""
    short = min(w, h)
    if short <= image_size:
        return w, h
    scale = image_size / short
    if w <= h:
        return image_size, max(1, round(h * scale))
    return max(1, round(w * scale)), image_size


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def open_regular(path: str, follow_symlinks: bool = True):
    """Open `path` for reading only if it is a regular file, never blocking: a stat first, so a device is
    never even opened (opening some has effects); then O_NONBLOCK (opening a FIFO returns at once) and fstat
    on the open file, so nothing swapped in between is read. O_NOFOLLOW refuses a symlink when links are not
    followed. Raises ImageError."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        _require_regular(path, os.stat(path, follow_symlinks=follow_symlinks).st_mode)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError("missing_image", f"no such file: {path}") from None
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_symlinks:
            _require_regular(path, stat.S_IFLNK)
        if e.errno == errno.ENXIO:  # a socket (or a device without its driver)
            _require_regular(path, stat.S_IFSOCK)
        raise ImageError("unreadable_image", f"{type(e).__name__}: {e}") from None  # no permission...
    try:
        _require_regular(path, os.fstat(fd).st_mode)
    except ImageError:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _require_regular(path: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise ImageError("unreadable_image", f"IsADirectoryError: {path} is a directory")
    if stat.S_ISLNK(mode):
        raise ImageError("symlink", f"{path} is a symbolic link, not followed; pass --follow-symlinks to read "
                                    "through symbolic links")
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise ImageError("special_file", f"{path} is {kind}, not a regular file (reading it could block the build "
                                     "forever); only image files are read: remove it or put the image there")


def load_upright_rgb(path: str, image_size: int, follow_symlinks: bool = True) -> tuple[Image.Image, tuple[int, int]]:
    """Decode `path` (reduced scale where possible), apply EXIF orientation, convert to RGB.

    Returns the image (shorter side >= min(image_size, original shorter side)) and the upright original size.
    Raises ImageError for anything that cannot be decoded.
    """
    f = open_regular(path, follow_symlinks)
    with f:
        try:
            im = Image.open(f)
        except UnidentifiedImageError:
            raise ImageError("corrupt_image", "not a recognised image file") from None
        except Exception as e:  # e.g. OSError("Truncated File Read") inside the header
            raise ImageError(_reason(e, "corrupt_image"), f"{type(e).__name__}: {e}") from None
        try:
            w, h = im.size
            orientation = 1
            try:
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:
                orientation = 1  # unreadable EXIF: keep pixels as stored
            if im.format == "JPEG":
                # A square request keeps both sides >= image_size, whatever the orientation.
                im.draft(im.mode, (image_size, image_size))
            im.load()
        except Exception as e:  # OSError, DecompressionBombError, SyntaxError from plugins, ...
            raise ImageError(_reason(e, "undecodable_image"), f"{type(e).__name__}: {e}") from None
    if im.size[0] < 1 or im.size[1] < 1:
        raise ImageError("undecodable_image", f"empty image {im.size}")
    orig = (h, w) if orientation in _SWAPS else (w, h)
    try:
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
        return to_rgb(im), orig
    except Exception as e:
        raise ImageError("undecodable_image", f"cannot convert mode {im.mode}: {type(e).__name__}: {e}") from None


def load_indexed(path: str, index: int, follow_symlinks: bool = True) -> Image.Image:
    """Image number `index` of a multi-image IDX file (Fashion-MNIST), as RGB. Raises ImageError."""
    from fashiontune.sources.idx import IdxError, cached_images

    open_regular(path, follow_symlinks).close()  # the same refusals as an image file (symlink, FIFO, missing)
    try:
        images = cached_images(path)
    except IdxError as e:
        raise ImageError("corrupt_image", str(e)) from None
    if not 0 <= index < len(images):
        raise ImageError("missing_image", f"{path} holds {len(images)} images, not number {index}")
    return Image.fromarray(np.ascontiguousarray(images[index]), "L").convert("RGB")


def encode(path: str, image_size: int, quality: int, follow_symlinks: bool = True,
           index: int | None = None) -> Encoded:
    """The whole per-image pipeline: decode fast -> upright RGB -> resize -> JPEG bytes. `index`: the image
    is number `index` of the multi-image file `path` (Record.image_index)."""
    if index is None:
        im, orig = load_upright_rgb(path, image_size, follow_symlinks)
    else:
        im = load_indexed(path, index, follow_symlinks)
        orig = im.size
    size = target_size(*orig, image_size)  # from the original, so draft rounding never skews the aspect
    if size != im.size:
        im = im.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Encoded(buf.getvalue(), orig, size)
