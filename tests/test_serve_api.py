"""`fashiontune index build` + the serve app's JSON API (FastAPI's TestClient), on the eval job's 13-item shards.

The model is the tiny random-init ViT with an exported linear `color` head (as training writes it); the eval
job scores it first, so that its embedding cache and results.json are the reference the API must match:
text search ranks as the eval job's exact top-K, classify gives the eval job's predictions for the same image.
Cost on one core: ~15 s once (import open_clip, build + eval + index), then < 1 s per test.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from test_eval_job import cfg_for, write_shards

from fashiontune.config import load_config
from fashiontune.index.config import IndexConfig


def build_index(shards: Path, out: Path, *extra: str) -> dict:
    from fashiontune.index.build import build_index as build

    return build(load_config(IndexConfig, None, [f"data.shards={shards}", f"out={out}", "data.batch_size=3",
                                                 "data.num_workers=0", *extra]))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(shards, export dir, eval output dir, index dir): a color-head export evaluated, then indexed."""
    from fashiontune.eval.run import run_eval
    from fashiontune.models import ModelConfig, load_clip
    from fashiontune.tasks import build_task
    from fashiontune.tasks.config import TaskConfig

    root = tmp_path_factory.mktemp("serve")
    shards = write_shards(root / "shards", {"val": [4], "test": [5, 1, 7]})
    manifest = json.loads((shards / "manifest.json").read_text())
    torch.manual_seed(1)
    loaded = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32))
    build_task(TaskConfig(name="classify", field="color"), loaded, manifest).export(root / "export")
    run_eval(cfg_for(shards, root / "eval", f"model.checkpoint={root / 'export'}", "plots.grid_queries=0",
                     "data.num_workers=0"))
    build_index(shards, root / "index", f"model.checkpoint={root / 'export'}", f"results={root / 'eval/results.json'}")
    return shards, root / "export", root / "eval", root / "index"


@pytest.fixture(scope="module")
def client(served):
    from fashiontune.serve.cli import build_app

    return TestClient(build_app([str(served[3])]))


def cache(eval_dir: Path) -> dict:
    items = json.loads((eval_dir / "embeddings/items.json").read_text())
    return {**items, "image": np.load(eval_dir / "embeddings/image.npy"), "text": np.load(eval_dir / "embeddings/text.npy"),
            "prompts": np.load(eval_dir / "embeddings/prompts.color.npy")}


def test_index_holds_every_item_with_its_image_bytes_at_its_offset(served):
    shards, _, eval_dir, index = served
    from fashiontune.data.samples import iter_tar

    info = json.loads((index / "index.json").read_text())
    rows = [json.loads(line) for line in (index / "items.jsonl").read_text().splitlines()]
    assert info["items"] == len(rows) == 13 and info["kind"] == "flat" and info["results"] == "results.json"
    assert [r["id"] for r in rows] == cache(eval_dir)["keys"]  # the eval job's item order
    jpgs = {s["__key__"]: s["jpg"] for p in sorted((shards / "test").glob("*.tar")) for s in iter_tar(p)}
    for r in rows:
        with open(shards / r["shard"], "rb") as f:
            f.seek(r["offset"])
            assert f.read(r["size"]) == jpgs[r["id"]]


def test_text_search_ranks_as_the_eval_jobs_exact_top_k(served, client):
    from fashiontune.metrics.retrieval import retrieval_ranks

    c = cache(served[2])
    img = torch.nn.functional.normalize(torch.from_numpy(c["image"]), dim=-1)
    ranks = retrieval_ranks(img, torch.from_numpy(c["text"]), c["group_ids"], c["captions"], k=13)["t2i"]
    queries = [i for i, cap in enumerate(c["captions"]) if cap]
    assert len(queries) >= 5
    for q in queries:
        r = client.get("/api/search", params={"q": c["captions"][q], "k": 13})
        assert r.status_code == 200, r.text
        got = r.json()["results"]
        assert [h["id"] for h in got] == [c["keys"][j] for j in ranks.topk_indices[q].tolist()], c["captions"][q]
        assert all(h["thumbnail"].startswith("/thumb/0/") and "caption" in h and "labels" in h for h in got)
        scores = [h["score"] for h in got]
        assert scores == sorted(scores, reverse=True)


