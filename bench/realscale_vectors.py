"""Child process of the realscale section: work that needs Django on a database other than the runner's.

Usage (the environment names the database, as ``bench/realscale.py`` sets it):

* ``python bench/realscale_vectors.py copy-from-sqlite SQLITE_FILE``: copy the products and vectors
  of a prepared SQLite catalog into the (PostgreSQL) database of DATABASE_URL with COPY, unless it already
  holds exactly those rows. Prints one JSON line: ``{"copied": bool, "products": n, "embeddings": n}``.
* ``python bench/realscale_vectors.py save-vectors FILE`` / ``load-vectors FILE``: write every stored vector
  of the active space with its product id and source image hash to FILE (npz); store them back into a
  freshly imported catalog through ``recommender.services.embeddings_store``, for products whose source
  image has the same hash, so a database of a new schema is filled without re-embedding.
* ``python bench/realscale_vectors.py clicks --n N --dim D --clicks C --fresh F --out FILE``: make sure
  the database holds N synthetic products with clustered unit D-vectors (``bench.common.synthetic_vectors``)
  and a published index over all of them (both cached in the database and INDEX_DIR: built once), then
  time ``GET /api/similar/<id>`` through Django's test client (the site's own code end to end, without a
  socket: trail -> query vector -> index + exact pass over vectors outside it -> k=25 -> products -> JSON)
  for a one-step click, a 10-step trail and a click filtered by a colour 22% of the products have, with no
  fresh vectors and with F stored after the build (once the catalog has settled, and a third of the clicks
  in the minute after the F were saved), beside exact numpy over the same vectors in memory.
  Writes the timings as JSON to FILE.
* ``python bench/realscale_vectors.py strategies --n N --dim D --walks W --out FILE``: the same synthetic
  catalog with a colour descriptor per product (in the index build too), then the thread CPU of each
  strategy of ``recommender.feedback.SERVED`` on the same requests, interleaved: a first click and the next
  click of a 10-click walk (the walk's earlier grids remembered, as on a site a shopper is using), begun on
  the home page's grid and from a text search, and the search walk's 10-step link opened cold (nothing
  remembered). Writes the timings as JSON to FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import django_setup, synthetic_vectors, vectors_store  # noqa: E402

K = 25
SEED = 1_000_003
TRAIL_STEPS = 10
# Synthetic products get a colour so a filtered click can be timed: Black on 22% of them (as in the real
# catalog), the rest spread over other colours.
COLOURS = ("Black", "White", "Blue", "Brown", "Grey", "Red", "Green", "Pink", "Navy Blue", "Purple")
COLOUR_SHARES = (0.22, *([0.78 / 9] * 9))


def _copy_rows(model, source: sqlite3.Connection) -> int:  # noqa: ANN001
    """COPY every row of ``model``'s table from the SQLite file into the same table here; returns the count."""
    from django.db import connection

    table = model._meta.db_table
    columns = [f.column for f in model._meta.concrete_fields]
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    count = 0
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:  # psycopg 3
            for row in source.execute(f"SELECT {names} FROM {table} ORDER BY 1"):  # noqa: S608 (model metadata)
                copy.write_row(row)
                count += 1
    return count


def _fingerprint(rows: list[tuple]) -> list[list[int]]:
    return [[int(n or 0), int(s or 0)] for n, s in rows]


def _copied_models() -> list:
    """The shop's and the engine's models, the shop's first (the engine's rows point at products)."""
    from django.apps import apps

    return [*apps.get_app_config("gallery").get_models(), *apps.get_app_config("recommender").get_models()]


