"""Section ``query``: one top-25 nearest-neighbour query at catalog scale, Annoy against the usual alternatives.

On synthetic clustered unit vectors (``bench.common.synthetic_vectors``: 1280-d like the served
EfficientNet-Lite0 and 2048-d like ResNet50, shaped like the served encoder's vectors of the demo catalog),
for N = 10k, 44k, 100k (quick: 10k, 1280-d), and held-out queries from the same distribution, measures
recall@25 against exact search and the time of one query for:

* exact search: numpy (matrix-vector + argpartition), faiss ``IndexFlatIP``, scikit-learn
  ``NearestNeighbors(algorithm="brute", metric="cosine")``, ``scipy.spatial.distance.cdist(..., "cosine")``;
* Annoy built by the product's ``recommender.index.index_build`` with n_trees in {10, 40, 100} (100 left
  out at 100k: a two-minute build) and search_k in {-1 (Annoy's default: n_trees x n), 10k, 50k}, asking
  for n = 62 items as ``similar_products`` does for a click (k = 25, one product excluded: (25 + 1) x 2 +
  10), plus the served path itself, ``LoadedIndex.query`` (n_trees 40, INDEX_SEARCH_K -1);
* PCA to 256 dimensions (fitted on up to 20k of the vectors), plain or whitened, indexed by Annoy
  (euclidean metric, 40 trees); recall is against exact search in the ORIGINAL space, and "exact in PCA
  space" shows the ceiling the projection itself allows;
* vectors stored as float16 (``float16_order``): whether the exact top 25 keeps float32's order;
* a precomputed top-25 table per product (an (N, 25) array in memory): the lookup, and the lookup plus
  the exact pass over fresh vectors that ``similar_products`` makes (500 of them, INDEX_REBUILD_DELTA),
  beside the served Annoy query plus the same pass. Its build (N exact queries) is timed on 500 rows and
  scaled to N.

Every query runs every method back to back (in a rotating order), so load on the shared machine hits all
alike. Every library is limited to one thread (as one web request is), and a query's time is the CPU time
of that thread, which leaves out the time this shared machine gave other processes (wall-clock medians
are reported beside it). "x exact" is the median over queries of (exact numpy time / method time) for the
same query. Slow exact baselines (scikit-learn, scipy) run on the first queries only, within a budget.
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.common import (
    SERVED_DIM,
    SERVED_TREES,
    BenchContext,
    SectionResult,
    Summary,
    Table,
    Target,
    VectorSet,
    exact_top,
    neighbour_structure,
    recall_at,
    synthetic_vectors,
)

K = 25
N_REQUEST = (K + 1) * 2 + 10  # what similar_products asks the index for on a click
DELTA_ROWS = 500  # INDEX_REBUILD_DELTA default: the most fresh vectors searched exactly before a rebuild
PCA_DIMS = 256
PCA_FIT_MAX = 20_000
TABLE_SAMPLE = 500
if TYPE_CHECKING:
    from recommender.index import LoadedIndex

TARGET_N = 44_000
SERVED = "served: LoadedIndex.query"


@dataclass
class Method:
    """One way to answer a query: a function of the query's index returning ids, and its measurements."""

    family: str
    params: str
    search: Callable[[int], list[int]]
    budget_s: float | None = None  # None: every query; else as many as fit in the budget (at least min_queries)
    min_queries: int = 5
    build_s: float | None = None
    size_mb: float | None = None
    exact_by_construction: bool = False
    times: dict[int, float] = field(default_factory=dict)  # thread CPU seconds per query
    wall: dict[int, float] = field(default_factory=dict)  # wall-clock seconds per query
    found: dict[int, list[int]] = field(default_factory=dict)
    cap: int | None = None

    def wants(self, query: int, total: int) -> bool:
        if self.budget_s is None:
            return True
        if self.cap is None and len(self.times) >= 3:
            per_query = float(np.median(list(self.times.values())))
            self.cap = int(min(total, max(self.min_queries, self.budget_s / per_query)))
        return self.cap is None or query < self.cap


