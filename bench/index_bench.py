"""Section ``index``: the served index's build cost and size, its memory in web processes, the query via the DB.

* Build: ``recommender.index.index_build`` (the product's build: add, build with every core, save, fsync,
  checksum, publish) of the served configuration (1280-d, 40 trees) at N = 44k and 100k (quick: 10k):
  seconds and file size, beside the raw float32 vectors' size.
* Memory: two separate Python processes (``bench/index_probe.py``) load the same published build with
  ``LoadedIndex`` and run the same queries; /proc/<pid>/smaps shows the index mapping's Rss, Pss and
  Shared_Clean for the first process alone, then for both. Pss = Rss / 2 means each page is in RAM once.
* The served query through the database: N products and vectors in the throwaway SQLite database,
  ``similar_products`` (what a click runs after reading the product's vector) timed for an index built
  just after the vectors were stored (its watermark is 0: the ids of every row are read and checked
  against the build on each query), one built after WATERMARK_MARGIN (nothing to check), and that one
  with 500 fresh vectors outside it (INDEX_REBUILD_DELTA, the most before a rebuild is asked for).
  Exact numpy over the same vectors in memory is measured in the same rounds.
"""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

from bench.common import (
    PYTHON,
    ROOT,
    SERVED_DIM,
    SERVED_TREES,
    BenchContext,
    SectionResult,
    Summary,
    Table,
    process_memory,
    synthetic_vectors,
    vectors_store,
)

DIM = SERVED_DIM
TREES = SERVED_TREES
K = 25
FRESH = 500


def _build(directory: Path, vectors: np.ndarray):  # noqa: ANN202
    from recommender.index import index_build

    n = len(vectors)
    return index_build(
        directory=directory,
        vectors=vectors,
        product_ids=np.arange(1, n + 1),
        embedding_ids=np.arange(1, n + 1),
        space="bench",
        n_trees=TREES,
        search_k=-1,
        watermark=n,
        keep=0,
    )


def _smaps(pid: int) -> dict[str, float]:
    """The index mapping's and the whole process's memory (MB; see bench.common.process_memory)."""
    memory = process_memory(pid)
    fields = ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty")
    return {
        **{f"index_{k}_mb": memory["mapping"].get(k, 0.0) for k in fields},
        **{f"process_{k}_mb": memory["rollup"][k] for k in ("Rss", "Pss", "Shared_Clean")},
    }


