"""Marqo-style retrieval tasks and relevance files (eval/protocol.py) on synthetic corpora in the real layouts.

One synthetic KAGL corpus (`fashiontune synth` layout -> shards, all items in the test split) and the random-init
tiny model (ft-tiny-vit) serve every end-to-end test; the ground truth is checked against pytrec_eval (BEIR's
trec_eval) fed the eval's cached embeddings through a plain top-K written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fashiontune.config import load_config
from fashiontune.errors import UserError
from fashiontune.eval import protocol as P
from fashiontune.eval.config import EvalConfig
from fashiontune.eval.embed import Corpus

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.name=ft-tiny-vit", "model.pretrained=''", "model.checkpoint=''", "data.num_workers=0",
        "data.batch_size=32", "precision=fp32", "retrieval.device=cpu"]


def build_shards(root: Path, fmt: str, n: int) -> Path:
    from fashiontune.shards.build import build_shards as build
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.synth import generate

    corpus = generate(fmt, root / "corpus", n=n, seed=3, quirk_rate=0.0, image_size=32)
    cfg = load_config(ShardBuildConfig, None, [f"source={fmt}", f"input={corpus}", f"out={root / 'shards'}",
                                               "image_size=32", "shard_size=50", "splits=test=1.0", "progress=false"])
    build(cfg)
    return root / "shards"


@pytest.fixture(scope="module")
def kagl(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("kagl"), "kagl", 80)


def run(config: str, shards: Path, out: Path, *extra: str) -> dict:
    from fashiontune.eval.run import run_eval

    cfg = load_config(EvalConfig, ROOT / "configs/eval" / config, [f"data.shards={shards}", f"out_dir={out}", *TINY,
                                                                   *extra])
    return run_eval(cfg)


def beir_reference(query_emb: np.ndarray, doc_emb: np.ndarray, keys: list[str], queries: list[str],
                   qrels: dict, ks=(1, 10)) -> dict:
    """BEIR's dense-retrieval path: cosine scores, top-K per query, pytrec_eval (+ BEIR's MRR@K definition)."""
    import pytrec_eval

    scores = query_emb.astype(np.float64) @ doc_emb.astype(np.float64).T
    k = max(*ks, 10)
    run = {}
    for qi, q in enumerate(queries):
        # top-K by (score desc, index asc); distinct float scores pin trec_eval's order to ours
        order = sorted(range(len(keys)), key=lambda j: (-scores[qi, j], j))[:k]
        run[q] = {keys[j]: float(k - r) for r, j in enumerate(order)}
    measures = {f"recall.{','.join(map(str, ks))}", f"P.{','.join(map(str, ks))}",
                f"ndcg_cut.{','.join(map(str, ks))}", f"map_cut.{','.join(map(str, ks))}"}
    per_q = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    out = {}
    for ours, theirs in (("Recall", "recall"), ("P", "P"), ("NDCG", "ndcg_cut"), ("MAP", "map_cut")):
        for kk in ks:
            out[f"{ours}@{kk}"] = float(np.mean([v[f"{theirs}_{kk}"] for v in per_q.values()]))
    mrr = []
    for q in per_q:  # BEIR's mrr: 1 / rank of the first relevant doc in the top 10, else 0
        top = sorted(run[q].items(), key=lambda kv: -kv[1])[:10]
        mrr.append(next((1.0 / (r + 1) for r, (d, _) in enumerate(top) if qrels[q].get(d, 0) > 0), 0.0))
    out["MRR@10"] = float(np.mean(mrr))
    out["queries"] = len(per_q)
    return out


# ------------------------------------------------------------------ unit: query sets, relevance, documents
def corpus(captions, labels, d=4, seed=0) -> Corpus:
    rng = np.random.default_rng(seed)
    n = len(captions)
    text = rng.normal(size=(n, d)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return Corpus([f"k{i}" for i in range(n)], [f"g{i}" for i in range(n)], list(captions), list(labels),
                  rng.normal(size=(n, d)).astype(np.float32), text)


def test_derived_queries_unique_values_relevance_and_seeded_sampling():
    c = corpus(["a", "b", "a", "", "c"], [{"f": "x"}, {"f": ["x", "y"]}, {}, {"f": "y"}, {"f": "z"}])
    q = P.derived_queries(c, "text", 10, seed=0)
    assert q.texts == ["a", "b", "c"]  # unique, non-empty
    assert q.qrels == [{0: 1, 2: 1}, {1: 1}, {4: 1}]
    q = P.derived_queries(c, "f", 10, seed=0)
    assert q.texts == ["x", "y", "z"] and q.qrels[0] == {0: 1, 1: 1} and q.qrels[1] == {1: 1, 3: 1}
    assert P.derived_queries(c, "f", 10, seed=0, pattern="^[xz]$").texts == ["x", "z"]
    picks = {tuple(P.derived_queries(c, "f", 2, seed=s).texts) for s in range(20)}
    assert all(len(p) == 2 for p in picks) and len(picks) > 1  # sampled, and the seed matters
    assert P.derived_queries(c, "f", 2, seed=5).texts == P.derived_queries(c, "f", 2, seed=5).texts


def test_product_documents_weight_normalised_towers():
    c = corpus(["a", "b"], [{}, {}])
    img = c.image / np.linalg.norm(c.image, axis=1, keepdims=True)
    want = 0.9 * img + 0.1 * c.text
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(P.doc_embeddings(c, 0.9, 0.1).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(P.doc_embeddings(c, 1.0, 0.0).numpy(), img, rtol=1e-6)


def test_pair_qrels_same_group_or_same_non_empty_caption():
    q = P.pair_qrels(["g0", "g0", "g1", "g2", "g3"], ["a", "b", "a", "", ""])
    assert q == [{0: 1, 1: 1, 2: 1}, {0: 1, 1: 1}, {0: 1, 2: 1}, {3: 1}, {4: 1}]


def test_query_embeddings_reuse_caption_rows_and_embed_the_rest():
    c = corpus(["a", "b", "a"], [{}, {}, {}])
    asked = []

    def embed(texts):
        asked.extend(texts)
        return np.ones((len(texts), 4), np.float32)

    q = P.query_embeddings(c, ["b", "Topwear", "a"], embed).numpy()
    assert asked == ["Topwear"]
    np.testing.assert_array_equal(q[0], c.text[1])
    np.testing.assert_array_equal(q[2], c.text[0])
    np.testing.assert_array_equal(q[1], np.ones(4))


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid UTF-8 JSON"),
    ("[]", "top level must be a non-empty JSON object"),
    ('{"red shirt": ["k1"]}', "must map to an object"),
    ('{"red shirt": {"k1": "yes"}}', "not an integer"),
])
def test_malformed_qrels_file_is_one_line_naming_file_and_fix(tmp_path, content, needle):
    p = tmp_path / "gt.json"
    p.write_text(content)
    with pytest.raises(UserError) as e:
        P.read_qrels(p, ["k1"])
    msg = str(e.value)
    assert needle in msg and str(p) in msg and "\n" not in msg
    assert "BEIR qrels shape" in msg or "use integer grades" in msg  # the fix
    with pytest.raises(UserError, match="no such file"):
        P.read_qrels(tmp_path / "missing.json", ["k1"])


def test_unknown_doc_ids_are_counted_not_dropped_silently(tmp_path, caplog):
    p = tmp_path / "gt.json"
    p.write_text(json.dumps({"q1": {"k0": 1, "zz": 1}, "q2": {"nope": 1}}))
    q = P.read_qrels(p, ["k0", "k1"])
    assert q.texts == ["q1", "q2"] and q.qrels == [{0: 1}, {}]
    assert q.unknown == {"q1": ["zz"], "q2": ["nope"]}
    assert "2 doc id(s) in 2 queries are not item keys" in caplog.text


# ------------------------------------------------------------------ end to end on a synthetic KAGL corpus
def test_qrels_eval_equals_beir_topk_plus_pytrec_eval_on_cached_embeddings(kagl, tmp_path):
    """The issue's "Done when": eval with a qrels file == BEIR-style top-K + pytrec_eval on embeddings/."""
    manifest = json.loads((kagl / "manifest.json").read_text())
    first = run("marqo-kagl.yaml", kagl, tmp_path / "derive", "retrieval.tasks=[]", "retrieval.enabled=false")
    assert first["items"] == manifest["splits"]["test"]["count"] == 80
    cache = tmp_path / "derive" / "embeddings"
    items = json.loads((cache / "items.json").read_text())
    keys, captions = items["keys"], items["captions"]
    # ground truth over product names (as Marqo's KAGL text->image): several items per name, plus one unknown id
    by_name: dict[str, dict[str, int]] = {}
    for k, c in zip(keys, captions):
        if c:
            by_name.setdefault(c, {})[k] = 1
    assert sum(len(v) > 1 for v in by_name.values()) >= 1, "want queries with several relevant items"
    gt = dict(sorted(by_name.items())[:40])
    first_q = next(iter(gt))
    gt[first_q] = {**gt[first_q], "not-an-item": 1}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))

    res = run("marqo-kagl.yaml", kagl, tmp_path / "derive", "retrieval.tasks=[]", "retrieval.enabled=false",
              f"retrieval.qrels={gt_path}")
    assert res["embeddings_cached"] is True
    got = res["ir"]["qrels"]
    assert got["unknown_doc_ids"] == 1 and got["queries_with_unknown_doc_ids"] == 1
    assert any("not item keys" in n for n in res["notes"])

    image = np.load(cache / "image.npy")
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text = np.load(cache / "text.npy")
    row = {c: i for i, c in reversed(list(enumerate(captions)))}  # first item with that caption
    queries = list(gt)
    q_emb = text[[row[q] for q in queries]]
    known = {q: {d: r for d, r in docs.items() if d in set(keys)} for q, docs in gt.items()}
    want = beir_reference(q_emb, image, keys, queries, known)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-9), key
    assert 0 < got["Recall@10"] < 1


