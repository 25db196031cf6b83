"""Simulated shoppers through the served gallery: every grid is a real request to the site.

    nice -n 10 .venv/bin/python bench/served_shoppers.py            # demo 2,000 + real rows 5,000 (~20 min, 2 cores)
    nice -n 10 .venv/bin/python bench/served_shoppers.py --quick    # demo 400, ~40 shoppers: a smoke run (~2 min)
    .venv/bin/python bench/served_shoppers.py --markdown /tmp/served.md --json /tmp/served.json

The shoppers, their judge, their targets and the catalogs are ``lab/shopper.py``'s, as
``bench/shopper_bench.py`` measures them in memory (its cached catalogs under
``~/.cache/visual-gallery/bench/shopper/`` are reused, embedding only what is missing). Here, though, the
catalog is stored in a throwaway SQLite database (products, their EfficientNet-Lite0 vectors in the active
space and their colour descriptors, as the embedding pipeline stores them), the index is built by
``recommender.services.index_rebuild``, and each round is ``GET /api/similar/<click>?trail=...`` with the
trail built by the page's own links (``gallery.trail.Trail.then / marked / aspected``). A shopper starts
from the home page's grid (``GET /api/search``: the starting grid) or from a text search of the target's
noun (``GET /api/search?q=noun``, then ``q`` passed on, as the page's links carry it).

Reported, per catalog: found within 1..8 clicks for ``REFINE_STRATEGY`` neighbours, trail and refine,
for shoppers who only click, who also pin and say "not like this", and who say "same colour" / "same
shape"; the lab harness's numbers on the same targets beside them; and type / colour precision@10 of the
served single-click grids (the first 10 of ``/api/similar/<id>``) for the held-out query products under
"trail" (the image vector alone) and "refine". Nothing here asserts; docs/quality.md records the numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

# Many small matrix products: one BLAS thread each is faster on a shared 2-core machine (see shopper_bench).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Table  # noqa: E402
from lab import shopper  # noqa: E402
from recommender import feedback  # noqa: E402

logger = logging.getLogger("bench.served_shoppers")

STRATEGIES = ("neighbours", "trail", "refine")
BEHAVIOURS = (
    shopper.CLICKS,
    shopper.PIN_DISLIKE,
    shopper.ASPECTS,
    replace(shopper.CLICKS, name="click, text start", start="text"),
)
REPORTED = (1, 2, 3, 5, 8)
K_PRECISION = 10
# A grid's tiles on the page: the product's link is the tile's first anchor.
_PAGE_TILE = re.compile(r'<li class="card">\s*<a href="/similar/(\d+)/')


# --- The served site ------------------------------------------------------------------------------------------


@dataclass
class ServedSite:
    """The gallery as a shopper meets it: its API (or its pages) through Django's test client.

    ``catalog`` gives the judge's labels; its ids are the stored products'. ``via`` is "api" (GET
    /api/similar, which counts the grid a trail started from as shown only when ``q`` is sent) or
    "page" (GET /similar/<id>/, which counts the starting grid too, as the site's own links do).
    """

    client: Any  # django.test.Client
    catalog: shopper.ShopperCatalog
    via: str = "api"
    requests: int = 0
    _rows: dict[int, int] = field(default_factory=dict)
    _starts: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rows = {int(pid): row for row, pid in enumerate(self.catalog.ids.tolist())}
        if self.via not in {"api", "page"}:
            raise ValueError(f"via must be api or page, not {self.via!r}")

    def _get(self, path: str, params: dict[str, str]) -> Any:
        self.requests += 1
        response = self.client.get(path, params)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} {params} answered {response.status_code}: {response.content[:300]!r}")
        return response

    def rows_of(self, ids: Sequence[int]) -> np.ndarray:
        return np.asarray([self._rows[int(pid)] for pid in ids], dtype=np.int64)

    def search(self, q: str) -> list[int]:
        """The home page's grid for a text query ("" for the starting grid), as ids."""
        if q not in self._starts:
            found = self._get("/api/search", {"q": q} if q else {}).json()["results"]
            self._starts[q] = [int(item["id"]) for item in found]
        return self._starts[q]

    def start(self, behaviour: shopper.Behaviour, target: int) -> tuple[np.ndarray, str]:
        """(the first grid's rows, the text query the trail carries: "" for the starting grid)."""
        if behaviour.start == "text":
            word = shopper.query_word(self.catalog.names[target])
            ids = self.search(word) if word else []
            if ids:
                return self.rows_of(ids), word
        return self.rows_of(self.search("")), ""

    def grid(self, *, trail: Any, anchor: int, q: str) -> np.ndarray:
        """The grid's rows for ``trail`` (a gallery.trail.Trail) on the page of product ``anchor``."""
        # q names where the trail began, as the page's links do: "" the starting grid, else the text search.
        params = {"trail": str(trail), "q": q}
        if self.via == "page":
            html = self._get(f"/similar/{anchor}/", params).content.decode()
            return self.rows_of([int(pid) for pid in _PAGE_TILE.findall(html)])
        found = self._get(f"/api/similar/{anchor}", params).json()["results"]
        return self.rows_of([int(item["id"]) for item in found])

    def similar_ids(self, product_id: int) -> list[int]:
        """A single click's grid (no trail, no query), as the API returns it."""
        return [int(item["id"]) for item in self._get(f"/api/similar/{product_id}", {}).json()["results"]]


def served_shopper_run(
    *,
    site: ServedSite,
    judge: shopper.Judge,
    target: int,
    behaviour: shopper.Behaviour,
    rounds: int = shopper.ROUNDS,
) -> int | None:
    """``lab.shopper.shopper_run``'s shopper, its grids from the served site; clicks needed, None if not found.

    The shopper does what the lab's does, but through the page's links: a click is ``Trail.then``; "not like
    this" on a tile is a click on it marked ``n`` before the real click (the trail ``...,n<tile>,<click>``,
    the same steps as the lab's); pinning and aspects mark the clicked step.
    """
    from gallery.trail import Trail

    ids = site.catalog.ids
    grid, q = site.start(behaviour, target)
    trail = Trail()
    dislikes = 0
    for clicks in range(rounds + 1):
        if (grid == target).any() or judge.equal(target, grid).any():
            return clicks
        if clicks == rounds or not len(grid):
            return None
        distances = judge.distance(target, grid)
        pick = int(grid[int(np.argmin(distances))])  # ties: the tile shown first
        if (
            behaviour.dislike
            and dislikes < behaviour.max_dislikes
            and int(grid[0]) != pick
            and distances[0] >= distances.min() + behaviour.dislike_margin
        ):
            trail = trail.then(int(ids[grid[0]]))
            trail = trail.marked(len(trail) - 1, feedback.DISLIKED)
            dislikes += 1
        trail = trail.then(int(ids[pick]))
        last = len(trail) - 1
        if behaviour.pin and judge.types[pick] == judge.types[target]:
            if judge.colour_names[pick] == judge.colour_names[target]:
                trail = trail.marked(last, feedback.PINNED)
        if behaviour.aspects:
            if judge.colour_names[pick] == judge.colour_names[target]:
                trail = trail.aspected(last, "c")
            elif judge.types[pick] == judge.types[target]:
                trail = trail.aspected(last, "s")
        grid = site.grid(trail=trail, anchor=int(ids[pick]), q=q)
    return None


def served_simulate(
    *, site: ServedSite, judge: shopper.Judge, targets: np.ndarray, behaviour: shopper.Behaviour
) -> list[float]:
    """found_curve over ``targets`` for the strategy the site serves now."""
    found = [served_shopper_run(site=site, judge=judge, target=int(t), behaviour=behaviour) for t in targets]
    return shopper.found_curve(found)


def strategy_serve(name: str) -> None:
    """Serve ``name`` (REFINE_STRATEGY) from now on, forgetting the prefix grids another strategy ranked.

    ``recommender.refine`` keys its remembered prefix grids by space, build, k, filters, first grid and MMR
    strength, not by the strategy: "neighbours" and "trail" (both without MMR) would share them.
    """
    from django.conf import settings
    from django.core.cache import cache

    from recommender import refine

    settings.REFINE_STRATEGY = name
    refine.forget()
    cache.delete_pattern("*recommender:shown:*")


# --- Storing a catalog ------------------------------------------------------------------------------------------


def catalog_store(cat: shopper.ShopperCatalog, rows: Sequence[dict[str, object]]) -> str:
    """Replace the database's catalog with ``cat``: products, their vectors in the active space, colours; index it.

    Returns the active space. The vectors must be the active encoder's (EfficientNet-Lite0 raw vectors).
    """
    from gallery import cards, search
    from gallery.models import Product
    from recommender import refine, runtime, services
    from recommender.colour import COLOUR_SPACE
    from recommender.models import Embedding, EmbeddingState, EmbedStatus
    from recommender.spaces import EFFICIENTNET_LITE0_ID, space_encoder_id

    space = runtime.active_space()
    if space != EFFICIENTNET_LITE0_ID or not cat.encoder_id.startswith("efficientnet-lite0"):
        raise RuntimeError(f"the site serves {space}, the catalog's vectors are {cat.encoder_id}: set ENCODER")
    assert space_encoder_id(space) == EFFICIENTNET_LITE0_ID
    Embedding.objects.all().delete()
    EmbeddingState.objects.all().delete()
    Product.objects.all().delete()
    by_id = {int(row["id"]): row for row in rows}
    batch = 1000
    ids = [int(i) for i in cat.ids.tolist()]
    Product.objects.bulk_create(
        [
            Product(
                id=pid,
                name=str(by_id[pid]["productDisplayName"] or f"Product {pid}"),
                gender=str(by_id[pid]["gender"] or ""),
                master_category=str(by_id[pid]["masterCategory"] or ""),
                sub_category=str(by_id[pid]["subCategory"] or ""),
                article_type=str(by_id[pid]["articleType"] or ""),
                base_colour=str(by_id[pid]["baseColour"] or ""),
                image_version=1,
            )
            for pid in ids
        ],
        batch_size=batch,
    )
    EmbeddingState.objects.bulk_create(
        [
            EmbeddingState(product_id=pid, image_name=f"bench/{pid}.jpg", image_version=1, status=EmbedStatus.DONE)
            for pid in ids
        ],
        batch_size=batch,
    )
    vectors = np.asarray(cat.vectors, dtype="<f4")
    colours = np.asarray(cat.colour_vectors, dtype="<f4")
    Embedding.objects.bulk_create(
        [
            Embedding(product_id=pid, space=space, dim=vectors.shape[1], vector=vectors[r].tobytes(), image_version=1)
            for r, pid in enumerate(ids)
        ]
        + [
            Embedding(
                product_id=pid, space=COLOUR_SPACE, dim=colours.shape[1], vector=colours[r].tobytes(), image_version=1
            )
            for r, pid in enumerate(ids)
            if colours[r].any()
        ],
        batch_size=batch,
    )
    runtime.reset()
    cards.forget()
    search.search_index_reset()
    refine.forget()
    services.index_rebuild()
    return space


# --- Measuring ----------------------------------------------------------------------------------------------------


def lab_curve(
    cat: shopper.ShopperCatalog,
    *,
    targets: np.ndarray,
    strategy: feedback.Strategy,
    behaviour: shopper.Behaviour,
    sorted_by_score: bool = False,
) -> list[float]:
    """The lab harness's found curve on the same targets (in memory, exact search, the lab's text search).

    ``sorted_by_score`` shows each grid best score first, as the served grid is, instead of in MMR's order.
    """
    engine = shopper.Engine(catalog=cat)
    judge = shopper.Judge.of(cat)
    if not sorted_by_score:
        return shopper.simulate(engine=engine, judge=judge, targets=targets, strategy=strategy, behaviour=behaviour)
    ranked = feedback.grid_rank

    def by_score(**kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        positions, scores = ranked(**kwargs)
        order = np.argsort(-scores, kind="stable")
        return positions[order], scores[order]

    with mock.patch.object(feedback, "grid_rank", by_score):
        return shopper.simulate(engine=engine, judge=judge, targets=targets, strategy=strategy, behaviour=behaviour)


def served_precision(site: ServedSite, cat: shopper.ShopperCatalog, queries: np.ndarray) -> dict[str, float]:
    """Type, colour and type+colour p@10 of the first 10 results of each query product's single-click grid."""
    hits = {"type": [], "colour": [], "type+colour": []}
    for row in queries.tolist():
        got = site.rows_of(site.similar_ids(int(cat.ids[row]))[:K_PRECISION])
        same_type = cat.article_types[got] == cat.article_types[row]
        same_colour = cat.colours[got] == cat.colours[row]
        hits["type"].append(same_type.mean())
        hits["colour"].append(same_colour.mean())
        hits["type+colour"].append((same_type & same_colour).mean())
    return {name: float(np.mean(values)) for name, values in hits.items()}


def catalog_measure(
    cat: shopper.ShopperCatalog,
    rows: Sequence[dict[str, object]],
    *,
    shoppers: int,
    behaviours: Sequence[shopper.Behaviour],
    lab: bool,
    page: bool,
) -> tuple[list[Table], dict]:
    from django.test import Client

    from bench.shopper_bench import precision_by, target_halves
    from lab.evaluation import split_stratified
    from recommender import colour

    started = time.perf_counter()
    space = catalog_store(cat, rows)
    logger.info("%s: stored and indexed in %.0f s (space %s)", cat.name, time.perf_counter() - started, space)
    _, report = target_halves(cat)
    targets = report[:shoppers]
    judge = shopper.Judge.of(cat)
    columns = ["strategy", "path", "shopper", *(f"f@{r}" for r in REPORTED), "requests", "s"]
    found = Table(
        f"Simulated shoppers through the served site, {cat.name} ({cat.encoder_id})",
        columns,
        note=f"{len(targets)} shoppers, held-out targets (report half); grids of {shopper.GRID}",
    )
    data: dict = {"shoppers": len(targets), "found": [], "precision": {}}

    def add(strategy: str, path: str, behaviour: shopper.Behaviour, curve: list[float], n: int, s: float) -> None:
        found.add(strategy, path, behaviour.name, *(curve[r] for r in REPORTED), n, round(s, 1))
        data["found"].append({"strategy": strategy, "path": path, "behaviour": behaviour.name, "found": curve})
        logger.info(
            "%s / %s / %s / %s: f@3 %.2f f@8 %.2f", cat.name, strategy, path, behaviour.name, curve[3], curve[8]
        )

    site = ServedSite(client=Client(), catalog=cat)
    for name in STRATEGIES:
        strategy_serve(name)
        for behaviour in behaviours:
            before, t0 = site.requests, time.perf_counter()
            curve = served_simulate(site=site, judge=judge, targets=targets, behaviour=behaviour)
            add(name, "served API", behaviour, curve, site.requests - before, time.perf_counter() - t0)
        if page and name == "refine":
            page_site = ServedSite(client=Client(), catalog=cat, via="page")
            for behaviour in behaviours[:1]:
                t0 = time.perf_counter()
                curve = served_simulate(site=page_site, judge=judge, targets=targets, behaviour=behaviour)
                add(name, "served page", behaviour, curve, page_site.requests, time.perf_counter() - t0)
    if lab:
        for name in STRATEGIES:
            for behaviour in behaviours:
                t0 = time.perf_counter()
                curve = lab_curve(cat, targets=targets, strategy=feedback.STRATEGIES[name], behaviour=behaviour)
                add(name, "lab", behaviour, curve, 0, time.perf_counter() - t0)
        t0 = time.perf_counter()
        curve = lab_curve(cat, targets=targets, strategy=feedback.REFINE, behaviour=behaviours[0], sorted_by_score=True)
        add("refine", "lab, grid sorted by score", behaviours[0], curve, 0, time.perf_counter() - t0)

    queries = split_stratified(ids=cat.ids, strata=cat.article_types).query
    precision = Table(
        f"Single-click grids, {cat.name}: p@{K_PRECISION} of the first {K_PRECISION} results",
        ["grid", "p@10 type", "p@10 colour", "p@10 type+colour"],
        note=f"{len(queries)} held-out query products; served: GET /api/similar/<id>, the whole catalog indexed",
    )
    for name, label in (("trail", "served, trail (before: image vector only)"), ("refine", "served, refine (after)")):
        strategy_serve(name)
        p = served_precision(site, cat, queries)
        precision.add(label, p["type"], p["colour"], p["type+colour"])
        data["precision"][name] = p
    lab_rows = {
        "lab harness, image vector": lambda q, i: cat.vectors[q] @ cat.vectors[i].T,
        "lab harness, blend w 0.2": lambda q, i: colour.blend(
            cat.vectors[q] @ cat.vectors[i].T,
            cat.colour_vectors[q] @ cat.colour_vectors[i].T,
            colour_weight=colour.DEFAULT_COLOUR_WEIGHT,
        ),
    }
    for label, scores_of in lab_rows.items():
        p = precision_by(cat, scores_of)
        precision.add(label, p["type"], p["colour"], p["type+colour"])
        data["precision"][label] = p
    return [found, precision], data


# --- The run -------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 demo products, 60 shoppers, no real rows")
    parser.add_argument("--shoppers", type=int, default=None, help="targets per catalog (default 500; quick 60)")
    parser.add_argument("--no-lab", action="store_true", help="skip the lab harness's rows on the same targets")
    parser.add_argument(
        "--page", action="store_true", help="also refine's clicking shoppers through the page (GET /similar/<id>/)"
    )
    parser.add_argument("--catalogs", default="demo,real", help="comma-separated: demo, real")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here as Markdown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from bench import shopper_bench
    from bench.common import environment_prepare

    tmp = Path(tempfile.mkdtemp(prefix="served-shoppers-"))
    environment_prepare(tmp)
    # A prefix of this run's own in Redis database 12: runs side by side never share cached grids or cards.
    os.environ["CACHE_KEY_PREFIX"] = f"gallery-served-{tmp.name}"
    os.environ["ENCODER"] = "efficientnet-lite0"  # the cached catalogs' vectors are EfficientNet-Lite0's
    os.environ["ALLOWED_HOSTS"] = "testserver"  # django.test.Client's host
    from bench.common import django_setup

    django_setup()
    # The site's logging settings (LOG_LEVEL=WARNING) would silence this run's progress lines.
    logger.disabled = False
    logger.setLevel(logging.INFO)

    shoppers = args.shoppers or (60 if args.quick else shopper_bench.SHOPPERS)
    bf16 = shopper_bench.bf16_default()
    kinds = ["demo"] if args.quick else [k.strip() for k in args.catalogs.split(",") if k.strip()]
    started = time.perf_counter()
    tables: list[Table] = []
    data: dict = {"bf16": bf16, "shoppers": shoppers, "catalogs": {}}
    for kind in kinds:
        if kind == "demo":
            count, seed = (400 if args.quick else shopper_bench.DEMO_COUNT), shopper_bench.DEMO_SEED
            directory = shopper_bench.demo_dir(count, seed)
        else:
            count, seed = shopper_bench.REAL_COUNT, shopper_bench.REAL_SEED
            directory = shopper_bench.real_dir(count, seed)
            if directory is None:
                print(f"{shopper_bench.REAL_STYLES} is absent: the real-rows catalog is skipped", file=sys.stderr)
                continue
        cat = shopper_bench.catalog(kind, count=count, seed=seed, encoder=shopper_bench.ENCODERS[0], bf16=bf16)
        assert cat is not None
        found, data["catalogs"][cat.name] = catalog_measure(
            cat,
            shopper.catalog_rows(directory),
            shoppers=shoppers,
            behaviours=BEHAVIOURS,
            lab=not args.no_lab,
            page=args.page,
        )
        tables += found
        for table in found:
            print(table.text(), end="\n\n", flush=True)
    from django.core.cache import cache

    cache.delete_pattern("*")  # this run's keys only (its own prefix)
    shopper_bench.outputs_write(args, tables=tables, data=data, started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