def _ann_load(path: Path, dim: int, metric: str = "angular"):  # noqa: ANN202
    from annoy import AnnoyIndex

    ann = AnnoyIndex(dim, metric)
    ann.load(str(path))
    return ann


def _annoy_methods(
    ctx: BenchContext, data: VectorSet, directory: Path, trees: list[int], search_ks: list[int], budget_s: float
) -> tuple[list[Method], LoadedIndex | None]:
    """Annoy indexes built by the product's index_build, queried raw and (served config) through LoadedIndex.

    The served build is kept for the index section (``ctx.builds``); search_k >= 50k (a scan of most of the
    catalog) runs within ``budget_s`` on at least 30 queries.
    """
    from recommender.index import BUILDS_DIR, INDEX_FILE, LoadedIndex, index_build

    n, dim = data.vectors.shape
    queries = data.queries
    methods = []
    served: LoadedIndex | None = None
    for n_trees in trees:
        target = directory / f"trees-{n_trees}"
        meta = index_build(
            directory=target,
            vectors=data.vectors,
            product_ids=np.arange(n),
            embedding_ids=np.arange(1, n + 1),
            space="bench",
            n_trees=n_trees,
            search_k=-1,
            watermark=n,
            keep=0,
        )
        ann = _ann_load(target / BUILDS_DIR / meta.version / INDEX_FILE, dim)
        for search_k in search_ks:
            methods.append(
                Method(
                    "annoy",
                    f"n_trees={n_trees} search_k={'default' if search_k < 0 else search_k}",
                    lambda i, ann=ann, sk=search_k: ann.get_nns_by_vector(queries[i].tolist(), N_REQUEST, search_k=sk),
                    budget_s=budget_s if search_k >= 50_000 else None,
                    min_queries=30,
                    build_s=meta.build_seconds,
                    size_mb=meta.file_bytes / 1e6,
                )
            )
        if n_trees == SERVED_TREES and dim == SERVED_DIM:
            ctx.builds[(n, dim, n_trees)] = (target, meta)
        if n_trees == SERVED_TREES:
            served = LoadedIndex(target, meta.version)
            methods.append(
                Method(
                    SERVED,
                    f"n_trees={n_trees} search_k=INDEX_SEARCH_K (-1)",
                    lambda i, loaded=served: [h.product_id for h in loaded.query(queries[i], n=N_REQUEST)],
                    build_s=meta.build_seconds,
                    size_mb=meta.file_bytes / 1e6,
                )
            )
    return methods, served


def _exact_methods(data: VectorSet, budget_s: float) -> list[Method]:
    import faiss
    from scipy.spatial.distance import cdist
    from sklearn.neighbors import NearestNeighbors

    x, queries = data.vectors, data.queries

    def numpy_exact(i: int) -> list[int]:
        scores = x @ queries[i]
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])].tolist()

    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    brute = NearestNeighbors(n_neighbors=K, algorithm="brute", metric="cosine").fit(x)

    def scipy_exact(i: int) -> list[int]:
        distances = cdist(queries[i : i + 1], x, "cosine")[0]
        top = np.argpartition(distances, K)[:K]
        return top[np.argsort(distances[top])].tolist()

    return [
        Method("exact: numpy", "x @ q + argpartition", numpy_exact, exact_by_construction=True),
        Method("exact: faiss", "IndexFlatIP", lambda i: flat.search(queries[i : i + 1], K)[1][0].tolist()),
        Method(
            "exact: scikit-learn",
            "NearestNeighbors brute cosine",
            lambda i: brute.kneighbors(queries[i : i + 1], K, return_distance=False)[0].tolist(),
            budget_s=budget_s,
        ),
        Method("exact: scipy", "cdist cosine", scipy_exact, budget_s=budget_s),
    ]


