"""BEIR/trec_eval metrics (metrics/ir.py) against pytrec_eval, the C code BEIR's evaluator calls, and the
chunked top-k pass they come from."""

from __future__ import annotations

import numpy as np
import pytest
import pytrec_eval
import torch

from fashiontune.metrics import topk
from fashiontune.metrics.ir import (
    DEFAULT_IR_KS,
    IRRun,
    QrelsError,
    ir_metrics,
    qrels_from_beir,
    qrels_to_beir,
    run_to_beir,
    topk_run,
)
from fashiontune.metrics.retrieval import rank_metrics


def _tied_embeddings(rng: np.random.Generator, n: int, d: int = 4) -> torch.Tensor:
    """Small-integer vectors: dot products collide often, so runs are full of exact ties."""
    return torch.from_numpy(rng.integers(-1, 2, size=(n, d)).astype(np.float32))


def _random_qrels(rng: np.random.Generator, q: int, n: int) -> list[dict[int, int]]:
    """Per query one of: no judgments, only non-relevant ones, one relevant, several graded (with 0 and -1)."""
    out = []
    for _ in range(q):
        kind = rng.integers(4)
        size = {0: 0, 1: rng.integers(1, 4), 2: 1, 3: rng.integers(2, 12)}[kind]
        docs = rng.choice(n, size=min(size, n), replace=False)
        rel = {0: [0], 1: [0, -1], 2: [1], 3: [-1, 0, 1, 1, 2, 3]}[kind]
        out.append({int(d): int(rng.choice(rel)) if kind != 2 else 1 for d in docs})
    return out


def _beir_reference(run: IRRun, qrels: list[dict[int, int]], ks, mrr_k: int = 10) -> dict[str, float]:
    """BEIR's EvaluateRetrieval.evaluate (pytrec_eval measures, mean over the queries pytrec_eval returns) and
    BEIR's / Marqo's mrr (over the top mrr_k, divided by the number of judged queries), unrounded."""
    qids, dids = [f"q{i}" for i in range(len(qrels))], [f"d{i}" for i in range(run.n_docs)]
    beir_qrels, beir_run = qrels_to_beir(qrels, qids, dids), run_to_beir(run, qids, dids)
    cut = ",".join(map(str, ks))
    ev = pytrec_eval.RelevanceEvaluator(beir_qrels, {f"map_cut.{cut}", f"ndcg_cut.{cut}", f"recall.{cut}", f"P.{cut}"})
    scores = ev.evaluate(beir_run)
    out = {}
    for k in ks:
        for ours, theirs in (("NDCG", "ndcg_cut"), ("MAP", "map_cut"), ("Recall", "recall"), ("P", "P")):
            out[f"{ours}@{k}"] = sum(s[f"{theirs}_{k}"] for s in scores.values()) / len(scores)
    mrr = 0.0
    for qid in scores:
        top = sorted(beir_run[qid].items(), key=lambda item: item[1], reverse=True)[:mrr_k]
        relevant = {d for d, r in beir_qrels[qid].items() if r > 0}
        mrr += next((1.0 / (i + 1) for i, (d, _) in enumerate(top) if d in relevant), 0.0)
    out[f"MRR@{mrr_k}"] = mrr / len(beir_qrels)
    out["queries"] = len(scores)
    # trec_eval's own reciprocal rank over the run cut to mrr_k docs is the same number
    cut_run = {q: dict(sorted(r.items(), key=lambda x: -x[1])[:mrr_k]) for q, r in beir_run.items()}
    rr = pytrec_eval.RelevanceEvaluator(beir_qrels, {"recip_rank"}).evaluate(cut_run)
    out["trec_rr"] = sum(s["recip_rank"] for s in rr.values()) / len(rr)
    return out


