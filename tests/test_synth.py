"""Synthetic corpora: exact real layouts, determinism, quirks at the requested rate, learnable signal.

Cost: ~6 s on one core (four corpora of 40-240 tiny images, a few regenerations).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fashiontune.synth import FORMATS, QUIRKS_FILE, generate, image_size_of, load_quirks
from fashiontune.synth.imagefile import IMAGE_QUIRKS
from fashiontune.synth.imaterialist import rle_encode
from fashiontune.sources.imaterialist import rle_decode

KAGL_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
DF_NAME = re.compile(r"^(MEN|WOMEN)-[A-Za-z_]+-id_\d{8}-\d\d_\d_[a-z]+\.jpg$")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    return {f: generate(f, root / f, 160, seed=7, quirk_rate=0.2) for f in FORMATS}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), dtype=np.float32)


# ------------------------------------------------------------------------------------------------ layouts


def test_kagl_layout(corpora):
    root = corpora["kagl"]
    text = (root / "styles.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == KAGL_HEADER
    assert not text.endswith("\n")  # quirk_rate > 0: the real file's missing trailing newline
    rows = list(csv.reader(io.StringIO(text)))[1:]
    assert len(rows) == 160
    log = load_quirks(root)
    for row in rows:
        assert row[0].isdigit()
        q = log["items"].get(row[0], [])
        assert len(row) == 10 or q == ["comma_in_name"] and len(row) > 10
        image = root / "images" / f"{row[0]}.jpg"
        assert image.exists() == (q != ["missing_image"])
    sample = next(r[0] for r in rows if r[0] not in log["items"])
    im = Image.open(root / "images" / f"{sample}.jpg")
    assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (60, 80))
    assert (root / "images.csv").read_text().splitlines()[0] == "filename,link"


def test_deepfashion_layout(corpora):
    root = corpora["deepfashion-mm"]
    images = sorted(p.name for p in (root / "images").iterdir())
    assert images and all(DF_NAME.match(n) for n in images)
    views: dict[str, int] = defaultdict(int)
    for n in images:
        views[n.split("-")[2]] += 1
    assert max(views.values()) >= 3 and len(views) < len(images)  # several views per product id
    shape = (root / "labels/shape/shape_anno_all.txt").read_text().splitlines()
    fabric = (root / "labels/texture/fabric_ann.txt").read_text().splitlines()
    pattern = (root / "labels/texture/pattern_ann.txt").read_text().splitlines()
    assert all(len(line.split()) == 13 for line in shape)
    assert all(len(line.split()) == 4 for line in fabric + pattern)
    assert len(shape) < len(fabric) == len(pattern) == 160  # shape covers fewer images, like the real file
    necklines = {int(line.split()[10]) for line in shape}
    assert 3 in necklines  # the code the official README omits
    captions = json.loads((root / "captions.json").read_text())
    assert 0 < len(captions) < 160 and all(k.endswith(".jpg") for k in captions)
    assert all("wear" in c for c in captions.values())
    log = load_quirks(root)
    missing = {k for k, q in log["items"].items() if q == ["missing_image"]}
    assert missing and {n[:-4] for n in images} == {line.split()[0][:-4] for line in fabric} - missing


def test_imaterialist_layout(corpora):
    root = corpora["imaterialist"]
    rows = list(csv.reader((root / "train.csv").open()))
    assert rows[0] == ["ImageId", "EncodedPixels", "Height", "Width", "ClassId"]
    desc = json.loads((root / "label_descriptions.json").read_text())
    assert set(desc) == {"info", "categories", "attributes"}
    assert [c["id"] for c in desc["categories"]] == list(range(46))
    assert desc["categories"][0]["name"] == "shirt, blouse"
    assert set(desc["categories"][0]) == {"id", "name", "supercategory", "level"}
    log = load_quirks(root)
    bad = {k for k, q in log["items"].items() if q == ["bad_row"]}
    checked = 0
    per_image: dict[str, list] = defaultdict(list)
    for image_id, rle, h, w, cls in rows[1:]:
        if image_id.removesuffix(".jpg") in bad and not cls:
            continue  # the injected damaged row
        assert re.fullmatch(r"[0-9a-f]{32}(\.jpg)?", image_id)
        assert re.fullmatch(r"\d+(_\d+)*", cls)
        per_image[image_id.removesuffix(".jpg")].append((rle, int(h), int(w), int(cls.split("_")[0])))
    for image_id, segs in per_image.items():
        path = root / "train" / f"{image_id}.jpg"
        if log["items"].get(image_id):
            continue
        img = _load(path)
        h, w = segs[0][1], segs[0][2]
        assert img.shape[:2] == (h, w)
        bg = img[0, 0]  # the flat background colour of this image
        off_bg = np.abs(img - bg).max(axis=2) > 10
        union = np.zeros((h, w), bool)
        for rle, _, _, cat in segs:
            mask = rle_decode(rle, h, w)
            assert mask.any()
            assert off_bg[mask].mean() > 0.7, (image_id, cat)  # thin parts lose a little to JPEG edges
            union |= mask
            checked += 1
        # the masks are the drawn garments: drawn pixels inside, background outside (skin is not a garment)
        assert off_bg[union].mean() > 0.9
        assert (~off_bg[~union]).mean() > 0.6
    assert checked > 300
    assert len(list((root / "train").iterdir())) == 160 - sum(q == ["missing_image"] for q in log["items"].values())


def test_rle_roundtrip():
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (80, 60), (1, 1)]:
        mask = rng.random(shape) > 0.6
        assert np.array_equal(rle_decode(rle_encode(mask), *shape), mask)
    m = np.zeros((3, 2), bool)
    m[1:, 0] = True  # column-major, 1-indexed: pixels 2 and 3 of the first column
    m[0, 1] = True  # pixel 4
    assert rle_encode(m) == "2 3"


def test_folder_layout(corpora):
    root = corpora["folder"]
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(classes) >= 6
    counts = {c: len([f for f in (root / c).iterdir() if f.suffix.lower() in (".jpg", ".png")]) for c in classes}
    assert sum(counts.values()) == 160 and max(counts.values()) >= 3 * min(counts.values())  # imbalanced
    log = load_quirks(root)
    assert any(q == ["palette_png_alpha"] for q in log["items"].values())
    assert list(root.rglob("*.png")) and list(root.rglob("*.JPG"))


def test_full_size_and_image_size(tmp_path):
    assert image_size_of("kagl", full_size=True) == (1800, 2400)
    assert image_size_of("deepfashion-mm", image_size=64) == (64, 94)
    generate("kagl", tmp_path / "k", 2, seed=1, full_size=True)
    ims = list((tmp_path / "k" / "images").iterdir())
    assert Image.open(ims[0]).size == (1800, 2400)
    with pytest.raises(ValueError, match="unknown synthetic format"):
        generate("mnist", tmp_path / "x", 2, seed=1)


# ------------------------------------------------------------------------------------- determinism, quirks


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_seed_same_bytes(tmp_path, fmt):
    a = _files(generate(fmt, tmp_path / "a", 40, seed=3, quirk_rate=0.3))
    b = _files(generate(fmt, tmp_path / "b", 40, seed=3, quirk_rate=0.3))
    assert a == b
    c = _files(generate(fmt, tmp_path / "c", 40, seed=4, quirk_rate=0.3))
    assert c != a


def test_quirk_rate_and_coverage(tmp_path):
    root = generate("kagl", tmp_path / "k", 240, seed=2, quirk_rate=0.25)
    log = load_quirks(root)
    assert len(log["items"]) == 60  # exactly round(rate * n) items, one quirk each
    kinds = {q for qs in log["items"].values() for q in qs}
    assert kinds == {"comma_in_name", "na_usage", "na_name", "empty_season", "empty_baseColour", "empty_year",
                     "double_space", *IMAGE_QUIRKS}
    assert set(log["outcome"]) >= kinds
    clean = generate("kagl", tmp_path / "clean", 240, seed=2, quirk_rate=0.0)
    assert load_quirks(clean)["items"] == {}
    assert (clean / "styles.csv").read_text().endswith("\n")
    # quirks touch only the quirked items: every other image is byte-identical to the clean corpus
    for p in (clean / "images").iterdir():
        if p.stem not in log["items"]:
            assert p.read_bytes() == (root / "images" / p.name).read_bytes()


def test_image_quirks_on_disk(tmp_path):
    root = generate("kagl", tmp_path / "k", 240, seed=2, quirk_rate=0.25)
    clean = generate("kagl", tmp_path / "clean", 240, seed=2)
    seen = set()
    for item, (q,) in load_quirks(root)["items"].items():
        path = root / "images" / f"{item}.jpg"
        if q == "grayscale":
            assert Image.open(path).mode == "L"
        elif q == "cmyk":
            assert Image.open(path).mode == "CMYK"
        elif q == "palette_png_alpha":
            im = Image.open(path)
            assert (im.format, im.mode) == ("PNG", "P") and "transparency" in im.info
        elif q == "truncated":
            with pytest.raises(OSError):
                Image.open(path).load()
        elif q == "missing_image":
            assert not path.exists()
        elif q == "exif_rotated":
            im = Image.open(path)
            orientation = im.getexif().get(0x0112)
            assert orientation in (3, 6, 8)
            if orientation in (6, 8):
                assert im.size == (80, 60)  # stored on its side
            upright = _load(path)
            ref = _load(clean / "images" / f"{item}.jpg")
            assert upright.shape == ref.shape == (80, 60, 3)
            assert np.abs(upright - ref).mean() < 6  # exif_transpose gives the clean portrait image back
        else:
            continue
        seen.add(q)
    assert seen == set(IMAGE_QUIRKS)


# ------------------------------------------------------------------------------------------- learnability


def _nearest_centroid_accuracy(features: dict[str, list[np.ndarray]]) -> float:
    """Leave-one-out nearest-centroid accuracy: can a trivial model tell the labels apart?"""
    keys = [k for k, v in features.items() if len(v) >= 3]
    sums = {k: np.sum(features[k], axis=0) for k in keys}
    right = total = 0
    for k in keys:
        for x in features[k]:
            cents = {j: (sums[j] - (x if j == k else 0)) / (len(features[j]) - (j == k)) for j in keys}
            pred = min(cents, key=lambda j: float(np.sum((cents[j] - x) ** 2)))
            right += pred == k
            total += 1
    return right / total


@pytest.fixture(scope="module")
def clean_kagl(tmp_path_factory) -> list[tuple[dict, np.ndarray]]:
    root = generate("kagl", tmp_path_factory.mktemp("kagl") / "k", 240, seed=11)
    rows = list(csv.DictReader((root / "styles.csv").open()))
    return [(r, _load(root / "images" / f"{r['id']}.jpg")) for r in rows]


def test_colour_label_is_visible(clean_kagl):
    feats: dict[str, list[np.ndarray]] = defaultdict(list)
    for row, img in clean_kagl:
        fg = np.abs(img - img[0, 0]).max(axis=2) > 20  # garment pixels (background is flat)
        feats[row["baseColour"]].append(np.median(img[fg], axis=0) if fg.sum() > 20 else img.mean(axis=(0, 1)))
    assert len(feats) >= 8
    assert _nearest_centroid_accuracy(feats) > 0.75


def test_category_silhouette_is_visible(clean_kagl):
    feats: dict[str, list[np.ndarray]] = defaultdict(list)
    for row, img in clean_kagl:
        fg = (np.abs(img - img[0, 0]).max(axis=2) > 20).astype(np.float32)
        small = fg.reshape(16, 5, 12, 5).mean(axis=(1, 3))  # 12x16 silhouette, colour-blind
        feats[row["articleType"]].append(small.ravel())
    assert len(feats) >= 7
    assert _nearest_centroid_accuracy(feats) > 0.85


def test_names_follow_labels(clean_kagl):
    for row, _ in clean_kagl:
        name = row["productDisplayName"]
        assert row["gender"] in name and row["baseColour"] in name


def test_deepfashion_sleeve_length_is_visible(tmp_path):
    root = generate("deepfashion-mm", tmp_path / "d", 200, seed=5)
    names = {0: "sleeveless", 1: "short", 3: "long"}
    bare: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in (root / "labels/shape/shape_anno_all.txt").read_text().splitlines():
        name, *codes = line.split()
        if int(codes[0]) in names and codes[10] == "1":  # no cardigan over the arms
            img = _load(root / "images" / name)
            skin = np.abs(img - np.array([224, 180, 150])).max(axis=2) < 25
            upper_arm, forearm = skin[19:28].mean(), skin[36:50].mean()  # rows ~0.22-0.32 and ~0.4-0.57 of 88
            bare[names[int(codes[0])]].append((upper_arm, forearm))
    m = {k: np.mean(v, axis=0) for k, v in bare.items()}
    assert set(m) == set(names.values())
    assert m["sleeveless"][0] > m["short"][0] + 0.02  # a short sleeve covers the upper arm ...
    assert m["short"][1] > m["long"][1] + 0.02  # ... a long one the forearm too


def test_cli_synth(tmp_path, capsys):
    from fashiontune.cli import main

    assert main(["synth", "--format", "folder", "--out", str(tmp_path / "f"), "--n", "12", "--seed", "1",
                 "--quirks", "0.5", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "wrote 12 folder images (32x43)" in out
    assert (tmp_path / "f" / QUIRKS_FILE).exists()


def test_cli_synth_rejects_bad_arguments(tmp_path):
    from fashiontune.cli import main

    with pytest.raises(SystemExit, match="--quirks must be within 0..1"):
        main(["synth", "--format", "kagl", "--out", str(tmp_path), "--quirks", "1.5"])
    with pytest.raises(SystemExit):  # argparse: invalid choice
        main(["synth", "--format", "deepfashion", "--out", str(tmp_path)])