class _Probe:
    """One stand-in web process holding the build (see bench/index_probe.py)."""

    def __init__(self, directory: Path, version: str, queries: Path) -> None:
        self.process = subprocess.Popen(
            [PYTHON, str(ROOT / "bench" / "index_probe.py"), str(directory), version, str(queries)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if line.strip() != "ready":
            self.process.kill()
            raise RuntimeError(f"index probe failed: {line!r}")

    def smaps(self) -> dict[str, float]:
        return _smaps(self.process.pid)

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def _memory(ctx: BenchContext, directory: Path, version: str, data_queries: np.ndarray) -> tuple[Table, dict]:
    queries_path = ctx.tmp / "probe-queries.npy"
    np.save(queries_path, data_queries)
    first = _Probe(directory, version, queries_path)
    try:
        alone = first.smaps()
        second = _Probe(directory, version, queries_path)
        try:
            both = (first.smaps(), second.smaps())
        finally:
            second.stop()
    finally:
        first.stop()
    table = Table(
        f"Memory of web processes holding the same build ({len(data_queries)} identical queries each; MB)",
        ["process", "index Rss", "index Pss", "index Shared_Clean", "index Private", "process Rss", "process Pss"],
    )
    for name, s in (("first, alone", alone), ("first, with the second", both[0]), ("second", both[1])):
        table.add(
            name,
            s["index_Rss_mb"],
            s["index_Pss_mb"],
            s["index_Shared_Clean_mb"],
            s["index_Private_Clean_mb"] + s["index_Private_Dirty_mb"],
            s["process_Rss_mb"],
            s["process_Pss_mb"],
        )
    table.note = "index = the vectors.ann mapping in /proc/<pid>/smaps; process = /proc/<pid>/smaps_rollup"
    return table, {"alone": alone, "first_with_second": both[0], "second": both[1]}


def _served_rounds(vectors: np.ndarray, ids: list[int], picks: np.ndarray) -> tuple[list[float], list[float]]:
    """Per click: thread CPU seconds of similar_products (product excluded) and of exact numpy, interleaved."""
    from threadpoolctl import threadpool_limits

    from recommender.selectors import similar_products

    served, exact = [], []
    with threadpool_limits(limits=1):
        similar_products(vector=vectors[picks[0]], k=K, exclude_ids=frozenset({ids[picks[0]]}))  # warm-up
        for p in picks:
            started = time.thread_time()
            similar_products(vector=vectors[p], k=K, exclude_ids=frozenset({ids[p]}))
            served.append(time.thread_time() - started)
            started = time.thread_time()
            scores = vectors @ vectors[p]
            top = np.argpartition(-scores, K + 1)[: K + 1]
            top[np.argsort(-scores[top])].tolist()
            exact.append(time.thread_time() - started)
    return served, exact


def _served_path(ctx: BenchContext, n: int, clicks: int) -> tuple[Table, dict]:
    from django.utils import timezone

    from recommender import runtime, services
    from recommender.models import Embedding

    ctx.reset()
    data = synthetic_vectors(n + FRESH, DIM, queries=0, seed=11)
    vectors, fresh = data.vectors[:n], data.vectors[n:]
    started = time.perf_counter()
    ids = vectors_store(vectors)
    store_s = time.perf_counter() - started
    picks = np.random.default_rng(5).integers(0, n, clicks)
    states: dict[str, dict] = {}

    def measure(state: str, rebuild_s: float | None, meta) -> None:  # noqa: ANN001
        runtime.reset()
        served, exact = _served_rounds(vectors, ids, picks)
        states[state] = {
            "served_ms": Summary.of([s * 1e3 for s in served]),
            "exact_ms": Summary.of([s * 1e3 for s in exact]),
            "served_over_exact": float(np.median([s / e for s, e in zip(served, exact, strict=True)])),
            "rebuild_s": rebuild_s,
            "watermark": meta.watermark,
        }

    started = time.perf_counter()
    meta = services.index_rebuild()
    measure("index built right after embedding (watermark 0)", time.perf_counter() - started, meta)
    Embedding.objects.update(created_at=timezone.now() - timedelta(hours=1))
    started = time.perf_counter()
    meta = services.index_rebuild()
    measure("index built over vectors older than WATERMARK_MARGIN", time.perf_counter() - started, meta)
    vectors_store(fresh, first_id=n + 1)
    measure(f"same index + {FRESH} fresh vectors outside it", None, meta)

    table = Table(
        f"similar_products through SQLite at N={n:,} (1280-d, {clicks} clicks; thread CPU ms)",
        [
            "index state",
            "watermark",
            "median ms",
            "p95 ms",
            "exact numpy in memory, median ms",
            "x exact numpy",
            "index_rebuild s",
        ],
    )
    for state, s in states.items():
        table.add(
            state,
            s["watermark"],
            s["served_ms"].median,
            s["served_ms"].p95,
            s["exact_ms"].median,
            1 / s["served_over_exact"],
            s["rebuild_s"],
        )
    table.note = (
        f"x exact numpy > 1: the served path is faster. Storing {n:,} products and vectors took {store_s:.1f}s; "
        "index_rebuild includes reading every vector from the database"
    )
    return table, {"store_seconds": store_s, "states": states}


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("index")
    sizes = [10_000] if ctx.quick else [44_000, 100_000]
    builds = Table(
        f"index_build of the served configuration ({DIM}-d, {TREES} trees)",
        ["N", "build s", "file MB", "raw float32 vectors MB", "file / raw", "bytes per vector", "built in"],
    )
    largest: tuple[Path, str, np.ndarray] | None = None
    data_builds = {}
    for n in sizes:
        # The same vectors as the query section's (same seed); its build is reused when it ran before.
        data = synthetic_vectors(n, DIM, queries=200, seed=n + DIM)
        cached = ctx.builds.get((n, DIM, TREES))
        directory, meta = cached if cached else (ctx.tmp / f"index-{n}", None)
        meta = meta or _build(directory, data.vectors)
        raw = n * DIM * 4
        builds.add(
            n,
            meta.build_seconds,
            meta.file_bytes / 1e6,
            raw / 1e6,
            meta.file_bytes / raw,
            meta.file_bytes / n,
            "query section" if cached else "here",
        )
        data_builds[n] = {"build_seconds": meta.build_seconds, "file_bytes": meta.file_bytes, "reused": bool(cached)}
        largest = (directory, meta.version, data.queries)
    result.tables.append(builds)

    assert largest is not None
    memory_table, memory = _memory(ctx, *largest)
    memory_table.title += f", N={sizes[-1]:,}"
    result.tables.append(memory_table)

    served_table, served = _served_path(ctx, 10_000 if ctx.quick else 44_000, 20 if ctx.quick else 40)
    result.tables.append(served_table)
    a = memory["first_with_second"]
    result.notes.append(
        f"with two processes the first one's index Pss is {a['index_Pss_mb']:.0f} MB of {a['index_Rss_mb']:.0f} MB "
        f"Rss ({a['index_Pss_mb'] / max(a['index_Rss_mb'], 1e-9):.2f}): the pages are shared, each in RAM once"
    )
    result.data = {"builds": data_builds, "memory": memory, "served_path": served}
    return result
