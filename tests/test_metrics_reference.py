"""The metrics library (fashiontune.metrics, shared by training-time validation and `fashiontune eval`): chunked exact top-K / ranks against a brute-force full sort and against
open_clip's own retrieval metrics; classification metrics against scikit-learn.

Cost: a few seconds on one core (corpora of <= 300 items), plus ~5-15 s to import open_clip_train once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashiontune.metrics.classification import (
    average_precision,
    multi_label_report,
    single_label_report,
    tune_threshold,
)
from fashiontune.eval.plots import confusion_png
from fashiontune.metrics.retrieval import (category_metrics, rank_metrics, retrieval_metrics, retrieval_ranks,
                                          same_product_ranks, same_product_split)
from fashiontune.metrics.topk import chunked_rank, deterministic_topk


# ---------------------------------------------------------------- brute force reference (full N x N sort)
def brute_order(scores: np.ndarray) -> np.ndarray:
    """Per row: candidate indices by (score desc, index asc), via a full lexicographic sort."""
    idx = np.arange(scores.shape[1])
    return np.stack([np.lexsort((idx, -row)) for row in scores])


def brute_first_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    order = brute_order(scores)
    out = np.full(scores.shape[0], -1)
    for q in range(scores.shape[0]):
        pos = np.flatnonzero(relevant[q, order[q]])
        if pos.size:
            out[q] = pos[0] + 1
    return out


def exact_embeddings(n: int, d: int, seed: int, dup_every: int = 0) -> torch.Tensor:
    """Entries in {-1, -0.5, 0, 0.5, 1}: every dot product is exact in fp32 whatever the summation order,
    so ties are real ties and the chunked and brute-force scores agree bit for bit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, d), generator=g).float() / 2
    if dup_every:
        x[1::dup_every] = x[0::dup_every][: x[1::dup_every].shape[0]]  # exact duplicate rows -> tied scores
    return x


# ---------------------------------------------------------------- top-K and ranks
@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_chunked_topk_and_ranks_match_brute_force_with_ties(chunk):
    q = exact_embeddings(50, 6, seed=0, dup_every=3)  # d=6 with 5 levels: many tied scores
    c = exact_embeddings(120, 6, seed=1, dup_every=2)
    rng = np.random.default_rng(0)
    relevant = rng.random((50, 120)) < 0.05
    relevant[5] = False  # a query with no relevant candidate -> rank -1
    rel_t = torch.from_numpy(relevant)
    res = chunked_rank(q, c, k=17, relevance=lambda s, e, dev: rel_t[s:e].to(dev), chunk_size=chunk, device="cpu")
    scores = (q @ c.T).numpy()
    order = brute_order(scores)
    assert torch.equal(res.topk_indices, torch.from_numpy(order[:, :17]))
    np.testing.assert_array_equal(res.topk_scores.numpy(), np.take_along_axis(scores, order[:, :17], 1))
    np.testing.assert_array_equal(res.first_rank.numpy(), brute_first_rank(scores, relevant))
    assert res.first_rank[5] == -1
    assert (scores == scores[:, :1]).sum() > 50 * 2  # the data really has ties beyond self-matches


def test_ties_lower_index_wins_everywhere():
    scores = torch.zeros(3, 10)
    scores[1, [2, 7]] = 1.0
    idx, vals = deterministic_topk(scores, 4)
    assert idx.tolist() == [[0, 1, 2, 3], [2, 7, 0, 1], [0, 1, 2, 3]]
    # all candidates identical: the rank of relevant item j is j + 1
    q, c = torch.ones(10, 4), torch.ones(10, 4)
    rel = torch.eye(10, dtype=torch.bool)
    res = chunked_rank(q, c, 3, lambda s, e, d: rel[s:e], chunk_size=4, device="cpu")
    assert res.first_rank.tolist() == list(range(1, 11))
    assert res.topk_indices.tolist() == [[0, 1, 2]] * 10