def copy_from_sqlite(sqlite_file: Path) -> dict[str, object]:
    """Make this database hold exactly the SQLite file's catalog (same ids); say whether it copied.

    Copies every table of the gallery and recommender apps (products, vectors, their states and jobs).
    """
    from django.core.management.color import no_style
    from django.db import connection, transaction

    probe = (
        "SELECT COUNT(*), SUM(id) FROM gallery_product",
        "SELECT COUNT(*), SUM(id) FROM recommender_embedding",
    )
    with contextlib.closing(sqlite3.connect(sqlite_file)) as source:
        wanted = _fingerprint([source.execute(sql).fetchone() for sql in probe])
        with connection.cursor() as cursor:
            here = []
            for sql in probe:
                cursor.execute(sql)
                here.append(cursor.fetchone())
        if _fingerprint(here) == wanted:
            return {"copied": False, "products": wanted[0][0], "embeddings": wanted[1][0]}
        started = time.perf_counter()
        models = _copied_models()
        tables = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in models)
        counts = {}
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"TRUNCATE {tables} CASCADE")
            for model in models:
                counts[model._meta.db_table] = _copy_rows(model, source)
            with connection.cursor() as cursor:
                for sql in connection.ops.sequence_reset_sql(no_style(), models):
                    cursor.execute(sql)
        with connection.cursor() as cursor:
            for model in models:
                cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
    return {"copied": True, "rows": counts, "seconds": round(time.perf_counter() - started, 1)}


def vectors_save(path: Path) -> dict[str, object]:
    """Write every stored vector of the active space, keyed by product id and source image hash, to ``path``."""
    from gallery.models import Product
    from recommender import runtime
    from recommender.models import Embedding

    space = runtime.active_space()
    sha = dict(Product.objects.values_list("id", "image_sha256"))
    ids, hashes, rows = [], [], []
    for product_id, vector in (
        Embedding.objects.filter(space=space).values_list("product_id", "vector").iterator(chunk_size=2000)
    ):
        ids.append(product_id)
        hashes.append(sha.get(product_id, ""))
        rows.append(np.frombuffer(vector, dtype="<f4"))
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=np.asarray(ids, dtype=np.int64), sha256=np.asarray(hashes), vectors=np.stack(rows), space=space)
    tmp.replace(path)
    return {"saved": len(ids), "space": space}


def vectors_load(path: Path) -> dict[str, object]:
    """Store the saved vectors of products whose source image is the one they were computed from.

    Through the product's own ``embeddings_store``, so the rows and states are what embed_catalog leaves.
    """
    from gallery.models import Product
    from recommender import runtime, services

    data = np.load(path)
    space = runtime.active_space()
    if str(data["space"]) != space:
        return {"loaded": 0, "reason": f"saved vectors are of {data['space']}, the active space is {space}"}
    saved = {
        (int(pid), str(digest)): row for row, (pid, digest) in enumerate(zip(data["ids"], data["sha256"], strict=True))
    }
    vectors = data["vectors"]
    batch, loaded, missing = [], 0, 0
    for pid, version, digest in Product.objects.values_list("id", "image_version", "image_sha256").iterator(
        chunk_size=2000
    ):
        row = saved.get((pid, digest))
        if row is None:
            missing += 1
            continue
        batch.append((pid, version, vectors[row]))
        if len(batch) == 2000:
            loaded += len(services.embeddings_store(space=space, vectors=batch))
            batch = []
    loaded += len(services.embeddings_store(space=space, vectors=batch))
    return {"loaded": loaded, "missing": missing}


# --- 1M vectors -------------------------------------------------------------------------------------------------


def _wipe() -> None:
    """Empty the catalog's tables with plain DELETEs (Django's cascade would collect a million rows first)."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        for model in reversed(_copied_models()):
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")  # noqa: S608


def _colours_of(colours: np.ndarray) -> np.ndarray:
    """A colour descriptor per product: its colour's own random histogram, a little noise, unit length."""
    from recommender.colour import COLOUR_DIM

    rng = np.random.default_rng(SEED + 2)
    base = rng.random((len(COLOURS), COLOUR_DIM)).astype(np.float32) ** 4
    out = base[colours] + 0.05 * rng.random((len(colours), COLOUR_DIM)).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _colours_store(colours: np.ndarray, *, chunk: int = 5000) -> None:
    """Every synthetic product's colour descriptor, in the colour space, as the embedding pipeline stores it."""
    from django.db import transaction

    from recommender.colour import COLOUR_DIM, COLOUR_SPACE
    from recommender.models import Embedding

    descriptors = _colours_of(colours)
    Embedding.objects.filter(space=COLOUR_SPACE).delete()
    for start in range(0, len(descriptors), chunk):
        with transaction.atomic():
            Embedding.objects.bulk_create(
                [
                    Embedding(product_id=i + 1, space=COLOUR_SPACE, dim=COLOUR_DIM, image_version=1,
                              vector=descriptors[i].astype("<f4").tobytes())
                    for i in range(start, min(len(descriptors), start + chunk))
                ]
            )  # fmt: skip


