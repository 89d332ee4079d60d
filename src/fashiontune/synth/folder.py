"""A folder of class folders: <class>/<image>, the layout of torchvision's ImageFolder.

Quirks: the image-file ones (a palette PNG with alpha is saved as .png here), upper-case extensions,
a stray non-image file inside a class folder and an OS metadata file (.DS_Store).
"""

from __future__ import annotations

import random
from pathlib import Path

from . import draw, imagefile, quirks
from .kagl import COLOUR_WEIGHTS, PATTERN_WEIGHTS, PLAIN_KINDS

# class folder -> (drawn kind, weight)
CLASSES = {"tshirts": ("tshirt", 0.24), "shirts": ("shirt", 0.18), "shoes": ("shoe", 0.14), "bags": ("bag", 0.12),
           "trousers": ("trousers", 0.1), "dresses": ("dress", 0.09), "watches": ("watch", 0.07),
           "shorts": ("shorts", 0.06)}
ITEM_QUIRKS = tuple(q for q in imagefile.IMAGE_QUIRKS if q != "missing_image") + ("upper_case_ext",)
OUTCOME = {**imagefile.QUIRK_OUTCOME, "upper_case_ext": "repaired", "stray_file": "row_error", "hidden_file": "ignored"}


def item_id(rel: str) -> str:
    """The id the folder source gives the file at `rel` (kept in step with sources.path_id)."""
    return rel.replace("/", "__").replace(".", "_")


def generate(out: Path, n: int, seed: int, quirk_rate: float, size: tuple[int, int], quality: int) -> None:
    rng = random.Random(seed)
    names = list(CLASSES)
    items = []
    for k in range(n):
        cls = rng.choices(names, weights=[CLASSES[c][1] for c in names])[0]
        items.append((cls, f"img_{k:06d}"))
    keys = [f"{c}/{s}" for c, s in items]
    assigned = quirks.assign(keys, ITEM_QUIRKS, quirk_rate, quirks.rng_for(seed))
    log: dict[str, list[str]] = {}
    for cls in names:
        (out / cls).mkdir(parents=True, exist_ok=True)
    for (cls, stem), key in zip(items, keys):
        kind = CLASSES[cls][0]
        colour = rng.choices(list(COLOUR_WEIGHTS), weights=list(COLOUR_WEIGHTS.values()))[0]
        pattern = "solid" if kind in PLAIN_KINDS else rng.choices(list(PATTERN_WEIGHTS),
                                                                  weights=list(PATTERN_WEIGHTS.values()))[0]
        irng = random.Random(f"folder-{seed}-{key}")
        img = draw.product_image(kind, draw.jitter(draw.COLOURS[colour], irng, 10), pattern, size[0], size[1], irng)
        q = assigned.get(key)
        ext = ".png" if q == "palette_png_alpha" else ".JPG" if q == "upper_case_ext" else ".jpg"
        rel = f"{cls}/{stem}{ext}"
        if q:
            log[item_id(rel)] = [q]
        if size[0] * size[1] >= draw.GRAIN_PIXELS:
            img = draw.add_grain(img, irng)
        imagefile.write(img, out / rel, None if q == "upper_case_ext" else q, irng, quality)
    files: dict[str, list[str]] = {}
    if quirk_rate > 0:
        stray = f"{names[0]}/notes.txt"
        (out / stray).write_text("photographed 2019, batch 3\n")
        files[stray] = ["stray_file"]
        (out / names[1] / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        files[f"{names[1]}/.DS_Store"] = ["hidden_file"]
    quirks.write_log(out, "folder", n, seed, quirk_rate, log, OUTCOME, files)
