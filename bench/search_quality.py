"""Text search on the real catalog: quality per query kind, and speed, on SQLite and PostgreSQL (issue 13).

    .venv/bin/python bench/search_quality.py [--postgres postgres://postgres@127.0.0.1:5432/SCRATCH]
                                             [--redis-url redis://127.0.0.1:6379/12] [--repeats 5]

Loads the 44,446 rows of the real ``styles.csv`` (``../shared/data/styles.csv``: names and columns; text
search reads no image, so none is drawn) into a throwaway SQLite database and, with ``--postgres``, into
that PostgreSQL database (its products are replaced: give it a scratch database). Each database is
measured in a child process of its own, so that "the first query of a process" is a real first query.

Quality. ``QUERIES`` are shopper queries written over the real names, each of a kind (exact words,
plurals, stop words and word order, gender words and possessives, typos, column values, no product
holding every word). A product is relevant to a query when its columns (type, colour, gender, category,
usage) and, for brand words, its name say so: relevance never comes from the search being measured.
P@25 is the share of relevant products among the first 25, out of at most the number of relevant
products (a query with 3 relevant products scores 1.0 when they are the first 3). An empty grid is one
with no product while some product is relevant. The same queries run through the substring search this
replaced (``legacy_search``, the previous ``product_search``, kept here verbatim as the alternative).

Speed. Every query ``--repeats`` times after one warm-up, wall and CPU time per call (p50, p99), beside
two baselines run back to back with it: the trivial request (fetching 25 products by primary key, which
every grid pays) and the legacy search. First query: a fresh process's first search (the median of 3
processes), with the index shared by another process (the usual case) and with none shared (the first
process of a deployment, or after Redis lost it). Memory: the
index's arrays and what building it keeps (tracemalloc), at 44k and at 5x44k (rows repeated under new
ids), from which 1M is extrapolated.

Prints Markdown tables for docs/benchmarks.md and writes ``bench/results/search_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS_DIR, Table, environment_prepare, percentile  # noqa: E402

STYLES = ROOT.parent / "shared" / "data" / "styles.csv"
K = 25
MEN = ("Men", "Unisex")
WOMEN = ("Women", "Unisex")


@dataclass(frozen=True)
class Query:
    """A shopper query and what makes a product relevant to it (columns; ``brand``/``name_has``: the name)."""

    kind: str
    text: str
    type: tuple[str, ...] = ()
    sub: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    colour: tuple[str, ...] = ()
    gender: tuple[str, ...] = ()
    usage: tuple[str, ...] = ()
    brand: str = ""  # a word the name must hold (brands live only in names)
    name_has: tuple[str, ...] = ()  # the folded name must contain one of these

    def relevant(self, p: dict[str, str]) -> bool:
        checks = (
            (self.type, p["article_type"]),
            (self.sub, p["sub_category"]),
            (self.category, p["master_category"]),
            (self.colour, p["base_colour"]),
            (self.gender, p["gender"]),
            (self.usage, p["usage"]),
        )
        if any(allowed and value not in allowed for allowed, value in checks):
            return False
        name = p["folded_name"]
        if self.brand and self.brand not in p["name_words"]:
            return False
        return not self.name_has or any(part in name for part in self.name_has)


def q(kind: str, text: str, **spec: object) -> Query:
    return Query(kind, text, **{k: (v if isinstance(v, str) else tuple(v)) for k, v in spec.items()})


EXACT, PLURAL, STOP, GENDER, TYPO, VALUE, PARTIAL = (
    "exact words",
    "plurals and stems",
    "stop words, word order",
    "gender words, possessives",
    "typos",
    "column values",
    "no product holds every word",
)
QUERIES: tuple[Query, ...] = (
    q(EXACT, "black watch", type=["Watches"], colour=["Black"]),
    q(EXACT, "blue jeans", type=["Jeans"], colour=["Blue"]),
    q(EXACT, "white shirt", type=["Shirts"], colour=["White"]),
    q(EXACT, "red tshirt", type=["Tshirts"], colour=["Red"]),
    q(EXACT, "pink top", type=["Tops"], colour=["Pink"]),
    q(EXACT, "brown belt", type=["Belts"], colour=["Brown"]),
    q(EXACT, "black backpack", type=["Backpacks"], colour=["Black"]),
    q(EXACT, "grey sweatshirt", type=["Sweatshirts"], colour=["Grey"]),
    q(EXACT, "nike shoes", sub=["Shoes"], brand="nike"),
    q(EXACT, "puma tshirt", type=["Tshirts"], brand="puma"),
    q(EXACT, "blue shirt", type=["Shirts"], colour=["Blue"]),
    q(PLURAL, "sarees", type=["Sarees"]),
    q(PLURAL, "red dresses", type=["Dresses"], colour=["Red"]),
    q(PLURAL, "kurtas", type=["Kurtas"]),
    q(PLURAL, "black heels", type=["Heels"], colour=["Black"]),
    q(PLURAL, "watches", type=["Watches"]),
    q(PLURAL, "blue shirts", type=["Shirts"], colour=["Blue"]),
    q(PLURAL, "wallets", type=["Wallets"]),
    q(PLURAL, "printed tops", type=["Tops"], name_has=["print"]),
    q(PLURAL, "striped shirts", type=["Shirts"], name_has=["stripe"]),
    q(PLURAL, "earrings", type=["Earrings"]),
    q(STOP, "jeans with blue", type=["Jeans"], colour=["Blue"]),
    q(STOP, "watch for men", type=["Watches"], gender=MEN),
    q(STOP, "shoes for women", sub=["Shoes"], gender=WOMEN),
    q(STOP, "shirt blue men", type=["Shirts"], colour=["Blue"], gender=MEN),
    q(STOP, "a black belt", type=["Belts"], colour=["Black"]),
    q(STOP, "top for girls", type=["Tops"], gender=["Girls"]),
    q(STOP, "bag in black", sub=["Bags"], colour=["Black"]),
    q(STOP, "sunglasses for men", type=["Sunglasses"], gender=MEN),
    q(GENDER, "mens jeans", type=["Jeans"], gender=MEN),
    q(GENDER, "men's watch", type=["Watches"], gender=MEN),
    q(GENDER, "womens kurta", type=["Kurtas"], gender=["Women"]),
    q(GENDER, "women's handbag", type=["Handbags"], gender=WOMEN),
    q(GENDER, "mens formal shoes", type=["Formal Shoes"], gender=MEN),
    q(GENDER, "womens heels", type=["Heels"], gender=["Women"]),
    q(GENDER, "boys tshirt", type=["Tshirts"], gender=["Boys"]),
    q(GENDER, "girls dress", type=["Dresses"], gender=["Girls"]),
    q(TYPO, "blakc watch", type=["Watches"], colour=["Black"]),
    q(TYPO, "hand bag womn", type=["Handbags"], gender=WOMEN),
    q(TYPO, "sunglases", type=["Sunglasses"]),
    q(TYPO, "tshrt", type=["Tshirts"]),
    q(TYPO, "sandles", type=["Sandals", "Sports Sandals"]),
    q(TYPO, "jaket", type=["Jackets", "Rain Jacket", "Nehru Jackets"]),
    q(TYPO, "addidas shoes", sub=["Shoes"], brand="adidas"),
    q(TYPO, "nikee tshirt", type=["Tshirts"], brand="nike"),
    q(TYPO, "jeens", type=["Jeans"]),
    q(TYPO, "braclet", type=["Bracelet"]),
    q(TYPO, "walet", type=["Wallets"]),
    q(TYPO, "backpak", type=["Backpacks"]),
    q(TYPO, "lipstik", type=["Lipstick"]),
    q(TYPO, "sweter", type=["Sweaters"]),
    q(TYPO, "kurtha", type=["Kurtas"]),
    q(VALUE, "footwear", category=["Footwear"]),
    q(VALUE, "navy blue", colour=["Navy Blue"]),
    q(VALUE, "topwear men", sub=["Topwear"], gender=MEN),
    q(VALUE, "sports shoes", type=["Sports Shoes"]),
    q(VALUE, "casual shoes men", type=["Casual Shoes"], gender=MEN),
    q(VALUE, "formal shirts", type=["Shirts"], usage=["Formal"]),
    q(VALUE, "ethnic kurta", type=["Kurtas"], usage=["Ethnic"]),
    q(VALUE, "innerwear", sub=["Innerwear"]),
    q(VALUE, "eyewear", sub=["Eyewear"]),
    q(VALUE, "jewellery", sub=["Jewellery"]),
    q(VALUE, "personal care", category=["Personal Care"]),
    q(VALUE, "accessories women", category=["Accessories"], gender=WOMEN),
    q(PARTIAL, "levis jeans", type=["Jeans"], brand="levis"),
    q(PARTIAL, "hoodie", type=["Sweatshirts", "Jackets", "Tshirts"], name_has=["hood"]),
    q(PARTIAL, "purple umbrella", type=["Umbrellas"], colour=["Purple"]),
    q(PARTIAL, "leather jacket", type=["Jackets"]),
    q(PARTIAL, "silk kurta", type=["Kurtas"], name_has=["silk"]),
    q(PARTIAL, "cotton kurta men", type=["Kurtas"], gender=MEN),
    q(PARTIAL, "denim jacket women", type=["Jackets"], gender=WOMEN),
    q(PARTIAL, "woolen sweater", type=["Sweaters"]),
    q(PARTIAL, "gold sandals men", type=["Sandals"], gender=MEN),
    q(PARTIAL, "pink sunglasses men", type=["Sunglasses"], gender=MEN),
)


# --- The alternative: the substring search this replaced --------------------------------------------------------


def legacy_search(*, query: str, k: int = K) -> list:
    """The previous ``product_search``: every word a substring of the name, ranked by whole-word hits."""
    import re

    from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector
    from django.db import connection
    from django.db.models import Case, IntegerField, Value, When
    from django.db.models.functions import Length

    from gallery.models import Product

    words = re.findall(r"\w+", query.lower())[:8]
    qs = Product.objects.all()
    for word in words:
        qs = qs.filter(name__icontains=word)
    if connection.vendor == "postgresql":
        vector = SearchVector("name", config="simple")
        search = SearchQuery(" ".join(words), config="simple", search_type="plain")
        qs = qs.annotate(rank=SearchRank(vector, search), name_length=Length("name"))
    else:
        whole = sum(
            (
                Case(
                    When(name__iregex=rf"\b{re.escape(w)}\b", then=Value(1)),
                    default=Value(0),
                    output_field=IntegerField(),
                )
                for w in words
            ),
            start=Value(0),
        )
        qs = qs.annotate(rank=whole, name_length=Length("name"))
    return list(qs.order_by("-rank", "name_length", "id")[:k])


# --- Child: one database ------------------------------------------------------------------------------------------


def _catalog_rows() -> list:
    from gallery.catalog import CatalogRow, styles_read

    return [row for row in styles_read(STYLES) if isinstance(row, CatalogRow)]


def _load(rows: list) -> None:
    from gallery.models import Product

    if Product.objects.count() == len(rows):
        return
    Product.objects.all().delete()
    Product.objects.bulk_create([Product(id=row.id, **row.fields) for row in rows], batch_size=2000)


def _products_by_id() -> dict[int, dict[str, str]]:
    from gallery.models import Product
    from gallery.search import text_fold, text_tokens

    fields = ("id", "name", "gender", "master_category", "sub_category", "article_type", "base_colour", "usage")
    out = {}
    for row in Product.objects.values(*fields).iterator(chunk_size=5000):
        row["folded_name"] = text_fold(row["name"])
        row["name_words"] = set(text_tokens(row["name"]))
        out[row["id"]] = row
    return out


def _quality(search: Callable[[str], tuple[list[int], dict]], products: dict[int, dict[str, str]]) -> list[dict]:
    rows = []
    for query in QUERIES:
        relevant = {pid for pid, p in products.items() if query.relevant(p)}
        found, extra = search(query.text)
        hits = sum(1 for pid in found[:K] if pid in relevant)
        rows.append(
            {
                "kind": query.kind,
                "query": query.text,
                "relevant": len(relevant),
                "found": len(found),
                "p_at_25": hits / min(K, len(relevant)) if relevant else None,
                "empty": bool(relevant) and not found,
                **extra,
            }
        )
    return rows


def _timings(call: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of ``repeats`` calls after one warm-up (CPU time leaves out other processes)."""
    call()
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.thread_time()
        call()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - started_cpu) * 1000)
    return wall, cpu


