"""Exact top-K on a CPU with native bf16: screen every candidate with a bf16 GEMM, rescore the few that can reach
the top K in fp32 (issue 16: the fp32 GEMM alone costs what faiss's whole exact search costs; a bf16 GEMM on
AVX512-BF16/AMX costs a third to a half of it).

Exactness does not rest on bf16 being "close enough": every bf16 score s~ is within a proven bound of the fp32
score s, |s~ - s| <= a_q + b |s~|, where
    a_q = |q_hi| |c_lo|max + |q_lo| |c_hi|max + |q_lo| |c_lo|max     (inputs rounded to bf16: x = x_hi + x_lo;
                                                                     |q_lo|, |c_lo| measured per row)
          + gamma_d (|q| |c|max + |q_hi| |c_hi|max)                  (fp32 accumulation in both GEMMs)
    b   = u / (1 - u), u = 2^-8                                       (the bf16 output's rounding)
with gamma_d = d 2^-24 / (1 - d 2^-24) and Cauchy-Schwarz for the sums of |x_i y_i|; a safety factor covers the
arithmetic of the bound itself. If t~ is a row's K-th bf16 score, at least K candidates have s >= t~ - a - b|t~|
(=: L), so every member of the true top K has s >= L, hence s~ >= tau where tau + a + b|tau| = L. Rescoring
every candidate with s~ >= tau in fp32 and ranking those exactly gives the fp32 top K with the kernel's
(score desc, index asc) order (t~ may be replaced by any lower bound: the k-th largest group maximum is one).
A query whose first relevant candidate (fp32 score s*) is outside its top K is ranked the same way: a bf16 score
the bound puts surely above or below s* is counted from bf16, the band between is rescored in fp32. A chunk whose
screen keeps too many candidates is scored by the fp32 kernel instead.

torch's bf16 GEMM accumulates in fp32 (oneDNN); `prepare` checks the bound on a sample of the data before use and
declines (the caller runs fp32) if it does not hold there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

U = 2.0**-8  # bf16 unit roundoff: 8 significant bits, round to nearest
B = U / (1 - U)
SAFETY = 1.25
MIN_CANDIDATES = 4096  # below this the fp32 kernel is as fast: nothing to screen
MIN_DIM = 256  # narrower embeddings (the tiny test models' 64) make the GEMM cheap: the passes after it dominate
KEEP_FACTOR = 4  # first guess of the rescored candidates per row: KEEP_FACTOR * k (enough for most rows)
MAX_KEEP_SHARE = 0.05  # a chunk whose screen keeps more than this share of N is scored in fp32 instead
GROUP = 32  # columns per group of the candidate pre-selection (group maxima)
SETUP_BLOCK = 2048  # candidate rows rounded to bf16 at a time (a block stays in cache for measuring |c_lo|)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPUs where a bf16 GEMM is faster than an fp32 one (elsewhere it is emulated)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class Screen:
    cand: Tensor  # N x d fp32, the candidates
    hi: Tensor  # N' x d bf16, the candidates rounded, zero rows up to a multiple of GROUP (their scores are 0)
    c_max: float  # max |c| over candidates, and bounds on max |c_hi|, max |c_lo|
    hi_max: float
    lo_max: float

    def bound(self, q: Tensor, q_hi: Tensor) -> Tensor:
        """a_q per query row (B is the relative part)."""
        d = q.shape[1]
        gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
        nq, nh, nl = q.norm(dim=1), q_hi.float().norm(dim=1), (q - q_hi.float()).norm(dim=1)
        a = nh * self.lo_max + nl * self.hi_max + nl * self.lo_max + gamma * (nq * self.c_max + nh * self.hi_max)
        return SAFETY * a + 1e-30


def prepare(cand: Tensor, k: int) -> Screen | None:
    """The screen of an N x d fp32 CPU candidate matrix, or None where the fp32 kernel is the better tool."""
    n = cand.shape[0]
    if cand.device.type != "cpu" or n < MIN_CANDIDATES or cand.shape[1] < MIN_DIM or k < 1 or KEEP_FACTOR * k > MAX_KEEP_SHARE * n:
        return None
    if not cpu_has_native_bf16():
        return None
    cand = cand.contiguous()
    hi = torch.empty(n + (-n % GROUP), cand.shape[1], dtype=torch.bfloat16)
    hi[n:] = 0  # zero rows up to a whole group
    lo_max = 0.0
    for s in range(0, n, SETUP_BLOCK):  # round and measure |c_lo| while a block is in cache: one pass over cand
        c = cand[s : s + SETUP_BLOCK]
        hi[s : s + c.shape[0]] = c
        lo_max = max(lo_max, float(torch.linalg.vector_norm(c - hi[s : s + c.shape[0]].float(), dim=1).max()))
    c_max = float(cand.norm(dim=1).max())
    scr = Screen(cand, hi, c_max, c_max + lo_max, lo_max)  # |c_hi| <= |c| + |c_lo|
    return scr if _bound_holds(scr) else None


def _bound_holds(scr: Screen) -> bool:
    """The bound on a sample: 64 candidates as queries against 2048 candidates, bf16 vs fp32."""
    m = min(2048, scr.cand.shape[0])
    q, c = scr.cand[:64], scr.cand[:m]
    q_hi = q.to(torch.bfloat16)
    approx = torch.mm(q_hi, scr.hi[:m].T).float()
    exact = q @ c.T
    return bool(((approx - exact).abs() <= scr.bound(q, q_hi)[:, None] + B * approx.abs()).all())


def _round_bf16(x: Tensor, up: bool) -> Tensor:
    """The nearest bf16 value >= x (up) or <= x (down), x fp32: a threshold must never lose a candidate."""
    r = x.to(torch.bfloat16)
    inf = torch.full_like(r, float("inf") if up else float("-inf"))
    wrong = r.float() < x if up else r.float() > x
    return torch.where(wrong, torch.nextafter(r, inf), r)


def _below_bound(y: Tensor, a: Tensor) -> Tensor:
    """x with x + a + B|x| = y: a bf16 score under it proves an fp32 score under y."""
    t = y - a
    return torch.where(t >= 0, t / (1 + B), t / (1 - B))


def _above_bound(y: Tensor, a: Tensor) -> Tensor:
    """x with x - a - B|x| = y: a bf16 score over it proves an fp32 score over y."""
    t = y + a
    return torch.where(t >= 0, t / (1 - B), t / (1 + B))


def screen_threshold(kth: Tensor, a: Tensor) -> Tensor:
    """tau (bf16): a candidate scoring under tau in bf16 cannot be in the true top K (see the module doc)."""
    return _round_bf16(_below_bound(kth - a - B * kth.abs(), a), up=False)


def exact_scores(q: Tensor, cand: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """fp32 q[rows_j] . cand[cols_j] for ragged (row, column) pairs, without gathering the vectors (faiss's SIMD
    inner products; every exact score of the screen comes from here, so equal vectors score equally)."""
    import faiss

    out = torch.empty(rows.shape, dtype=torch.float32)
    if rows.numel():
        qc, r, c = q.contiguous(), rows.contiguous(), cols.contiguous()
        faiss.pairwise_indexed_inner_product(q.shape[1], rows.numel(), faiss.swig_ptr(qc.numpy()),
                                             faiss.swig_ptr(r.numpy()), faiss.swig_ptr(cand.numpy()),
                                             faiss.swig_ptr(c.numpy()), faiss.swig_ptr(out.numpy()))
    return out


class ScreenedChunk:
    """One query chunk scored in bf16 against every candidate; exact top k and ranks derived from it."""

    def __init__(self, scr: Screen, q: Tensor, buf: Tensor | None = None):
        """buf: at least chunk x N' bf16, reused across chunks (a fresh block per chunk costs page faults)."""
        self.scr, self.q = scr, q.contiguous()
        q_hi = q.to(torch.bfloat16)
        out = buf[: q.shape[0]] if buf is not None else None
        self.padded = torch.mm(q_hi, scr.hi.T, out=out)  # chunk x N' bf16 (N' = N rounded up to GROUP; pads score 0)
        self.s = self.padded[:, : scr.cand.shape[0]]  # the real candidates' scores
        self.a = scr.bound(q, q_hi)
        self.key: Tensor | None = None  # int16 view (b x groups x GROUP) and group maxima, once made
        self.gmax: Tensor | None = None

    def topk(self, k: int) -> tuple[Tensor, Tensor] | None:
        """Exact (score desc, index asc) top k per row, as topk.deterministic_topk of the fp32 scores would give;
        None if the screen keeps too many candidates (score the chunk in fp32 instead)."""
        from fashiontune.metrics.topk import deterministic_topk

        idx, ok = self._candidates_by_groups(k)
        if idx is None:
            idx, ok = self._candidates(k)
        if idx is None:
            return None
        exact = torch.full(idx.shape, float("-inf"))  # >= k valid entries per row; padding never ranks
        r, c = ok.nonzero(as_tuple=True)
        exact[r, c] = exact_scores(self.q, self.scr.cand, r, idx[r, c])
        pos, top_v = deterministic_topk(exact, k)
        return idx.gather(1, pos), top_v

    def _candidates_by_groups(self, k: int) -> tuple[Tensor | None, Tensor | None]:
        """_candidates from group maxima: the k-th largest maximum T is <= the k-th largest score (k distinct
        items reach it), so tau(T) keeps a superset; only groups whose maximum reaches tau are opened. Positive
        bf16 values order as their int16 bit patterns, so the passes run on integers; rows needing a tau <= 0
        (hardly any: the top k of thousands scores > 0) go to the topk-based _candidates."""
        b, n_pad = self.padded.shape
        if n_pad // GROUP < k:
            return None, None
        key = self.padded.view(torch.int16).view(b, -1, GROUP)
        gmax = key.amax(-1)  # b x groups
        self.key, self.gmax = key, gmax  # the miss ranks open groups the same way
        t_key = gmax.topk(k, dim=1).values[:, -1]
        if not bool((t_key > 0).all()):
            return None, None
        tau = screen_threshold(t_key.view(torch.bfloat16).float(), self.a)
        tau_key = tau.view(torch.int16)
        if not bool((tau_key > 0).all()):
            return None, None
        gr, gc = (gmax >= tau_key[:, None]).nonzero(as_tuple=True)  # row-major, groups ascending
        vals = key.view(-1, GROUP).index_select(0, gr * key.shape[1] + gc)  # opened groups x GROUP (row copies)
        rows, cols = _members(gr, gc, vals >= tau_key[gr, None])  # zero pads (key 0 < tau_key) never pass
        if rows.numel() > MAX_KEEP_SHARE * self.s.shape[1] * b:
            return None, None
        return _padded(rows, cols, b)

    def _candidates(self, k: int) -> tuple[Tensor | None, Tensor]:
        """Per row, ascending, every column whose bf16 score reaches the row's threshold tau (m x width, padded;
        the mask says which entries are real). Rows with more than KEEP_FACTOR * k get a second, wider pass."""
        n = self.s.shape[1]
        vals, idx = self.s.topk(min(n, KEEP_FACTOR * k), dim=1)
        tau = screen_threshold(vals[:, k - 1].float(), self.a)
        ok = vals >= tau[:, None]
        short = ok[:, -1].nonzero().flatten()  # rows whose kept set may be cut off
        if short.numel():
            need = int((self.s[short] >= tau[short, None]).sum(1).max())
            if need > MAX_KEEP_SHARE * n:
                return None, ok
            v2, i2 = self.s[short].topk(need, dim=1)
            pad = need - idx.shape[1]
            idx = torch.nn.functional.pad(idx, (0, pad))
            ok = torch.nn.functional.pad(ok, (0, pad))
            idx[short], ok[short] = i2, v2 >= tau[short, None]
        width = int(ok.sum(1).max())  # the kept entries lead each row (topk is sorted)
        idx, ok = idx[:, :width], ok[:, :width]
        idx = torch.where(ok, idx, n)  # padding sorts last, then back to a valid column (masked anyway)
        idx = idx.sort(dim=1).values  # ascending columns: ties keep index order in deterministic_topk
        return idx.masked_fill(~ok, 0), ok

    def first_rank(self, top: tuple[Tensor, Tensor], rows: Tensor, cols: Tensor) -> Tensor:
        """1-based rank of each row's best-ranked relevant candidate (-1: none): its place in the exact top k,
        else 1 + #(score > s*) + #(score == s*, index < r*), counted from the bf16 scores where the bound
        decides and from exact scores in the band where it does not (then > k by construction)."""
        b, k = top[0].shape
        rank = _place_in_top(top[0], rows, cols, self.s.shape[1])
        miss = ((torch.bincount(rows, minlength=b) > 0) & (rank < 0)).nonzero().flatten()
        if miss.numel():
            local = torch.full((b,), -1, dtype=torch.long)
            local[miss] = torch.arange(miss.numel())
            keep = local[rows] >= 0
            rank[miss] = self._count_ranks(miss, local[rows[keep]], cols[keep]).clamp(min=k + 1)
        return rank

    def _count_ranks(self, miss: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """Ranks of the miss rows (their relevant pairs: rows local to miss)."""
        q, a, m = self.q[miss], self.a[miss], miss.numel()
        rel_s = exact_scores(q, self.scr.cand, rows, cols)
        s_star = torch.full((m,), float("-inf")).scatter_reduce(0, rows, rel_s, "amax")
        at = rel_s == s_star[rows]
        r_star = torch.full((m,), self.s.shape[1], dtype=torch.long).scatter_reduce(0, rows[at], cols[at], "amin")
        hi = _round_bf16(_above_bound(s_star, a), up=True)
        lo = _round_bf16(_below_bound(s_star, a), up=False)
        above, band_rows, band_cols = self._above_and_band(miss, hi, lo)
        band_s = exact_scores(q, self.scr.cand, band_rows, band_cols)
        before = (band_s > s_star[band_rows]) | ((band_s == s_star[band_rows]) & (band_cols < r_star[band_rows]))
        return 1 + above + torch.bincount(band_rows[before], minlength=m)

    def _above_and_band(self, miss: Tensor, hi: Tensor, lo: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per miss row: #(bf16 score > hi), and the (row, column) pairs with lo <= score <= hi.
        With positive thresholds only groups whose maximum reaches lo can hold any (the int16 order of positive
        bf16 values, as in _candidates_by_groups); otherwise the full rows are compared."""
        lo_key, hi_key = lo.view(torch.int16), hi.view(torch.int16)
        if self.gmax is not None and bool((lo_key > 0).all()):
            gr, gc = (self.gmax[miss] >= lo_key[:, None]).nonzero(as_tuple=True)
            flat = miss[gr] * self.key.shape[1] + gc
            vals = self.key.view(-1, GROUP).index_select(0, flat)  # opened groups x GROUP (zero pads: key 0 < lo_key)
            above = torch.zeros(miss.numel(), dtype=torch.long).index_add_(0, gr, (vals > hi_key[gr, None]).sum(1))
            return above, *_members(gr, gc, (vals >= lo_key[gr, None]) & (vals <= hi_key[gr, None]))
        s = self.s[miss]
        above = (s > hi[:, None]).sum(1)
        band_rows, band_cols = ((s >= lo[:, None]) & (s <= hi[:, None])).nonzero(as_tuple=True)
        return above, band_rows, band_cols


def _place_in_top(top_i: Tensor, rows: Tensor, cols: Tensor, n: int) -> Tensor:
    """Per row, the 1-based place of its first relevant candidate in its top-k list, -1 if none is there."""
    b, k = top_i.shape
    if rows.numel() * k <= b * n:  # few relevant pairs: compare each with its row's list
        hit = top_i[rows] == cols[:, None]
        place = torch.where(hit.any(1), hit.to(torch.int8).argmax(1), k)
        best = torch.full((b,), k, dtype=torch.long).scatter_reduce(0, rows, place, "amin")
    else:  # many: a dense mask of the chunk
        relevant = torch.zeros(b, n, dtype=torch.bool)
        relevant[rows, cols] = True
        in_top = relevant.gather(1, top_i)
        best = torch.where(in_top.any(1), in_top.to(torch.int8).argmax(1), k)
    return torch.where(best < k, best + 1, -1)


def _members(gr: Tensor, gc: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(row, column) of the True entries of mask (opened groups x GROUP; group j of them = row gr[j], group gc[j]),
    row-major: one nonzero over the mask, then gathers of the few hits (not index matrices of the mask's size)."""
    g, j = mask.nonzero(as_tuple=True)
    return gr[g], gc[g] * GROUP + j


def _padded(rows: Tensor, cols: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Ragged (row, col) pairs, rows ascending, as an m x width column matrix (0-padded) and its valid mask."""
    counts = torch.bincount(rows, minlength=m)
    width = int(counts.max()) if rows.numel() else 0
    pos = torch.arange(rows.numel()) - (counts.cumsum(0) - counts)[rows]
    idx = torch.zeros(m, width, dtype=torch.long)
    ok = torch.zeros(m, width, dtype=torch.bool)
    idx[rows, pos] = cols
    ok[rows, pos] = True
    return idx, ok
