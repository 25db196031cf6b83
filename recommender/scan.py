"""A catalog scan over unit vectors: nearest neighbours, near-duplicate pairs and isolation. Arrays and ids only.

Every product's cosine with every other is computed once, in square tiles of ``block_rows`` on and above
the diagonal (the matrix is symmetric): one tile (4 MB at 1024 rows) and the running k nearest of every
product are all that is held beside the vectors, never the n x n matrix. From the tiles the scan keeps

* each row's ``k`` nearest other products and their cosines (what suspect labels are judged from),
* every pair above ``duplicate_cosine`` (near-duplicates; at most ``max_pairs``, the most alike kept),
* an isolation score, 1 minus the mean cosine of the ``k`` nearest (outliers: blank, placeholder, broken).

No Django and no database: ``recommender.api.catalog_scan`` feeds it the published build's vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_ROWS = 1024


@dataclass(frozen=True)
class ScanResult:
    """What a scan found; row i of each array is product ``product_ids[i]``."""

    product_ids: np.ndarray  # (n,) int64
    neighbour_ids: np.ndarray  # (n, k) int64 product ids, nearest first; -1 where the catalog has fewer
    neighbour_cosines: np.ndarray  # (n, k) float32, matching neighbour_ids; NaN where it is -1
    isolation: np.ndarray  # (n,) float32: 1 - mean cosine of the k nearest (higher: farther from everything)
    pairs: np.ndarray  # (m, 2) int64 product ids, first < second: cosine above the duplicate threshold
    pair_cosines: np.ndarray  # (m,) float32
    pairs_truncated: bool  # more pairs passed the threshold than max_pairs; the most alike were kept


def vectors_scan(
    *,
    vectors: np.ndarray,
    product_ids: np.ndarray,
    k: int = 10,
    duplicate_cosine: float = 0.95,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    max_pairs: int = 200_000,
    reduce_to: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """Scan unit ``vectors`` (n, d), which may be a read-only memory map, tile by tile.

    Only the tiles on and above the diagonal are multiplied (the similarity matrix is symmetric): each
    tile updates the running k nearest of its rows and of its columns, so every product is compared with
    every other once. ``progress(done, n)`` is called after each row of tiles. Raises ValueError on
    mismatched or empty input.

    With ``reduce_to`` below d, the tiles are multiplied in the vectors' ``reduce_to`` principal directions
    (d / reduce_to times fewer operations, the cost that dominates at 44k x 1280) and every cosine reported is
    then computed exactly from the full vectors: each product's REDUCED_EXTRA * k nearest in the reduced space
    are re-ranked, and the pairs are those among them above ``duplicate_cosine`` (a product alike to more than
    REDUCED_EXTRA * k others keeps the most alike). Exact neighbours can be missed where the reduced space ranks
    them past that; ``bench/health_quality.py`` measures how often.
    """
    n = len(product_ids)
    if vectors.ndim != 2 or len(vectors) != n:
        raise ValueError("vectors must be (n, d) with one row per product id")
    if k < 1:
        raise ValueError("k must be at least 1")
    if block_rows < 1:
        raise ValueError("block_rows must be at least 1")
    ids = np.asarray(product_ids, dtype=np.int64)
    reduced = reduce_to is not None and 0 < reduce_to < vectors.shape[1] and n > REDUCED_EXTRA * k
    if reduced:
        basis = _principal_directions(vectors, reduce_to)
        searched = np.concatenate(
            [np.asarray(vectors[i : i + block_rows], dtype=np.float32) @ basis.T for i in range(0, n, block_rows)]
        )
        wide = min(n - 1, REDUCED_EXTRA * k)
        items, _, _, _, _, _ = _tiles(searched, wide, None, block_rows, max_pairs, progress)
        wide_items, wide_cos = _rerank(vectors, items, wide, block_rows)
        best_items, best_cos = wide_items[:, :k], wide_cos[:, :k]
        # Pairs: from each product's wide candidates, exactly above the threshold, each pair once.
        hit_r, hit_c = np.nonzero(wide_cos > np.float32(duplicate_cosine))
        first, second = hit_r, wide_items[hit_r, hit_c]
        rows, cols = np.minimum(first, second), np.maximum(first, second)
        cosines = wide_cos[hit_r, hit_c]
        if len(rows):
            _, once = np.unique(rows * n + cols, return_index=True)
            rows, cols, cosines = rows[once], cols[once], cosines[once]
        truncated = False
        if len(cosines) > max_pairs:
            best = np.argsort(-cosines, kind="stable")[:max_pairs]
            rows, cols, cosines = rows[best], cols[best], cosines[best]
            truncated = True
    else:
        best_items, best_cos, rows, cols, cosines, truncated = _tiles(
            vectors, k, duplicate_cosine, block_rows, max_pairs, progress
        )
    order = np.argsort(-best_cos, axis=1, kind="stable")
    best_items = np.take_along_axis(best_items, order, axis=1)
    best_cos = np.take_along_axis(best_cos, order, axis=1)
    missing = best_items < 0
    best_cos[missing] = np.nan
    isolation = (1.0 - np.nanmean(np.where(missing, np.nan, best_cos), axis=1)) if n > 1 else np.ones(n)
    pairs = np.stack([ids[rows], ids[cols]], axis=1) if len(rows) else np.zeros((0, 2), dtype=np.int64)
    pairs.sort(axis=1)
    return ScanResult(
        product_ids=ids,
        neighbour_ids=np.where(missing, -1, ids[best_items.clip(min=0)]),
        neighbour_cosines=best_cos,
        isolation=np.asarray(isolation, dtype=np.float32),
        pairs=pairs,
        pair_cosines=cosines.astype(np.float32),
        pairs_truncated=truncated,
    )


# The reduced scan re-ranks this many times k candidates per product exactly.
REDUCED_EXTRA = 3
PRINCIPAL_SAMPLE = 8192


def _principal_directions(vectors: np.ndarray, count: int) -> np.ndarray:
    """(count, d) orthonormal rows spanning the leading principal directions of an evenly spaced sample of rows.

    By subspace iteration on the sample's d x d Gram matrix (Halko et al.): a full eigendecomposition of it takes
    seconds, this a fraction of one, and any good subspace serves since every reported cosine is exact.
    """
    n = len(vectors)
    sample = np.asarray(vectors[:: max(1, n // PRINCIPAL_SAMPLE)], dtype=np.float32)
    gram = (sample.T @ sample).astype(np.float64)
    basis = np.random.default_rng(0).standard_normal((gram.shape[0], count + 16))
    for _ in range(3):  # orthonormalised by Cholesky QR: matrix products and a small factorisation
        basis = gram @ basis
        factor = np.linalg.cholesky(basis.T @ basis)
        basis = np.linalg.solve(factor, basis.T).T
    _, rotation = np.linalg.eigh(basis.T @ gram @ basis)
    return np.ascontiguousarray((basis @ rotation[:, ::-1][:, :count]).T, dtype=np.float32)


def _rerank(vectors: np.ndarray, items: np.ndarray, k: int, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest among its candidate ``items`` (-1: none), by the exact cosine."""
    n, wide = items.shape
    best_items = np.full((n, k), -1, dtype=np.int64)
    best_cos = np.full((n, k), -np.inf, dtype=np.float32)
    step = max(1, block_rows // 4)
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = np.asarray(vectors[start:stop], dtype=np.float32)
        candidates = items[start:stop]
        present = np.unique(candidates.clip(min=0))  # sorted: the rows of a memory map read in order
        gathered = np.asarray(vectors[present], dtype=np.float32)
        lookup = np.searchsorted(present, candidates.clip(min=0))
        cos = np.einsum("rd,rkd->rk", block, gathered[lookup])
        cos[candidates < 0] = -np.inf
        pick = (
            np.argpartition(cos, -k, axis=1)[:, -k:]
            if wide > k
            else np.broadcast_to(np.arange(wide), (stop - start, wide))
        )
        best_items[start:stop, : pick.shape[1]] = np.take_along_axis(candidates, pick, axis=1)
        best_cos[start:stop, : pick.shape[1]] = np.take_along_axis(cos, pick, axis=1)
    order = np.argsort(-best_cos, axis=1, kind="stable")
    best_items = np.take_along_axis(best_items, order, axis=1)
    best_cos = np.take_along_axis(best_cos, order, axis=1)
    best_items[~np.isfinite(best_cos)] = -1
    return best_items, best_cos


def _pair_cosines(vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray, block_rows: int) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float32)
    step = block_rows * 16
    for start in range(0, len(rows), step):
        r, c = rows[start : start + step], cols[start : start + step]
        out[start : start + step] = np.einsum(
            "pd,pd->p", np.asarray(vectors[r], dtype=np.float32), np.asarray(vectors[c], dtype=np.float32)
        )
    return out