def _pca_methods(
    data: VectorSet, truth: np.ndarray, directory: Path, search_ks: list[int]
) -> tuple[list[Method], dict[str, float]]:
    """PCA-256 (plain, whitened) indexed by Annoy with the euclidean metric; the recall ceiling of each."""
    from annoy import AnnoyIndex
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    x, queries = data.vectors, data.queries
    rng = np.random.default_rng(0)
    sample = x[rng.choice(len(x), min(len(x), PCA_FIT_MAX), replace=False)]
    started = time.perf_counter()
    with threadpool_limits(limits=1):  # BLAS threads spin badly when the cores are shared with others
        pca = PCA(n_components=PCA_DIMS, svd_solver="covariance_eigh").fit(sample)
    fit_s = time.perf_counter() - started
    components = pca.components_.T.astype(np.float32)
    mean = pca.mean_.astype(np.float32)
    info = {"fit_seconds": fit_s, "explained_variance": float(pca.explained_variance_ratio_.sum())}
    methods = []
    for whiten in (False, True):
        scale = (1.0 / np.sqrt(pca.explained_variance_)).astype(np.float32) if whiten else np.ones(PCA_DIMS, np.float32)
        reduced = ((x - mean) @ components) * scale
        reduced_queries = ((queries - mean) @ components) * scale
        # The ceiling: exact euclidean search in the reduced space.
        scores = 2 * reduced_queries @ reduced.T - np.sum(reduced * reduced, axis=1)
        ceiling = recall_at(np.argsort(-scores, axis=1)[:, :K], truth, K)
        info[f"ceiling_{'whitened' if whiten else 'plain'}"] = float(ceiling.mean())
        ann = AnnoyIndex(PCA_DIMS, "euclidean")
        ann.set_seed(20240611)
        for item, vector in enumerate(reduced):
            ann.add_item(item, vector)
        started = time.perf_counter()
        ann.build(SERVED_TREES, n_jobs=-1)
        build_s = time.perf_counter() - started
        name = "PCA-256 whitened" if whiten else "PCA-256"
        path = directory / f"{name.replace(' ', '-')}.ann"
        path.parent.mkdir(parents=True, exist_ok=True)
        ann.save(str(path))
        size_mb = path.stat().st_size / 1e6
        for search_k in search_ks:

            def search(i: int, ann=ann, sk=search_k, scale=scale) -> list[int]:  # noqa: ANN001
                projected = ((queries[i] - mean) @ components) * scale
                return ann.get_nns_by_vector(projected.tolist(), N_REQUEST, search_k=sk)

            methods.append(
                Method(
                    f"annoy on {name}",
                    f"n_trees={SERVED_TREES} search_k={'default' if search_k < 0 else search_k} "
                    f"(exact in PCA space: {ceiling.mean():.3f})",
                    search,
                    build_s=build_s + fit_s,
                    size_mb=size_mb,
                )
            )
    return methods, info


def _merge_delta(vector: np.ndarray, hits: list[tuple[int, float]], delta: list[tuple[int, int, bytes]]) -> list[int]:
    """The merge ``similar_products`` makes: exact scores of fresh rows first, index hits after, top K."""
    from recommender.selectors import _exact

    best = {pid: score for pid, _, score in _exact(vector, delta)}
    for pid, score in hits:
        best.setdefault(pid, score)
    return [pid for pid, _ in sorted(best.items(), key=lambda item: (-item[1], item[0]))[:K]]