def test_similar_items_are_the_exact_image_neighbours_without_the_item(served, client):
    c = cache(served[2])
    img = c["image"] / np.linalg.norm(c["image"], axis=1, keepdims=True)
    for q in (0, 7, 12):
        got = client.get(f"/api/similar/{c['keys'][q]}", params={"k": 5}).json()
        order = [j for j in np.argsort(-(img @ img[q]), kind="stable") if j != q][:5]
        assert [h["id"] for h in got["results"]] == [c["keys"][j] for j in order]
        assert got["item"]["id"] == c["keys"][q]


def test_image_search_finds_the_uploaded_catalogue_image_first(client):
    for pos in (0, 5):
        jpg = client.get(f"/thumb/0/{pos}.jpg").content
        got = client.post("/api/search/image", files={"file": ("x.jpg", jpg, "image/jpeg")}, params={"k": 3}).json()
        assert got["results"][0]["thumbnail"] == f"/thumb/0/{pos}.jpg"
        assert got["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_classify_gives_the_eval_jobs_predictions_for_the_same_image(served, client):
    from fashiontune.eval.heads import head_logits
    from fashiontune.models import load_heads

    c = cache(served[2])
    heads, meta = load_heads(served[1])
    spec = meta["fields"]["color"]
    logits = head_logits(heads, spec, c["image"])  # what the eval job scores (its cached features)
    cos = (c["image"] / np.linalg.norm(c["image"], axis=1, keepdims=True)) @ c["prompts"].T
    for pos in range(13):
        jpg = client.get(f"/thumb/0/{pos}.jpg").content
        got = client.post("/api/classify", files={"file": ("x.jpg", jpg, "image/jpeg")}).json()["fields"]["color"]
        head, zs = got["methods"]["classify"], got["methods"]["zero_shot"]
        assert head["predicted"] == [spec["vocab"][int(logits[pos].argmax())]]
        p = torch.softmax(torch.from_numpy(logits[pos]).double(), 0).numpy()
        assert dict(zip(head["labels"], head["probs"])) == pytest.approx(dict(zip(spec["vocab"], p)), abs=1e-4)
        assert zs["predicted"] == [spec["vocab"][int(cos[pos].argmax())]]


def test_threshold_selects_the_labels_at_or_above_it(client):
    jpg = client.get("/thumb/0/3.jpg").content
    seen = {}
    for t in (0.0, 0.2, 0.5, 1.0):
        body = client.post("/api/classify", files={"file": ("x.jpg", jpg, "image/jpeg")}, data={"threshold": str(t)}).json()
        assert body["threshold"] == t
        for name, f in body["fields"].items():
            for method, m in f["methods"].items():
                assert m["above"] == [lab for lab, p in zip(m["labels"], m["probs"]) if p >= t]
                assert m["probs"] == sorted(m["probs"], reverse=True)
                seen.setdefault((name, method), []).append(len(m["above"]))
    assert all(n[0] == len(client.get("/api/models").json()["models"][0]["fields"][k[0]]["vocab"]) for k, n in seen.items())
    assert all(n == sorted(n, reverse=True) for n in seen.values())  # a higher threshold never adds a label
    r = client.post("/api/classify", files={"file": ("x.jpg", jpg, "image/jpeg")}, data={"threshold": "1.5"})
    assert r.status_code == 422


def test_models_carry_the_per_class_metrics_of_results_json(served, client):
    res = json.loads((served[2] / "results.json").read_text())["classification"]["color/classify"]
    m = client.get("/api/models").json()["models"]
    assert len(m) == 1 and m[0]["items"] == 13 and m[0]["kind"] == "flat"
    assert m[0]["metrics"]["color/classify"]["per_class"] == res["per_class"]
    assert m[0]["metrics"]["color/classify"]["summary"]["accuracy"] == res["accuracy"]
    assert client.get("/healthz").json() == {"ok": True, "models": 1}
    page = client.get("/").text
    assert "<script" in page and "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's shape) with one empty data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_bad_input_is_a_4xx_with_a_message(served):
    from fashiontune.serve.cli import build_app

    small = TestClient(build_app([str(served[3])], max_upload_mb=0.01, max_pixels=4096))
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(buf, "PNG")
    cases = [
        (small.post("/api/classify", files={"file": ("big.bin", b"\xff" * 20000, "image/jpeg")}), 413, "bytes"),
        (small.post("/api/classify", files={"file": ("bomb.png", png_header(30000, 30000), "image/png")}), 413, "pixels"),
        (small.post("/api/search/image", files={"file": ("bomb.png", png_header(100, 100), "image/png")}), 413, "pixels"),
        (small.post("/api/classify", files={"file": ("junk.jpg", b"not an image", "image/jpeg")}), 400, "Pillow"),
        (small.post("/api/classify", files={"file": ("empty.jpg", b"", "image/jpeg")}), 400, "empty"),
        (small.post("/api/classify"), 422, "file"),
        (small.get("/api/search", params={"q": "red", "k": 0}), 422, "k"),
        (small.get("/api/search", params={"k": 3}), 422, "q"),
        (small.get("/api/search", params={"q": "red", "model": 3}), 404, "models 0..0"),
        (small.get("/api/similar/nope"), 404, "not in model 0"),
        (small.get("/thumb/0/13.jpg"), 404, "position 13"),
        (small.get("/thumb/0/..%2F..%2Fmanifest.json"), 404, ""),
    ]
    for r, status, words in cases:
        assert r.status_code == status, (r.request.url, r.text)
        assert words in r.text, (r.request.url, r.text)
    ok = small.post("/api/classify", files={"file": ("ok.png", buf.getvalue(), "image/png")})
    assert ok.status_code == 200  # 32 x 32 = 1024 pixels and ~100 bytes pass the same limits
    with pytest.raises(Image.DecompressionBombError):  # what the app's header check keeps out of the decoder
        Image.open(io.BytesIO(png_header(30000, 30000))).load()


def test_serve_binds_to_loopback_unless_told_otherwise():
    import argparse

    from fashiontune.serve.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["idx"]).host == "127.0.0.1"


