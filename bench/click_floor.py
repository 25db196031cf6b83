"""A click at the real catalog's size, stage by stage: where its time goes, and what the grid cache saves.

    .venv/bin/python bench/click_floor.py                    # 44,446 products, SQLite and PostgreSQL
    .venv/bin/python bench/click_floor.py --n 5000 --databases sqlite --quick
    .venv/bin/python bench/click_floor.py --dim 256 --databases sqlite  # a 256-d served space (PCA-256's width)

The catalog is ``bench/realscale_vectors.py``'s synthetic one (``--n`` products with clustered 1280-d
vectors and colour descriptors, an index over all of them; prepared once and cached), served by gunicorn
as the Procfile runs it with SERVER_TIMING on, so every answer says where its time went (parse, db,
vectors, index, rank, cache, cards, render, other: ``config/timing.py``). PostgreSQL gets the same rows by
COPY. Each database is measured twice, in one run: the whole-grid cache off (GRID_CACHE_TTL_S=0: every
click ranked, as before the cache; a trail's earlier pages are still remembered) and on (the default).

Request kinds: ``/healthz`` (the baseline of every ratio); the click API, page and fragment on uniformly
random products; the click API on Zipf-distributed products (s = 1.1 over a fixed random order: real
traffic is skewed); a walk's next click (walks of 10 clicks, each on the first new tile; clicks 2-10
timed); the walk's 10-step link opened cold (Redis emptied, the server restarted). One client: warm-up,
then the timed requests on one keep-alive connection; 8 clients: 10 s each, every client on its own
connection. Results: ``bench/results/click_floor.{json,md}`` (``click_floor-256.*`` for ``--dim 256``).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    PYTHON,
    HttpClient,
    Request,
    Summary,
    Table,
    many_clients,
    redis_flush,
    stages_mean,
    stages_ordered,
    web_start,
    zipf_picker,
)
from bench.realscale import CACHE, _psql, vectors_env  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/11"
DIM = 1280  # the served EfficientNet-Lite0 space; --dim times another width on its own cached catalog
WALK_STEPS = 10


@dataclass
class Kind:
    name: str
    draw: object  # (rng) -> Request
    api: bool = False


def kinds(n: int) -> list[Kind]:
    zipf = zipf_picker(range(1, n + 1))

    def uniform(rng: random.Random) -> int:
        return rng.randint(1, n)

    fragment = (("HX-Request", "true"),)
    return [
        Kind("healthz", lambda rng: Request("GET", "/healthz")),
        Kind("click API, uniform", lambda rng: Request("GET", f"/api/similar/{uniform(rng)}"), api=True),
        Kind("click API, Zipf", lambda rng: Request("GET", f"/api/similar/{zipf(rng)}"), api=True),
        Kind("click page, uniform", lambda rng: Request("GET", f"/similar/{uniform(rng)}/")),
        Kind("click fragment, uniform", lambda rng: Request("GET", f"/similar/{uniform(rng)}/", headers=fragment)),
    ]


def _summary(times: list[float], stages: list[dict[str, float]], errors: int) -> dict:
    return {"times": times, "summary": Summary.of(times), "stages": stages_mean(stages) if stages else {},
            "errors": errors}  # fmt: skip


def timed(port: int, requests: Iterable[Request], *, warm: Iterable[Request] = ()) -> dict:
    """The ``warm`` requests, then ``requests`` one after another on one connection: wall ms and stages each."""
    client = HttpClient(port)
    times, stages, errors = [], [], 0
    try:
        for request in warm:
            client.send(*astuple(request))
        for request in requests:
            status, ms, _ = client.send(*astuple(request))
            times.append(ms)
            stages.append(client.stages)
            errors += status != 200
    finally:
        client.close()
    return _summary(times, stages, errors)


def one_client(port: int, kind: Kind, *, warm: int, count: int, seed: int) -> dict:
    rng = random.Random(seed)
    return timed(port, (kind.draw(rng) for _ in range(count)), warm=[kind.draw(rng) for _ in range(warm)])


def walks(port: int, *, count: int, n: int, seed: int) -> tuple[dict, list[str]]:
    """``count`` walks of WALK_STEPS clicks through the API; clicks 2-10 timed; the walks' last links."""
    rng = random.Random(seed)
    client = HttpClient(port)
    times, stages, errors, links = [], [], 0, []
    try:
        for _ in range(count):
            anchor, trail = rng.randint(1, n), []
            for step in range(WALK_STEPS):
                trail.append(str(anchor))
                path = f"/api/similar/{anchor}?trail={','.join(trail)}"
                status, ms, body = client.send("GET", path)
                if status != 200:
                    errors += 1
                    break
                if step:
                    times.append(ms)
                    stages.append(client.stages)
                grid = [int(item["id"]) for item in json.loads(body)["results"]]
                anchor = next(pid for pid in grid if str(pid) not in trail)
            links.append(path)
    finally:
        client.close()
    return _summary(times, stages, errors), links


def _env(n: int, dim: int, database: str, log) -> dict[str, str]:  # noqa: ANN001
    env = vectors_env(n, dim, log=log)
    env.update({"REDIS_URL": REDIS_URL, "SERVER_TIMING": "1", "CACHE_KEY_PREFIX": "gallery-click-floor"})
    if database == "postgres":
        name = f"bench_floor_{n}" + ("" if dim == DIM else f"_{dim}")
        if _psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":  # noqa: S608 (a number)
            _psql(f"CREATE DATABASE {name}")
        env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{name}"
    return env