def _table_methods(data: VectorSet, served: Method | None, loaded: LoadedIndex | None) -> tuple[list[Method], dict]:
    """A precomputed (N, 25) top-25 table: lookup, lookup + fresh-delta pass, and Annoy + the same pass."""
    x = data.vectors
    n = len(x)
    rows = min(n, TABLE_SAMPLE)
    started = time.perf_counter()
    top, top_scores = exact_top(x, x[:rows], K + 1)
    sample_s = time.perf_counter() - started
    ids, scores = top[:, 1:].astype(np.int32), top_scores[:, 1:]  # drop the product itself
    rng = np.random.default_rng(3)
    products = rng.integers(0, rows, len(data.queries))
    fresh = rng.standard_normal((DELTA_ROWS, x.shape[1])).astype(np.float32)
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    delta = [(n + j, n + j + 1, fresh[j].astype("<f4").tobytes()) for j in range(DELTA_ROWS)]
    info = {
        "build_seconds_estimated": sample_s * n / rows,
        "sample_rows": rows,
        "memory_mb": n * K * (4 + 4) / 1e6,
    }

    def lookup(i: int) -> list[int]:
        p = products[i]
        return ids[p].tolist()

    def lookup_delta(i: int) -> list[int]:
        p = products[i]
        return _merge_delta(x[p], list(zip(ids[p].tolist(), scores[p].tolist(), strict=True)), delta)

    methods = [
        Method("precomputed top-25 table", "lookup only (clicks on products only)", lookup, exact_by_construction=True),
        Method(
            "precomputed top-25 table",
            f"lookup + exact pass over {DELTA_ROWS} fresh vectors",
            lookup_delta,
            exact_by_construction=True,
        ),
    ]
    for method in methods:
        method.build_s = info["build_seconds_estimated"]
        method.size_mb = info["memory_mb"]
    if loaded is not None and served is not None:

        def served_delta(i: int) -> list[int]:
            hits = [(h.product_id, h.score) for h in loaded.query(data.queries[i], n=N_REQUEST)]
            return _merge_delta(data.queries[i], hits, delta)

        methods.append(
            Method(
                SERVED,
                f"n_trees={SERVED_TREES} + exact pass over {DELTA_ROWS} fresh vectors",
                served_delta,
                build_s=served.build_s,
                size_mb=served.size_mb,
            )
        )
    return methods, info


def _measure(methods: list[Method], total: int) -> None:
    """Run every method on every query, back to back, rotating the order query by query.

    Every library runs on one thread (BLAS, OpenMP and faiss limited to 1), so the thread's CPU time is the
    whole cost of a query, and it does not count time this shared machine gave to other processes.
    """
    import faiss
    from threadpoolctl import threadpool_limits

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1):
        for method in methods:  # warm-up: first calls page in indexes and allocate
            method.search(0)
        for i in range(total):
            shift = i % len(methods)
            for method in methods[shift:] + methods[:shift]:
                if not method.wants(i, total):
                    continue
                wall, cpu = time.perf_counter(), time.thread_time()
                found = method.search(i)
                method.times[i] = time.thread_time() - cpu
                method.wall[i] = time.perf_counter() - wall
                method.found[i] = found
    faiss.omp_set_num_threads(threads)


FLOAT16_WAYS = {
    "float16 rows, float32 product": lambda rows, queries: queries @ rows.T,
    "float16 product (scores rounded to float16)": lambda rows, queries: (queries @ rows.T).astype(np.float16),
}


def _top_in_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's top ``k`` columns by score, best first, equal scores by column (so float16 ties are ordered)."""
    margin = min(scores.shape[1], k + 256)  # equal scores straddling the k-th are kept together, then ordered
    part = np.argpartition(-scores, margin - 1, axis=1)[:, :margin]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1).astype(np.float32)), axis=-1)
    return np.take_along_axis(part, order, axis=1)[:, :k]


