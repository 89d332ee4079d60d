"""DeepFashion-MultiModal layout: images/, captions.json, labels/shape/shape_anno_all.txt,
labels/texture/{fabric,pattern}_ann.txt.

Image names `<GENDER>-<Category>-id_<8 digits>-<seq>_<pose>_<desc>.jpg`: several views of one product share
the product id. Like the real set, the shape file covers fewer images than the texture files, some
captions are absent, and neckline code 3 (missing from the official README's list) occurs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from fashiontune.sources.deepfashion import FABRICS, PATTERNS, SHAPE_VALUES

from . import draw, imagefile, quirks

_DRAW_PATTERN = {0: "floral", 1: "graphic", 2: "striped", 3: "solid", 4: "checked", 5: "dotted", 6: "colorblock"}
_DRAW_FABRIC = {0: "denim", 1: "", 2: "leather", 3: "furry", 4: "knitted", 5: "chiffon", 6: ""}

# (gender, category) -> (upper garment, lower garments, weight)
CATEGORIES: list[tuple[str, str, str, tuple[str, ...], float]] = [
    ("WOMEN", "Dresses", "dress", ("none",), 0.22),
    ("WOMEN", "Tees_Tanks", "tshirt", ("trousers", "shorts", "skirt"), 0.15),
    ("WOMEN", "Blouses_Shirts", "shirt", ("trousers", "skirt"), 0.13),
    ("MEN", "Tees_Tanks", "tshirt", ("trousers", "shorts"), 0.12),
    ("WOMEN", "Skirts", "top", ("skirt",), 0.08),
    ("WOMEN", "Shorts", "tshirt", ("shorts",), 0.08),
    ("MEN", "Denim", "tshirt", ("trousers",), 0.07),
    ("MEN", "Shirts_Polos", "shirt", ("trousers",), 0.08),
    ("WOMEN", "Cardigans", "top", ("trousers", "skirt"), 0.07),
]
VIEWS = ("1_front", "2_side", "3_back", "4_full", "7_additional")
_SLEEVE_DRAW = {0: "none", 1: "short", 2: "medium", 3: "long", 4: "short", 5: "none"}
_LOWER_DRAW = {0: "three-point", 1: "medium short", 2: "three-quarter", 3: "long", 4: "long"}
_NECK_DRAW = {0: "v", 1: "square", 2: "round", 3: "none", 4: "standing", 5: "lapel", 6: "suspenders", 7: "none"}


def _w(rng: random.Random, table: dict[int, float]) -> int:
    return rng.choices(list(table), weights=list(table.values()))[0]


def _product(rng: random.Random, gender: str, cat: str, upper: str, lowers: tuple[str, ...]) -> dict:
    """Shape/texture codes of one product, drawn from category-dependent distributions."""
    lower = rng.choice(lowers)
    sleeve = {"dress": {0: 3, 1: 3, 3: 1}, "tshirt": {1: 6, 0: 1, 4: 1}, "shirt": {3: 4, 2: 2, 1: 1},
              "top": {0: 4, 1: 1}}[upper]
    s = [_w(rng, sleeve)]
    if upper == "dress":
        s.append(_w(rng, {1: 3, 2: 2, 3: 1}))
    else:
        s.append(_w(rng, {"trousers": {3: 5, 2: 1}, "shorts": {0: 2, 1: 2}, "skirt": {1: 3, 2: 1, 3: 1}}[lower]))
    s += [_w(rng, {0: 8, 1: 1, 2: 1}), _w(rng, {0: 9, 1: 1}), _w(rng, {0: 17, 1: 1, 2: 2}), _w(rng, {0: 9, 1: 1}),
          _w(rng, {0: 4, 1: 1}), _w(rng, {0: 9, 1: 1}), _w(rng, {0: 15, 1: 3, 3: 2})]
    neck = {"shirt": {5: 5, 4: 2, 0: 1, 3: 1}, "tshirt": {2: 6, 0: 2, 3: 1}, "top": {2: 3, 0: 2, 1: 1, 6: 1, 3: 1},
            "dress": {2: 4, 0: 3, 1: 1, 6: 1, 3: 1}}[upper]
    s.append(_w(rng, neck))
    outer = cat == "Cardigans"
    s.append(0 if outer else 1)
    s.append(_w(rng, {1: 6, 0: 1}))
    denim_lower = cat == "Denim" or (lower == "trousers" and rng.random() < 0.35)
    fab_u = _w(rng, {1: 6, 5: 1, 4: 1, 6: 1} if upper != "top" else {1: 3, 5: 2, 4: 1})
    fab_l = 7 if upper == "dress" and lower == "none" else 0 if denim_lower else _w(rng, {1: 5, 2: 1, 6: 1})
    if upper == "dress":
        fab_l = fab_u
    pat_u = _w(rng, {3: 8, 2: 3, 0: 2, 1: 2, 4: 2, 5: 1, 6: 1})
    pat_l = pat_u if upper == "dress" else 3 if denim_lower else _w(rng, {3: 8, 2: 1, 4: 1})
    fab_o, pat_o = (_w(rng, {4: 4, 1: 1}), _w(rng, {3: 4, 2: 1})) if outer else (7, 7)
    colours = list(draw.COLOURS)
    return {
        "shape": s, "fabric": [fab_u, fab_l, fab_o], "pattern": [pat_u, pat_l, pat_o], "upper": upper,
        "lower": "none" if upper == "dress" else lower, "gender": gender, "category": cat,
        "colours": [draw.COLOURS[rng.choice(colours)] for _ in range(3)],
        "denim_colour": rng.choice([(40, 80, 150), (30, 45, 90), (70, 110, 170)]),
    }


def _outfit(p: dict) -> draw.Outfit:
    s, fab, pat = p["shape"], p["fabric"], p["pattern"]
    cu, cl, co = p["colours"]
    if fab[1] == 0:
        cl = p["denim_colour"]
    return draw.Outfit(
        upper=p["upper"], sleeve=_SLEEVE_DRAW[s[0]], covers_navel=s[11] != 0, neckline=_NECK_DRAW[s[9]],
        lower=p["lower"], lower_len=_LOWER_DRAW[s[1]], upper_colour=cu, lower_colour=cl,
        upper_pattern=_DRAW_PATTERN[pat[0]], lower_pattern=_DRAW_PATTERN.get(pat[1], "solid"),
        upper_fabric=_DRAW_FABRIC[fab[0]], lower_fabric=_DRAW_FABRIC.get(fab[1], ""),
        outer=s[10] == 0, outer_colour=co, outer_pattern=_DRAW_PATTERN.get(pat[2], "solid"),
        outer_fabric=_DRAW_FABRIC.get(fab[2], ""), socks={0: "no", 1: "socks", 2: "leggings"}.get(s[2], "no"),
        hat=s[3] == 1, glasses={1: "eyeglasses", 2: "sunglasses"}.get(s[4], "no"), neckwear=s[5] == 1,
        wrist=s[6] == 1, ring=s[7] == 1, belt=s[8] == 1,
    )


_UPPER_NOUN = {"dress": "dress", "tshirt": "T-shirt", "shirt": "shirt", "top": "tank top"}
_LOWER_NOUN = {"trousers": "pants", "shorts": "shorts", "skirt": "skirt"}


def caption(p: dict, rng: random.Random) -> str:
    """Text2Human-style description generated from the product's codes."""
    s, fab, pat = p["shape"], p["fabric"], p["pattern"]
    who = rng.choice(("lady", "woman", "female") if p["gender"] == "WOMEN" else ("gentleman", "man", "guy"))
    pos = "her" if p["gender"] == "WOMEN" else "his"
    up = _UPPER_NOUN[p["upper"]]
    sleeve = SHAPE_VALUES["sleeve_length"][s[0]]
    out = [f"The {who} {rng.choice(('wears', 'is wearing'))} a {sleeve} {up} with {PATTERNS[pat[0]]} patterns."]
    if fab[0] != 6:
        out.append(f"The {up} is with {FABRICS[fab[0]]} fabric.")
    if s[9] in (0, 1, 2, 4, 5):
        out.append(f"It has a {SHAPE_VALUES['neckline'][s[9]].lower()} neckline.")
    if p["lower"] != "none":
        low = _LOWER_NOUN[p["lower"]]
        length = SHAPE_VALUES["lower_length"][s[1]]
        out.append(f"The {who} wears {'a ' if low == 'skirt' else ''}{length} {low}. The {low} "
                   f"{'is' if low == 'skirt' else 'are'} with {FABRICS[fab[1]]} fabric and {PATTERNS[pat[1]]} patterns.")
    elif s[1] != 4:
        out.append(f"The dress is {SHAPE_VALUES['lower_length'][s[1]]} length.")
    if s[10] == 0:
        out.append(f"There is a {FABRICS[fab[2]]} cardigan with {PATTERNS[pat[2]]} patterns over the {up}.")
    if s[3] == 1:
        out.append(f"The {who} wears a hat.")
    if s[4] in (1, 2):
        out.append(f"The {who} wears {SHAPE_VALUES['glasses'][s[4]]}.")
    if s[5] == 1:
        out.append(f"There is a scarf around {pos} neck.")
    if s[6] == 1:
        out.append(f"There is an accessory on {pos} wrist.")
    if s[7] == 1:
        out.append(f"There is a ring on {pos} finger.")
    if s[8] == 1:
        out.append("There is a belt.")
    if s[2] == 2:
        out.append(f"The {who} wears leggings.")
    return " ".join(out)