def _case(seed: int):
    """A random run with ties (query and doc embeddings, chunk size), its qrels, and the cutoffs."""
    rng = np.random.default_rng(seed)
    q, n = int(rng.integers(5, 40)), int(rng.integers(3, 150))
    qe, de, chunk = _tied_embeddings(rng, q), _tied_embeddings(rng, n), int(rng.integers(1, 8))
    ks = (1, 3, 5, 10, 100) if seed % 2 else DEFAULT_IR_KS  # N < 100 often: P@100 still divides by 100
    return qe, de, chunk, _random_qrels(rng, q, n), ks


@pytest.mark.parametrize("seed", range(40))
def test_equals_pytrec_eval_on_random_runs(seed):
    qe, de, chunk, qrels, ks = _case(seed)
    run = topk_run(qe, de, k=max(ks), chunk_size=chunk, device="cpu")
    ours = ir_metrics(run, qrels, ks)
    ref = _beir_reference(run, qrels, ks)
    assert ours["queries"] == ref["queries"] == sum(1 for r in qrels if r)
    assert ours["queries_without_judgments"] == sum(1 for r in qrels if not r)
    for key, want in ref.items():
        if key not in ("queries", "trec_rr"):
            assert ours[key] == pytest.approx(want, abs=1e-9, rel=0), key
    assert ours["MRR@10"] == pytest.approx(ref["trec_rr"], abs=1e-9, rel=0)


def test_random_runs_cover_the_hard_cases():
    """The random runs above do contain ties at the cut, several relevant items, graded relevance, relevant
    items not retrieved, and queries with nothing (or nothing relevant) judged."""
    seen = {key: 0 for key in ("tie_at_cut", "multi", "graded", "missed", "unjudged", "judged_not_relevant")}
    k = 10
    for seed in range(40):
        qe, de, _, qrels, _ = _case(seed)
        run = topk_run(qe, de, k=k, device="cpu")
        for row, s, rel in zip(run.indices.tolist(), qe @ de.T, qrels):
            seen["tie_at_cut"] += bool(len(s) > k and (s == s[row[-1]]).sum() > (s[row] == s[row[-1]]).sum())
            pos = {d for d, r in rel.items() if r > 0}
            seen["multi"] += len(pos) > 1
            seen["graded"] += any(r > 1 for r in rel.values())
            seen["missed"] += bool(pos - set(row))
            seen["unjudged"] += not rel
            seen["judged_not_relevant"] += bool(rel) and not pos
    assert min(seen.values()) >= 20, seen


def test_ties_are_pinned_to_our_order():
    """All scores equal: our rule ranks doc 0 first. pytrec_eval given the raw similarities orders equal scores
    by doc id descending (d2, d1, d0); given run_to_beir's rank-encoded scores it reads our order."""
    run = topk_run(torch.ones(1, 2), torch.ones(3, 2), k=3, device="cpu")
    assert run.indices.tolist() == [[0, 1, 2]]
    qrels = [{0: 1}]
    assert ir_metrics(run, qrels, ks=(1,), mrr_k=1)["P@1"] == 1.0
    ev = pytrec_eval.RelevanceEvaluator({"q": {"d0": 1}}, {"P.1"})
    raw = {"q": {f"d{i}": 1.0 for i in range(3)}}
    assert ev.evaluate(raw)["q"]["P_1"] == 0.0  # trec_eval's own tie order: d2 first
    pinned = run_to_beir(run, ["q"], ["d0", "d1", "d2"])
    assert ev.evaluate(pinned)["q"]["P_1"] == 1.0