def _catalog_ready(
    n: int,
    dim: int,
    log,  # noqa: ANN001
    *,
    with_colours: bool = False,
) -> tuple[np.ndarray, dict[str, float]]:
    """The N synthetic vectors, stored and indexed (reusing what a previous run left); returns them and timings.

    ``with_colours`` also stores a colour descriptor per product, so that the index build holds them.
    """
    from django.utils import timezone

    from gallery.models import Product
    from recommender import runtime, services
    from recommender.index import COLOUR_FILE_DTYPE, SKETCH_DIM
    from recommender.models import Embedding

    timings: dict[str, float] = {}
    started = time.perf_counter()
    vectors = synthetic_vectors(n, dim, queries=0, seed=SEED).vectors
    timings["generate_s"] = time.perf_counter() - started
    colours = np.random.default_rng(SEED).choice(len(COLOURS), n, p=COLOUR_SHARES)
    space = runtime.active_space()
    Embedding.objects.filter(product_id__gt=n).delete()  # fresh vectors a killed run left behind
    Product.objects.filter(id__gt=n).delete()
    stored = Embedding.objects.filter(space=space, dim=dim).count()
    if stored != n or Product.objects.count() != n:
        log(f"storing {n:,} products and {dim}-d vectors (once; cached in the database)")
        _wipe()
        started = time.perf_counter()
        vectors_store(vectors, name="Synthetic product {}", colours=[COLOURS[c] for c in colours], chunk=5000)
        timings["store_s"] = time.perf_counter() - started
    colours_missing = False
    if with_colours:
        from recommender.colour import COLOUR_SPACE

        if Embedding.objects.filter(space=COLOUR_SPACE).count() != n:
            log(f"storing {n:,} colour descriptors (once; cached in the database)")
            _colours_store(colours)
            colours_missing = True
    loaded = runtime.index_reader().current()
    # A build without colours, or with them in an older build's half precision, is built again as a site's next
    # build would be.
    if with_colours and loaded is not None and loaded.colour_file_dtype != COLOUR_FILE_DTYPE:
        colours_missing = True
    # A build from before sketches (recommender.index.SKETCH_DIM) is built again, as a site's next build would be.
    sketch = None if loaded is None or dim <= SKETCH_DIM else loaded.sketches_of(np.zeros(1, np.int64))
    sketch_missing = dim > SKETCH_DIM and (sketch is None or sketch.shape[1] != SKETCH_DIM)
    if colours_missing or sketch_missing or loaded is None or loaded.meta.count != n or loaded.meta.watermark < n:
        # As on a settled site: every vector older than the build's margin, so the index holds them all.
        Embedding.objects.update(created_at=timezone.now() - timedelta(hours=1))
        log(f"building the index over {n:,} vectors (once; cached in INDEX_DIR)")
        started = time.perf_counter()
        meta = services.index_rebuild()
        timings["index_build_s"] = time.perf_counter() - started
        timings["index_file_mb"] = meta.file_bytes / 1e6
        runtime.reset()
    return vectors, timings


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _trails(rng: np.random.Generator, n: int, count: int) -> list[str]:
    """10-step trails: 3 pinned, 2 "not like this", 4 plain steps, the clicked product last."""
    out = []
    for _ in range(count):
        ids = rng.choice(n, TRAIL_STEPS, replace=False) + 1
        marks = ["p", "p", "p", "n", "n", "", "", "", "", ""]
        out.append(",".join(f"{m}{i}" for m, i in zip(marks, ids.tolist(), strict=True)))
    return out