def _tiles(
    vectors: np.ndarray,
    k: int,
    duplicate_cosine: float | None,
    block_rows: int,
    max_pairs: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """The tile loop: (k nearest rows, their cosines, pair rows, pair columns, pair cosines, truncated); no pairs
    are collected when ``duplicate_cosine`` is None."""
    n = len(vectors)
    best_items = np.full((n, k), -1, dtype=np.int64)
    best_cos = np.full((n, k), -np.inf, dtype=np.float32)
    pair_rows: list[np.ndarray] = []
    pair_cols: list[np.ndarray] = []
    pair_cos: list[np.ndarray] = []
    kept = 0
    truncated = False
    threshold = None if duplicate_cosine is None else np.float32(duplicate_cosine)
    for row_start in range(0, n, block_rows):
        row_stop = min(n, row_start + block_rows)
        block = np.ascontiguousarray(vectors[row_start:row_stop], dtype=np.float32)
        for col_start in range(row_start, n, block_rows):
            col_stop = min(n, col_start + block_rows)
            tile = block @ np.asarray(vectors[col_start:col_stop], dtype=np.float32).T
            diagonal = col_start == row_start
            if diagonal:
                np.fill_diagonal(tile, -np.inf)  # a product is not its own neighbour
            rows = np.arange(row_start, row_stop)
            cols = np.arange(col_start, col_stop)
            _fold(best_items, best_cos, rows, tile, cols, k)
            if not diagonal:  # the tile below the diagonal, seen from its rows
                _fold(best_items, best_cos, cols, tile.T, rows, k)
            if threshold is None:
                continue
            hit_r, hit_c = np.nonzero(tile > threshold)
            if diagonal:
                keep = hit_c > hit_r  # each pair once
                hit_r, hit_c = hit_r[keep], hit_c[keep]
            if len(hit_r):
                pair_rows.append(hit_r + row_start)
                pair_cols.append(hit_c + col_start)
                pair_cos.append(tile[hit_r, hit_c])
                kept += len(hit_r)
                if kept > 2 * max_pairs:  # bounded memory: keep the most alike so far
                    pair_rows, pair_cols, pair_cos, kept = _most_alike(pair_rows, pair_cols, pair_cos, max_pairs)
                    truncated = True
        if progress is not None:
            progress(row_stop, n)
    if kept > max_pairs:
        pair_rows, pair_cols, pair_cos, kept = _most_alike(pair_rows, pair_cols, pair_cos, max_pairs)
        truncated = True
    first = np.concatenate(pair_rows) if pair_rows else np.zeros(0, dtype=np.int64)
    second = np.concatenate(pair_cols) if pair_cols else np.zeros(0, dtype=np.int64)
    cosines = np.concatenate(pair_cos).astype(np.float32) if pair_cos else np.zeros(0, dtype=np.float32)
    return best_items, best_cos, first, second, cosines, truncated


def _fold(
    best_items: np.ndarray, best_cos: np.ndarray, rows: np.ndarray, sims: np.ndarray, cols: np.ndarray, k: int
) -> None:
    """Fold ``sims`` (len(rows), len(cols)) into the running k nearest of ``rows``, looking only at what beats them.

    Once a row holds k neighbours, a similarity can enter only if it is above the row's k-th best: one comparison
    per similarity finds those few (after the first tiles, a handful per row and tile), and only they are merged.
    A row still short of k neighbours (its first tile) goes through the full partition.
    """
    kth = best_cos[rows].min(axis=1)
    if not np.isfinite(kth).all():
        _merge(best_items, best_cos, rows, sims, cols, k)
        return
    hit_r, hit_c = np.nonzero(sims > kth[:, None])
    if not len(hit_r):
        return
    # hit_r is sorted (row-major scan of the mask): each row's hits are one run, laid out side by side.
    start = np.flatnonzero(np.diff(hit_r, prepend=-1))
    touched = hit_r[start]
    count = np.diff(start, append=len(hit_r))
    slot = np.arange(len(hit_r)) - np.repeat(start, count)
    line = np.repeat(np.arange(len(touched)), count)
    width = int(count.max())
    new_cos = np.full((len(touched), width), -np.inf, dtype=np.float32)
    new_items = np.full((len(touched), width), -1, dtype=np.int64)
    new_cos[line, slot] = sims[hit_r, hit_c]
    new_items[line, slot] = cols[hit_c]
    target = rows[touched]
    items = np.concatenate([best_items[target], new_items], axis=1)
    cos = np.concatenate([best_cos[target], new_cos], axis=1)
    pick = np.argpartition(cos, -k, axis=1)[:, -k:]
    best_items[target] = np.take_along_axis(items, pick, axis=1)
    best_cos[target] = np.take_along_axis(cos, pick, axis=1)


def _merge(
    best_items: np.ndarray, best_cos: np.ndarray, rows: np.ndarray, sims: np.ndarray, cols: np.ndarray, k: int
) -> None:
    """Fold the similarities ``sims`` (len(rows), len(cols)) into the running k nearest of ``rows``."""
    if sims.shape[1] > k:
        top = np.argpartition(sims, -k, axis=1)[:, -k:]
        top_cos = np.take_along_axis(sims, top, axis=1)
    else:
        top = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        top_cos = sims
    items = np.concatenate([best_items[rows], cols[top]], axis=1)
    cos = np.concatenate([best_cos[rows], top_cos], axis=1)
    pick = np.argpartition(cos, -k, axis=1)[:, -k:]
    best_items[rows] = np.take_along_axis(items, pick, axis=1)
    best_cos[rows] = np.take_along_axis(cos, pick, axis=1)


def _most_alike(
    rows: list[np.ndarray], cols: list[np.ndarray], cos: list[np.ndarray], limit: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], int]:
    r, c, s = np.concatenate(rows), np.concatenate(cols), np.concatenate(cos)
    best = np.argsort(-s, kind="stable")[:limit]
    return [r[best]], [c[best]], [s[best]], len(best)


def pair_groups(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected groups of the ids joined by ``pairs`` (union-find), each sorted, largest group first."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))
