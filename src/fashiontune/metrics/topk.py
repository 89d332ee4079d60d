"""Exact top-K and first-relevant rank over a full corpus, one query chunk at a time.

Memory is O(chunk x N) (the chunk's similarity row block plus a few masks of the same shape), never N x N,
so a 1M-item corpus is scored on one GPU, and 200k on a CPU, by choosing the chunk from a memory budget.

Ordering is total and deterministic: candidates are ranked by score (descending, fp32), and on equal scores
the LOWER candidate index ranks first. `torch.topk` alone does not promise which of several equal values it
returns, so where ties straddle the K-th place we pick the tied candidates ourselves by index, and we order
the K by (score, index) with a stable sort. First-relevant ranks count strictly better candidates plus the
tied ones of lower index, so ranks and top-K lists follow the same order.

Speed (issue 16): the fp32 similarity GEMM is the floor (on one CPU core it costs about what faiss's whole
exact search costs), so everything after it is kept to a few cheap passes: per-tile GEMMs into one reused
buffer, the top K picked among the K column groups with the highest maxima (exact, with a full-row fallback),
and ranks read off the top-K list, counted over a few groups for near misses and over full rows, tile by tile,
only for the rest.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

# (query_start, query_end, device) -> which candidates are relevant to queries start..end-1: either a dense
# bool mask (end - start) x N, or sparse (rows, cols) index tensors (rows relative to start; duplicates allowed).
# Called from the worker threads of _map_chunks: a pure function of its arguments.
RelevanceFn = Callable[[int, int, torch.device], "Tensor | tuple[Tensor, Tensor]"]

# bytes per (query, candidate) pair we hold at once: fp32 score + ~4 bool/compare temporaries + slack
_BYTES_PER_PAIR = 12
SCREEN_CHUNK = 256  # queries per chunk of the bf16 screen (screen.py)


@dataclass
class RankResult:
    topk_indices: Tensor  # Q x K int64, best first (score desc, index asc)
    topk_scores: Tensor  # Q x K fp32
    first_rank: Tensor | None  # Q int64: 1-based rank of the best-ranked relevant candidate; -1 = none relevant


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_budget(device: torch.device) -> int:
    """Working-set budget: 1 GiB on CPU; on a GPU a quarter of the free memory, at most 8 GiB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(8 << 30, free // 4))
    return 1 << 30


def auto_chunk_size(n_candidates: int, memory_budget_bytes: int, n_queries: int) -> int:
    """Largest query chunk whose working set (chunk x N pairs) fits in the budget."""
    per_row = max(1, n_candidates) * _BYTES_PER_PAIR
    return int(max(1, min(n_queries, memory_budget_bytes // per_row)))


def deterministic_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row by (score desc, column index asc). Returns (indices, values), both B x k.

    torch.topk gives the right SET unless equal scores straddle the k-th place; only for such rows do we
    pick the set ourselves (everything above the k-th value, then the lowest-index ties at it). The set is
    then ordered by index and stably sorted by score, so equal scores stay index-ascending. Extra cost over
    plain topk: one linear pass (count the k-th value's ties) in the common case.
    """
    b, n = scores.shape
    k = min(k, n)
    if k == 0 or b == 0:
        empty = torch.empty(b, k, dtype=torch.long, device=scores.device)
        return empty, scores.new_empty(b, k)
    vals, idx = scores.topk(k, dim=1, largest=True, sorted=True)
    kth = vals[:, -1:]
    straddle = (scores == kth).sum(1, dtype=torch.int32) > (vals == kth).sum(1, dtype=torch.int32)  # ties at the k-th value left outside the top k
    if bool(straddle.any()):
        rows = straddle.nonzero().flatten()
        idx[rows] = _select_lowest_index_ties(scores[rows], kth[rows], k)
    idx = idx.sort(dim=1).values
    vals = scores.gather(1, idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices  # stable: ties stay index-ascending
    return idx.gather(1, order), vals.gather(1, order)


def _select_lowest_index_ties(scores: Tensor, kth: Tensor, k: int) -> Tensor:
    """Columns (ascending) of the k best per row: all above kth, then the lowest-index ones equal to kth."""
    b = scores.shape[0]
    selected = scores > kth  # fewer than k per row, by definition of the k-th value
    need = k - selected.sum(1)
    rows, cols = (scores == kth).nonzero(as_tuple=True)  # row-major: columns ascending within a row
    per_row = torch.bincount(rows, minlength=b)
    pos_in_row = torch.arange(rows.numel(), device=scores.device) - (per_row.cumsum(0) - per_row)[rows]
    keep = pos_in_row < need[rows]
    selected[rows[keep], cols[keep]] = True
    return selected.nonzero(as_tuple=True)[1].view(b, k)


@dataclass(frozen=True)
class Tiling:
    """How a query chunk's scores are laid out and pre-selected (CPU speed knobs; results do not depend on them).

    block: candidate columns per GEMM tile on the CPU (a tile stays in cache for the group maxima); the GPU
    scores the whole corpus in one GEMM. group: columns per group of the top-k pre-selection.
    """

    block: int = 1024
    group: int = 32

    def __post_init__(self) -> None:
        if self.group < 1 or self.block < self.group or self.block % self.group:
            raise ValueError(f"Tiling(block={self.block}, group={self.group}): block must be a multiple of group")


class _ScoreBlock:
    """Scores of a query chunk against all N candidates, as nb tiles of `block` columns (nb x chunk x block),
    padded with -inf past N. Columns are addressed globally: column j lives in tile j // block. The scores
    go into `buf` (nb x max_chunk x block), allocated once per call: a fresh block per chunk costs page
    faults on every chunk."""

    def __init__(self, q: Tensor, tiles: list[Tensor], n: int, buf: Tensor, group: int):
        block = buf.shape[2]
        self.n, self.block, self.group = n, block, group
        self.gmax: Tensor | None = None  # chunk x (N / group) group maxima, once the pre-selection made them
        self.s = buf[:, : q.shape[0]]
        for b, tile in enumerate(tiles):
            torch.mm(q, tile.T, out=self.s[b])
        if len(tiles) * block > n:
            self.s[-1, :, n - (len(tiles) - 1) * block:] = float("-inf")

    def group_max(self) -> Tensor:
        nb, chunk, block = self.s.shape
        if self.gmax is None:
            tiles = self.s.view(nb, chunk, block // self.group, self.group)
            self.gmax = tiles.amax(-1).permute(1, 0, 2).reshape(chunk, -1)
        return self.gmax

    def groups(self, rows: Tensor, gi: Tensor) -> tuple[Tensor, Tensor]:
        """Scores and column indices of groups gi (m x M group numbers) of rows (m): both m x (M * group)."""
        nb, _, block = self.s.shape
        g, per_tile = self.group, block // self.group
        vals = self.s.view(nb, -1, per_tile, g)[gi // per_tile, rows.unsqueeze(1).expand_as(gi), gi % per_tile]
        cols = gi.unsqueeze(2) * g + torch.arange(g, device=gi.device)
        return vals.view(gi.shape[0], -1), cols.view(gi.shape[0], -1)

    def at(self, rows: Tensor, cols: Tensor) -> Tensor:
        return self.s[cols // self.block, rows, cols % self.block]

    def rows(self, rows: Tensor) -> Tensor:
        """Full score rows (len(rows) x N), a copy."""
        return self.s[:, rows].permute(1, 0, 2).reshape(rows.numel(), -1)[:, : self.n]


def _preselect_topk(sb: _ScoreBlock, k: int) -> tuple[Tensor, Tensor]:
    """deterministic_topk of every row, ranking only the k best groups of columns per row.

    The k groups with the highest maxima hold every candidate scoring above the (k+1)-th group maximum g; if
    the k-th value found there is > g, nothing outside can enter the top k (it scores <= g), so the result is
    exact. Rows where it is not (ties at g: rare outside tie-heavy data) are ranked over their full row.
    """
    gv, gi = sb.group_max().topk(k + 1, dim=1)
    gi = gi[:, :k].sort(dim=1).values  # ascending groups -> candidate columns ascending, so ties keep index order
    cand, cols = sb.groups(torch.arange(gi.shape[0], device=gi.device), gi)
    pos, vals = deterministic_topk(cand, k)
    idx = cols.gather(1, pos)
    redo = (vals[:, -1] <= gv[:, k]).nonzero().flatten()
    if redo.numel():
        idx[redo], vals[redo] = deterministic_topk(sb.rows(redo), k)
    return idx, vals


def _topk(sb: _ScoreBlock, k: int) -> tuple[Tensor, Tensor]:
    if 4 * k * sb.group > sb.n:  # the pre-selection would not shrink the work
        return deterministic_topk(sb.rows(torch.arange(sb.s.shape[1], device=sb.s.device)), k)
    return _preselect_topk(sb, k)


def _best_relevant(sb: _ScoreBlock, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: best relevant score s*, its candidate r* (lowest index among equals), whether any is relevant."""
    b = sb.s.shape[1]
    vals = sb.at(rows, cols)
    best = torch.full((b,), float("-inf"), device=vals.device).scatter_reduce(0, rows, vals, "amax")
    at = vals == best[rows]
    r_star = torch.full((b,), sb.n, dtype=torch.long, device=vals.device)
    r_star = r_star.scatter_reduce(0, rows[at], cols[at], "amin")
    return best, r_star, torch.bincount(rows, minlength=b) > 0


def first_relevant_rank(sb: _ScoreBlock, top: tuple[Tensor, Tensor], rows: Tensor, cols: Tensor) -> Tensor:
    """1-based rank of the best-ranked relevant candidate per row, under (score desc, index asc); -1 if none.

    Relevance comes sparse: the (row, col) positions of the relevant pairs (duplicates allowed). The best
    relevant candidate r* (score s*) is the highest-scoring relevant one, lowest index among equals; its rank
    is 1 + #(score > s*) + #(score == s* and index < r*). Where r* is in the row's top k, that count is read
    off the top-k list; only the other rows are counted over all N candidates.
    """
    best, r_star, has = _best_relevant(sb, rows, cols)
    top_i, top_v = top
    s, r = best.unsqueeze(1), r_star.unsqueeze(1)
    if top_v.shape[1]:
        inside = (top_v[:, -1] < best) | ((top_v[:, -1] == best) & (top_i[:, -1] >= r_star))
    else:  # no candidates at all
        inside = torch.zeros_like(has)
    rank = 1 + ((top_v > s) | ((top_v == s) & (top_i < r))).sum(1)
    miss = (has & ~inside).nonzero().flatten()
    if miss.numel():
        rank[miss] = _count_rank(sb, miss, best[miss], r_star[miss])
    return torch.where(has, rank, torch.full_like(rank, -1))


# a miss whose relevant score is exceeded in at most this many groups is counted there, not over its full row
_NEAR_GROUPS = 256


def _count_rank(sb: _ScoreBlock, rows: Tensor, best: Tensor, r_star: Tensor) -> Tensor:
    """1 + #(score > s*) + #(score == s* and index < r*) for the given rows. Only groups whose maximum is >= s*
    can add to it: where the pre-selection's group maxima show few such groups (a near miss), those groups are
    counted; other rows over all N candidates, in their tiles (the -inf padding never counts)."""
    rank = torch.empty_like(rows)
    near = torch.zeros_like(rows, dtype=torch.bool)
    if sb.gmax is not None:
        gm = sb.gmax[rows]
        m = min(_NEAR_GROUPS, gm.shape[1])
        near = (gm >= best.unsqueeze(1)).sum(1) <= m  # then the m highest groups hold all of them
        ni = near.nonzero().flatten()
        if ni.numel():
            vals, cols = sb.groups(rows[ni], gm[ni].topk(m, dim=1).indices)
            b, r = best[ni].unsqueeze(1), r_star[ni].unsqueeze(1)
            rank[ni] = 1 + ((vals > b) | ((vals == b) & (cols < r))).sum(1)
    far = (~near).nonzero().flatten()
    if far.numel():
        rank[far] = _count_rank_full(sb, rows[far], best[far], r_star[far])
    return rank


def _count_rank_full(sb: _ScoreBlock, rows: Tensor, best: Tensor, r_star: Tensor) -> Tensor:
    """The count over all N candidates, tile by tile: each tile's slice of the rows is copied and compared while
    it is in cache (one copy of all the rows first would cost more than the counting)."""
    bcol = best.unsqueeze(1)
    gt = torch.zeros(rows.numel(), dtype=torch.int32, device=rows.device)
    eq = torch.zeros_like(gt)
    for tile in sb.s:  # bool .sum with an int32 accumulator: ~4x faster than the default int64 one on CPU
        x = tile.index_select(0, rows)
        gt += (x > bcol).sum(1, dtype=torch.int32)
        eq += (x == bcol).sum(1, dtype=torch.int32)
    rank = 1 + gt.long()
    tied = (eq > 1).nonzero().flatten()  # r* itself is one; the others at s* rank first if their index is lower
    if tied.numel():
        t = sb.s[:, rows[tied]]
        nb, _, block = t.shape
        idx = torch.arange(nb * block, device=t.device).view(nb, 1, block)
        below = (t == best[tied].view(1, -1, 1)) & (idx < r_star[tied].view(1, -1, 1))
        rank[tied] += below.sum((0, 2))
    return rank


def _finite(x: Tensor) -> bool:
    """No NaN/inf in x: a sum first (one cheap pass, non-finite if any entry is), the exact test only then."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _tiles(cand: Tensor, block: int) -> list[Tensor]:
    """Candidates N x d as tiles of `block` rows: views, and a zero-padded copy of the last partial one (its
    padded scores are set to -inf)."""
    n, d = cand.shape
    tiles = list(cand[: n - n % block].view(-1, block, d)) if n >= block else []
    if n % block or not tiles:
        tiles.append(torch.cat([cand[n - n % block:], cand.new_zeros(block - n % block, d)]))
    return tiles


def chunked_rank(
    queries: Tensor,
    candidates: Tensor,
    k: int,
    relevance: RelevanceFn | None = None,
    *,
    chunk_size: int | None = None,
    memory_budget_bytes: int | None = None,
    device: torch.device | str | None = None,
    tiling: Tiling = Tiling(),
    screen: bool = True,
) -> RankResult:
    """Score Q queries against N candidates (dot product in fp32: pass L2-normalised embeddings for cosine).

    For each query chunk: similarity chunk x N (in tiles), deterministic top-k, and (if `relevance` is given)
    the rank of the first relevant candidate. Results come back on the CPU. On a CPU with native bf16 the top k
    is found by a proven bf16 screen and fp32 rescoring (screen.py; same results); screen=False forces fp32.
    """
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and candidates {tuple(candidates.shape)} must be Q x d and N x d"
        )
    dev = torch.device(device) if device is not None else default_device()
    cand = candidates.to(dev, torch.float32)
    if not (_finite(cand) and _finite(queries)):
        raise ValueError("embeddings contain NaN/inf: the model produced non-finite features")
    q_total, n = queries.shape[0], cand.shape[0]
    k = min(k, n)
    chunk = chunk_size or auto_chunk_size(n, memory_budget_bytes or default_budget(dev), q_total)
    scorer = _Scorer(cand, k, dev, tiling, min(chunk, q_total), screen)
    if scorer.screen is not None:  # its bf16 block and top-k passes stay in cache with small chunks
        chunk = scorer.max_chunk = max(1, min(chunk, SCREEN_CHUNK, q_total))  # (an fp32 fallback's buffer too)

    def one(s: int, e: int) -> tuple[Tensor, Tensor, Tensor | None]:
        rel = _sparse_relevance(relevance(s, e, dev), s, e, n, dev) if relevance is not None else None
        return scorer.chunk(queries[s:e].to(dev, torch.float32), rel)

    ranges = [(s, min(q_total, s + chunk)) for s in range(0, q_total, chunk)]
    parts = _map_chunks(one, ranges, parallel=scorer.screen is not None)
    top_i = [i.cpu() for i, _, _ in parts]
    top_s = [v.cpu() for _, v, _ in parts]
    ranks = [r.cpu() for _, _, r in parts if r is not None]
    empty_i = torch.empty(0, k, dtype=torch.long)
    return RankResult(
        topk_indices=torch.cat(top_i) if top_i else empty_i,
        topk_scores=torch.cat(top_s) if top_s else torch.empty(0, k),
        first_rank=(torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)) if relevance else None,
    )


def _map_chunks(fn: Callable, ranges: list[tuple[int, int]], parallel: bool) -> list:
    """fn(start, end) for every query chunk, in order. In parallel: one chunk per torch thread at once, each
    chunk on one thread, because the screen's passes after its GEMM (group maxima, selection, rescoring) run
    on one thread each: chunks side by side keep every core busy where one chunk at a time would leave all but
    one idle for about a third of the time (the GEMM's share is two thirds). Memory: one chunk's working set per
    thread."""
    threads = torch.get_num_threads()
    if not parallel or threads < 2 or len(ranges) < 2:
        return [fn(*r) for r in ranges]
    try:  # each worker runs its ops on its own thread; torch.set_num_threads is per OpenMP thread + a global default
        with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return list(pool.map(lambda r: fn(*r), ranges))
    finally:
        torch.set_num_threads(threads)  # the default new threads start with, which the workers lowered


def _sparse_relevance(rel, s: int, e: int, n: int, dev: torch.device) -> tuple[Tensor, Tensor]:
    if isinstance(rel, Tensor):  # dense bool mask -> sparse positions
        if rel.shape != (e - s, n):
            raise ValueError(f"relevance mask {tuple(rel.shape)} for queries {s}:{e} != {(e - s, n)}")
        rel = rel.to(dev, torch.bool).nonzero(as_tuple=True)
    rows, cols = (t.to(dev, torch.long) for t in rel)
    return rows, cols


class _Scorer:
    """One query chunk's top k and first-relevant ranks: the bf16 screen where it applies, else the fp32 tiles."""

    def __init__(self, cand: Tensor, k: int, dev: torch.device, tiling: Tiling, max_chunk: int, screen: bool):
        from fashiontune.metrics import screen as screening

        self.cand, self.k, self.n, self.g = cand, k, cand.shape[0], tiling.group
        self.screen = screening.prepare(cand, k) if screen else None
        # a GPU runs one GEMM over the whole corpus; the CPU one cache-sized tile at a time
        self.tiles = _tiles(cand, max(1, -(-self.n // self.g)) * self.g if dev.type == "cuda" else tiling.block)
        self.max_chunk, self._local = max_chunk, threading.local()  # a buffer per thread (chunks in parallel)

    def _block(self, q: Tensor) -> _ScoreBlock:
        buf = getattr(self._local, "buf", None)
        if buf is None:  # allocated once per thread, on first fp32 use
            buf = self._local.buf = torch.empty(len(self.tiles), self.max_chunk, self.tiles[0].shape[0], device=q.device)
        return _ScoreBlock(q, self.tiles, self.n, buf, self.g)

    def chunk(self, q: Tensor, rel: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor | None]:
        from fashiontune.metrics.screen import ScreenedChunk

        if self.screen is not None:
            buf = getattr(self._local, "screen_buf", None)
            if buf is None:  # the bf16 block, once per thread
                buf = self._local.screen_buf = self.screen.hi.new_empty(self.max_chunk, self.screen.hi.shape[0])
            sc = ScreenedChunk(self.screen, q, buf)
            top = sc.topk(self.k)
            if top is not None:
                return *top, (sc.first_rank(top, *rel) if rel is not None else None)
        sb = self._block(q)
        top = _topk(sb, self.k) if self.k else deterministic_topk(sb.s.new_empty(q.shape[0], self.n), 0)
        return *top, (first_relevant_rank(sb, top, *rel) if rel is not None else None)