def test_chunked_topk_matches_brute_force_on_continuous_scores():
    """No ties: the fast path (torch.topk's set, re-ordered) must equal the full sort too."""
    g = torch.Generator().manual_seed(5)
    q, c = torch.randn(40, 8, generator=g), torch.randn(300, 8, generator=g)
    rel = torch.rand(40, 300, generator=g) < 0.02
    res = chunked_rank(q, c, k=25, relevance=lambda s, e, dev: rel[s:e], chunk_size=9, device="cpu")
    scores = (q.double() @ c.double().T).numpy()
    order = brute_order(scores)
    assert torch.equal(res.topk_indices, torch.from_numpy(order[:, :25]))
    np.testing.assert_array_equal(res.first_rank.numpy(), brute_first_rank(scores, rel.numpy()))


def test_k_larger_than_corpus_and_bad_shapes():
    res = chunked_rank(torch.randn(3, 4), torch.randn(2, 4), k=10, device="cpu")
    assert res.topk_indices.shape == (3, 2)
    with pytest.raises(ValueError, match="Q x d and N x d"):
        chunked_rank(torch.randn(3, 4), torch.randn(2, 5), k=1)
    with pytest.raises(ValueError, match="non-finite"):
        chunked_rank(torch.full((1, 4), float("nan")), torch.randn(2, 4), k=1)


# ---------------------------------------------------------------- retrieval metrics
def test_single_positive_matches_open_clip_get_clip_metrics():
    from open_clip_train.train import get_clip_metrics

    g = torch.Generator().manual_seed(3)
    n = 301  # odd: open_clip's floor(median) equals the plain median
    img = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.9 * torch.randn(n, 16, generator=g), dim=1)
    ref = get_clip_metrics(img, txt, logit_scale=torch.tensor(1.0))
    ours = retrieval_metrics(img, txt, [f"g{i}" for i in range(n)], [f"t{i}" for i in range(n)],
                             ks=(1, 5, 10), chunk_size=37, device="cpu")
    for ours_dir, ref_dir in (("t2i", "text_to_image"), ("i2t", "image_to_text")):
        for k in (1, 5, 10):
            assert ours[ours_dir][f"R@{k}"] == pytest.approx(ref[f"{ref_dir}_R@{k}"])
        assert ours[ours_dir]["mean_rank"] == pytest.approx(ref[f"{ref_dir}_mean_rank"])
        assert ours[ours_dir]["median_rank"] == pytest.approx(ref[f"{ref_dir}_median_rank"])
    assert 0 < ours["t2i"]["R@1"] < 1  # a non-trivial case


def test_multi_positive_relevance_group_or_identical_caption():
    # items: 0,1 same product (two views); 2 has the same caption as 3; 4 and 5 have empty captions
    groups = ["p0", "p0", "p2", "p3", "p4", "p5"]
    caps = ["red dress", "red dress side", "blue shirt", "blue shirt", "", ""]
    img = torch.eye(6)
    # text 0 is closest to image 1 (its other view), text 2 closest to image 3 (identical caption),
    # text 4 closest to image 5 (both empty: NOT relevant), then image 4.
    txt = torch.zeros(6, 6)
    txt[0, [1, 0]] = torch.tensor([1.0, 0.5])
    txt[1, [1]] = 1.0
    txt[2, [3, 2]] = torch.tensor([1.0, 0.5])
    txt[3, [3]] = 1.0
    txt[4, [5, 4]] = torch.tensor([1.0, 0.5])
    txt[5, [5]] = 1.0
    res = retrieval_ranks(img, txt, groups, caps, k=3, chunk_size=2, device="cpu")
    assert res["t2i"].first_rank.tolist() == [1, 1, 1, 1, 2, 1]
    m = rank_metrics(res["t2i"].first_rank, ks=(1, 5))
    assert m["R@1"] == pytest.approx(5 / 6) and m["mrr"] == pytest.approx((5 + 0.5) / 6)
    # brute force over the same relevance definition, both directions, larger random corpus with duplicates
    rng = np.random.default_rng(1)
    n = 200
    groups = [f"p{i // 3}" for i in rng.permutation(n)]  # 3 views per product, scattered
    caps = [rng.choice(["a", "b", "c", ""]) + str(rng.integers(0, 60)) for _ in range(n)]
    caps = [c if not c[0].isdigit() else "" for c in caps]
    img, txt = exact_embeddings(n, 5, 4, dup_every=4), exact_embeddings(n, 5, 5, dup_every=5)
    rel = np.array([[groups[i] == groups[j] or (caps[i] == caps[j] != "") for j in range(n)] for i in range(n)])
    res = retrieval_ranks(img, txt, groups, caps, k=10, chunk_size=33, device="cpu")
    np.testing.assert_array_equal(res["t2i"].first_rank.numpy(), brute_first_rank((txt @ img.T).numpy(), rel))
    np.testing.assert_array_equal(res["i2t"].first_rank.numpy(), brute_first_rank((img @ txt.T).numpy(), rel.T))
    # hit@K from the rank equals "any relevant in the top K list"
    hits = rel[np.arange(n)[:, None], res["t2i"].topk_indices.numpy()].cumsum(1) > 0
    for k in (1, 5, 10):
        assert rank_metrics(res["t2i"].first_rank, ks=(k,))[f"R@{k}"] == pytest.approx(hits[:, k - 1].mean())