def generate(out: Path, n: int, seed: int, quirk_rate: float, size: tuple[int, int], quality: int) -> None:
    rng = random.Random(seed)
    cats = CATEGORIES
    products: list[tuple[str, dict, list[str]]] = []
    names: list[str] = []
    pid = 0
    while len(names) < n:
        pid += rng.randint(1, 40)
        gender, cat, upper, lowers, _ = rng.choices(cats, weights=[c[4] for c in cats])[0]
        p = _product(rng, gender, cat, upper, lowers)
        k = rng.choices((1, 2, 3, 4, 5), weights=(2, 3, 3, 2, 1))[0]
        views = ["01_" + VIEWS[0]] + ["01_" + v for v in sorted(rng.sample(VIEWS[1:], k - 1))]
        if rng.random() < 0.1:
            views.append("02_1_front")  # a second sequence of the same product
        views = views[: n - len(names)]
        stem = f"{gender}-{cat}-id_{pid:08d}"
        vnames = [f"{stem}-{v}" for v in views]
        products.append((stem, p, vnames))
        names += vnames
    qrng = quirks.rng_for(seed)
    # structural quirks of the real files, present at any quirk_rate (drawn first: independent of the rate)
    no_shape = set(qrng.sample(names, max(1, round(0.05 * n)))) if n >= 4 else set()
    no_caption = set(qrng.sample(names, round(0.04 * n)))
    assigned = quirks.assign(names, imagefile.IMAGE_QUIRKS, quirk_rate, qrng)
    structural: dict[str, list[str]] = {}
    shape_lines, fabric_lines, pattern_lines, caps = [], [], [], {}
    (out / "images").mkdir(parents=True, exist_ok=True)
    log: dict[str, list[str]] = {}
    for stem, p, vnames in products:
        for name in vnames:
            fname = name + ".jpg"
            if p["shape"][9] == 3:
                structural.setdefault(name, []).append("undocumented_neckline_code")
            if name in no_shape:
                structural.setdefault(name, []).append("no_shape_labels")
            else:
                shape_lines.append(" ".join([fname] + [str(c) for c in p["shape"]]))
            fabric_lines.append(" ".join([fname] + [str(c) for c in p["fabric"]]))
            pattern_lines.append(" ".join([fname] + [str(c) for c in p["pattern"]]))
            irng = random.Random(f"dfmm-{seed}-{name}")
            if name in no_caption:
                structural.setdefault(name, []).append("no_caption")
            else:
                caps[fname] = caption(p, irng)
            view = name.rsplit("_", 1)[-1]
            img, _ = draw.figure(_outfit(p), size[0], size[1], irng, view=view)
            q = assigned.get(name)
            if q:
                log[name] = [q]
            if size[0] * size[1] >= draw.GRAIN_PIXELS:
                img = draw.add_grain(img, irng)
            imagefile.write(img, out / "images" / fname, q, irng, quality)
    (out / "labels" / "shape").mkdir(parents=True, exist_ok=True)
    (out / "labels" / "texture").mkdir(parents=True, exist_ok=True)
    (out / "labels" / "shape" / "shape_anno_all.txt").write_text("\n".join(sorted(shape_lines)) + "\n")
    (out / "labels" / "texture" / "fabric_ann.txt").write_text("\n".join(sorted(fabric_lines)) + "\n")
    (out / "labels" / "texture" / "pattern_ann.txt").write_text("\n".join(sorted(pattern_lines)) + "\n")
    (out / "captions.json").write_text(json.dumps(dict(sorted(caps.items())), ensure_ascii=False))
    outcome = {**imagefile.QUIRK_OUTCOME, "no_shape_labels": "absent", "undocumented_neckline_code": "kept",
               "no_caption": "kept"}
    quirks.write_log(out, "deepfashion-mm", n, seed, quirk_rate, log, outcome, structural=structural)
