"""Label-driven drawing: garments whose silhouette, colour, pattern and parts follow their labels.

Everything is drawn in unit coordinates (x, y in [0, 1] of the canvas) so the same item looks the same at
60x80 and at 1800x2400; patterns are periodic in unit coordinates too, so a stripe stays a stripe after
the builder downsizes to 32-64 px. Only numpy and Pillow; no randomness in here except through the `rng`
argument, so a seed fixes every pixel.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Poly = list[tuple[float, float]]

BACKGROUND: RGB = (226, 226, 223)
SKIN: RGB = (224, 180, 150)

# Named colours of the Kaggle `baseColour` column (a modest subset), far apart in RGB so a tiny model can tell them.
COLOURS: dict[str, RGB] = {
    "Black": (25, 25, 28),
    "White": (252, 252, 252),
    "Blue": (40, 95, 210),
    "Navy Blue": (22, 32, 86),
    "Grey": (130, 130, 130),
    "Red": (205, 30, 35),
    "Green": (40, 145, 65),
    "Pink": (245, 145, 185),
    "Brown": (120, 72, 32),
    "Yellow": (242, 210, 40),
}

GRAIN_PIXELS = 750 * 1101  # full-size images (and only those) get photo grain
PATTERNS = ("solid", "striped", "checked", "dotted", "printed", "floral")


def luminance(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def contrast_of(c: RGB) -> RGB:
    return (30, 30, 34) if luminance(c) > 140 else (252, 252, 248)


def trim_of(c: RGB) -> RGB:
    """Collar / lapel colour: a shade of the garment, never close to the background."""
    if luminance(c) > 110:
        return tuple(int(v * 0.55) for v in c)  # type: ignore[return-value]
    return tuple(min(255, v + 90) for v in c)  # type: ignore[return-value]


def jitter(c: RGB, rng: random.Random, amount: int = 10) -> RGB:
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in c)  # type: ignore[return-value]


def add_grain(img: Image.Image, rng: random.Random, amount: int = 8) -> Image.Image:
    """Photo-like sensor grain, for full-size images: flat colours would make JPEGs unrealistically small
    and fast to decode, which would flatter any decoding benchmark."""
    arr = np.asarray(img, dtype=np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-amount, amount + 1, arr.shape[:2], dtype=np.int16)
    return Image.fromarray(np.clip(arr + noise[..., None], 0, 255).astype(np.uint8))


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit coordinates of pixel centres; y is scaled by the aspect so periods are square on screen."""
    ys = (np.arange(h, dtype=np.float32) + 0.5)[:, None] / w
    xs = (np.arange(w, dtype=np.float32) + 0.5)[None, :] / w
    return xs, ys


