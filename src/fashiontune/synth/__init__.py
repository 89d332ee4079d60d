"""Synthetic corpora in the exact on-disk layouts of the real datasets (see /work/shared/DATASETS.md).

Images carry label signal a tiny model can learn at 32-64 px (silhouette per category, the named colour,
the pattern, sleeve length ...), text is generated from the labels, and the real formats' quirks are
injected at `quirk_rate` and listed in `<out>/_synth_quirks.json`. Same arguments -> same bytes.
"""

from __future__ import annotations

from pathlib import Path

from .quirks import QUIRKS_FILE, load as load_quirks

FORMATS = ("kagl", "deepfashion-mm", "imaterialist", "folder")

# (width, height) of the default small images and of --full-size ones, per format
_ASPECT = {"kagl": (3, 4), "deepfashion-mm": (750, 1101), "imaterialist": (3, 4), "folder": (3, 4)}
_FULL = {"kagl": (1800, 2400), "deepfashion-mm": (750, 1101), "imaterialist": (1800, 2400), "folder": (1800, 2400)}
DEFAULT_WIDTH = 60

__all__ = ["FORMATS", "QUIRKS_FILE", "generate", "image_size_of", "load_quirks"]


def image_size_of(fmt: str, full_size: bool = False, image_size: int | None = None) -> tuple[int, int]:
    """(width, height): full size as the real set, or `image_size` (default 60) wide at the format's aspect."""
    if full_size:
        return _FULL[fmt]
    w = image_size or DEFAULT_WIDTH
    if w < 16:
        raise ValueError(f"image_size must be at least 16 px, got {w}")
    aw, ah = _ASPECT[fmt]
    return w, round(w * ah / aw)


def generate(fmt: str, out_dir: str | Path, n: int, seed: int, quirk_rate: float = 0.0, full_size: bool = False,
             image_size: int | None = None) -> Path:
    """Write a synthetic corpus of `n` items in format `fmt` under `out_dir`; return `out_dir`.

    n counts images (deepfashion-mm: views, several per product). quirk_rate in [0, 1]: the fraction of
    items that get one quirk of the format (0 = clean). full_size: real-size images (~1800x2400; 750x1101
    for deepfashion-mm); otherwise `image_size` px wide (default 60, e.g. 60x80).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown synthetic format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= quirk_rate <= 1.0:
        raise ValueError(f"quirk_rate must be within [0, 1], got {quirk_rate}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = image_size_of(fmt, full_size, image_size)
    quality = 90 if full_size else 92
    if fmt == "kagl":
        from . import kagl as mod
    elif fmt == "deepfashion-mm":
        from . import deepfashion as mod  # type: ignore[no-redef]
    elif fmt == "imaterialist":
        from . import imaterialist as mod  # type: ignore[no-redef]
    else:
        from . import folder as mod  # type: ignore[no-redef]
    mod.generate(out, n, seed, quirk_rate, size, quality)
    return out