def test_hand_computed_values():
    """One query, relevant d1 (grade 1) and d2 (grade 2) and d4 (grade 1, never retrieved); run d3, d2, d1."""
    run = IRRun(torch.tensor([[3, 2, 1]]), torch.tensor([[0.9, 0.8, 0.7]]), n_docs=5)
    m = ir_metrics(run, [{1: 1, 2: 2, 4: 1, 0: 0}], ks=(1, 3), mrr_k=3)
    assert m["P@1"] == 0 and m["P@3"] == pytest.approx(2 / 3)
    assert m["Recall@3"] == pytest.approx(2 / 3)  # 2 of the 3 relevant; the any-hit rate would say 1
    assert m["MAP@3"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    dcg, idcg = 2 / np.log2(3) + 1 / np.log2(4), 2 + 1 / np.log2(3) + 1 / np.log2(4)
    assert m["NDCG@3"] == pytest.approx(dcg / idcg)
    assert m["MRR@3"] == pytest.approx(1 / 2)


def test_recall_is_not_the_hit_rate():
    """Two relevant items, one at rank 1: Hit@1 (metrics.retrieval's "R@1") is 1, BEIR Recall@1 is 1/2."""
    run = IRRun(torch.tensor([[0, 1, 2]]), torch.tensor([[3.0, 2.0, 1.0]]), n_docs=3)
    assert ir_metrics(run, [{0: 1, 2: 1}], ks=(1,))["Recall@1"] == 0.5
    assert rank_metrics(np.array([1]), ks=(1,))["R@1"] == 1.0


def test_topk_run_equals_a_full_sort_with_ties():
    rng = np.random.default_rng(0)
    qe, de = _tied_embeddings(rng, 23, 3), _tied_embeddings(rng, 57, 3)
    sims = (qe @ de.T).numpy()
    full = np.stack([np.lexsort((np.arange(57), -row)) for row in sims])  # score desc, then index asc
    assert (sims[:, :, None] == sims[:, None, :]).sum() > 23 * 57 * 5  # plenty of ties
    for chunk in (1, 4, 23):
        for k in (1, 7, 57):
            run = topk_run(qe, de, k=k, chunk_size=chunk, device="cpu")
            assert run.indices.tolist() == full[:, :k].tolist(), (chunk, k)
            assert torch.equal(run.scores, torch.from_numpy(np.take_along_axis(sims, full[:, :k], 1)))


def test_topk_run_scores_one_chunk_at_a_time(monkeypatch):
    """The similarity blocks ranked are at most chunk x N, from an explicit chunk or a memory budget."""
    shapes = []
    real = topk.deterministic_topk

    def spy(scores, k):
        shapes.append(tuple(scores.shape))
        return real(scores, k)

    monkeypatch.setattr(topk, "deterministic_topk", spy)
    q, n = torch.randn(10, 8), torch.randn(50, 8)
    topk_run(q, n, k=5, chunk_size=3, device="cpu")
    assert shapes == [(3, 50), (3, 50), (3, 50), (1, 50)]
    shapes.clear()
    topk_run(q, n, k=5, memory_budget_bytes=2 * 50 * topk._BYTES_PER_PAIR, device="cpu")
    assert shapes == [(2, 50)] * 5


def test_beir_shape_round_trip_and_unknown_docs():
    beir = {"red dress": {"7": 1, "9": 2, "x": 1}, "boots": {"8": 0}}
    qrels, unknown = qrels_from_beir(beir, ["red dress", "boots", "hat"], ["7", "8", "9"])
    assert qrels == [{0: 1, 2: 2}, {1: 0}, {}]
    assert unknown == {"red dress": ["x"]}
    assert qrels_to_beir(qrels, ["red dress", "boots", "hat"], ["7", "8", "9"]) == {
        "red dress": {"7": 1, "9": 2}, "boots": {"8": 0}}
    with pytest.raises(QrelsError, match="gt.json: query 'boots', doc '8': relevance 0.5 is not an integer"):
        qrels_from_beir({"boots": {"8": 0.5}}, ["boots"], ["8"], source="gt.json")


def test_bad_input():
    run = IRRun(torch.tensor([[0, 1]]), torch.tensor([[2.0, 1.0]]), n_docs=50)
    with pytest.raises(ValueError, match="need top-10"):
        ir_metrics(run, [{0: 1}], ks=(1,))
    with pytest.raises(ValueError, match="one dict per query"):
        ir_metrics(run, [{0: 1}, {}], ks=(1,), mrr_k=1)
    with pytest.raises(ValueError, match="outside 0..49"):
        ir_metrics(run, [{50: 1}], ks=(1,), mrr_k=1)
    m = ir_metrics(run, [{}], ks=(1,), mrr_k=1)
    assert m["queries"] == 0 and np.isnan(m["P@1"])