def texture(w: int, h: int, colour: RGB, pattern: str, rng: random.Random, fabric: str = "") -> np.ndarray:
    """An HxWx3 uint8 fill: base colour, a pattern in a contrasting colour, an optional fabric look."""
    xs, ys = _grid(w, h)
    base = np.empty((h, w, 3), np.float32)
    base[:] = colour
    other = np.array(contrast_of(colour), np.float32)
    mask = None
    phase = rng.random()
    # periods are coarse (1/4-1/5 of the width) so a pattern survives downsizing to 32-64 px
    if pattern == "striped":  # horizontal bands
        mask = ((ys * 5 + phase) % 1.0) < 0.4
    elif pattern == "checked":  # lattice lines both ways
        mask = (((xs * 5 + phase) % 1.0) < 0.25) | (((ys * 5 + phase) % 1.0) < 0.25)
    elif pattern == "dotted":
        dx = (xs * 5 + phase) % 1.0 - 0.5
        dy = (ys * 5) % 1.0 - 0.5
        mask = dx * dx + dy * dy < 0.07
    elif pattern == "floral":  # dots of a second, warm colour on an offset grid
        dx = (xs * 4 + 0.5 * (np.floor(ys * 4) % 2)) % 1.0 - 0.5
        dy = (ys * 4) % 1.0 - 0.5
        r2 = dx * dx + dy * dy
        mask = r2 < 0.09
        other = np.array((235, 120, 40) if luminance(colour) < 150 else (190, 30, 120), np.float32)
        base[r2 < 0.015] = (250, 230, 60)
    elif pattern == "colorblock":  # two halves
        mask = np.broadcast_to(xs > 0.5, (h, w))
        other = np.array(jitter((90, 170, 200), rng, 30), np.float32)
    if mask is not None:
        base[np.broadcast_to(mask, (h, w))] = other
    if pattern == "printed" or pattern == "graphic":  # a central emblem (chest print), drawn by caller's mask
        cx, cy = 0.5, 0.42 * h / w
        box = (np.abs(xs - cx) < 0.12) & (np.abs(ys - cy) < 0.09 * h / w * 0.75)
        base[np.broadcast_to(box, (h, w))] = other
        ring = np.abs(np.hypot(xs - cx, ys - cy) - 0.06) < 0.015
        base[np.broadcast_to(ring, (h, w))] = colour
    if fabric == "denim":  # diagonal twill
        base *= np.where(((xs + ys) * 16 % 1.0) < 0.5, 0.8, 1.0)[..., None]
    elif fabric == "knitted":  # vertical ribs
        base *= np.where((xs * 14 % 1.0) < 0.35, 0.75, 1.0)[..., None]
    elif fabric == "leather":  # dark with a sheen band
        base = base * 0.55 + 40 * np.exp(-(((xs - ys * 0.4) % 0.6) - 0.3) ** 2 / 0.004)[..., None]
    elif fabric == "furry":  # coarse speckle: cells of ~1/24 of the width survive downsizing
        cell = max(1, w // 24)
        g = np.random.default_rng(rng.getrandbits(32)).integers(-50, 50, (h // cell + 1, w // cell + 1, 1))
        base = base + np.repeat(np.repeat(g, cell, 0), cell, 1)[:h, :w].astype(np.float32)
    elif fabric == "chiffon":  # pale, see-through
        base = base * 0.55 + np.float32(255 * 0.45)
    return np.clip(base, 0, 255).astype(np.uint8)


def _px(poly: Poly, w: int, h: int) -> list[tuple[float, float]]:
    return [(x * w, y * h) for x, y in poly]


def poly_mask(polys: list[Poly], w: int, h: int, ellipses: list[tuple[float, float, float, float]] = ()) -> np.ndarray:
    """Boolean HxW mask of the union of unit-coordinate polygons and ellipse boxes (x0, y0, x1, y1)."""
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    for p in polys:
        d.polygon(_px(p, w, h), fill=255)
    for x0, y0, x1, y1 in ellipses:
        d.ellipse((x0 * w, y0 * h, x1 * w, y1 * h), fill=255)
    return np.asarray(m) > 127


def _rect(x0: float, y0: float, x1: float, y1: float) -> Poly:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _sx(poly: Poly, s: float, cx: float = 0.5) -> Poly:
    """Scale horizontally about cx (narrower cut for women's items, side views)."""
    return [(cx + (x - cx) * s, y) for x, y in poly]


# ---------------------------------------------------------------------------------------------------------
# Product shots (Kaggle, folder): one garment on a plain background.

SLEEVE_ARM = {"none": 0.0, "short": 0.28, "medium": 0.6, "long": 1.0}


def _top_polys(sleeve: str, hem: float, narrow: float) -> list[Poly]:
    torso = [(0.30, 0.20), (0.40, 0.15), (0.60, 0.15), (0.70, 0.20), (0.68, hem), (0.32, hem)]
    polys = [torso]
    f = SLEEVE_ARM[sleeve]
    if f > 0:
        for side in (-1, 1):  # sleeve: from the shoulder outward and down
            sx0, sy0 = 0.5 + side * 0.20, 0.17
            ex, ey = 0.5 + side * (0.20 + 0.22 * f), 0.17 + 0.50 * f
            wdt = 0.10
            polys.append([(sx0, sy0), (sx0, sy0 + 0.12), (ex, ey + wdt * 0.5), (ex + side * 0.06, ey - 0.02)])
    return [_sx(p, narrow) for p in polys]


def product_polys(kind: str, narrow: float = 1.0) -> tuple[list[Poly], list[tuple[float, float, float, float]]]:
    """Silhouette of one product kind: polygons and ellipses in unit coordinates."""
    e: list[tuple[float, float, float, float]] = []
    if kind == "tshirt":
        p = _top_polys("short", 0.78, narrow)
    elif kind == "shirt":
        p = _top_polys("long", 0.82, narrow)
    elif kind == "top":
        p = _top_polys("none", 0.70, narrow)
    elif kind == "dress":
        p = [_sx([(0.38, 0.10), (0.62, 0.10), (0.64, 0.40), (0.80, 0.92), (0.20, 0.92), (0.36, 0.40)], narrow)]
    elif kind == "trousers":
        p = [[(0.30, 0.08), (0.70, 0.08), (0.74, 0.92), (0.54, 0.92), (0.50, 0.36), (0.46, 0.92), (0.26, 0.92)]]
    elif kind == "shorts":
        p = [[(0.26, 0.25), (0.74, 0.25), (0.80, 0.66), (0.54, 0.68), (0.50, 0.50), (0.46, 0.68), (0.20, 0.66)]]
    elif kind == "skirt":
        p = [[(0.34, 0.22), (0.66, 0.22), (0.80, 0.70), (0.20, 0.70)]]
    elif kind == "shoe":  # side view: sole + upper, low and wide
        p = [[(0.08, 0.56), (0.30, 0.40), (0.42, 0.40), (0.50, 0.50), (0.90, 0.56), (0.92, 0.64), (0.08, 0.64)]]
    elif kind == "bag":  # body + handle (two thick bars)
        p = [_rect(0.18, 0.42, 0.82, 0.82), _rect(0.30, 0.22, 0.36, 0.42), _rect(0.64, 0.22, 0.70, 0.42),
             _rect(0.30, 0.22, 0.70, 0.27)]
    elif kind == "watch":  # strap + round case
        p = [_rect(0.42, 0.08, 0.58, 0.92)]
        e = [(0.28, 0.36, 0.72, 0.64)]
    else:
        raise ValueError(f"unknown product kind {kind!r}")
    return p, e


def product_image(kind: str, colour: RGB, pattern: str, w: int, h: int, rng: random.Random,
                  narrow: float = 1.0) -> Image.Image:
    polys, ells = product_polys(kind, narrow)
    # small placement jitter, as product photos are not pixel-aligned
    dx, dy = rng.uniform(-0.03, 0.03), rng.uniform(-0.02, 0.02)
    polys = [[(x + dx, y + dy) for x, y in p] for p in polys]
    ells = [(a + dx, b + dy, c + dx, d + dy) for a, b, c, d in ells]
    canvas = np.empty((h, w, 3), np.uint8)
    canvas[:] = jitter(BACKGROUND, rng, 4)
    m = poly_mask(polys, w, h, ells)
    canvas[m] = texture(w, h, colour, pattern, rng)[m]
    img = Image.fromarray(canvas)
    d = ImageDraw.Draw(img)
    lw = max(1, round(w / 90))
    edge = tuple(int(v * 0.6) for v in colour) if luminance(colour) > 60 else (90, 90, 90)
    for p in polys:
        d.polygon(_px(p, w, h), outline=edge, width=lw)
    if kind == "watch":  # the dial
        d.ellipse(((0.34 + dx) * w, (0.4 + dy) * h, (0.66 + dx) * w, (0.6 + dy) * h), fill=(245, 245, 240),
                  outline=(60, 60, 60), width=lw)
    elif kind == "shirt":  # collar
        d.polygon(_px([(0.42 + dx, 0.15 + dy), (0.5 + dx, 0.24 + dy), (0.58 + dx, 0.15 + dy)], w, h),
                  fill=contrast_of(colour))
    elif kind in ("tshirt", "top"):  # neck opening
        d.ellipse(((0.43 + dx) * w, (0.12 + dy) * h, (0.57 + dx) * w, (0.19 + dy) * h), fill=BACKGROUND)
    return img


# ---------------------------------------------------------------------------------------------------------
# Full-body figures (DeepFashion-MultiModal, iMaterialist): a person wearing labelled clothes; every part
# is returned as its own mask (iMaterialist needs per-segment masks).


@dataclass
class Outfit:
    """What a figure wears; fields follow DeepFashion-MultiModal's shape/texture attributes."""

    upper: str = "tshirt"  # tshirt | shirt | top | sweater | dress | none
    sleeve: str = "short"  # none | short | medium | long
    covers_navel: bool = True
    neckline: str = "round"  # v | square | round | standing | lapel | suspenders | none
    lower: str = "trousers"  # trousers | shorts | skirt | none (dress covers it)
    lower_len: str = "long"  # three-point | medium short | three-quarter | long
    upper_colour: RGB = (40, 95, 210)
    lower_colour: RGB = (22, 32, 86)
    upper_pattern: str = "solid"
    lower_pattern: str = "solid"
    upper_fabric: str = "cotton"
    lower_fabric: str = "cotton"
    outer: bool = False  # open cardigan / jacket over the upper garment
    outer_colour: RGB = (120, 72, 32)
    outer_pattern: str = "solid"
    outer_fabric: str = "knitted"
    socks: str = "no"  # no | socks | leggings
    hat: bool = False
    glasses: str = "no"  # no | eyeglasses | sunglasses
    neckwear: bool = False
    wrist: bool = False
    ring: bool = False
    belt: bool = False
    shoes: bool = True
    bag: bool = False
    bag_colour: RGB = (120, 72, 32)


LOWER_HEM = {"three-point": 0.60, "medium short": 0.68, "three-quarter": 0.82, "long": 0.93}


def _arm(side: int, frac: float, width: float = 0.06) -> Poly:
    """Arm from shoulder (0.5 ± 0.16, 0.21) to wrist (0.5 ± 0.27, 0.56); `frac` of it from the shoulder."""
    sx, sy = 0.5 + side * 0.16, 0.21
    ex, ey = 0.5 + side * 0.27, 0.56
    tx, ty = sx + (ex - sx) * frac, sy + (ey - sy) * frac
    return [(sx - side * 0.01, sy), (sx + side * width, sy + 0.01), (tx + side * width * 0.5, ty),
            (tx - side * width * 0.5, ty)]


class _Layers:
    """Garment layers in z-order: each placed for the view (squeeze, zoom, shift) as it is added."""

    def __init__(self, view: str, w: int, h: int, rng: random.Random):
        self.squeeze = 0.78 if view == "side" else 1.0
        self.zoom = 1.12 if view == "additional" else 0.94 if view == "full" else 1.0
        self.dx = rng.uniform(-0.03, 0.03)
        self.w, self.h, self.rng = w, h, rng
        self.items: list[tuple[str, list[Poly], list, np.ndarray | RGB]] = []  # name, polys, ellipses, fill

    def place(self, p: Poly) -> Poly:
        return [(0.5 + (x - 0.5) * self.squeeze * self.zoom + self.dx, 0.5 + (y - 0.5) * self.zoom) for x, y in p]

    def place_e(self, e: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        (x0, y0), (x1, y1) = self.place([(e[0], e[1]), (e[2], e[3])])
        return (x0, y0, x1, y1)

    def add(self, name: str, polys: list[Poly], fill, ells=()) -> None:
        self.items.append((name, [self.place(p) for p in polys], [self.place_e(e) for e in ells], fill))

    def tex(self, colour, pattern, fabric) -> np.ndarray:
        return texture(self.w, self.h, colour, pattern, self.rng, fabric)


def _body(L: _Layers, o: Outfit) -> None:
    legs = [_rect(0.38, 0.50, 0.48, 0.95), _rect(0.52, 0.50, 0.62, 0.95)]
    L.add("skin_legs", legs, SKIN)
    L.add("skin_body", [_rect(0.35, 0.18, 0.65, 0.55), _rect(0.46, 0.14, 0.54, 0.2), _arm(-1, 1.0), _arm(1, 1.0)],
          SKIN, [(0.43, 0.03, 0.57, 0.16)])
    L.add("hair", [], (60, 40, 25), [(0.43, 0.02, 0.57, 0.08)])
    if o.socks == "leggings":
        L.add("leggings", legs, (35, 35, 40))
    elif o.socks == "socks":
        L.add("socks", [_rect(0.38, 0.86, 0.48, 0.95), _rect(0.52, 0.86, 0.62, 0.95)], (245, 245, 245))
    if o.shoes:
        L.add("shoe_left", [[(0.37, 0.93), (0.49, 0.93), (0.49, 0.975), (0.33, 0.975)]], (40, 30, 25))
        L.add("shoe_right", [[(0.51, 0.93), (0.63, 0.93), (0.67, 0.975), (0.51, 0.975)]], (40, 30, 25))


def _lower(L: _Layers, o: Outfit, hem: float) -> None:
    if o.lower == "trousers":
        L.add("lower", [[(0.34, 0.47), (0.66, 0.47), (0.64, hem), (0.515, hem), (0.5, 0.58), (0.485, hem),
                         (0.36, hem)]], L.tex(o.lower_colour, o.lower_pattern, o.lower_fabric))
    elif o.lower == "shorts":
        L.add("lower", [[(0.34, 0.47), (0.66, 0.47), (0.67, hem), (0.515, hem), (0.5, 0.56), (0.485, hem),
                         (0.33, hem)]], L.tex(o.lower_colour, o.lower_pattern, o.lower_fabric))
    elif o.lower == "skirt":
        flare = 0.06 + 0.25 * (hem - 0.5)
        L.add("lower", [[(0.35, 0.47), (0.65, 0.47), (0.65 + flare, hem), (0.35 - flare, hem)]],
              L.tex(o.lower_colour, o.lower_pattern, o.lower_fabric))


def _upper(L: _Layers, o: Outfit, hem: float) -> None:
    utex = L.tex(o.upper_colour, o.upper_pattern, o.upper_fabric)  # drawn even for "none": keeps the rng stream
    if o.upper == "none":
        return
    top_hem = 0.52 if o.covers_navel else 0.40
    polys = [[(0.33, 0.20), (0.42, 0.17), (0.58, 0.17), (0.67, 0.20), (0.66, top_hem), (0.34, top_hem)]]
    if o.upper == "dress":
        flare = 0.06 + 0.25 * (hem - 0.5)
        polys.append([(0.35, 0.44), (0.65, 0.44), (0.65 + flare, hem), (0.35 - flare, hem)])
    L.add("upper", polys, utex)
    f = SLEEVE_ARM[o.sleeve]
    if f > 0:
        L.add("sleeve_left", [_arm(-1, f, 0.075)], utex)
        L.add("sleeve_right", [_arm(1, f, 0.075)], utex)
    neck = {
        "v": ([[(0.44, 0.17), (0.56, 0.17), (0.5, 0.26)]], []),
        "square": ([_rect(0.44, 0.165, 0.56, 0.23)], []),
        "round": ([], [(0.44, 0.14, 0.56, 0.22)]),
        "suspenders": ([_rect(0.38, 0.165, 0.62, 0.26)], []),
    }.get(o.neckline)
    if neck:
        L.add("neck_skin", neck[0], SKIN, neck[1])
    if o.neckline == "standing":
        L.add("collar", [_rect(0.44, 0.13, 0.56, 0.18)], trim_of(o.upper_colour))
    elif o.neckline == "lapel":
        L.add("collar", [[(0.43, 0.17), (0.5, 0.30), (0.47, 0.17)], [(0.57, 0.17), (0.5, 0.30), (0.53, 0.17)]],
              trim_of(o.upper_colour))


def _accessories(L: _Layers, o: Outfit) -> None:
    if o.outer:
        otex = L.tex(o.outer_colour, o.outer_pattern, o.outer_fabric)
        L.add("outer", [[(0.32, 0.20), (0.42, 0.16), (0.45, 0.16), (0.45, 0.54), (0.32, 0.54)],
                        [(0.68, 0.20), (0.58, 0.16), (0.55, 0.16), (0.55, 0.54), (0.68, 0.54)],
                        _arm(-1, 1.0, 0.08), _arm(1, 1.0, 0.08)], otex)
    if o.belt:
        L.add("belt", [_rect(0.34, 0.46, 0.66, 0.49)], (30, 22, 18))
    if o.neckwear:
        L.add("neckwear", [_rect(0.43, 0.15, 0.57, 0.19), _rect(0.48, 0.19, 0.53, 0.33)], (200, 40, 120))
    if o.wrist:
        L.add("wrist", [_rect(0.21, 0.51, 0.27, 0.53), _rect(0.73, 0.51, 0.79, 0.53)], (200, 180, 40))
    if o.ring:
        L.add("ring", [_rect(0.21, 0.575, 0.23, 0.585)], (230, 200, 60))
    if o.hat:
        L.add("hat", [_rect(0.42, 0.0, 0.58, 0.055), _rect(0.37, 0.045, 0.63, 0.065)], (90, 60, 140))
    if o.glasses != "no":
        L.add("glasses", [_rect(0.44, 0.085, 0.56, 0.105)],
              (10, 10, 10) if o.glasses == "sunglasses" else (120, 120, 130))
    if o.bag:
        L.add("bag", [_rect(0.72, 0.50, 0.90, 0.68), _rect(0.76, 0.44, 0.78, 0.50), _rect(0.84, 0.44, 0.86, 0.50)],
              o.bag_colour)


def figure(o: Outfit, w: int, h: int, rng: random.Random, view: str = "front") -> tuple[Image.Image, dict[str, np.ndarray]]:
    """Draw the figure; return the RGB image and visible masks per part name (z-order respected)."""
    L = _Layers(view, w, h, rng)
    hem = LOWER_HEM[o.lower_len]
    _body(L, o)
    _lower(L, o, hem)
    _upper(L, o, hem)
    _accessories(L, o)
    layers = L.items

    canvas = np.empty((h, w, 3), np.uint8)
    canvas[:] = jitter(BACKGROUND, rng, 4)
    owner = np.full((h, w), -1, np.int16)
    for i, (name, polys, ells, fill) in enumerate(layers):
        m = poly_mask(polys, w, h, ells)
        canvas[m] = fill[m] if isinstance(fill, np.ndarray) else fill
        owner[m] = i
    masks = {name: owner == i for i, (name, *_rest) in enumerate(layers)}
    return Image.fromarray(canvas), masks
