"""The bf16 screen of exact top-K (metrics/screen.py): its error bound holds, and top-K lists and first-relevant
ranks equal a float64 full sort (ties by lower index), up to candidates whose scores differ by an fp32 rounding.

The screen runs only on CPUs with native bf16 and wide embeddings; here the gates are opened (cpu_has_native_bf16
patched, small MIN_CANDIDATES / MIN_DIM) so every path runs on any machine: a kept set cut short (second pass),
misses ranked through the band, rows with nothing relevant, and the fallback to fp32 when the screen keeps
too many. A counter proves the screened path ran. Seconds on one core."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from test_metrics_reference import brute_first_rank, brute_order, exact_embeddings

from fashiontune.metrics import screen
from fashiontune.metrics.topk import chunked_rank


@pytest.fixture
def open_gates(monkeypatch):
    """Screen everything; count the chunks whose top k the screen produced."""
    monkeypatch.setattr(screen, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(screen, "MIN_CANDIDATES", 1)
    monkeypatch.setattr(screen, "MIN_DIM", 1)
    calls = {"screened": 0, "fallback": 0, "threads": set()}
    real = screen.ScreenedChunk.topk

    def counted(self, k):
        out = real(self, k)
        calls["screened" if out is not None else "fallback"] += 1
        calls["threads"].add(threading.get_ident())
        return out

    monkeypatch.setattr(screen.ScreenedChunk, "topk", counted)
    return calls


def random_case(n: int, q: int, d: int, seed: int, scale_spread: bool = False):
    g = torch.Generator().manual_seed(seed)
    c = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    x = torch.nn.functional.normalize(c[:q] + 0.6 * torch.randn(q, d, generator=g), dim=1)  # queries near item i
    if scale_spread:  # not normalised: the bound must use the norms
        c = c * torch.empty(n, 1).uniform_(0.2, 3.0, generator=g)
        x = x * torch.empty(q, 1).uniform_(0.2, 3.0, generator=g)
    rng = np.random.default_rng(seed)
    relevant = rng.random((q, n)) < 3 / n
    relevant[np.arange(q), np.arange(q)] = True  # the paired item, plus a few random ones
    relevant[::7] = False  # some queries have nothing relevant
    return x, c, relevant


def assert_matches_float64(res, x, c, relevant, k, tol=2e-6):
    """Top k and ranks as a float64 full sort gives them, except where fp32 rounding can swap two scores."""
    s64 = (x.double() @ c.double().T).numpy()
    order = brute_order(s64)[:, :k]
    got = res.topk_indices.numpy()
    for r in np.flatnonzero((got != order).any(1)):  # only near-ties may differ: same scores within tol
        np.testing.assert_allclose(s64[r, got[r]], s64[r, order[r]], atol=tol)
    np.testing.assert_allclose(res.topk_scores.numpy(), np.take_along_axis(s64, got, 1), atol=tol)
    want = brute_first_rank(s64, relevant)
    for r in np.flatnonzero(res.first_rank.numpy() != want):
        s_star = s64[r, relevant[r]].max()
        near = int((np.abs(s64[r] - s_star) <= tol).sum())  # candidates a rounding could put either side
        assert abs(int(res.first_rank[r]) - int(want[r])) < near, (r, int(res.first_rank[r]), int(want[r]))


@pytest.mark.parametrize("via", ["groups", "topk"])
@pytest.mark.parametrize("k", [1, 10, 40])
def test_screened_topk_and_ranks_equal_a_float64_sort(open_gates, monkeypatch, k, via):
    """Both ways of finding a row's candidates: group maxima (the fast one) and a topk pass (rows with tau <= 0)."""
    if via == "topk":
        monkeypatch.setattr(screen.ScreenedChunk, "_candidates_by_groups", lambda self, k: (None, None))
    x, c, relevant = random_case(4000, 300, 64, seed=k)
    res = chunked_rank(x, c, k, lambda s, e, dev: torch.from_numpy(relevant[s:e]), chunk_size=64, device="cpu")
    assert open_gates["screened"] == 5 and open_gates["fallback"] == 0
    assert (res.first_rank > k).any() and ((res.first_rank > 0) & (res.first_rank <= k)).any()  # both rank paths
    assert (res.first_rank == -1).sum() == 43  # rows 0, 7, ..., 294
    assert_matches_float64(res, x, c, relevant, k)


def test_a_kept_set_cut_short_gets_a_second_pass_and_unnormalised_inputs_use_their_norms(open_gates, monkeypatch):
    monkeypatch.setattr(screen.ScreenedChunk, "_candidates_by_groups", lambda self, k: (None, None))
    monkeypatch.setattr(screen, "KEEP_FACTOR", 1)  # the first pass keeps only k: every row is cut short
    x, c, relevant = random_case(2000, 100, 48, seed=5, scale_spread=True)
    res = chunked_rank(x, c, 12, lambda s, e, dev: torch.from_numpy(relevant[s:e]), chunk_size=50, device="cpu")
    assert open_gates["screened"] == 2
    assert_matches_float64(res, x, c, relevant, 12)


def test_rows_whose_threshold_is_not_positive_take_the_topk_way(open_gates, monkeypatch):
    """Queries pointing away from every candidate: the top scores are negative, group maxima cannot be used."""
    taken = []
    real = screen.ScreenedChunk._candidates
    monkeypatch.setattr(screen.ScreenedChunk, "_candidates", lambda self, k: taken.append(k) or real(self, k))
    g = torch.Generator().manual_seed(3)
    c = torch.rand(3000, 32, generator=g) + 0.1  # all positive entries
    x = -torch.rand(50, 32, generator=g)  # all negative: every score < 0
    relevant = np.random.default_rng(3).random((50, 3000)) < 0.01
    res = chunked_rank(x, c, 7, lambda s, e, dev: torch.from_numpy(relevant[s:e]), chunk_size=25, device="cpu")
    assert open_gates["screened"] == 2 and taken == [7, 7]
    assert_matches_float64(res, x, c, relevant, 7)