def float16_order(
    vectors: np.ndarray, queries: np.ndarray, *, k: int = K, own: np.ndarray | None = None, chunk: int = 256
) -> dict[str, dict[str, float]]:
    """Whether stored float16 vectors keep each query's exact top-``k`` (cosine of unit rows) as float32 ranks it.

    The rows and the queries (a click's query is a stored row) are rounded to float16, then scored each way of
    FLOAT16_WAYS. ``own``: each query's own row, left out. Per way: the share of queries whose top ``k`` is the
    same list in the same order, the same set, recall@k (mean, min), the share whose float32 top ``k`` lies in
    the float16 top ``2k`` (so a float32 re-rank of those gives the exact list), the largest score difference
    over the float32 top ``k``, and the largest float32 score gap of a pair the float16 scores put the other
    way round.
    """
    rows16 = vectors.astype(np.float16).astype(np.float32)
    queries16 = queries.astype(np.float16).astype(np.float32)
    found = {way: {"same_order": 0, "same_set": 0, "recall": [], "within_2k": 0, "score_diff": 0.0,
                   "flipped_gap": 0.0} for way in FLOAT16_WAYS}  # fmt: skip
    for start in range(0, len(queries), chunk):
        exact = queries[start : start + chunk] @ vectors.T
        if own is not None:
            exact[np.arange(len(exact)), own[start : start + chunk]] = -np.inf
        truth = _top_in_order(exact, k)
        for way, score in FLOAT16_WAYS.items():
            scores = score(rows16, queries16[start : start + chunk]).astype(np.float32)
            if own is not None:
                scores[np.arange(len(scores)), own[start : start + chunk]] = -np.inf
            wide = _top_in_order(scores, 2 * k)
            top = wide[:, :k]
            out = found[way]
            for q in range(len(top)):
                union = np.union1d(truth[q], top[q])
                s32, s16 = exact[q, union], scores[q, union]
                rank16 = np.argsort(np.lexsort((union, -s16)))  # the float16 order, equal scores by row
                flipped = (s32[:, None] > s32[None, :]) & (rank16[:, None] > rank16[None, :])
                out["same_order"] += int((top[q] == truth[q]).all())
                out["same_set"] += int(len(union) == k)
                out["recall"].append(len(np.intersect1d(truth[q], top[q])) / k)
                out["within_2k"] += int(np.isin(truth[q], wide[q]).all())
                out["score_diff"] = max(out["score_diff"], float(np.abs(s16 - s32).max()))
                if flipped.any():
                    out["flipped_gap"] = max(out["flipped_gap"], float((s32[:, None] - s32[None, :])[flipped].max()))
    n = len(queries)
    return {
        way: {"queries": n, "same_order": out["same_order"] / n, "same_set": out["same_set"] / n,
              "recall_mean": float(np.mean(out["recall"])), "recall_min": float(np.min(out["recall"])),
              "within_2k": out["within_2k"] / n,
              "score_diff_max": out["score_diff"], "flipped_gap_max": out["flipped_gap"]}
        for way, out in found.items()
    }  # fmt: skip


def float16_table(title: str, result: dict[str, dict[str, float]], *, k: int = K) -> Table:
    """float16_order's result as a table."""
    table = Table(
        title,
        ["scores", "queries", f"same top {k}, in order", "same set", f"recall@{k} mean / min",
         f"float32 top {k} in float16's top {2 * k}", "largest score difference",
         "largest float32 gap of a flipped pair"],
        note="rows and queries stored as float16; the reference is float32 cosine; equal scores ordered by row",
    )  # fmt: skip
    for way, r in result.items():
        table.add(way, r["queries"], f"{r['same_order']:.3f}", f"{r['same_set']:.3f}",
                  f"{r['recall_mean']:.4f} / {r['recall_min']:.2f}", f"{r['within_2k']:.3f}",
                  f"{r['score_diff_max']:.1e}", f"{r['flipped_gap_max']:.1e}")  # fmt: skip
    return table