def _time_clicks(vectors: np.ndarray, anchors: np.ndarray, trails: list[str]) -> dict[str, dict[str, list[float]]]:
    """Wall and thread-CPU ms of each request kind per anchor, interleaved, beside exact numpy in memory.

    Requests go through Django's test client: the site's URLs, middleware, view and JSON, without a socket,
    so whatever the code behind /api/similar/ is, this times it.
    """
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")

    def get(path: str) -> int:
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}: {response.content[:300]!r}")
        return len(response.json()["results"])

    def exact(pid: int) -> int:
        scores = vectors @ vectors[pid - 1]
        top = np.argpartition(-scores, K + 1)[: K + 1]
        return len(top[np.argsort(-scores[top])])

    kinds = {
        "click": lambda pid, text: get(f"/api/similar/{pid}"),
        "trail": lambda pid, text: get(f"/api/similar/{text.rsplit(',', 1)[-1]}?trail={text}"),
        "click + colour=Black": lambda pid, text: get(f"/api/similar/{pid}?colour=Black"),
        "exact numpy (in memory)": lambda pid, text: exact(pid),
    }
    out: dict[str, dict[str, list[float]]] = {name: {"wall_ms": [], "cpu_ms": [], "results": []} for name in kinds}
    for round_, (pid, text) in enumerate(zip(anchors.tolist(), trails, strict=True)):
        names = list(kinds)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]  # rotate: load hits all alike
        for name in names:
            wall, cpu = time.perf_counter(), time.thread_time()
            found = kinds[name](pid, text)
            out[name]["cpu_ms"].append((time.thread_time() - cpu) * 1e3)
            out[name]["wall_ms"].append((time.perf_counter() - wall) * 1e3)
            out[name]["results"].append(found)
    return out