def test_approximate_index_reports_its_recall_and_bad_inputs_name_the_fix(served, tmp_path):
    from fashiontune.errors import UserError

    shards, export = served[0], served[1]
    for kind in ("hnsw", "ivf"):
        info = build_index(shards, tmp_path / kind, f"model.checkpoint={export}", f"kind={kind}", "approx.nprobe=64")
        written = json.loads((tmp_path / kind / "index.json").read_text())
        assert written["kind"] == kind and written["recall@10"] == info["recall@10"] == 1.0  # 13 items: exhaustive
    with pytest.raises(UserError, match="results=.*no such file"):
        build_index(shards, tmp_path / "x", f"model.checkpoint={export}", f"results={tmp_path / 'nope.json'}")
    from fashiontune.config import ConfigError

    with pytest.raises(ConfigError, match="kind='exact' is invalid"):
        build_index(shards, tmp_path / "x", "kind=exact")
    from fashiontune.serve.catalogue import Catalogue

    with pytest.raises(UserError, match="no index.json.*fashiontune index build"):
        Catalogue(tmp_path / "x")


def test_cli_errors_are_one_line_naming_the_fix(served, tmp_path, capsys):
    from fashiontune.cli import main

    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "no index.json" in capsys.readouterr().err
    assert main(["serve", *[str(served[3])] * 3]) == 2
    assert "one or two indexes" in capsys.readouterr().err
    assert main(["index", "build", "--shards", str(served[0])]) == 2
    assert "out='' is invalid: set the index directory" in capsys.readouterr().err


def test_batched_text_search_equals_one_query_at_a_time(served):
    from fashiontune.serve.catalogue import Catalogue

    cat = Catalogue(served[3])
    texts = ["red", "a blue shirt", "green", "red dress", "a photo"]
    ks = [1, 3, 5, 2, 4]
    batched = cat._search_texts(list(zip(texts, ks)))
    for t, k, got in zip(texts, ks, batched):
        want = cat.search(cat.text_query(t), k)
        assert [h.pos for h in got] == [h.pos for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-5, atol=1e-6)
    assert [len(h) for h in batched] == [min(k, len(cat)) for k in ks]
    threads_out: dict[int, list] = {}
    ts = [threading.Thread(target=lambda i=i: threads_out.__setitem__(i, cat.search_text(texts[i], ks[i])))
          for i in range(len(texts))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert {i: [h.pos for h in v] for i, v in threads_out.items()} == {i: [h.pos for h in v] for i, v in enumerate(batched)}