def _dataset(
    ctx: BenchContext, n: int, dim: int, *, trees: list[int], search_ks: list[int], queries: int, pca: bool
) -> dict:
    """Everything for one (N, dim): build, measure, and the rows of its table."""
    clock = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = now - clock
        clock = now

    data = synthetic_vectors(n, dim, queries=queries, seed=n + dim)
    truth, truth_scores = exact_top(data.vectors, data.queries, K)
    same_cluster = float((data.labels[truth] == data.query_labels[:, None]).mean())
    float16 = float16_order(data.vectors, data.queries)
    directory = ctx.tmp / f"query-{n}-{dim}"
    budget = 2.0 if ctx.quick else 3.0
    phase("data")
    annoy_methods, loaded = _annoy_methods(ctx, data, directory, trees, search_ks, budget)
    phase("annoy builds")
    methods = _exact_methods(data, budget) + annoy_methods
    pca_methods, pca_info = _pca_methods(data, truth, directory, search_ks[:2]) if pca else ([], {})
    phase("pca")
    served = next((m for m in methods if m.family == SERVED), None)
    table_methods, table_info = _table_methods(data, served, loaded)
    methods += pca_methods + table_methods
    phase("table")
    _measure(methods, queries)
    phase("queries")
    print(f"    {', '.join(f'{k} {v:.0f}s' for k, v in phases.items())}", flush=True)

    exact = next(m for m in methods if m.family == "exact: numpy")
    rows = []
    for m in methods:
        qs = sorted(m.times)
        times_ms = [m.times[q] * 1e3 for q in qs]
        if m.exact_by_construction or m.family.startswith("precomputed"):
            recall = np.ones(len(qs))
        else:
            recall = recall_at([m.found[q] for q in qs], truth[qs], K)
        speedup = [exact.times[q] / m.times[q] for q in qs if q in exact.times]
        summary = Summary.of(times_ms)
        wall = Summary.of([m.wall[q] * 1e3 for q in qs])
        rows.append(
            {
                "method": m.family,
                "params": m.params,
                "queries": len(qs),
                "recall_mean": float(recall.mean()),
                "recall_p5": float(np.percentile(recall, 5)),
                "median_ms": summary.median,
                "p95_ms": summary.p95,
                "x_exact": float(np.median(speedup)),
                "wall_median_ms": wall.median,
                "wall_p95_ms": wall.p95,
                "build_s": m.build_s,
                "size_mb": m.size_mb,
            }
        )
    kept = ctx.builds.get((n, dim, SERVED_TREES), (None,))[0]
    for path in directory.iterdir():
        if path != kept:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
    structure = {
        "exact_top25_same_subcluster": same_cluster,
        "nn1_cos": float(truth_scores[:, 0].mean()),
        "nn25_cos": float(truth_scores[:, K - 1].mean()),
        **{f"sample600_{k}": v for k, v in neighbour_structure(data.vectors).items()},
    }
    del data, methods, annoy_methods, pca_methods, table_methods, loaded, served
    gc.collect()
    return {
        "n": n,
        "dim": dim,
        "queries": queries,
        "rows": rows,
        "structure": structure,
        "pca": pca_info,
        "table": table_info,
        "float16": float16,
        "phase_seconds": phases,
    }


