"""Kaggle "Fashion Product Images" layout: styles.csv (+ images.csv) and images/<id>.jpg.

The csv is written by hand, not with the csv module, because the real file is not quoted: a product name
with a comma really does produce a row with more than 10 fields.
"""

from __future__ import annotations

import random
from pathlib import Path

from . import draw, imagefile, quirks

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"

# articleType -> (masterCategory, subCategory, drawn kind, name noun, weight, gender weights, brands)
ARTICLES: dict[str, tuple[str, str, str, str, float, dict[str, float], tuple[str, ...]]] = {
    "Tshirts": ("Apparel", "Topwear", "tshirt", "T-shirt", 0.22, {"Men": 5, "Women": 2, "Boys": 1, "Unisex": 1},
                ("Roadster", "Puma", "Nike", "Jack & Jones")),
    "Shirts": ("Apparel", "Topwear", "shirt", "Shirt", 0.17, {"Men": 6, "Women": 1, "Boys": 1},
               ("Turtle", "Peter England", "Arrow", "Roadster")),
    "Casual Shoes": ("Footwear", "Shoes", "shoe", "Casual Shoes", 0.14, {"Men": 4, "Women": 2, "Unisex": 1},
                     ("Puma", "Nike", "Adidas", "Vans")),
    "Handbags": ("Accessories", "Bags", "bag", "Handbag", 0.11, {"Women": 1}, ("Baggit", "Lino Perros", "Hidesign")),
    "Watches": ("Accessories", "Watches", "watch", "Watch", 0.09, {"Men": 3, "Women": 2, "Unisex": 1},
                ("Titan", "Fastrack", "Casio")),
    "Jeans": ("Apparel", "Bottomwear", "trousers", "Jeans", 0.08, {"Men": 3, "Women": 2},
              ("Wrangler", "Levis", "Roadster")),
    "Dresses": ("Apparel", "Dress", "dress", "Dress", 0.07, {"Women": 5, "Girls": 1}, ("Mango", "Vero Moda", "ONLY")),
    "Tops": ("Apparel", "Topwear", "top", "Top", 0.06, {"Women": 5, "Girls": 1}, ("Mango", "ONLY", "Fabindia")),
    "Shorts": ("Apparel", "Bottomwear", "shorts", "Shorts", 0.06, {"Men": 3, "Women": 1, "Boys": 1},
               ("Nike", "Puma", "Roadster")),
}
COLOUR_WEIGHTS = {"Black": 18, "White": 12, "Blue": 13, "Navy Blue": 8, "Grey": 9, "Red": 8, "Green": 7,
                  "Pink": 7, "Brown": 6, "Yellow": 5}
JEANS_COLOURS = {"Blue": 6, "Navy Blue": 3, "Black": 2, "Grey": 1}
# pattern -> word in the product name; solid items often carry no pattern word
PATTERN_WORDS = {"solid": "Solid", "striped": "Striped", "checked": "Check", "dotted": "Polka Dot",
                 "printed": "Printed", "floral": "Floral"}
PATTERN_WEIGHTS = {"solid": 10, "striped": 4, "checked": 3, "dotted": 2, "printed": 3, "floral": 2}
PLAIN_KINDS = {"shoe", "bag", "watch", "trousers"}
SEASONS = {"Summer": 5, "Fall": 4, "Winter": 2, "Spring": 2}
USAGES = {"Casual": 14, "Sports": 3, "Formal": 2, "Ethnic": 1}

META_QUIRKS = ("comma_in_name", "na_usage", "na_name", "empty_season", "empty_baseColour", "empty_year",
               "double_space")
OUTCOME = {**imagefile.QUIRK_OUTCOME, "comma_in_name": "repaired", "na_usage": "kept", "na_name": "kept",
           "empty_season": "absent", "empty_baseColour": "absent", "empty_year": "absent",
           "double_space": "repaired", "no_trailing_newline": "repaired"}


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def generate(out: Path, n: int, seed: int, quirk_rate: float, size: tuple[int, int], quality: int) -> None:
    rng = random.Random(seed)
    top = max(59000, 3 * n)
    ids = [str(i) for i in rng.sample(range(1000, 1000 + top), n)]
    assigned = quirks.assign(ids, META_QUIRKS + imagefile.IMAGE_QUIRKS, quirk_rate, quirks.rng_for(seed))
    articles = {a: v[4] for a, v in ARTICLES.items()}
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, links, log = [HEADER], ["filename,link"], {}
    for item in ids:
        art = _pick(rng, articles)
        master, sub, kind, noun, _, genders, brands = ARTICLES[art]
        gender = _pick(rng, genders)
        colour = _pick(rng, JEANS_COLOURS if art == "Jeans" else COLOUR_WEIGHTS)
        pattern = "solid" if kind in PLAIN_KINDS else _pick(rng, PATTERN_WEIGHTS)
        season, usage = _pick(rng, SEASONS), _pick(rng, USAGES)
        year = str(rng.choice((2011, 2012, 2012, 2015, 2016, 2017)))
        brand = rng.choice(brands)
        word = PATTERN_WORDS[pattern] if pattern != "solid" or rng.random() < 0.4 else ""
        words = [brand, gender, colour] + ([word] if word else []) + [noun]
        name = " ".join(words)
        irng = random.Random(f"kagl-{seed}-{item}")  # per item: a quirk changes nothing else
        q = assigned.get(item)
        if q:
            log[item] = [q]
        if q == "comma_in_name":  # e.g. "Roadster Men Navy Blue, Striped Shirt" (unquoted)
            name = " ".join(words[:3]) + ", " + " ".join(words[3:]) + (", Pack of 2" if int(item) % 2 else "")
        elif q == "double_space":
            name = "  ".join(words[:2]) + " " + " ".join(words[2:])
        elif q == "na_name":
            name = "NA"
        cells = {"season": season, "baseColour": colour, "year": year, "usage": usage}
        if q == "na_usage":
            cells["usage"] = "NA"
        elif q and q.startswith("empty_"):
            cells[q[len("empty_"):]] = ""
        rows.append(",".join([item, gender, master, sub, art, cells["baseColour"], cells["season"], cells["year"],
                              cells["usage"], name]))
        links.append(f"{item}.jpg,http://assets.myntassets.com/v1/images/style/properties/{item}.jpg")
        narrow = 0.88 if gender in ("Women", "Girls") else 1.0
        img = draw.product_image(kind, draw.jitter(draw.COLOURS[colour], irng, 10), pattern, size[0], size[1],
                                 irng, narrow)
        if size[0] * size[1] >= draw.GRAIN_PIXELS:
            img = draw.add_grain(img, irng)
        imagefile.write(img, out / "images" / f"{item}.jpg",
                        q if q in imagefile.IMAGE_QUIRKS else None, irng, quality)
    files = {}
    text = "\n".join(rows)
    if quirk_rate > 0:  # the real file may end without a newline
        files["styles.csv"] = ["no_trailing_newline"]
    else:
        text += "\n"
    (out / "styles.csv").write_text(text, encoding="utf-8", newline="")
    (out / "images.csv").write_text("\n".join(links) + "\n", encoding="utf-8", newline="")
    quirks.write_log(out, "kagl", n, seed, quirk_rate, log, OUTCOME, files)