def test_marqo_kagl_config_runs_every_task_and_prints_the_metrics(kagl, tmp_path, capsys):
    res = run("marqo-kagl.yaml", kagl, tmp_path / "marqo", "retrieval.enabled=true")
    tasks = res["ir"]
    assert list(tasks) == ["t2i", "i2t", "text-to-image", "category-to-product", "sub-category-to-product",
                           "fine-category-to-product", "colour-to-product", "season-to-product", "usage-to-product"]
    labels = json.loads((kagl / "manifest.json").read_text())["labels"]
    assert tasks["category-to-product"]["queries"] == len(labels["masterCategory"]["vocab"])
    assert tasks["category-to-product"]["text_weight"] == 0.1 and tasks["text-to-image"]["text_weight"] == 0.0
    for t in tasks.values():
        assert {"Recall@1", "Recall@10", "P@10", "NDCG@10", "MAP@10", "MRR@10"} <= set(t) and t["docs"] == 80
    # the default directions keep their keys and gain the BEIR block
    assert {"R@1", "R@10", "mrr"} <= set(res["retrieval"]["t2i"]) and "Recall@10" in tasks["t2i"]
    for d in ("t2i", "i2t"):  # every query has >= 1 relevant item: BEIR recall <= hit rate, MRR@10 <= full-list MRR
        hit, ir = res["retrieval"][d], tasks[d]
        assert ir["queries"] == 80 and ir["Recall@10"] <= hit["R@10"] and ir["MRR@10"] <= hit["mrr"]
        assert ir["P@1"] == pytest.approx(hit["R@1"])  # top-1 relevant <=> hit at 1
    # derived ground truth written BEIR-shaped, re-usable as retrieval.qrels
    gt = json.loads((tmp_path / "marqo" / "qrels" / "colour-to-product.json").read_text())
    assert len(gt) == tasks["colour-to-product"]["queries"]
    printed = capsys.readouterr().out
    assert "Hit@1" in printed and "Recall@10" in printed and "usage-to-product" in printed
    assert "R@1 " not in printed