def prepare(n: int, dim: int, databases: list[str], log) -> None:  # noqa: ANN001
    script = str(ROOT / "bench" / "realscale_vectors.py")
    sqlite_env = _env(n, dim, "sqlite", log)
    log(f"preparing {n:,} synthetic {dim}-d products (cached after the first run)")
    subprocess.run([PYTHON, script, "prepare", "--n", str(n), "--dim", str(dim)], env=sqlite_env, cwd=ROOT, check=True)
    if "postgres" in databases:
        sqlite_file = sqlite_env["DATABASE_URL"].removeprefix("sqlite:///")
        done = subprocess.run([PYTHON, script, "copy-from-sqlite", sqlite_file], env=_env(n, dim, "postgres", log),
                              cwd=ROOT, check=True, capture_output=True, text=True)  # fmt: skip
        log(f"  PostgreSQL: {done.stdout.strip()}")


def measure(n: int, dim: int, database: str, *, cached: bool, quick: bool, logs: Path, log) -> dict:  # noqa: ANN001
    env = {**_env(n, dim, database, log), "GRID_CACHE_TTL_S": "3600" if cached else "0"}
    count, warm, seconds, walk_count = (60, 10, 3.0, 5) if quick else (300, 30, 10.0, 30)
    redis_flush(REDIS_URL)
    server, port = web_start(log=logs / f"gunicorn-{database}-{'cached' if cached else 'uncached'}.log", env=env)
    results: dict[str, dict] = {}
    try:
        for kind in kinds(n):  # every worker warmed on every kind
            many_clients(port, kind, clients=12, seconds=1.0, seed=1)
        for number, kind in enumerate(kinds(n)):
            results[kind.name] = one_client(port, kind, warm=warm, count=count, seed=10 + number)
            if kind.name in ("healthz", "click API, uniform", "click API, Zipf"):
                results[kind.name]["many"] = many_clients(port, kind, clients=8, seconds=seconds, seed=20 + number)
            log(f"  {database}, {'cached' if cached else 'uncached'}: {kind.name} p50 "
                f"{results[kind.name]['summary'].median:.2f} ms")  # fmt: skip
        results["walk: next click"], links = walks(port, count=walk_count, n=n, seed=7)
    finally:
        server.stop()
    redis_flush(REDIS_URL)
    server, port = web_start(log=logs / f"gunicorn-{database}-cold.log", env=env)
    try:
        # The processes warmed (index mapped) on two of the links; the others timed.
        results["10-step link, cold"] = timed(
            port, [Request("GET", path) for path in links[2:]], warm=[Request("GET", path) for path in links[:2]]
        )
    finally:
        server.stop()
    return results


def tables(n: int, dim: int, database: str, measured: dict[str, dict]) -> list[Table]:
    out = []
    for mode, results in measured.items():
        healthz = results["healthz"]
        base_rate = healthz["many"]["rate"]
        names = stages_ordered(name for r in results.values() for name in r["stages"])
        table = Table(
            f"{database}: a click at {n:,} {dim}-d products, grid cache {mode} (gunicorn as the Procfile runs it; ms)",
            ["request", "1 client p50", "p99", "8 clients req/s", "rate x healthz", *names],
        )
        for name, r in results.items():
            many = r.get("many")
            table.add(
                name,
                r["summary"].median,
                r["summary"].p99,
                many["rate"] if many else "-",
                many["rate"] / base_rate if many else "-",
                *(round(r["stages"].get(stage, 0.0), 2) for stage in names),
            )
        errors = ", ".join(f"{k} {r['errors']}" for k, r in results.items() if r["errors"]) or "none"
        table.note = (
            "stages: mean ms per request from the answers' Server-Timing (each stage its own time; db: every "
            f"statement, wherever it runs; other: Django and middleware); errors: {errors}"
        )
        out.append(table)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=44_446, help="products (default: the real catalog's 44,446)")
    parser.add_argument("--dim", type=int, default=DIM, help=f"the vectors' width (default {DIM}; 256: PCA-256's)")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--quick", action="store_true", help="short runs: proves the paths, times nothing")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    databases = args.databases.split(",")
    logs = CACHE / "click-floor-logs"
    logs.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    prepare(args.n, args.dim, databases, log)
    measured: dict[str, dict[str, dict]] = defaultdict(dict)
    for database in databases:
        for cached in (False, True):
            mode = "on" if cached else "off"
            measured[database][mode] = measure(args.n, args.dim, database, cached=cached, quick=args.quick, logs=logs,
                                               log=log)  # fmt: skip
    out = [table for database in databases for table in tables(args.n, args.dim, database, measured[database])]
    markdown = "\n\n".join(table.markdown() for table in out)
    print(markdown)
    args.results.mkdir(parents=True, exist_ok=True)
    name = "click_floor" + ("" if args.dim == DIM else f"-{args.dim}")
    (args.results / f"{name}.md").write_text(markdown + "\n")
    plain = {db: {mode: {k: {"summary": vars(v["summary"]), "stages": v["stages"], "errors": v["errors"],
                             "rate": v.get("many", {}).get("rate")} for k, v in r.items()}
                  for mode, r in modes.items()} for db, modes in measured.items()}  # fmt: skip
    (args.results / f"{name}.json").write_text(json.dumps(plain, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