def test_a_screen_that_keeps_too_much_falls_back_to_fp32(open_gates, monkeypatch):
    monkeypatch.setattr(screen, "KEEP_FACTOR", 1)
    monkeypatch.setattr(screen, "MAX_KEEP_SHARE", 0.003)  # prepare accepts k=5 of 2000; the kept set is wider
    x, c, relevant = random_case(2000, 40, 32, seed=6)
    res = chunked_rank(x, c, 5, lambda s, e, dev: torch.from_numpy(relevant[s:e]), chunk_size=40, device="cpu")
    assert open_gates["fallback"] == 1 and open_gates["screened"] == 0
    assert_matches_float64(res, x, c, relevant, 5)


def test_exact_ties_are_broken_by_lower_index_as_the_fp32_kernel_does(open_gates, monkeypatch):
    """Entries in {-1, -0.5, 0, 0.5, 1} are exact in bf16 and every score is exact: the screen sees the real ties
    (many, with duplicate rows), and its lists and ranks equal the full sort bit for bit."""
    monkeypatch.setattr(screen, "MAX_KEEP_SHARE", 1.0)  # 5 levels in 8 dims: hundreds tie at the threshold
    q = exact_embeddings(60, 8, seed=0, dup_every=3)
    c = exact_embeddings(900, 8, seed=1, dup_every=2)
    rng = np.random.default_rng(2)
    relevant = rng.random((60, 900)) < 0.01
    res = chunked_rank(q, c, 15, lambda s, e, dev: torch.from_numpy(relevant[s:e]), chunk_size=16, device="cpu")
    assert open_gates["screened"] == 4
    scores = (q @ c.T).numpy()
    order = brute_order(scores)
    assert torch.equal(res.topk_indices, torch.from_numpy(order[:, :15]))
    np.testing.assert_array_equal(res.first_rank.numpy(), brute_first_rank(scores, relevant))
    assert (res.first_rank > 15).any()


def test_the_bound_holds_for_every_pair():
    x, c, _ = random_case(1500, 200, 512, seed=9, scale_spread=True)
    scr = screen.Screen(c, c.to(torch.bfloat16), float(c.norm(dim=1).max()),
                        float(c.to(torch.bfloat16).float().norm(dim=1).max()),
                        float((c - c.to(torch.bfloat16).float()).norm(dim=1).max()))
    x_hi = x.to(torch.bfloat16)
    approx = torch.mm(x_hi, scr.hi.T).float()
    err = (approx.double() - (x.double() @ c.double().T)).abs()
    slack = scr.bound(x, x_hi)[:, None].double() + screen.B * approx.abs().double() - err
    assert bool((slack >= 0).all())
    assert float(err.max()) > 0.1 * float((slack + err).min())  # and is not vacuous: errors reach a tenth of it


def test_the_screen_is_off_where_it_does_not_pay(monkeypatch):
    monkeypatch.setattr(screen, "cpu_has_native_bf16", lambda: True)
    wide = torch.randn(5000, 256)
    assert screen.prepare(wide, 10) is not None
    assert screen.prepare(torch.randn(5000, 64), 10) is None  # narrow: the GEMM is cheap
    assert screen.prepare(torch.randn(1000, 256), 10) is None  # small corpus
    assert screen.prepare(wide, 100) is None  # k large for N: the screen would keep too much
    monkeypatch.setattr(screen, "cpu_has_native_bf16", lambda: False)
    assert screen.prepare(wide, 10) is None  # emulated bf16 is slower than fp32


def test_many_relevant_candidates_per_query(open_gates):
    """Category-style relevance (a third of the corpus per query): the top-k places come from a dense mask."""
    x, c, _ = random_case(4000, 64, 64, seed=11)
    relevant = np.random.default_rng(11).random((64, 4000)) < 0.3
    relevant[5] = False
    res = chunked_rank(x, c, 10, lambda s, e, dev: torch.from_numpy(relevant[s:e]), chunk_size=32, device="cpu")
    assert open_gates["screened"] == 2
    assert_matches_float64(res, x, c, relevant, 10)


@pytest.mark.parametrize("fallback", [False, True])
def test_chunks_in_parallel_equal_chunks_one_at_a_time(open_gates, monkeypatch, fallback):
    """Two torch threads score two chunks side by side (one thread each; topk._map_chunks): the same results,
    bit for bit, as one thread, with the fp32 fallback's buffer per thread, and the thread count restored."""
    if fallback:
        monkeypatch.setattr(screen, "KEEP_FACTOR", 1)
        monkeypatch.setattr(screen, "MAX_KEEP_SHARE", 0.003)
    x, c, relevant = random_case(2000, 200, 32, seed=8)
    before = torch.get_num_threads()
    runs = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            open_gates["threads"].clear()
            runs[threads] = chunked_rank(x, c, 5, lambda s, e, dev: torch.from_numpy(relevant[s:e]), chunk_size=20,
                                         device="cpu")
            assert torch.get_num_threads() == threads
            assert len(open_gates["threads"]) == threads  # the chunks did run side by side
    finally:
        torch.set_num_threads(before)
    for field in ("topk_indices", "topk_scores", "first_rank"):
        assert torch.equal(getattr(runs[1], field), getattr(runs[2], field)), field
    assert open_gates["fallback" if fallback else "screened"] == 20 and open_gates["screened" if fallback else "fallback"] == 0
    assert_matches_float64(runs[2], x, c, relevant, 5)