def clicks(n: int, dim: int, count: int, fresh: int, out: Path) -> None:
    from gallery.cards import CATALOG_SETTLE_S
    from gallery.models import Product
    from recommender import runtime
    from recommender.models import Embedding

    vectors, timings = _catalog_ready(n, dim, log)
    rng = np.random.default_rng(7)
    results: dict[str, object] = {"n": n, "dim": dim, "timings": timings, "states": {}}
    warm = rng.integers(1, n + 1, 20)
    _time_clicks(vectors, warm, _trails(rng, n, len(warm)))  # the index mapped, the database's pages read
    anchors = rng.integers(1, n + 1, count)
    trails = _trails(rng, n, count)
    results["states"]["index holds every vector"] = _time_clicks(vectors, anchors, trails)
    extra = synthetic_vectors(fresh, dim, queries=0, seed=SEED + 1)
    try:
        vectors_store(extra.vectors, first_id=n + 1, name="Synthetic product {}", colours=[COLOURS[0]] * fresh)
        saved = time.monotonic()
        runtime.reset()
        _time_clicks(vectors, warm, _trails(rng, n, len(warm)))
        # Within CATALOG_SETTLE_S of a burst of saves the catalog's version moves every second (a save may
        # still commit behind a newer one): what an import costs the clicks beside it, timed apart.
        results["states"][f"+ {fresh} fresh, saved under a minute ago"] = _time_clicks(
            vectors, anchors[: count // 3], trails[: count // 3]
        )
        time.sleep(max(0.0, CATALOG_SETTLE_S + 2 - (time.monotonic() - saved)))
        _time_clicks(vectors, warm, _trails(rng, n, len(warm)))
        results["states"][f"+ {fresh} fresh vectors outside the index"] = _time_clicks(vectors, anchors, trails)
    finally:
        Embedding.objects.filter(product_id__gt=n).delete()
        Product.objects.filter(id__gt=n).delete()
    loaded = runtime.index_reader().current()
    results["index"] = {
        "count": loaded.meta.count,
        "n_trees": loaded.meta.n_trees,
        "search_k": loaded.meta.search_k,
        "file_mb": loaded.meta.file_bytes / 1e6,
        "space": loaded.meta.space,
    }
    out.write_text(json.dumps(results))


# Where a timed walk begins, as the query its links carry: the home page's starting grid (no words: the trail
# explores, ``Strategy.exploring``) or a text search (every synthetic product's name holds the word).
WALK_STARTS = {"home grid": "", "search": "synthetic product"}
COLD = "10-step link from a search, cold"


def strategies(n: int, dim: int, walks: int, out: Path, also: list[str] | None = None) -> None:
    """Thread CPU and wall ms per request for each served strategy, and each of ``also`` (lab strategies by
    ``lab.strategies.strategy_named`` spec, e.g. ``coherent:overfetch=6``), on the same walks (the module's doc)."""
    from unittest import mock

    from django.core.cache import cache
    from django.test import Client

    from lab.strategies import strategy_named
    from recommender import refine
    from recommender.feedback import SERVED

    arms = {**SERVED, **{spec: strategy_named(spec) for spec in also or []}}

    _, timings = _catalog_ready(n, dim, log, with_colours=True)
    client = Client(HTTP_HOST="127.0.0.1")

    def forget() -> None:
        refine.forget()
        cache.delete_pattern("*recommender:grid:*")

    def timed(anchor: int, trail: list[str], query: str) -> tuple[float, float, list[int]]:
        wall, cpu = time.perf_counter(), time.thread_time()
        response = client.get(f"/api/similar/{anchor}", {"trail": ",".join(trail), "q": query})
        cpu_ms, wall_ms = (time.thread_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3
        if response.status_code != 200 or len(response.json()["results"]) != K:
            raise RuntimeError(f"GET /api/similar/{anchor} answered {response.status_code}: {response.content[:300]!r}")
        return cpu_ms, wall_ms, [int(item["id"]) for item in response.json()["results"]]

    def walk(first: int, record: dict | None, start: str, grids: list | None = None) -> list[str]:
        """A shopper's walk of TRAIL_STEPS clicks begun at ``start`` (a WALK_STARTS key), each on the first tile
        of the grid before; its trail. ``grids`` is given each grid shown, in order."""
        trail, anchor = [], first
        for step in range(TRAIL_STEPS):
            trail.append(str(anchor))
            cpu_ms, wall_ms, grid = timed(anchor, trail, WALK_STARTS[start])
            if record is not None:
                kind = record[f"{start}: {'first click' if step == 0 else 'next click'}"]
                kind["cpu_ms"].append(cpu_ms)
                kind["wall_ms"].append(wall_ms)
            if grids is not None:
                grids.append(grid)
            anchor = next(pid for pid in grid if str(pid) not in trail)
        return trail

    kinds = (*(f"{start}: {click}" for start in WALK_STARTS for click in ("first click", "next click")), COLD)
    results = {name: {kind: {"cpu_ms": [], "wall_ms": []} for kind in kinds} for name in arms}
    # Per strategy and start, each walk's grids in order: which strategies show the same grids on the same walks.
    shown: dict[str, dict[str, list[list[list[int]]]]] = {name: {start: [] for start in WALK_STARTS} for name in arms}

    def serving(name: str):  # noqa: ANN202
        return mock.patch.object(refine, "strategy_served", return_value=arms[name])

    rng = np.random.default_rng(11)
    for name in arms:  # warm: the index mapped, the database's pages read, each strategy's code run
        with serving(name):
            for start in WALK_STARTS:
                walk(int(rng.integers(1, n + 1)), None, start)
    for number in range(walks):
        first = int(rng.integers(1, n + 1))
        names = list(arms)[number % len(arms) :] + list(arms)[: number % len(arms)]  # rotate the order
        for name in names:
            with serving(name):
                for start in WALK_STARTS:
                    forget()
                    shown[name][start].append([])
                    trail = walk(first, results[name], start, shown[name][start][-1])
                forget()
                cpu_ms, wall_ms, _ = timed(int(trail[-1]), trail, WALK_STARTS["search"])
            results[name][COLD]["cpu_ms"].append(cpu_ms)
            results[name][COLD]["wall_ms"].append(wall_ms)
    out.write_text(
        json.dumps({"n": n, "dim": dim, "walks": walks, "timings": timings, "strategies": results, "grids": shown})
    )


def hidden(n: int, dim: int, clicks: int, out: Path) -> None:
    """Thread CPU per first click with every product on sale, 1 off sale and 1 % off sale (the same anchors).

    With any product off sale the shop passes the ids on sale to the engine (``allowed_ids``), which then
    searches as for a broad filter. Everything is put back on sale at the end.
    """
    from django.test import Client

    from gallery.services import product_availability_set
    from recommender import refine

    _, timings = _catalog_ready(n, dim, log, with_colours=True)
    client = Client(HTTP_HOST="127.0.0.1")
    rng = np.random.default_rng(17)
    anchors = [int(a) for a in rng.integers(1, n + 1, size=clicks)]
    off_sale = {"none": [], "1 product": [int(rng.integers(1, n + 1))]}
    off_sale["1 %"] = sorted({int(i) for i in rng.integers(1, n + 1, size=n // 100)})
    results: dict[str, list[float]] = {}
    try:
        for name, ids in off_sale.items():
            product_availability_set(product_ids=range(1, n + 1), active=True)
            product_availability_set(product_ids=ids, active=False)
            for anchor in anchors[:20]:  # warm: the ids on sale remembered, the index mapped
                client.get(f"/api/similar/{anchor}")
            cpu: list[float] = []
            for anchor in anchors:
                refine.forget()
                started = time.thread_time()
                response = client.get(f"/api/similar/{anchor}")
                cpu.append((time.thread_time() - started) * 1e3)
                found = [int(item["id"]) for item in response.json()["results"]]
                if response.status_code != 200 or len(found) != K or set(found) & set(ids):
                    raise RuntimeError(f"GET /api/similar/{anchor}: {response.status_code}, {len(found)} results")
            results[name] = cpu
            log(f"  {name} off sale: CPU p50 {np.percentile(cpu, 50):.2f} ms, p99 {np.percentile(cpu, 99):.2f} ms")
    finally:
        product_availability_set(product_ids=range(1, n + 1), active=True)
    out.write_text(json.dumps({"n": n, "dim": dim, "clicks": clicks, "timings": timings, "cpu_ms": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    copy = sub.add_parser("copy-from-sqlite")
    copy.add_argument("sqlite_file", type=Path)
    prepare = sub.add_parser("prepare")  # the catalog of ``strategies``, stored and indexed, nothing timed
    prepare.add_argument("--n", type=int, required=True)
    prepare.add_argument("--dim", type=int, default=1280)
    for name in ("save-vectors", "load-vectors"):
        sub.add_parser(name).add_argument("path", type=Path)
    for name, dim, extra in (("clicks", 256, {"--clicks": 300, "--fresh": 500}), ("strategies", 1280, {"--walks": 30}),
                             ("hidden", 1280, {"--clicks": 200})):  # fmt: skip
        timed = sub.add_parser(name)
        timed.add_argument("--n", type=int, required=True)
        timed.add_argument("--dim", type=int, default=dim)
        timed.add_argument("--out", type=Path, required=True)
        for flag, default in extra.items():
            timed.add_argument(flag, type=int, default=default)
        if name == "strategies":
            timed.add_argument("--also", default="", help="lab strategies (specs, comma-separated) timed beside")
    args = parser.parse_args()
    django_setup()
    if args.command in ("clicks", "strategies", "hidden"):
        from config.malloc import keep_freed_memory

        keep_freed_memory()  # as config/wsgi.py sets every web process
    if args.command == "copy-from-sqlite":
        print(json.dumps(copy_from_sqlite(args.sqlite_file)))
    elif args.command == "prepare":
        _, timings = _catalog_ready(args.n, args.dim, log, with_colours=True)
        print(json.dumps(timings))
    elif args.command == "save-vectors":
        print(json.dumps(vectors_save(args.path)))
    elif args.command == "load-vectors":
        print(json.dumps(vectors_load(args.path)))
    elif args.command == "strategies":
        strategies(args.n, args.dim, args.walks, args.out, also=[a for a in args.also.split(",") if a])
    elif args.command == "hidden":
        hidden(args.n, args.dim, args.clicks, args.out)
    else:
        clicks(args.n, args.dim, args.clicks, args.fresh, args.out)


if __name__ == "__main__":
    main()
