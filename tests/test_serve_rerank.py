"""`fashiontune serve INDEX rerank.model=EXPORT rerank.k=K` (issue 14): text search re-ordered by a cross-encoder.

On the eval job's 13-item shards, with the tiny random-init ViT exported beside a cross-encoder whose zero-init
head is given random weights (an arbitrary re-ordering), and an index built from those towers with tokens=true:
- the served top-k is the dual encoder's top-k as a set, in the order of eval/rerank.rerank_topk over the eval
  job's token bank (the eval code path); results beyond k keep the dual order; the response says so;
- an untrained re-ranker (zero head) serves the dual encoder's order;
- a batch of queries gets what one-at-a-time queries get;
- a re-ranker of other towers, an index without tokens, or a reranker.pt carrying a pickle payload is refused at
  start-up with the file and the fix (the payload never runs).
Cost on one busy core: ~20 s once (shards, exports, index, token bank), then ~1 s per test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from test_eval_job import write_shards
from test_serve_api import build_index

K = 6  # re-ranked depth: below the 13 items, so results beyond it are checked too


def reranker_export(out: Path, seed: int, trained: bool = True) -> Path:
    """The tiny ViT (random init, `seed`) exported as task.name=rerank exports it: towers + reranker.pt/json."""
    from fashiontune.models import ModelConfig, load_clip
    from fashiontune.models.cross import CrossConfig, build_cross, save_reranker
    from fashiontune.models.export import export_model

    torch.manual_seed(seed)
    loaded = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32))
    cross = build_cross(loaded.model, CrossConfig(width=16, layers=1, heads=2))
    if trained:  # the head's last layer starts at zero (= dual order): random weights give an arbitrary order
        torch.nn.init.normal_(cross.head[-1].weight, std=1.0)
    export_model(loaded, out)
    save_reranker(out, cross.eval(), loaded.name)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(shards, trained export, untrained export, index with tokens, index without tokens)"""
    root = tmp_path_factory.mktemp("serve-rerank")
    shards = write_shards(root / "shards", {"val": [4], "test": [5, 1, 7]})
    trained = reranker_export(root / "export", seed=1)
    untrained = reranker_export(root / "export0", seed=1, trained=False)  # the same towers
    build_index(shards, root / "index", f"model.checkpoint={trained}", "tokens=true")
    build_index(shards, root / "plain", f"model.checkpoint={trained}")
    return shards, trained, untrained, root / "index", root / "plain"


def app(index: Path, *overrides: str) -> TestClient:
    from fashiontune.serve.cli import build_app

    return TestClient(build_app([str(index), *overrides]))


def eval_path(shards: Path, export: Path):
    """The eval job's token bank of the split, its exact t2i top-13, and rerank_topk's re-ordering of it."""
    from fashiontune.eval.config import EvalModelConfig
    from fashiontune.eval.embed import eval_shards
    from fashiontune.eval.model import load_eval_model
    from fashiontune.eval.rerank import embed_bank, rerank_topk
    from fashiontune.metrics.retrieval import retrieval_ranks
    from fashiontune.models.cross import load_reranker
    from fashiontune.shards.manifest import load_manifest

    loaded, _ = load_eval_model(EvalModelConfig(checkpoint=str(export)))
    bank = embed_bank(loaded, eval_shards(load_manifest(shards), shards, "test"), 0, 13, 3, torch.device("cpu"))
    dual = retrieval_ranks(bank.image, bank.text, bank.group_ids, bank.captions, k=13)["t2i"].topk_indices
    return bank, dual, rerank_topk(load_reranker(export)[0], bank, dual, K, t2i=True)


def search(client: TestClient, text: str, k: int) -> dict:
    r = client.get("/api/search", params={"q": text, "k": k})
    assert r.status_code == 200, r.text
    return r.json()


def test_served_order_is_the_eval_jobs_rerank_of_the_dual_top_k(setup):
    shards, export, _, index, _ = setup
    bank, dual, want = eval_path(shards, export)
    client = app(index, f"rerank.model={export}", f"rerank.k={K}")
    queries = [i for i, cap in enumerate(bank.captions) if cap]
    assert len(queries) >= 5
    moved = 0
    for q in queries:
        body = search(client, bank.captions[q], 10)
        got = [h["id"] for h in body["results"]]
        assert body["reranked"] == {"model": str(export), "k": K}
        assert set(got[:K]) == {bank.keys[j] for j in dual[q, :K].tolist()}  # the dual encoder's candidates
        assert got == [bank.keys[j] for j in want[q, :10].tolist()], bank.captions[q]  # in rerank_topk's order
        assert got[K:] == [bank.keys[j] for j in dual[q, K:10].tolist()]  # beyond k: the dual order
        moved += got[:K] != [bank.keys[j] for j in dual[q, :K].tolist()]
    assert moved >= 3  # the checks above can fail: the re-ranker did re-order
    models = client.get("/api/models").json()["models"]
    assert models[0]["rerank"] == {"model": str(export), "k": K}