def test_same_product_split_alternates_each_products_images_in_corpus_order():
    # p0: items 0, 2, 5 -> queries 0, 5, gallery 2; p1: items 1, 4 -> query 1, gallery 4; p2 (one image): gallery
    queries, gallery = same_product_split(["p0", "p1", "p0", "p2", "p1", "p0"])
    assert queries.tolist() == [0, 1, 5] and gallery.tolist() == [2, 3, 4]
    assert same_product_ranks(torch.eye(3), ["a", "b", "c"]) is None  # no product with two images


def test_same_product_ranks_match_brute_force_with_ties():
    rng = np.random.default_rng(3)
    n = 150
    groups = [f"p{int(i)}" for i in rng.integers(0, 50, n)]  # 0..many views a product, scattered
    img = exact_embeddings(n, 5, 6, dup_every=4)  # duplicate images: tied scores across products
    queries, gallery = same_product_split(groups)
    assert set(queries) | set(gallery) == set(range(n)) and not set(queries) & set(gallery)
    rel = np.array([[groups[q] == groups[g] for g in gallery] for q in queries])
    assert rel.any(1).all()  # every query has a gallery image of its product
    res = same_product_ranks(img, groups, k=7, chunk_size=16, device="cpu")
    scores = (img[queries] @ img[gallery].T).numpy()
    np.testing.assert_array_equal(res.first_rank.numpy(), brute_first_rank(scores, rel))
    np.testing.assert_array_equal(res.topk_indices.numpy(), brute_order(scores)[:, :7])


def test_category_to_product_precision_and_mrr():
    rng = np.random.default_rng(2)
    n, labels = 150, ["dress", "shirt", "shoe", "hat"]
    img = exact_embeddings(n, 4, 6, dup_every=3)
    prompts = exact_embeddings(4, 4, 7)
    y = rng.integers(-1, 3, n)  # -1 = missing; "hat" (3) has no items
    out = category_metrics(prompts, img, y, labels, ks=(1, 5, 10), chunk_size=2, device="cpu")
    keep = np.flatnonzero(y >= 0)
    scores = (prompts @ img[keep].T).numpy()
    order = brute_order(scores)
    rel = y[keep][None, :] == np.arange(4)[:, None]
    ranks = brute_first_rank(scores, rel)
    for v, name in enumerate(labels[:3]):
        for k in (1, 5, 10):
            assert out["per_label"][name][f"P@{k}"] == pytest.approx(rel[v, order[v, :k]].mean())
        assert out["per_label"][name]["mrr"] == pytest.approx(1 / ranks[v])
    assert out["per_label"]["hat"] == {"support": 0}
    assert out["labels_with_items"] == 3 and out["items"] == keep.size
    assert out["mean"]["P@5"] == pytest.approx(np.mean([out["per_label"][x]["P@5"] for x in labels[:3]]))
    # multi-label targets: relevant when the value is in the item's set; all-zero rows are unlabelled
    mh = (rng.random((n, 4)) < 0.3).astype(int)
    out = category_metrics(prompts, img, mh, labels, ks=(5,), device="cpu")
    keep = np.flatnonzero(mh.any(1))
    order = brute_order((prompts @ img[keep].T).numpy())
    for v, name in enumerate(labels):
        assert out["per_label"][name]["P@5"] == pytest.approx(mh[keep][order[v, :5], v].mean())