def _probe_first_query(
    database_url: str, env: dict[str, str], engine: str, *, runs: int = 3, before: Callable[[], None] | None = None
) -> dict[str, float]:
    """Fresh processes' first and second searches (ms, wall and CPU): the median of ``runs`` processes."""
    probes = []
    for _ in range(runs):
        if before is not None:
            before()
        out = subprocess.run(
            [sys.executable, __file__, "--probe", engine],
            env={**env, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        probes.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(p[key] for p in probes) for key in probes[0]}


def _memory(rows: list) -> dict[str, float]:
    """Bytes an index keeps at 44k and at 5x44k rows (rows repeated under new ids), and build seconds."""
    from gallery.search import INDEX_FIELDS, search_index_build

    def as_tuples(copies: int):
        for copy in range(copies):
            for row in rows:
                yield (row.id + copy * 10_000_000, row.fields["name"], *(row.fields[f] for f in INDEX_FIELDS))

    out: dict[str, float] = {}
    for copies in (1, 5):
        ordered = sorted(as_tuples(copies), key=lambda r: r[0])
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        started = time.process_time()
        index = search_index_build(ordered)
        seconds = time.process_time() - started
        kept = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        out[f"products_{copies}"] = float(len(index))
        out[f"kept_mb_{copies}"] = kept / 1e6
        out[f"arrays_mb_{copies}"] = index.memory_bytes() / 1e6
        out[f"build_cpu_s_{copies}"] = seconds
        del index, ordered
    per_product = (out["kept_mb_5"] - out["kept_mb_1"]) / (out["products_5"] - out["products_1"])
    out["mb_at_1m_extrapolated"] = out["kept_mb_1"] + per_product * (1_000_000 - out["products_1"])
    return out


def child(database_url: str, repeats: int, out_path: Path) -> None:
    """Measure one database (DATABASE_URL is already set for this process)."""
    from bench.common import django_setup

    django_setup()
    from django.db import connection

    from gallery import search
    from gallery.models import Product
    from gallery.search import serving
    from gallery.selectors import product_search

    rows = _catalog_rows()
    _load(rows)
    products = _products_by_id()
    env = dict(os.environ)

    def drop_shared() -> None:
        client = serving.shared_client()
        if client is not None:
            client.delete(serving.shared_key(serving.database_source()))

    first_cold = _probe_first_query(database_url, env, "new", before=drop_shared)  # nothing shared: it builds
    first_warm = _probe_first_query(database_url, env, "new")  # the index the previous one shared
    first_legacy = _probe_first_query(database_url, env, "legacy")

    search.search_index_reset()
    search.search_index()

    def new(text: str) -> tuple[list[int], dict]:
        found = product_search(query=text, k=K)
        return [p.id for p in found], {
            "complete": found.complete,
            "notice": found.notice,
            "corrections": found.corrections,
        }

    def old(text: str) -> tuple[list[int], dict]:
        return [p.id for p in legacy_search(query=text, k=K)], {}

    quality_new = _quality(new, products)
    quality_old = _quality(old, products)

    some_ids = sorted(products)[:: max(1, len(products) // K)][:K]
    calls = {
        "trivial": lambda text: list(Product.objects.filter(id__in=some_ids)),
        "new": lambda text: product_search(query=text, k=K),
        "legacy": lambda text: legacy_search(query=text, k=K),
    }
    latency: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    # Back to back per query, so that load from other processes falls on all three alike.
    for query in QUERIES:
        for name, call in calls.items():
            wall_ms, cpu_ms = _timings(lambda call=call, text=query.text: call(text), repeats)
            latency[name] += wall_ms
            cpu[name] += cpu_ms

    result = {
        "database": connection.vendor,
        "products": len(products),
        "quality": {"new": quality_new, "legacy": quality_old},
        "latency_ms": latency,
        "cpu_ms": cpu,
        "first_query_ms": {"shared": first_warm, "built": first_cold, "legacy": first_legacy},
        "memory": _memory(rows) if connection.vendor == "sqlite" else {},
    }
    drop_shared()
    out_path.write_text(json.dumps(result))


def probe(engine: str) -> None:
    """A fresh process: set Django up, then time its first two searches."""
    started = time.perf_counter()
    import django

    django.setup()
    setup_ms = (time.perf_counter() - started) * 1000
    from gallery.selectors import product_search

    def call(text: str) -> tuple[float, float]:
        started, started_cpu = time.perf_counter(), time.process_time()
        if engine == "new":
            product_search(query=text, k=K)
        else:
            legacy_search(query=text, k=K)
        return (time.perf_counter() - started) * 1000, (time.process_time() - started_cpu) * 1000

    first, first_cpu = call("blue shirt")
    second, second_cpu = call("black watch")
    print(
        json.dumps(
            {
                "setup_ms": setup_ms,
                "first_ms": first,
                "first_cpu_ms": first_cpu,
                "second_ms": second,
                "second_cpu_ms": second_cpu,
            }
        )
    )


# --- Parent: both databases, the report --------------------------------------------------------------------------


@dataclass
class Report:
    tables: list[Table] = field(default_factory=list)

    def markdown(self) -> str:
        return "\n\n".join(t.markdown() for t in self.tables)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def report(results: list[dict]) -> Report:
    out = Report()
    kinds = list(dict.fromkeys(query.kind for query in QUERIES))
    columns = ["query kind", "queries"]
    for r in results:
        columns += [f"P@25 {r['database']}", f"empty {r['database']}", f"P@25 legacy {r['database']}"]
        columns += [f"empty legacy {r['database']}"]
    quality = Table("Quality per query kind (mean P@25; empty grids where a relevant product exists)", columns)
    for kind in [*kinds, "all"]:
        cells: list[object] = [kind]
        count = None
        for r in results:
            for engine in ("new", "legacy"):
                rows = [x for x in r["quality"][engine] if kind in ("all", x["kind"]) and x["p_at_25"] is not None]
                count = len(rows)
                p = _mean([x["p_at_25"] for x in rows])
                empty = sum(1 for x in rows if x["empty"])
                cells += [round(p, 3), f"{empty}/{len(rows)}"]
        quality.add(*cells[:1], count, *cells[1:])
    out.tables.append(quality)

    per_query = Table(
        "Every query (first database): relevant products, P@25 now and before, what the page says",
        ["kind", "query", "relevant", "P@25", "P@25 legacy", "results legacy", "notice"],
    )
    first = results[0]
    for new, old in zip(first["quality"]["new"], first["quality"]["legacy"], strict=True):
        per_query.add(
            new["kind"],
            f"`{new['query']}`",
            new["relevant"],
            None if new["p_at_25"] is None else round(new["p_at_25"], 2),
            None if old["p_at_25"] is None else round(old["p_at_25"], 2),
            old["found"],
            new["notice"] or "",
        )
    out.tables.append(per_query)

    speed = Table(
        "Speed at 44k (ms; every query x repeats; CPU is this thread's)",
        [
            "database",
            "request",
            "wall p50",
            "wall p99",
            "CPU p50",
            "x trivial (wall p50)",
            "first query of a process (wall / CPU)",
            "its second (wall / CPU)",
        ],
    )
    for r in results:
        lat, cpu = r["latency_ms"], r["cpu_ms"]
        trivial = percentile(lat["trivial"], 50)
        first = r["first_query_ms"]
        rows = (
            ("trivial: 25 products by id", "trivial", None),
            ("text search (index shared)", "new", first["shared"]),
            ("text search (no shared index)", None, first["built"]),
            ("legacy substring search", "legacy", first["legacy"]),
        )
        for label, name, probe_ms in rows:
            values = lat[name] if name else []
            p50 = percentile(values, 50) if values else float("nan")
            speed.add(
                r["database"],
                label,
                round(p50, 2) if values else None,
                round(percentile(values, 99), 2) if values else None,
                round(percentile(cpu[name], 50), 2) if values else None,
                round(p50 / trivial, 1) if values else None,
                f"{probe_ms['first_ms']:.0f} / {probe_ms['first_cpu_ms']:.0f}" if probe_ms else None,
                f"{probe_ms['second_ms']:.1f} / {probe_ms['second_cpu_ms']:.1f}" if probe_ms else None,
            )
    out.tables.append(speed)

    memory = next((r["memory"] for r in results if r["memory"]), None)
    if memory:
        table = Table(
            "Index memory (tracemalloc: what a build keeps) and build CPU time (tracemalloc on)",
            ["products", "MB", "arrays MB", "build s"],
        )
        for copies in (1, 5):
            table.add(
                int(memory[f"products_{copies}"]),
                round(memory[f"kept_mb_{copies}"], 1),
                round(memory[f"arrays_mb_{copies}"], 1),
                round(memory[f"build_cpu_s_{copies}"], 2),
            )
        table.add("1,000,000 (extrapolated)", round(memory["mb_at_1m_extrapolated"], 0), None, None)
        out.tables.append(table)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", help="a scratch PostgreSQL database whose products may be replaced")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe)
        return
    if args.child:
        child(args.child, args.repeats, Path(args.out))
        return
    if not STYLES.exists():
        sys.exit(f"The real catalog is not at {STYLES}; this benchmark needs it.")
    results = []
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        environment_prepare(Path(tmp))  # a throwaway SQLite database, media and index directories
        env = {**os.environ, "REDIS_URL": args.redis_url, "LOG_LEVEL": "WARNING"}
        databases = [env["DATABASE_URL"]] + ([args.postgres] if args.postgres else [])
        for number, url in enumerate(databases):
            out = Path(tmp) / f"result-{number}.json"
            subprocess.run(
                [sys.executable, __file__, "--child", url, "--out", str(out), "--repeats", str(args.repeats)],
                env={**env, "DATABASE_URL": url},
                check=True,
                cwd=ROOT,
            )
            results.append(json.loads(out.read_text()))
    text = report(results).markdown()
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "search_quality.json").write_text(json.dumps(results, indent=1))
    (RESULTS_DIR / "search_quality.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