def test_untrained_reranker_serves_the_dual_encoders_order(setup):
    _, _, untrained, index, _ = setup
    plain, zero = app(index), app(index, f"rerank.model={untrained}", f"rerank.k={K}")
    for text in ("red", "a blue shirt", "green dress", "a photo of a top"):
        a, b = search(plain, text, 10), search(zero, text, 10)
        assert a["reranked"] is None and b["reranked"] == {"model": str(untrained), "k": K}
        assert [h["id"] for h in b["results"]] == [h["id"] for h in a["results"]], text
        assert [h["score"] for h in b["results"]] == pytest.approx([h["score"] for h in a["results"]], abs=1e-5)


def test_batched_reranked_search_equals_one_query_at_a_time(setup):
    from fashiontune.eval.config import RerankEvalConfig
    from fashiontune.serve.catalogue import Catalogue

    _, export, _, index, _ = setup
    cat = Catalogue(index)
    cat.attach_reranker(RerankEvalConfig(model=str(export), k=K, pairs_per_batch=5))  # odd pair batches
    texts = ["red", "a blue shirt", "green", "red dress", "a photo", "striped top"]
    ks = [1, 3, 13, 2, K, 9]
    batched = cat._search_texts(list(zip(texts, ks)))
    for t, k, got in zip(texts, ks, batched):
        one = cat._search_texts([(t, k)])[0]
        assert [h.pos for h in got] == [h.pos for h in one], t
        assert [h.score for h in got] == pytest.approx([h.score for h in one], abs=1e-5)
        assert len(got) == k
    calls = []
    cat.reranker.pairs_per_batch = 4096
    hook = cat.reranker.cross.register_forward_hook(lambda *a: calls.append(1))
    try:
        assert [[h.pos for h in r] for r in cat._search_texts(list(zip(texts, ks)))] == \
            [[h.pos for h in r] for r in batched]
    finally:
        hook.remove()
    assert len(calls) == 1  # the whole batch's (query, candidate) pairs in one cross-encoder pass


def test_a_mismatched_reranker_or_an_index_without_tokens_is_refused_at_start_up(setup, tmp_path, capsys):
    from fashiontune.cli import main
    from fashiontune.config import ConfigError
    from fashiontune.errors import UserError

    shards, export, _, index, plain = setup
    other = reranker_export(tmp_path / "other", seed=2)  # same architecture, other weights
    with pytest.raises(UserError, match=r"are not the towers that built index .*index\.json.*other weights.*Fix: "
                                        r".*index build --model"):
        app(index, f"rerank.model={other}")
    with pytest.raises(UserError, match=r"plain/index.json has no image tokens .*tokens=true"):
        app(plain, f"rerank.model={export}")
    with pytest.raises(UserError, match="reranker.json.*task.name=rerank"):
        app(index, f"rerank.model={tmp_path}")
    from test_faults_pickles import plant

    evil, marker = tmp_path / "evil", tmp_path / "PAYLOAD_RAN"
    shutil.copytree(export, evil)
    plant(evil / "reranker.pt", marker)  # runs `touch marker` if unpickled unsafely
    with pytest.raises(UserError, match=r"reranker.pt do not load as a weights-only re-ranker.*nothing in them was run"):
        app(index, f"rerank.model={evil}")
    assert not marker.exists()
    with pytest.raises(ConfigError, match="rerank.k=0 is invalid"):
        app(index, f"rerank.model={export}", "rerank.k=0")
    with pytest.raises(UserError, match=r"tokens=true: the re-ranker needs an open_clip ViT image tower"):
        build_index(shards, tmp_path / "rn", "model.name=ft-tiny-rn", "model.pretrained=''", "tokens=true")
    assert main(["serve", str(index), "--port", "9", f"rerank.model={other}"]) == 2  # an override after the options
    err = capsys.readouterr().err
    assert "reranker.json" in err and "index.json" in err and "tokens=true" in err