def _calibration(ctx: BenchContext) -> Table | None:
    """The synthetic shape beside the served encoder's vectors of the demo catalog (from the embed section)."""
    path = ctx.results_dir / "embed_vectors_fp32.npy"
    if not path.exists():
        return None
    real = np.load(path)
    synthetic = synthetic_vectors(44_000, real.shape[1], queries=0, seed=1).vectors
    table = Table(
        f"Calibration: {len(real)} real EfficientNet-Lite0 vectors of the demo catalog vs {len(real)} synthetic ones",
        [
            "set",
            "random-pair cos",
            "1st-neighbour cos",
            "25th-neighbour cos",
            "PCA participation ratio",
            "variance in top 10 PCs",
            "in top 100 PCs",
        ],
    )
    for name, vectors in (("real (embed section)", real), ("synthetic (sampled from 44k)", synthetic)):
        s = neighbour_structure(vectors, sample=len(real))
        table.add(
            name,
            s["random_pair_cos"],
            s["nn1_cos"],
            s["nn25_cos"],
            s["participation_ratio"],
            s["variance_top10"],
            s["variance_top100"],
        )
    return table


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("query")
    if ctx.quick:
        plan = [(10_000, 1280, [10, SERVED_TREES], 100, True)]
        search_ks = [-1, 10_000]
    else:
        # (N, dim, n_trees built, queries, PCA): 100 trees only where the target is judged (a 2-minute build
        # at 100k), PCA at 44k, where the target is judged.
        plan = [
            (10_000, 1280, [10, 40], 200, False),
            (TARGET_N, 1280, [10, 40, 100], 200, True),
            (100_000, 1280, [10, 40], 100, False),
            (TARGET_N, 2048, [10, 40], 200, True),
            (100_000, 2048, [40], 100, False),
        ]
        search_ks = [-1, 10_000, 50_000]

    datasets = []
    for n, dim, trees, queries, pca in plan:
        print(f"  query: N={n:,} dim={dim}", flush=True)
        datasets.append(_dataset(ctx, n, dim, trees=trees, search_ks=search_ks, queries=queries, pca=pca))

    for d in datasets:
        table = Table(
            f"N={d['n']:,}, {d['dim']}-d, {d['queries']} held-out queries: top-25, one thread",
            [
                "method",
                "params",
                "queries",
                "recall@25",
                "recall p5",
                "CPU ms median",
                "CPU ms p95",
                "x exact numpy",
                "wall ms median",
                "build s",
                "size MB",
            ],
        )
        for r in d["rows"]:
            table.add(
                r["method"],
                r["params"],
                r["queries"],
                r["recall_mean"],
                r["recall_p5"],
                r["median_ms"],
                r["p95_ms"],
                r["x_exact"],
                r["wall_median_ms"],
                r["build_s"],
                r["size_mb"],
            )
        s = d["structure"]
        table.note = (
            f"exact neighbours: {s['exact_top25_same_subcluster']:.0%} of the top 25 share the query's sub-cluster; "
            f"cosine of the 1st / 25th neighbour {s['nn1_cos']:.3f} / {s['nn25_cos']:.3f}, random pair "
            f"{s['sample600_random_pair_cos']:.3f}. "
            + (
                f"PCA fit {d['pca']['fit_seconds']:.1f}s on {min(d['n'], PCA_FIT_MAX):,} vectors, "
                f"{d['pca']['explained_variance']:.1%} of the variance. "
                if d["pca"]
                else ""
            )
            + f"Table build (all N) estimated from {d['table']['sample_rows']:,} rows."
        )
        result.tables.append(table)

    for d in datasets:
        result.tables.append(float16_table(f"float16 storage, N={d['n']:,}, {d['dim']}-d: exact top-25", d["float16"]))

    calibration = _calibration(ctx)
    if calibration is not None:
        result.tables.append(calibration)
    else:
        result.notes.append("calibration against real vectors skipped: run the embed section first")

    summary = Table(
        "Served configuration (LoadedIndex.query, n_trees 40, search_k default) across sizes",
        ["N", "dim", "recall@25", "recall p5", "CPU ms median", "x exact numpy", "exact numpy CPU ms median"],
    )
    for d in datasets:
        served = next(r for r in d["rows"] if r["method"] == SERVED and "fresh" not in r["params"])
        exact = next(r for r in d["rows"] if r["method"] == "exact: numpy")
        summary.add(
            d["n"],
            d["dim"],
            served["recall_mean"],
            served["recall_p5"],
            served["median_ms"],
            served["x_exact"],
            exact["median_ms"],
        )
    result.tables.append(summary)

    at_target = [d for d in datasets if d["n"] == TARGET_N] or [datasets[0]]
    for d in at_target:
        served = next(r for r in d["rows"] if r["method"] == SERVED and "fresh" not in r["params"])
        met = served["x_exact"] >= 10 and served["recall_mean"] >= 0.95
        result.targets.append(
            Target(
                f"served config at N={d['n']:,}, {d['dim']}-d",
                f">= 10x faster than exact numpy, recall@25 >= 0.95{'' if d['n'] == TARGET_N else ' (set for 44k)'}",
                f"{served['x_exact']:.1f}x, recall {served['recall_mean']:.3f}",
                met if d["n"] == TARGET_N else None,
            )
        )
        passing = [
            f"{r['method']} {r['params']} ({r['x_exact']:.0f}x, {r['recall_mean']:.3f})"
            for r in d["rows"]
            if r["x_exact"] >= 10 and r["recall_mean"] >= 0.95 and not r["method"].startswith("precomputed")
        ]
        result.notes.append(
            f"N={d['n']:,} {d['dim']}-d, configurations meeting >= 10x and recall >= 0.95: "
            + ("; ".join(passing) if passing else "none")
        )
    result.data = {"datasets": datasets, "k": K, "n_request": N_REQUEST, "delta_rows": DELTA_ROWS}
    return result
