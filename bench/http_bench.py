"""Section ``http``: latency over HTTP, end to end, of what shoppers do, against a trivial view on the same server.

Starts gunicorn as the Procfile's ``web`` line runs it, with 2 workers x 4 threads and no access log (the
product's default settings except PHOTO_SEARCH_RATE_PER_MINUTE=0 and PHOTO_SEARCH_QUEUE=8, so photo
searches are neither rate limited nor shed: their latency is measured) on the throwaway database
holding the demo catalog, imported, embedded and indexed by product code. Locust (headless,
``bench/locustfile.py``) drives it with users that never wait, one request kind per run, each at 1 user
(latency without queueing) and at 4 (the 2 cores saturated): the trivial view (/healthz), /api/status (a
light view: one aggregate query), text search, a click, a trail of 3 likes and 1 dislike, and photo
search (POST /api/search-by-image; skipped when it does not answer 200). The click-vs-trivial target
compares runs at the same concurrency. Latencies are each request's own, in ms, as locust timed them.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import (
    ROOT,
    BenchContext,
    SectionResult,
    Summary,
    Table,
    Target,
    child_env,
    http_status,
    multipart,
    web_start,
)

BIN = Path(sys.executable).parent
# Photo searches beyond PHOTO_SEARCH_CONCURRENCY (1) wait in a queue of this many per web process instead of
# being shed with 503 (the default queue of 1 sheds most of them at 4 users): latency, not shedding, is measured.
PHOTO_QUEUE = 8
SCENARIOS = ("trivial", "status", "search", "click", "trail", "photo")
TRIVIAL_PATH = "/healthz"  # web_start waits for it to answer


def _photo_request(port: int, photo: Path) -> int:
    body, content_type = multipart("image", "photo.jpg", photo.read_bytes())
    return http_status(port, "/api/search-by-image", method="POST", body=body, headers=[("Content-Type", content_type)])


def _shop_data(ids: list[int], photos: list[Path], trivial_path: str) -> dict:
    """Ids, trails and search queries drawn from the catalog, for the locust users."""
    from gallery.models import Product

    rng = random.Random(1)
    names = list(Product.objects.filter(id__in=ids).values_list("name", flat=True))
    queries = []
    for name in rng.sample(names, min(60, len(names))):
        words = [w for w in name.split() if w.isalpha()]
        queries.append(" ".join(rng.sample(words, min(2, len(words)))))
    trails = [rng.sample(ids, 4) for _ in range(200)]
    return {
        "ids": ids,
        "trails": trails,
        "queries": queries,
        "photos": [str(p) for p in photos],
        "trivial_path": trivial_path,
    }


def _locust(ctx: BenchContext, base: str, data_path: Path, scenario: str, *, users: int, seconds: int) -> list:
    slug = scenario.replace("+", "-")
    times = ctx.tmp / f"locust-{slug}.json"
    command = [
        str(BIN / "locust"),
        "-f",
        str(Path(__file__).parent / "locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--host",
        base,
        "--csv",
        str(ctx.tmp / f"locust-{slug}"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    env = child_env(BENCH_DATA=str(data_path), BENCH_SCENARIO=scenario, BENCH_TIMES=str(times))
    subprocess.run(command, cwd=ROOT, env=env, check=False, capture_output=True, timeout=seconds + 60)
    return json.loads(times.read_text()) if times.exists() else []


def _stats(rows: list, seconds: int) -> dict[str, dict]:
    """Per request name: latency summary (ms), errors (failed or status >= 400), requests per second."""
    out = {}
    for name in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == name]
        out[name] = {
            "summary": Summary.of([r[1] for r in mine]),
            "errors": sum(1 for r in mine if r[3] or r[2] >= 400),
            "rate": len(mine) / seconds,
            "statuses": sorted({r[2] for r in mine}),
        }
    return out


PATHS = {
    "status": "/api/status",
    "search": "/api/search?q=...",
    "click": "/api/similar/<id>",
    "trail": "/api/similar/<a>?trail=a,pb,pc,nd",
    "photo": "POST /api/search-by-image",
}


def run(ctx: BenchContext) -> SectionResult:
    from django.core.files.storage import default_storage

    from gallery.models import Product

    result = SectionResult("http")
    count = 120 if ctx.quick else 400
    levels, seconds = ((2,), 3) if ctx.quick else ((1, 4), 8)
    ids = ctx.demo_catalog_loaded(count)
    photos = [
        Path(default_storage.path(name))
        for name in Product.objects.filter(id__in=ids[:12]).values_list("image", flat=True)
    ]
    # The Procfile's web command with 2 workers and no access log.
    server, port = web_start(
        log=ctx.tmp / "gunicorn.log",
        env=child_env(PHOTO_SEARCH_RATE_PER_MINUTE="0", PHOTO_SEARCH_QUEUE=str(PHOTO_QUEUE)),
        workers="2",
        access_logfile=None,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        photo_status = _photo_request(port, photos[0])
        scenarios = [s for s in SCENARIOS if s != "photo" or photo_status == 200]
        data_path = ctx.tmp / "shop.json"
        data_path.write_text(json.dumps(_shop_data(ids, photos, TRIVIAL_PATH)))
        # Warm both workers: the index is loaded (and the encoder, for photos) on first use.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: http_status(port, f"/api/similar/{ids[i % len(ids)]}"), range(16)))
            if "photo" in scenarios:
                list(pool.map(lambda i: _photo_request(port, photos[i % len(photos)]), range(8)))
        stats = {
            (users, scenario): _stats(
                _locust(ctx, base, data_path, scenario, users=users, seconds=seconds), seconds
            ).get(scenario)
            for users in levels
            for scenario in scenarios
        }
    finally:
        server.stop()

    paths = {"trivial": TRIVIAL_PATH, **PATHS}
    for users in levels:
        table = Table(
            f"HTTP with {users} locust user{'s' if users > 1 else ''} never waiting, {seconds}s per request kind "
            f"(gunicorn 2 workers x 4 threads, {len(ids)} products)",
            ["request", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "p50 x trivial", "p99 x trivial"],
        )
        trivial = stats.get((users, "trivial"))
        for scenario in scenarios:
            s = stats.get((users, scenario))
            if s is None:
                table.add(f"{scenario} ({paths[scenario]})", 0, "no requests", "-", "-", "-", "-", "-", "-")
                continue
            summary = s["summary"]
            table.add(
                f"{scenario} ({paths[scenario]})",
                summary.n,
                s["errors"],
                s["rate"],
                summary.median,
                summary.p90,
                summary.p99,
                summary.median / trivial["summary"].median if trivial else float("nan"),
                summary.p99 / trivial["summary"].p99 if trivial else float("nan"),
            )
        result.tables.append(table)
        click = stats.get((users, "click"))
        if click and trivial:
            p50x = click["summary"].median / trivial["summary"].median
            p99x = click["summary"].p99 / trivial["summary"].p99
            result.targets.append(Target(f"click p50 / trivial p50, {users} users", "<= 3x", f"{p50x:.2f}x", p50x <= 3))
            result.targets.append(
                Target(f"click p99 / trivial p99, {users} users", "<= 10x", f"{p99x:.2f}x", p99x <= 10)
            )
    errors = sum(s["errors"] for s in stats.values() if s)
    result.targets.append(Target("errors, all runs", "0", str(errors), errors == 0))
    if "photo" not in scenarios:
        result.notes.append(f"photo search not measured: POST /api/search-by-image answered {photo_status}")
    result.notes.append(
        f"trivial view: {TRIVIAL_PATH}; each request kind runs alone, one after the other, at the same concurrency; "
        f"gunicorn ran with PHOTO_SEARCH_RATE_PER_MINUTE=0 and PHOTO_SEARCH_QUEUE={PHOTO_QUEUE}"
    )
    result.data = {
        "products": len(ids),
        "levels": levels,
        "seconds": seconds,
        "trivial_path": TRIVIAL_PATH,
        "photo_status": photo_status,
        "stats": {f"{users}/{scenario}": s for (users, scenario), s in stats.items()},
    }
    return result
