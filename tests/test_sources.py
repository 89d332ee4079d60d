"""Source adapters on synthetic corpora (with quirks) and on hand-written broken inputs.

Cost: ~4 s on one core (four corpora of 120 tiny images, metadata reads).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fashiontune.records import Record, Skip
from fashiontune.sources import SOURCES, SourceError, get_source
from fashiontune.synth import FORMATS, generate, load_quirks

N = 120
BAD_ID = re.compile(r"[./\\\s]")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("src")
    return {f: generate(f, root / f, N, seed=21, quirk_rate=0.3) for f in FORMATS}


def _read(name: str, path: Path) -> tuple[dict[str, Record], list[Skip]]:
    items = list(get_source(name).iter_records(path))
    recs = [r for r in items if not isinstance(r, Skip)]
    skips = [r for r in items if isinstance(r, Skip)]
    assert len({r.id for r in recs}) == len(recs), "record ids must be unique"
    return {r.id: r for r in recs}, skips


@pytest.mark.parametrize("fmt", FORMATS)
def test_ids_valid_deterministic_and_no_decoding(corpora, fmt, monkeypatch):
    def no_decoding(*a, **k):
        raise AssertionError("a source must not open images")

    monkeypatch.setattr(Image, "open", no_decoding)
    first = list(get_source(fmt).iter_records(corpora[fmt]))
    assert first == list(get_source(fmt).iter_records(corpora[fmt]))  # same order, same content
    for r in first:
        assert r.id and not BAD_ID.search(r.id), r.id
        if isinstance(r, Record):
            assert r.group_id and isinstance(r.text, str) and r.labels
            assert all(v != "" and v is not None for v in r.labels.values())
        else:
            assert r.reason and " " not in r.reason and r.path


def test_get_source_unknown():
    with pytest.raises(SourceError, match="kagl, deepfashion-mm, imaterialist, folder, csv, fashion-mnist"):
        get_source("kaggle")
    assert set(SOURCES) == {"kagl", "deepfashion-mm", "imaterialist", "folder", "csv", "fashion-mnist"}


# ------------------------------------------------------------------------------------------------- kagl


def test_kagl_every_quirk_repaired_or_kept(corpora):
    root = corpora["kagl"]
    recs, skips = _read("kagl", root)
    assert len(recs) == N and not skips  # every row (incl. the last one, without newline) is a record
    log = load_quirks(root)["items"]
    seen = set()
    for item, (q,) in log.items():
        r = recs[item]
        seen.add(q)
        if q == "comma_in_name":
            assert "," in r.text and r.meta["repaired"] == "comma_in_name"
            assert r.labels["usage"] in {"Casual", "Sports", "Formal", "Ethnic"}  # no field shifted
        elif q == "na_usage":
            assert r.labels["usage"] == "NA"  # literal value kept (pandas would make it missing)
        elif q == "na_name":
            assert r.text == "NA"
        elif q.startswith("empty_"):
            assert q[len("empty_"):] not in r.labels
        elif q == "double_space":
            assert "  " in r.meta["productDisplayName"] and "  " not in r.text
        elif q == "missing_image":
            assert not r.image_path.exists()  # listed: the builder reports it
    assert {"comma_in_name", "na_usage", "na_name", "double_space", "missing_image"} <= seen
    r = next(r for i, r in recs.items() if i not in log)
    assert r.group_id == r.id and r.image_path == root / "images" / f"{r.id}.jpg" and r.image_path.exists()
    assert set(r.labels) == {"gender", "masterCategory", "subCategory", "articleType", "baseColour", "season",
                             "year", "usage"}
    assert r.text.split()[-1] in r.meta["productDisplayName"]


HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"


def _kagl(tmp_path: Path, body: str, header: str = HEADER, bom: bool = True) -> Path:
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    (tmp_path / "styles.csv").write_bytes(("\ufeff" if bom else "").encode() + (header + "\n" + body).encode())
    return tmp_path


def test_kagl_bad_rows_skipped_with_line(tmp_path):
    root = _kagl(tmp_path, "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check  Men Navy Blue Shirt\n"
                           "39386,Men,Apparel,Bottomwear\n"
                           "\n"
                           "15970,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Dup\n"
                           "x1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Bad id\n"
                           "59263,Women,Accessories,Watches,Watches,Silver,Winter,,NA,Titan Women, Silver, Watch")
    recs, skips = _read("kagl", root)
    assert list(recs) == ["15970", "59263"]
    assert recs["15970"].text == "Turtle Check Men Navy Blue Shirt"
    assert recs["59263"].text == "Titan Women, Silver, Watch" and recs["59263"].labels["usage"] == "NA"
    assert "year" not in recs["59263"].labels
    assert [(s.id, s.reason, s.path.rsplit(":", 1)[1]) for s in skips] == [
        ("39386", "unparsable_row", "3"), ("15970_line5", "duplicate_id", "5"), ("line6", "unparsable_row", "6")]
    assert all(s.detail for s in skips)


def test_kagl_missing_files_explained(tmp_path):
    with pytest.raises(SourceError, match=r"styles\.csv not found .*header id,gender"):
        list(get_source("kagl").iter_records(tmp_path))
    (tmp_path / "styles.csv").write_text(HEADER + "\n")
    with pytest.raises(SourceError, match=r"images not found \(the folder of <id>\.jpg"):
        list(get_source("kagl").iter_records(tmp_path))
    _kagl(tmp_path, "", header="id;gender;articleType")
    with pytest.raises(SourceError, match="line 1: header"):
        list(get_source("kagl").iter_records(tmp_path))
    with pytest.raises(SourceError, match="is not a directory"):
        list(get_source("kagl").iter_records(tmp_path / "nope"))
    with pytest.raises(SourceError, match=r"Found .*fashion-dataset/styles\.csv: pass --input .*fashion-dataset"):
        list(get_source("kagl").iter_records(_kagl(tmp_path / "dl" / "fashion-dataset", "").parent))


# ------------------------------------------------------------------------------------------ deepfashion-mm


def test_deepfashion_records(corpora):
    root = corpora["deepfashion-mm"]
    recs, skips = _read("deepfashion-mm", root)
    assert len(recs) == N and not skips
    qlog = load_quirks(root)
    structural = qlog["structural"]
    groups: dict[str, list[str]] = {}
    for r in recs.values():
        groups.setdefault(r.group_id, []).append(r.id)
        assert re.fullmatch(r"id_\d{8}", r.group_id) and r.group_id in r.id
        assert r.labels["gender"] in ("MEN", "WOMEN") and r.labels["category"] in r.id
        assert {f"{p}_{part}" for p in ("fabric", "pattern") for part in ("upper", "lower", "outer")} <= set(r.labels)
        q = structural.get(r.id, [])
        if "no_shape_labels" in q:
            assert "sleeve_length" not in r.labels and "neckline" not in r.labels
        else:
            assert r.labels["sleeve_length"] in ("sleeveless", "short-sleeve", "medium-sleeve", "long-sleeve",
                                                 "not long-sleeve")
        if "undocumented_neckline_code" in q and "no_shape_labels" not in q:
            assert r.labels["neckline"] == "code_3"
        if "no_caption" in q:
            assert r.text == ""
        else:
            assert r.text.startswith("The ")
    assert max(len(v) for v in groups.values()) >= 3
    assert any("no_shape_labels" in q for q in structural.values())
    for item, (q,) in qlog["items"].items():
        assert recs[item].image_path.exists() == (q != "missing_image")  # listed-but-missing stays a record


def test_deepfashion_odd_inputs(corpora, tmp_path):
    root = tmp_path / "df"
    shutil.copytree(corpora["deepfashion-mm"], root)
    some = sorted((root / "images").iterdir())[0]
    shutil.copy(some, root / "images" / "WOMEN-Dresses-id_99999999-01_1_front.jpg")  # image with no labels
    with open(root / "labels/texture/fabric_ann.txt", "a") as f:
        f.write("WOMEN-Dresses-id_99999999-01_1_front.jpg 1 x\n")
    with open(root / "labels/shape/shape_anno_all.txt", "a") as f:
        f.write("WOMEN-Dresses-id_99999999-01_1_front.jpg 0 3 0 0 0 0 0 0 0 9 1 1\n")  # neckline 9: unknown
    recs, skips = _read("deepfashion-mm", root)
    extra = recs["WOMEN-Dresses-id_99999999-01_1_front"]
    assert extra.text == "" and extra.labels["neckline"] == "code_9" and "fabric_upper" not in extra.labels
    assert extra.group_id == "id_99999999"
    assert [(s.reason, s.path.rsplit(":", 1)[0].endswith("fabric_ann.txt")) for s in skips] == [("unparsable_row", True)]
    (root / "labels/shape/shape_anno_all.txt").unlink()
    with pytest.raises(SourceError, match=r"shape_anno_all\.txt not found .*12 shape codes"):
        list(get_source("deepfashion-mm").iter_records(root))


# ------------------------------------------------------------------------------------------- imaterialist


def test_imaterialist_records(corpora):
    root = corpora["imaterialist"]
    recs, skips = _read("imaterialist", root)
    assert len(recs) == N
    log = load_quirks(root)["items"]
    bad = {i for i, q in log.items() if q == ["bad_row"]}
    assert bad and {s.id.split("_line")[0] for s in skips} == bad
    assert all(s.reason == "unparsable_row" and re.search(r"train\.csv:\d+$", s.path) for s in skips)
    desc = json.loads((root / "label_descriptions.json").read_text())
    names = {c["name"] for c in desc["categories"]}
    for rid, r in recs.items():
        assert r.labels["category"] == sorted(r.labels["category"]) and r.labels["category"]
        assert isinstance(r.labels["attribute"], list)
        q = log.get(rid, [None])[0]
        if q == "unknown_class_id":
            assert any(c.startswith("code_") for c in r.labels["category"])
        else:
            assert set(r.labels["category"]) <= names
        assert r.meta["n_segments"] >= 2 and r.image_path == root / "train" / f"{rid}.jpg"
        if q is None:
            with Image.open(r.image_path) as im:
                assert im.size == (r.meta["width"], r.meta["height"])
    assert any(q == ["image_id_with_ext"] for q in log.values())  # ids without ".jpg" all the same
    assert any(r.labels["attribute"] for r in recs.values())
    assert any("shirt, blouse" in r.labels["category"] for r in recs.values())


def test_imaterialist_errors(corpora, tmp_path):
    root = tmp_path / "im"
    shutil.copytree(corpora["imaterialist"], root)
    (root / "train.csv").write_text("ImageId,EncodedPixels,Height,Width\nabc,1 2,3,4\n")
    with pytest.raises(SourceError, match="missing column.*ClassId"):
        list(get_source("imaterialist").iter_records(root))
    (root / "label_descriptions.json").unlink()
    with pytest.raises(SourceError, match=r"label_descriptions\.json not found"):
        list(get_source("imaterialist").iter_records(root))


# ------------------------------------------------------------------------------------------------ folder


def test_folder_records(corpora, tmp_path):
    root = corpora["folder"]
    recs, skips = _read("folder", root)
    assert len(recs) == N
    assert [(s.id, s.reason) for s in skips] == [("tshirts__notes_txt", "unsupported_file")]
    log = load_quirks(root)
    assert set(log["items"]) <= set(recs)  # PNG and .JPG files are items too
    for rid, r in recs.items():
        assert r.labels == {"label": r.image_path.parent.name}
        assert rid == str(r.image_path.relative_to(root)).replace("/", "__").replace(".", "_")
    with pytest.raises(SourceError, match="no class folders"):
        list(get_source("folder").iter_records(tmp_path))
    (tmp_path / "stray.jpg").write_bytes(b"x")
    (tmp_path / "a b").mkdir()
    (tmp_path / "a b" / "x.y.jpg").write_bytes(b"x")
    recs2, skips2 = _read("folder", tmp_path)
    assert list(recs2) == ["a_b__x_y_jpg"] and recs2["a_b__x_y_jpg"].labels == {"label": "a b"}
    assert [s.reason for s in skips2] == ["no_class_folder"]


# --------------------------------------------------------------------------------------------------- csv


def test_csv_source(tmp_path):
    (tmp_path / "items.csv").write_text(
        "image,caption,colour,tags,group_id\n"
        'img/a.jpg,"A red, striped  shirt",red,cotton|summer,p1\n'
        "img/b.jpg,Blue dress,blue,,p1\n"
        f"{tmp_path / 'abs.jpg'},,green,summer,\n"
        "img/c.jpg,too,many,fields,here,x\n"
        ",no image,red,,\n"
        "img/a.jpg,duplicate,red,,\n"
    )
    for where in (tmp_path, tmp_path / "items.csv"):  # a folder holding items.csv, or the CSV itself
        recs, skips = _read("csv", where)
        a, b, c = recs.values()
        assert (a.id, a.group_id, a.text) == ("img__a_jpg", "p1", "A red, striped shirt")
        assert a.labels == {"colour": "red", "tags": ["cotton", "summer"]} and a.image_path == tmp_path / "img/a.jpg"
        assert b.labels == {"colour": "blue"} and b.group_id == "p1"
        assert c.image_path == tmp_path / "abs.jpg" and c.labels["tags"] == ["summer"] and c.group_id == c.id
        assert [(s.reason, s.path.rsplit(":", 1)[1]) for s in skips] == [
            ("unparsable_row", "5"), ("unparsable_row", "6"), ("duplicate_id", "7")]
        assert "quote cells" in skips[0].detail


def test_csv_ids_and_errors(tmp_path):
    (tmp_path / "list.csv").write_text("id,image,text,category\nsku.1/a,x.jpg,Hello   there,shoe\n")
    recs, _ = _read("csv", tmp_path / "list.csv")
    assert list(recs) == ["sku_1__a"] and recs["sku_1__a"].text == "Hello there"
    with pytest.raises(SourceError, match=r"items\.csv not found.*image"):
        list(get_source("csv").iter_records(tmp_path))
    (tmp_path / "items.csv").write_text("path,caption\na.jpg,x\n")
    with pytest.raises(SourceError, match="no `image` column"):
        list(get_source("csv").iter_records(tmp_path))
    with pytest.raises(SourceError, match="does not exist"):
        list(get_source("csv").iter_records(tmp_path / "missing.csv"))


def test_imaterialist_2020_attribute_column(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "label_descriptions.json").write_text(json.dumps({
        "info": {}, "categories": [{"id": 0, "name": "shirt, blouse", "supercategory": "upperbody", "level": 2}],
        "attributes": [{"id": 115, "name": "above-the-hip (length)", "supercategory": "length", "level": 1}]}))
    (tmp_path / "train.csv").write_text('ImageId,EncodedPixels,Height,Width,ClassId,AttributesIds\n'
                                        'abc,1 3,4,4,0,"115,116"\nabc,5 2,4,4,3,\n')
    recs, skips = _read("imaterialist", tmp_path)
    assert not skips and recs["abc"].labels == {"category": ["code_3", "shirt, blouse"],
                                                "attribute": ["above-the-hip (length)", "code_116"]}