# ---------------------------------------------------------------- classification vs scikit-learn
def test_single_label_report_matches_sklearn(tmp_path):
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    n, c = 300, 7
    y = rng.integers(0, c - 1, n)  # class 6 never occurs in targets
    scores = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    y_missing = y.copy()
    y_missing[:10] = -1
    names = [f"c{i}" for i in range(c)]
    rep = single_label_report(y_missing, scores, names)
    yt, sc = y[10:], scores[10:]
    yp = sc.argmax(1)
    assert rep["items"] == n - 10
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(yt, yp))
    assert rep["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(yt, sc, k=5, labels=range(c)))
    for avg in ("macro", "micro", "weighted"):
        assert rep[f"{avg}_f1"] == pytest.approx(skm.f1_score(yt, yp, average=avg, zero_division=0))
    p, r, f, s = skm.precision_recall_fscore_support(yt, yp, labels=range(c), zero_division=0)
    for i, name in enumerate(names):
        row = rep["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    np.testing.assert_array_equal(np.array(rep["confusion_matrix"]), skm.confusion_matrix(yt, yp, labels=range(c)))
    png = confusion_png(rep["confusion_matrix"], names, tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multi_label_report_matches_sklearn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(1)
    n, c = 250, 6
    y = (rng.random((n, c)) < 0.3).astype(int)
    y[:, 5] = 0  # a class with no positives: excluded from mAP, F1 0
    scores = np.round(np.clip(0.35 * y + rng.random((n, c)) * 0.7, 0, 1), 1)  # rounded: many tied scores
    rep = multi_label_report(y, scores, [f"c{i}" for i in range(c)], threshold=0.5)
    yp = (scores >= 0.5).astype(int)
    assert rep["micro_f1"] == pytest.approx(skm.f1_score(y, yp, average="micro", zero_division=0))
    assert rep["macro_f1"] == pytest.approx(skm.f1_score(y, yp, average="macro", zero_division=0))
    assert rep["exact_match"] == pytest.approx(skm.accuracy_score(y, yp))
    aps = [skm.average_precision_score(y[:, i], scores[:, i]) for i in range(5)]
    assert rep["mAP"] == pytest.approx(np.mean(aps))
    for i in range(5):
        assert rep["per_class"][f"c{i}"]["ap"] == pytest.approx(aps[i])
    assert rep["per_class"]["c5"]["ap"] is None
    assert np.isnan(average_precision(y[:, 5], scores[:, 5]))


def test_tune_threshold_finds_best_f1():
    from sklearn import metrics as skm

    rng = np.random.default_rng(3)
    y = (rng.random((120, 4)) < 0.4).astype(int)
    s = np.round(0.3 * y + 0.7 * rng.random((120, 4)), 2)
    t = tune_threshold(y, s)
    grid = np.unique(s)
    best = max(skm.f1_score(y.ravel(), (s.ravel() >= g).astype(int), zero_division=0) for g in grid)
    assert skm.f1_score(y.ravel(), (s.ravel() >= t).astype(int)) == pytest.approx(best)
    tc = tune_threshold(y, s, per_class=True)
    for i in range(4):
        best_i = max(skm.f1_score(y[:, i], (s[:, i] >= g).astype(int), zero_division=0) for g in grid)
        assert skm.f1_score(y[:, i], (s[:, i] >= tc[i]).astype(int)) == pytest.approx(best_i)
    assert multi_label_report(y, s, list("abcd"), threshold=tc)["macro_f1"] >= \
        multi_label_report(y, s, list("abcd"), threshold=0.5)["macro_f1"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_scoring_equals_cpu_scoring():
    # exact-arithmetic data: CPU BLAS and cuBLAS (even with TF32) produce the same bits, so ties agree too
    c = exact_embeddings(500, 8, 9, dup_every=2)
    groups = [f"g{i // 4}" for i in range(500)]
    caps = [f"c{i % 37}" for i in range(500)]
    cpu = retrieval_ranks(c, c, groups, caps, k=20, chunk_size=50, device="cpu")
    gpu = retrieval_ranks(c, c, groups, caps, k=20, chunk_size=50, device="cuda")
    for d in ("t2i", "i2t"):
        assert torch.equal(cpu[d].topk_indices, gpu[d].topk_indices)
        assert torch.equal(cpu[d].first_rank, gpu[d].first_rank)


@pytest.mark.parametrize("dup", [0, 2])
def test_tiled_preselection_matches_brute_force(dup, monkeypatch):
    """The tiled GEMM + group pre-selection path (N >> k x group) and the top-k-list ranks, with and without
    ties at the pre-selection threshold (dup: exact duplicate candidates), against a full sort. < 1 s."""
    from fashiontune.metrics import topk
    from fashiontune.metrics.topk import Tiling

    widths, full_counts = [], []
    real, real_full = topk.deterministic_topk, topk._count_rank_full
    monkeypatch.setattr(topk, "deterministic_topk", lambda s, k: widths.append(s.shape[1]) or real(s, k))
    monkeypatch.setattr(topk, "_count_rank_full",
                        lambda sb, r, *a: full_counts.append(r.numel()) or real_full(sb, r, *a))
    monkeypatch.setattr(topk, "_NEAR_GROUPS", 24)  # misses both near (counted in 24 groups) and far (full rows)
    q = exact_embeddings(40, 5, seed=3, dup_every=3)
    g = torch.Generator().manual_seed(4)
    c = exact_embeddings(301, 5, seed=4, dup_every=dup) if dup else torch.randn(301, 5, generator=g)
    rng = np.random.default_rng(1)
    relevant = rng.random((40, 301)) < 0.02
    relevant[3] = False
    rel_t = torch.from_numpy(relevant)
    res = chunked_rank(q, c, k=6, relevance=lambda s, e, dev: rel_t[s:e], chunk_size=16, device="cpu",
                       tiling=Tiling(block=16, group=4))
    scores = (q @ c.T).numpy()
    order = brute_order(scores)
    assert torch.equal(res.topk_indices, torch.from_numpy(order[:, :6]))
    np.testing.assert_array_equal(res.first_rank.numpy(), brute_first_rank(scores, relevant))
    assert (res.first_rank > 6).any() and ((res.first_rank > 0) & (res.first_rank <= 6)).any()  # both rank paths
    assert 24 in widths  # pre-selected: 6 groups of 4 columns per row
    assert (301 in widths) == bool(dup)  # ties at the threshold: those rows ranked over the full row
    n_miss = int((res.first_rank > 6).sum())
    assert 0 < sum(full_counts) < n_miss  # some misses counted in their near groups, the others over full rows


def test_tiling_rejects_a_block_that_is_not_a_multiple_of_the_group():
    from fashiontune.metrics.topk import Tiling

    with pytest.raises(ValueError, match="multiple of group"):
        Tiling(block=10, group=4)


def test_random_shapes_tilings_and_ties_match_brute_force(monkeypatch):
    """80 random (N, Q, d, k, chunk, tiling, near-miss cap) on exact-arithmetic data full of ties, N and k from 0
    up, every path of the tiled kernel: top-k, scores and ranks equal a full sort. ~1 s."""
    from fashiontune.metrics import topk
    from fashiontune.metrics.topk import Tiling

    rng = np.random.default_rng(7)
    for _ in range(80):
        n, q, d, k = (int(rng.integers(lo, hi)) for lo, hi in ((1, 300), (1, 20), (1, 6), (0, 40)))
        g = int(rng.choice([1, 2, 4]))
        monkeypatch.setattr(topk, "_NEAR_GROUPS", int(rng.choice([1, 3, 256])))
        qe = torch.from_numpy(rng.integers(-2, 3, (q, d)).astype(np.float32) / 2)
        ce = torch.from_numpy(rng.integers(-2, 3, (n, d)).astype(np.float32) / 2)
        relevant = rng.random((q, n)) < rng.choice([0.0, 0.02, 0.2])
        rel_t = torch.from_numpy(relevant)
        res = chunked_rank(qe, ce, k, lambda s, e, dev, r=rel_t: r[s:e], chunk_size=int(rng.integers(1, 8)),
                           device="cpu", tiling=Tiling(block=g * int(rng.integers(1, 6)), group=g))
        scores = (qe @ ce.T).numpy()
        order = brute_order(scores)[:, : min(k, n)]
        assert torch.equal(res.topk_indices, torch.from_numpy(order))
        np.testing.assert_array_equal(res.topk_scores.numpy(), np.take_along_axis(scores, order, 1))
        np.testing.assert_array_equal(res.first_rank.numpy(), brute_first_rank(scores, relevant))
