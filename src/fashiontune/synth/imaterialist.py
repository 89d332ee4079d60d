"""iMaterialist-Fashion 2019 (FGVC6) layout: train/<ImageId>.jpg, train.csv, label_descriptions.json.

Each drawn garment (and part: sleeves, collar, neckline) becomes one train.csv row whose EncodedPixels is
the run-length encoding of its visible mask (1-indexed, column-major "start length" pairs, as the
competition specifies), so masks decode to exactly the drawn pixels.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from . import draw, imagefile, quirks

# the real 46 categories of the 2019 edition: (name, supercategory); level 1 = garments/accessories,
# level 2 = garment parts, closures, decorations (ids 27..45)
CATEGORIES: list[tuple[str, str]] = [
    ("shirt, blouse", "upperbody"), ("top, t-shirt, sweatshirt", "upperbody"), ("sweater", "upperbody"),
    ("cardigan", "upperbody"), ("jacket", "upperbody"), ("vest", "upperbody"), ("pants", "lowerbody"),
    ("shorts", "lowerbody"), ("skirt", "lowerbody"), ("coat", "wholebody"), ("dress", "wholebody"),
    ("jumpsuit", "wholebody"), ("cape", "wholebody"), ("glasses", "head"), ("hat", "head"),
    ("headband, head covering, hair accessory", "head"), ("tie", "neck"), ("glove", "arms and hands"),
    ("watch", "arms and hands"), ("belt", "waist"), ("leg warmer", "legs and feet"),
    ("tights, stockings", "legs and feet"), ("sock", "legs and feet"), ("shoe", "legs and feet"),
    ("bag, wallet", "others"), ("scarf", "others"), ("umbrella", "others"), ("hood", "garment parts"),
    ("collar", "garment parts"), ("lapel", "garment parts"), ("epaulette", "garment parts"),
    ("sleeve", "garment parts"), ("pocket", "garment parts"), ("neckline", "garment parts"),
    ("buckle", "closures"), ("zipper", "closures"), ("applique", "decorations"), ("bead", "decorations"),
    ("bow", "decorations"), ("flower", "decorations"), ("fringe", "decorations"), ("ribbon", "decorations"),
    ("rivet", "decorations"), ("ruffle", "decorations"), ("sequin", "decorations"), ("tassel", "decorations"),
]
CAT = {name: i for i, (name, _) in enumerate(CATEGORIES)}
# a modest subset of the fine-grained attributes (ids are this file's own)
ATTRIBUTES: list[tuple[str, str]] = [
    ("classic (t-shirt)", "nickname"), ("polo (shirt)", "nickname"), ("crop (top)", "nickname"),
    ("tank (top)", "nickname"), ("hoodie", "nickname"), ("jeans", "nickname"), ("sweatpants", "nickname"),
    ("leggings", "nickname"), ("bermuda (shorts)", "nickname"), ("skater (skirt)", "nickname"),
    ("symmetrical", "silhouette"), ("above-the-knee (length)", "length"), ("maxi (length)", "length"),
    ("no special manufacturing technique", "textile finishing, manufacturing techniques"),
]
ATTR = {name: i for i, (name, _) in enumerate(ATTRIBUTES)}
INFO = {"year": 2019, "version": "1.0",
        "description": "The 2019 FGVC^6 iMaterialist Competition - Fashion track dataset.",
        "contributor": "iMaterialist Fashion Competition group", "url": "https://github.com/visipedia/imat-comp",
        "date_created": "2019-04-19 12:38:27.493919"}

# outfit kinds: (upper category, lower category, weight)
OUTFITS = [("dress", None, 0.26), ("top, t-shirt, sweatshirt", "pants", 0.2), ("shirt, blouse", "pants", 0.12),
           ("top, t-shirt, sweatshirt", "shorts", 0.1), ("shirt, blouse", "skirt", 0.1), ("sweater", "pants", 0.08),
           ("top, t-shirt, sweatshirt", "skirt", 0.08), ("jacket", "pants", 0.06)]
_LOWER_DRAW = {"pants": "trousers", "shorts": "shorts", "skirt": "skirt"}

META_QUIRKS = ("image_id_with_ext", "unknown_class_id", "bad_row")
OUTCOME = {**imagefile.QUIRK_OUTCOME, "image_id_with_ext": "repaired", "unknown_class_id": "kept",
           "bad_row": "row_error"}


def rle_encode(mask: np.ndarray) -> str:
    """Competition RLE: column-major pixel order, 1-indexed 'start length' pairs."""
    flat = np.concatenate([[0], mask.T.reshape(-1).astype(np.int8), [0]])
    runs = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def _outfit(rng: random.Random, upper: str, lower: str | None) -> tuple[draw.Outfit, dict[str, list[str]]]:
    colours = list(draw.COLOURS)
    pat = rng.choices(("solid", "striped", "floral", "checked", "dotted"), weights=(8, 3, 2, 2, 1))[0]
    o = draw.Outfit(upper="dress" if upper == "dress" else "tshirt", upper_colour=draw.COLOURS[rng.choice(colours)],
                    lower_colour=draw.COLOURS[rng.choice(colours)], upper_pattern=pat)
    attrs: dict[str, list[str]] = {"upper": [], "lower": []}
    if upper == "dress":
        o.lower, o.sleeve = "none", rng.choice(("none", "short", "long"))
        o.lower_len = rng.choice(("medium short", "three-quarter", "long"))
        o.neckline = rng.choice(("v", "round", "square"))
        if o.lower_len == "long" and rng.random() < 0.5:
            attrs["upper"].append("maxi (length)")
        elif o.lower_len == "medium short" and rng.random() < 0.5:
            attrs["upper"].append("above-the-knee (length)")
    else:
        o.lower = _LOWER_DRAW[lower]  # type: ignore[index]
        o.lower_len = {"pants": "long", "shorts": rng.choice(("three-point", "medium short")),
                       "skirt": rng.choice(("medium short", "three-quarter"))}[lower]  # type: ignore[index]
        if upper == "shirt, blouse":
            o.sleeve, o.neckline = "long", rng.choice(("standing", "lapel"))
        elif upper == "sweater":
            o.sleeve, o.neckline, o.upper_fabric = "long", "round", "knitted"
        elif upper == "jacket":
            o.sleeve, o.neckline, o.outer = "short", "round", True
            o.outer_colour = draw.COLOURS[rng.choice(("Black", "Brown", "Navy Blue", "Grey"))]
            o.outer_fabric = rng.choice(("leather", "denim", ""))
        else:
            o.sleeve = rng.choices(("short", "none"), weights=(3, 1))[0]
            o.neckline = rng.choice(("round", "v"))
            o.covers_navel = rng.random() > 0.2
            if not o.covers_navel:
                attrs["upper"].append("crop (top)")
            elif o.sleeve == "none":
                attrs["upper"].append("tank (top)")
            elif rng.random() < 0.5:
                attrs["upper"].append("classic (t-shirt)")
        if lower == "pants" and rng.random() < 0.4:
            o.lower_fabric, o.lower_colour = "denim", (40, 80, 150)
            attrs["lower"].append("jeans")
        elif lower == "skirt" and rng.random() < 0.3:
            attrs["lower"].append("skater (skirt)")
    o.hat = rng.random() < 0.15
    o.glasses = "sunglasses" if rng.random() < 0.15 else "no"
    o.belt = o.lower != "none" and rng.random() < 0.2
    o.bag = rng.random() < 0.25
    o.bag_colour = draw.COLOURS[rng.choice(colours)]
    o.wrist = rng.random() < 0.15
    o.neckwear = rng.random() < 0.08
    o.socks = rng.choices(("no", "leggings"), weights=(9, 1))[0] if o.lower in ("skirt", "none") else "no"
    o.shoes = rng.random() < 0.9
    return o, attrs


def _segments(masks: dict[str, np.ndarray], upper: str, lower: str | None, attrs: dict[str, list[str]],
              o: draw.Outfit) -> list[tuple[np.ndarray, int, list[int]]]:
    """(mask, category id, attribute ids) per segment, in a fixed order."""
    m = lambda *names: np.logical_or.reduce([masks[n] for n in names if n in masks] or [np.zeros((1, 1), bool)])  # noqa: E731
    segs: list[tuple[np.ndarray, int, list[int]]] = []
    upper_cat = "top, t-shirt, sweatshirt" if upper == "jacket" else upper
    segs.append((m("upper", "sleeve_left", "sleeve_right", "collar"), CAT[upper_cat], [ATTR[a] for a in attrs["upper"]]))
    if upper == "jacket":
        segs.append((m("outer"), CAT["jacket"], []))
    if lower:
        segs.append((m("lower"), CAT[lower], [ATTR[a] for a in attrs["lower"]]))
    for side in ("sleeve_left", "sleeve_right"):
        if side in masks:
            segs.append((masks[side], CAT["sleeve"], []))
    if o.neckline in ("standing",):
        segs.append((m("collar"), CAT["collar"], []))
    elif o.neckline == "lapel":
        segs.append((m("collar"), CAT["lapel"], []))
    if "neck_skin" in masks:
        segs.append((masks["neck_skin"], CAT["neckline"], []))
    for part, cat in (("shoe_left", "shoe"), ("shoe_right", "shoe"), ("bag", "bag, wallet"), ("hat", "hat"),
                      ("glasses", "glasses"), ("belt", "belt"), ("wrist", "watch"), ("neckwear", "scarf"),
                      ("leggings", "tights, stockings")):
        if part in masks:
            segs.append((masks[part], CAT[cat], []))
    return [s for s in segs if s[0].shape != (1, 1) and s[0].any()]


def generate(out: Path, n: int, seed: int, quirk_rate: float, size: tuple[int, int], quality: int) -> None:
    rng = random.Random(seed)
    full = size[0] >= 1000
    ids = sorted({f"{rng.getrandbits(128):032x}" for _ in range(n)})
    while len(ids) < n:  # (collisions are astronomically unlikely)
        ids = sorted(set(ids) | {f"{rng.getrandbits(128):032x}"})
    assigned = quirks.assign(ids, META_QUIRKS + imagefile.IMAGE_QUIRKS, quirk_rate, quirks.rng_for(seed))
    (out / "train").mkdir(parents=True, exist_ok=True)
    rows = ["ImageId,EncodedPixels,Height,Width,ClassId"]
    log: dict[str, list[str]] = {}
    for image_id in ids:
        irng = random.Random(f"imat-{seed}-{image_id}")
        w, h = size if full else irng.choice([size, (size[0], round(size[0] * 1.5)), (round(size[0] * 1.2), size[1])])
        upper, lower, _ = irng.choices(OUTFITS, weights=[x[2] for x in OUTFITS])[0]
        o, attrs = _outfit(irng, upper, lower)
        img, masks = draw.figure(o, w, h, irng)
        q = assigned.get(image_id)
        if q:
            log[image_id] = [q]
        name = image_id + ".jpg" if q == "image_id_with_ext" else image_id
        segs = _segments(masks, upper, lower, attrs, o)
        for k, (mask, cat, attr_ids) in enumerate(segs):
            cls = "_".join(str(c) for c in [cat] + sorted(attr_ids))
            rows.append(f"{name},{rle_encode(mask)},{h},{w},{cls}")
        if q == "unknown_class_id":  # a class id beyond the 46 of label_descriptions.json
            rows.append(f"{name},{rle_encode(segs[-1][0])},{h},{w},{irng.choice((46, 47, 52))}")
        elif q == "bad_row":  # a damaged extra row: no ClassId, a non-numeric height
            rows.append(f"{name},{rle_encode(segs[-1][0])},{irng.choice(('', 'n/a'))},{w},")
        if size[0] * size[1] >= draw.GRAIN_PIXELS:
            img = draw.add_grain(img, irng)
        imagefile.write(img, out / "train" / f"{image_id}.jpg", q if q in imagefile.IMAGE_QUIRKS else None, irng,
                        quality)
    (out / "train.csv").write_text("\n".join(rows) + "\n")
    desc = {
        "info": INFO,
        "categories": [{"id": i, "name": nm, "supercategory": sc, "level": 2 if i >= 27 else 1}
                       for i, (nm, sc) in enumerate(CATEGORIES)],
        "attributes": [{"id": i, "name": nm, "supercategory": sc, "level": 1} for i, (nm, sc) in enumerate(ATTRIBUTES)],
    }
    (out / "label_descriptions.json").write_text(json.dumps(desc, indent=2) + "\n")
    quirks.write_log(out, "imaterialist", n, seed, quirk_rate, log, OUTCOME)