def test_marqo_task_on_a_field_the_shards_lack_is_a_one_line_error(kagl, tmp_path):
    from fashiontune.shards.errors import ManifestError

    with pytest.raises(ManifestError, match=r"retrieval.tasks\[0\].query='category'.*no such label field"):
        run("marqo-imaterialist.yaml", kagl, tmp_path / "bad")


@pytest.mark.parametrize("fmt, config, n", [("deepfashion-mm", "marqo-deepfashion-mm.yaml", 30),
                                            ("imaterialist", "marqo-imaterialist.yaml", 30)])
def test_marqo_configs_run_on_synthetic_corpora_in_the_real_layouts(tmp_path, fmt, config, n):
    shards = build_shards(tmp_path, fmt, n)
    res = run(config, shards, tmp_path / "out")
    tasks = res["ir"]
    for t in tasks.values():
        assert t["queries"] >= 1 and 0 <= t["Recall@10"] <= 1 and t["docs"] == res["items"]
    if fmt == "deepfashion-mm":
        assert list(tasks) == ["t2i", "i2t", "text-to-image", "category-to-product"]
    else:  # synthetic iMaterialist has no neckline attribute: reported, not an error
        assert list(tasks) == ["category-to-image", "style-to-image"]
        assert any("neckline-to-image: no query values" in x for x in res["notes"])
