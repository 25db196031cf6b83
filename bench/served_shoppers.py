"""What a shopper sees after a click, through the served site, on real art and on drawn catalogs.

    nice -n 10 .venv/bin/python bench/served_shoppers.py                       # art 2,000 + demo 400 + real 5,000
    nice -n 10 .venv/bin/python bench/served_shoppers.py --catalogs art-full   # every emoji (~4,700 products)
    nice -n 10 .venv/bin/python bench/served_shoppers.py --quick               # art 2,000 only, fewer paths
    .venv/bin/python bench/served_shoppers.py --strategies coherent,neighbours,refine-hide --markdown /tmp/s.md
    nice -n 10 .venv/bin/python bench/served_shoppers.py --quick --head pca256  # served 256-d PCA vectors
    .venv/bin/python bench/served_shoppers.py --catalogs art,art-full --strategies "" --float16  # float16 order

Every grid is a real request (``GET /api/search``, ``GET /api/similar/<id>?trail=...&q=...``) to the site
through Django's test client, the trail built by the page's own link rules (``gallery.trail.Trail``); the
strategy served is swapped in-process (``recommender.refine.strategy_served``), so each one answers the same
paths on the same stored catalog, beside the simplest alternative: the clicked product's plain neighbours.

Catalogs (``--catalogs``): ``art`` (about 2,000 products: every third emoji drawn by OpenMoji, JoyPixels and
Fluent, built by ``bench/art_catalog.py`` from their npm packages: real art the product did not draw),
``art-full`` (every emoji), ``demo`` (the 400-product demo catalog ``scripts/run.sh`` serves) and ``real``
(5,000 rows of ``../shared/data/styles.csv``, drawn; skipped when the file is absent). Vectors are
EfficientNet-Lite0's, cached under ``~/.cache/visual-gallery/bench/``.

Two measures, which must hold together:

* **Coherence** (seeded paths): a text search of a product's colour and type words, a click on the first
  result of that type, then two more clicks on the first tile of the clicked type; and a fresh click (no
  trail, no query: a trail begun on the home page's grid) with two more clicks after it the same way
  (``home: clicks 2-3``). Both walks of clicks 2-3 are also taken on a seeded random tile of the clicked
  type instead of the first (``, any tile``): a rule that reads which tile was clicked must not be chosen for
  the tile this bench happens to click. Per grid: the share holding the clicked product's type over min(25,
  other products of that type), the mean raw-vector cosine to the click, and whether it holds fewer than 10
  of the type (over types with at least 10 others). The same first click with each aspect (same colour, any
  colour, same shape) gives the type share and the share in the click's colour.
* **Convergence**: a shopper wants one product and starts from the home page's grid, or from a text search
  of the target's kind (its type words, never its name). Each round they click the tile a judge ranks
  closest to the target: the catalog's labels (type, group, colour) plus how alike the two pictures look
  (16x16 CIELAB thumbnails: pixels, not the product's encoder). Found means *that* product is on screen
  (on the art, any vendor's drawing of that emoji), never a product with equal labels. Found within 1, 3
  and 8 clicks, with 95 % Wilson intervals.

The site serves the raw vectors unless ``--head pcaN`` names a projection: PCA to N dimensions without
whitening, fitted as ``train_embedding_head --kind pca --no-whiten`` fits it (on the index side of the
held-out split of the catalog's own vectors) and served by ``use_projection``. The measures still read the
raw vectors (the cosine to the click), so both spaces are judged alike.

Nothing here asserts; docs/quality.md records the numbers.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

# Many small matrix products: one BLAS thread each is faster on a shared 2-core machine (see shopper_bench).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import query_bench  # noqa: E402
from bench.common import Table, outputs_arguments, outputs_write  # noqa: E402
from lab import shopper  # noqa: E402
from lab import strategies as lab_strategies  # noqa: E402
from recommender import colour, feedback  # noqa: E402

logger = logging.getLogger("bench.served_shoppers")

DEFAULT_STRATEGIES = ("neighbours", "coherent", "refine-hide")
COHERENCE_PATHS = 150
SHOPPERS = 300
CLICKS = 8
REPORTED = (1, 3, 8)
FEW = 10  # a grid with fewer than this many of the clicked type reads as incoherent
LOOK_SIDE = 16
LOOK_WEIGHT = 0.5  # the judge: labels first, then how alike the pictures look (at most half a type mismatch)
SEED = 11
ASPECTS = (("default", ""), ("same colour", "c"), ("any colour", "a"), ("same shape", "s"))


# --- Catalogs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalog:
    """A labelled catalog with vectors (``cat``), its rows for storing, and what the judge reads.

    ``same`` gives each product's identity: products sharing it are "that product" for a shopper who wants
    one of them (the art: one emoji by any vendor; elsewhere each product alone). ``looks`` are small CIELAB
    thumbnails, flattened: what a person sees, independent of the encoder.
    """

    name: str
    cat: shopper.ShopperCatalog
    rows: list[dict[str, object]]
    same: np.ndarray
    looks: np.ndarray
    kind_words: tuple[str, ...]

    @property
    def types(self) -> np.ndarray:
        return self.cat.article_types


def looks_of(paths: Sequence[Path]) -> np.ndarray:
    """Each image as a LOOK_SIDE-pixel CIELAB thumbnail, flattened: what the judge compares."""
    out = np.zeros((len(paths), LOOK_SIDE * LOOK_SIDE * 3), dtype=np.float32)
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            small = image.convert("RGB").resize((LOOK_SIDE, LOOK_SIDE), Image.Resampling.BOX)
        out[row] = colour.srgb_to_lab(np.asarray(small)).reshape(-1)
    return out


def catalog_of(cat: shopper.ShopperCatalog, directory: Path, *, name: str, cache: Path | None = None) -> Catalog:
    """The bench's view of a catalog directory (images/<id>.jpg, rows.json or styles.csv) with its vectors."""
    rows = shopper.catalog_rows(directory)
    ids = [int(i) for i in cat.ids.tolist()]
    if [int(row["id"]) for row in rows] != ids:
        raise ValueError(f"the rows of {directory} are not the catalog's products, in its order")
    looks_file = (cache or directory) / f"looks-{LOOK_SIDE}.npy"
    looks = np.load(looks_file) if looks_file.is_file() else None
    if looks is None or len(looks) != len(ids):
        looks = looks_of([directory / "images" / f"{pid}.jpg" for pid in ids])
        np.save(looks_file, looks)
    identity = [str(row.get("emoji") or row["id"]) for row in rows]
    return Catalog(
        name=name,
        cat=cat,
        rows=rows,
        same=np.unique(np.asarray(identity), return_inverse=True)[1].astype(np.int64),
        looks=looks,
        kind_words=tuple(str(t).lower() for t in cat.article_types),
    )


def catalog_load(kind: str, *, bf16: bool) -> Catalog | None:
    """One of the catalogs by name, with its vectors (embedded once, cached); None when its source is absent."""
    from bench import shopper_bench

    if kind in {"art", "art-full"}:
        from bench.art_catalog import art_catalog_dir

        directory = art_catalog_dir(size="full" if kind == "art-full" else "small")
    elif kind == "demo":
        directory = shopper_bench.demo_dir(400, shopper_bench.DEMO_SEED)
    elif kind == "real":
        directory = shopper_bench.real_dir(shopper_bench.REAL_COUNT, shopper_bench.REAL_SEED)
        if directory is None:
            return None
    else:
        raise ValueError(f"unknown catalog {kind!r}: art, art-full, demo or real")
    key = f"{shopper_bench.ENCODERS[0]}-{'bf16' if bf16 else 'fp32'}"
    cat = shopper.catalog_load(directory, name=kind, embed=shopper_bench.embedder(shopper_bench.ENCODERS[0], bf16=bf16),
                               encoder_key=key)  # fmt: skip
    return catalog_of(cat, directory, name=f"{kind} ({len(cat):,})")


# --- The served site --------------------------------------------------------------------------------------------


@dataclass
class ServedSite:
    """The gallery's API as a shopper's page uses it, through Django's test client; grids as catalog rows."""

    client: Any  # django.test.Client
    catalog: Catalog
    requests: int = 0
    _rows: dict[int, int] = field(default_factory=dict)
    _searches: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rows = {int(pid): row for row, pid in enumerate(self.catalog.cat.ids.tolist())}

    def _get(self, path: str, params: dict[str, str]) -> list[int]:
        self.requests += 1
        response = self.client.get(path, params)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} {params} answered {response.status_code}: {response.content[:300]!r}")
        return [self._rows[int(item["id"])] for item in response.json()["results"]]

    def search(self, q: str) -> np.ndarray:
        """The home page's grid for ``q`` ("" the starting grid), as rows; the same for every strategy."""
        if q not in self._searches:
            self._searches[q] = np.asarray(self._get("/api/search", {"q": q} if q else {}), dtype=np.int64)
        return self._searches[q]

    def similar(self, *, trail: Any, anchor: int, q: str | None) -> np.ndarray:
        """The grid after a click on row ``anchor`` with ``trail`` (a gallery.trail.Trail); q None: no query."""
        params = {"trail": str(trail)}
        if q is not None:
            params["q"] = q
        pid = int(self.catalog.cat.ids[anchor])
        return np.asarray(self._get(f"/api/similar/{pid}", params), dtype=np.int64)


@contextmanager
def served(strategy: feedback.Strategy) -> Iterator[None]:
    """Serve ``strategy`` for the requests made inside, with no grid another strategy ranked remembered."""
    from django.core.cache import cache

    from recommender import refine

    refine.forget()
    cache.delete_pattern("*recommender:grid:*")
    with mock.patch.object(refine, "strategy_served", return_value=strategy):
        yield


def catalog_store(catalog: Catalog) -> None:
    """Replace the database's catalog with ``catalog``: products, vectors in the active space, colours; index it."""
    from gallery import cards, search
    from gallery.models import Product
    from recommender import refine, runtime, services
    from recommender.colour import COLOUR_SPACE
    from recommender.models import Embedding, EmbeddingState, EmbedStatus
    from recommender.spaces import EFFICIENTNET_LITE0_ID

    cat = catalog.cat
    space = runtime.active_space()
    if space != EFFICIENTNET_LITE0_ID or not cat.encoder_id.startswith("efficientnet-lite0"):
        raise RuntimeError(f"the site serves {space}, the catalog's vectors are {cat.encoder_id}: set ENCODER")
    Embedding.objects.all().delete()
    EmbeddingState.objects.all().delete()
    Product.objects.all().delete()
    by_id = {int(row["id"]): row for row in catalog.rows}
    ids = [int(i) for i in cat.ids.tolist()]

    def text(pid: int, key: str) -> str:
        return str(by_id[pid].get(key) or "")

    Product.objects.bulk_create(
        [
            Product(id=pid, name=text(pid, "productDisplayName") or f"Product {pid}", gender=text(pid, "gender"),
                    master_category=text(pid, "masterCategory"), sub_category=text(pid, "subCategory"),
                    article_type=text(pid, "articleType"), base_colour=text(pid, "baseColour"), image_version=1)
            for pid in ids
        ],
        batch_size=1000,
    )  # fmt: skip
    EmbeddingState.objects.bulk_create(
        [EmbeddingState(product_id=pid, image_name=f"bench/{pid}.jpg", image_version=1, status=EmbedStatus.DONE)
         for pid in ids],
        batch_size=1000,
    )  # fmt: skip
    vectors = np.asarray(cat.vectors, dtype="<f4")
    colours = np.asarray(cat.colour_vectors, dtype="<f4")
    rows = [
        Embedding(product_id=pid, space=space, dim=vectors.shape[1], vector=vectors[r].tobytes(), image_version=1)
        for r, pid in enumerate(ids)
    ]
    rows += [
        Embedding(product_id=pid, space=COLOUR_SPACE, dim=colours.shape[1], vector=colours[r].tobytes(),
                  image_version=1)
        for r, pid in enumerate(ids)
        if colours[r].any()
    ]  # fmt: skip
    Embedding.objects.bulk_create(rows, batch_size=1000)
    runtime.reset()
    cards.forget()
    search.search_index_reset()
    refine.forget()
    services.index_rebuild()


def projection_serve(catalog: Catalog, *, head: str) -> str:
    """Serve the stored catalog's vectors projected by ``head`` (``pcaN``) as the product does; returns the space.

    Fitted by ``lab.heads.fit_pca`` on the held-out split's index products (``train_embedding_head --kind pca
    --no-whiten``), then ``use_projection`` stores the projected rows, builds that space's index and switches to it.
    """
    from django.core.management import call_command

    from lab import evaluation
    from lab.heads import fit_pca
    from recommender import runtime

    match = re.fullmatch(r"pca(\d+)", head)
    if match is None:
        raise ValueError(f"unknown head {head!r}: pcaN, e.g. pca256")
    cat = catalog.cat
    split = evaluation.split_stratified(ids=cat.ids.tolist(), strata=cat.article_types.tolist())
    projection = fit_pca(cat.vectors[split.index], dim=int(match[1]), whiten=False, encoder_id=runtime.active_space())
    path = projection.save(runtime.heads_dir())
    call_command("use_projection", str(path), stdout=io.StringIO())
    logger.info("%s: serving %s (%.1f %% of the variance; near neighbours' cosines %.2fx as spread as raw)",
                catalog.name, projection.space, 100 * projection.params["explained_variance"],
                projection.image_spread)  # fmt: skip
    return projection.space


# --- Coherence ---------------------------------------------------------------------------------------------------


@dataclass
class Grids:
    """Per-grid coherence readings of one kind of grid (after the text search, clicks 2-3, a fresh click)."""

    type_share: list[float] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    few: list[bool] = field(default_factory=list)
    colour_share: list[float] = field(default_factory=list)

    def add(self, catalog: Catalog, grid: np.ndarray, click: int, trail_rows: Sequence[int]) -> None:
        types, colours = catalog.types, catalog.cat.colours
        same_type = types[grid] == types[click]
        others = int((types == types[click]).sum()) - sum(1 for r in trail_rows if types[r] == types[click])
        if others > 0:
            self.type_share.append(float(same_type.sum()) / min(len(grid) or 1, others))
        if others >= FEW:
            self.few.append(bool(same_type.sum() < FEW))
        vectors = catalog.cat.vectors
        if len(grid):
            self.cosine.append(float((vectors[grid] @ vectors[click]).mean()))
            self.colour_share.append(float((colours[grid] == colours[click]).mean()))


def coherence_paths(catalog: Catalog, *, count: int, seed: int) -> list[tuple[str, str]]:
    """Seeded (query, type) pairs: a product's colour and type words, as a shopper would type them."""
    rng = np.random.default_rng(seed)
    cat = catalog.cat
    picked = rng.choice(len(cat), size=min(count, len(cat)), replace=False)
    return [(f"{cat.colours[r]} {catalog.types[r]}".lower().strip(), str(catalog.types[r])) for r in picked.tolist()]


def coherence_walk(site: ServedSite, paths: Sequence[tuple[str, str]]) -> dict[str, Grids]:
    """Each path's grids under the strategy served now, by kind; aspects on the first click."""
    from gallery.trail import Trail

    catalog = site.catalog
    types = catalog.types
    kinds = ("text", "clicks 2-3", "fresh", "home: clicks 2-3", *(f"{k}{ANY_TILE}" for k in FOLLOWED),
             *(f"aspect: {a}" for a, _ in ASPECTS))  # fmt: skip
    out = {kind: Grids() for kind in kinds}
    for number, (q, kind) in enumerate(paths):
        first = site.search(q)
        matching = [int(r) for r in first if types[r] == kind]
        if not matching:
            continue
        click = matching[0]
        trail = Trail().then(int(catalog.cat.ids[click]))
        grid = site.similar(trail=trail, anchor=click, q=q)
        out["text"].add(catalog, grid, click, [click])
        out["aspect: default"].add(catalog, grid, click, [click])
        for label, code in ASPECTS[1:]:
            aspected = site.similar(trail=trail.aspected(0, code), anchor=click, q=q)
            out[f"aspect: {label}"].add(catalog, aspected, click, [click])
        fresh = site.similar(trail=Trail(), anchor=click, q=None)
        out["fresh"].add(catalog, fresh, click, [click])
        # Clicks 2-3 after the words, and after the same click with no words before it (a trail begun on the
        # home page's grid: it explores): on the first tile of the clicked type, and on any tile of it (seeded
        # per path), so that no rule is chosen for which tile the bench happens to click.
        home = Trail().then(int(catalog.cat.ids[click]))
        for followed, (start, words, begun) in zip(FOLLOWED, ((grid, q, trail), (fresh, None, home)), strict=True):
            _follow(site, out[followed], start, begun, [click], q=words)
            tile = np.random.default_rng([SEED, number]).random
            _follow(site, out[f"{followed}{ANY_TILE}"], start, begun, [click], q=words, pick=tile)
    return out


# The two walks of clicks 2-3 (after a text search; after a fresh click), and the suffix of their any-tile kinds.
FOLLOWED = ("clicks 2-3", "home: clicks 2-3")
ANY_TILE = ", any tile"


def _follow(
    site: ServedSite,
    into: Grids,
    grid: np.ndarray,
    trail: Any,
    clicked: list[int],
    *,
    q: str | None,
    pick: Callable[[], float] | None = None,
) -> None:
    """Two more clicks, each on a tile of the clicked type (the first; with ``pick``, the one at its uniform draw
    in [0, 1) of those tiles), each grid read into ``into``."""
    catalog = site.catalog
    types = catalog.types
    for _ in range(2):
        following = [int(r) for r in grid if types[r] == types[clicked[-1]]]
        if not following:
            break
        clicked.append(following[int(pick() * len(following)) if pick is not None else 0])
        trail = trail.then(int(catalog.cat.ids[clicked[-1]]))
        grid = site.similar(trail=trail, anchor=clicked[-1], q=q)
        into.add(catalog, grid, clicked[-1], clicked)


# --- Convergence ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LookJudge:
    """The shopper's eye: label distance (lab.shopper.Judge) plus how unlike the pictures are, at most 0.5."""

    labels: shopper.Judge
    looks: np.ndarray
    scale: float

    @classmethod
    def of(cls, catalog: Catalog) -> LookJudge:
        rng = np.random.default_rng(SEED)
        a, b = rng.integers(0, len(catalog.looks), size=(2, 2000))
        scale = float(np.median(np.linalg.norm(catalog.looks[a] - catalog.looks[b], axis=1))) or 1.0
        return cls(labels=shopper.Judge.of(catalog.cat), looks=catalog.looks, scale=scale)

    def distance(self, target: int, rows: np.ndarray) -> np.ndarray:
        look = np.linalg.norm(self.looks[rows] - self.looks[target], axis=1) / self.scale
        return self.labels.distance(target, rows) + LOOK_WEIGHT * np.minimum(1.0, look)


def converge(site: ServedSite, judge: LookJudge, target: int, *, start: str) -> int | None:
    """Clicks until the target (any product sharing its identity) is on screen; None if not within CLICKS."""
    from gallery.trail import Trail

    catalog = site.catalog
    q = catalog.kind_words[target] if start == "text" else ""
    grid = site.search(q)
    if not len(grid):
        q, grid = "", site.search("")
    trail = Trail()
    for clicks in range(CLICKS + 1):
        if (catalog.same[grid] == catalog.same[target]).any():
            return clicks
        if clicks == CLICKS or not len(grid):
            return None
        pick = int(grid[int(np.argmin(judge.distance(target, grid)))])  # ties: the tile shown first
        trail = trail.then(int(catalog.cat.ids[pick]))
        grid = site.similar(trail=trail, anchor=pick, q=q)
    return None


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def _mean_ci(values: Sequence[float]) -> str:
    if not values:
        return "-"
    a = np.asarray(values, dtype=np.float64)
    half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else math.nan
    return f"{a.mean():.2f} ± {half:.2f}"


def _share_ci(hits: int, n: int) -> str:
    low, high = wilson(hits, n)
    return f"{hits / n:.2f} [{low:.2f}, {high:.2f}]" if n else "-"


# --- The run -------------------------------------------------------------------------------------------------------


def catalog_measure(
    catalog: Catalog, strategies: Sequence[feedback.Strategy], *, paths: int, shoppers: int, head: str = ""
) -> tuple[list[Table], dict]:
    """Both measures for each strategy on ``catalog``, stored and served raw, or projected by ``head``."""
    from django.test import Client

    from recommender import runtime

    started = time.perf_counter()
    runtime.space_switch_write(runtime.space_encoder_id(runtime.active_space()))  # raw: a head is per catalog
    catalog_store(catalog)
    if head:
        projection_serve(catalog, head=head)
        catalog = replace(catalog, name=f"{catalog.name}, {head}")
    logger.info("%s stored and indexed in %.0f s", catalog.name, time.perf_counter() - started)
    site = ServedSite(client=Client(), catalog=catalog)
    walks = coherence_paths(catalog, count=paths, seed=SEED)
    judge = LookJudge.of(catalog)
    targets = np.sort(np.random.default_rng(SEED + 1).choice(len(catalog.cat), min(shoppers, len(catalog.cat)),
                                                             replace=False))  # fmt: skip
    coherence = Table(
        f"Coherence, {catalog.name}: the grid after a click, through GET /api/similar",
        ["strategy", "grid", "grids", "type share", "cosine to click", "< 10 of type", "colour share"],
        note=f"{len(walks)} seeded paths: a text search of a product's colour and type, a click on the first of "
        "that type, two more clicks on the first tile of the clicked type; fresh: no trail, no query (a trail "
        "begun on the home page's grid), and home: clicks 2-3 the two clicks after it; 'any tile': the same "
        "two clicks on a seeded random tile of the type. "
        "Means ± 95 % interval; '< 10 of type' over types with 10 or more others",
    )
    found = Table(
        f"Convergence, {catalog.name}: shoppers who want one product (found = that product on screen)",
        ["strategy", "start", "shoppers", *(f"found ≤ {r}" for r in REPORTED), "requests", "s"],
        note="each round the tile a judge ranks closest (labels + 16x16 CIELAB look); 95 % Wilson intervals",
    )
    data: dict = {"coherence": {}, "convergence": {}}
    for strategy in strategies:
        with served(strategy):
            t0 = time.perf_counter()
            grids = coherence_walk(site, walks)
            logger.info("%s / %s: coherence in %.0f s", catalog.name, strategy.name, time.perf_counter() - t0)
            data["coherence"][strategy.name] = {kind: g.__dict__ for kind, g in grids.items()}
            for kind, g in grids.items():
                coherence.add(strategy.name, kind, len(g.cosine), _mean_ci(g.type_share), _mean_ci(g.cosine),
                              _share_ci(sum(g.few), len(g.few)), _mean_ci(g.colour_share))  # fmt: skip
            for start in ("grid", "text"):
                t0, before = time.perf_counter(), site.requests
                clicks = [converge(site, judge, int(t), start=start) for t in targets]
                seconds = time.perf_counter() - t0
                cells = []
                for r in REPORTED:
                    cells.append(_share_ci(sum(1 for c in clicks if c is not None and c <= r), len(clicks)))
                found.add(strategy.name, start, len(clicks), *cells, site.requests - before, round(seconds, 1))
                data["convergence"][f"{strategy.name}/{start}"] = clicks
                logger.info("%s / %s / %s: %s", catalog.name, strategy.name, start, " ".join(cells))
    return [coherence, found, *summary_tables(catalog.name, data)], data


def summary_tables(name: str, data: dict) -> list[Table]:
    """Each strategy beside plain neighbours on both measures, and the served strategy's aspects."""
    coherence, convergence = data["coherence"], data["convergence"]
    if "neighbours" not in coherence:
        return []
    plain = coherence["neighbours"]

    def mean(values: list) -> float:
        return float(np.mean(values)) if values else math.nan

    def versus(kinds: dict, kind: str) -> tuple[float, float]:
        """The kind's type share over neighbours', and its points: grids with fewer than 10 of the type, minus
        neighbours' share, in percentage points."""
        ours, base = kinds[kind], plain[kind]
        return mean(ours["type_share"]) / mean(base["type_share"]), 100 * (mean(ours["few"]) - mean(base["few"]))

    def beside(kinds: dict, kind: str) -> str:
        """``versus`` as "ratio / points"; "-" for a file from before the kind."""
        if kind not in kinds or kind not in plain:
            return "-"
        ratio, points = versus(kinds, kind)
        return f"{ratio:.2f} / {points:+.0f}"

    def found(key: str, within: int) -> float:
        clicks = convergence[key]
        return sum(1 for c in clicks if c is not None and c <= within) / len(clicks)

    summary = Table(
        f"Summary, {name}: each strategy beside plain neighbours on the same paths",
        ["strategy", "type share, text / clicks 2-3", "x neighbours", "< 10 of type, points over neighbours",
         "home: clicks 2-3, x neighbours / points", "any tile: clicks 2-3 | home", "found ≤ 3 / ≤ 8, from the grid",
         "from a text search"],
        note="x neighbours: the type share over plain neighbours' (goal >= 0.8); points: the share of grids with "
        "fewer than 10 of the clicked type, minus neighbours' (goal <= 10); any tile: clicks 2-3 on a seeded "
        "random tile of the clicked type instead of the first, after words | from the home page's grid",
    )  # fmt: skip
    for strategy, kinds in coherence.items():
        grids = ("text", "clicks 2-3")
        shares = [mean(kinds[kind]["type_share"]) for kind in grids]
        ratios, points = zip(*(versus(kinds, kind) for kind in grids), strict=True)
        summary.add(
            strategy,
            f"{shares[0]:.2f} / {shares[1]:.2f}",
            f"{ratios[0]:.2f} / {ratios[1]:.2f}",
            f"{points[0]:+.0f} / {points[1]:+.0f}",
            beside(kinds, "home: clicks 2-3"),
            " | ".join(beside(kinds, f"{kind}{ANY_TILE}") for kind in FOLLOWED),
            f"{found(f'{strategy}/grid', 3):.2f} / {found(f'{strategy}/grid', 8):.2f}",
            f"{found(f'{strategy}/text', 3):.2f} / {found(f'{strategy}/text', 8):.2f}",
        )
    served = feedback.SHIPPED.name if feedback.SHIPPED.name in coherence else next(iter(coherence))
    aspects = Table(
        f"Aspects, {name}: {served}'s grid after a text search and a click, with the click's aspect",
        ["aspect", "type share", "colour share", "cosine to click"],
        note="colour share: the grid's share in the click's colour (baseColour)",
    )
    for label, _ in ASPECTS:
        kind = coherence[served][f"aspect: {label}"]
        aspects.add(label, _mean_ci(kind["type_share"]), _mean_ci(kind["colour_share"]), _mean_ci(kind["cosine"]))
    return [summary, aspects]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the art catalog only, 60 paths, 100 shoppers")
    parser.add_argument("--catalogs", default="art,demo,real", help="comma-separated: art, art-full, demo, real")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help=f"comma-separated, of: {', '.join(lab_strategies.STRATEGIES)}")  # fmt: skip
    parser.add_argument("--paths", type=int, default=None, help=f"coherence paths per catalog ({COHERENCE_PATHS})")
    parser.add_argument("--shoppers", type=int, default=None, help=f"shoppers per catalog and start ({SHOPPERS})")
    parser.add_argument("--head", default="", help="serve vectors projected by pcaN (PCA, not whitened; default raw)")
    parser.add_argument("--float16", action="store_true",
                        help="also: does each catalog's exact top 25 keep its order with float16 vectors")  # fmt: skip
    outputs_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    strategies = [lab_strategies.strategy_named(name.strip()) for name in args.strategies.split(",") if name.strip()]

    from bench import shopper_bench
    from bench.common import django_setup, environment_prepare

    tmp = Path(tempfile.mkdtemp(prefix="served-shoppers-"))
    environment_prepare(tmp)
    # A prefix of this run's own in Redis database 12: runs side by side never share cached grids or cards.
    os.environ["CACHE_KEY_PREFIX"] = f"gallery-served-{tmp.name}"
    os.environ["ENCODER"] = "efficientnet-lite0"  # the cached catalogs' vectors are EfficientNet-Lite0's
    os.environ["ALLOWED_HOSTS"] = "testserver"  # django.test.Client's host
    django_setup()
    logger.disabled = False  # the site's logging settings (LOG_LEVEL=WARNING) would silence progress lines
    logger.setLevel(logging.INFO)

    paths = args.paths or (60 if args.quick else COHERENCE_PATHS)
    shoppers = args.shoppers or (100 if args.quick else SHOPPERS)
    kinds = ["art"] if args.quick else [k.strip() for k in args.catalogs.split(",") if k.strip()]
    bf16 = shopper_bench.bf16_default()
    started = time.perf_counter()
    tables: list[Table] = []
    data: dict = {"bf16": bf16, "strategies": [s.name for s in strategies], "head": args.head, "catalogs": {}}
    for kind in kinds:
        catalog = catalog_load(kind, bf16=bf16)
        if catalog is None:
            print(f"{shopper_bench.REAL_STYLES} is absent: the real-rows catalog is skipped", file=sys.stderr)
            continue
        found = []
        if args.float16:
            vectors = catalog.cat.vectors
            order = query_bench.float16_order(vectors, vectors, own=np.arange(len(vectors)))
            found.append(query_bench.float16_table(f"float16 vectors, {catalog.name}: each product's top 25", order))
            data.setdefault("float16", {})[catalog.name] = order
        if strategies:
            measured, data["catalogs"][catalog.name] = catalog_measure(
                catalog, strategies, paths=paths, shoppers=shoppers, head=args.head
            )
            found += measured
        tables += found
        for table in found:
            print(table.text(), end="\n\n", flush=True)
    from django.core.cache import cache

    cache.delete_pattern("*")  # this run's keys only (its own prefix)
    outputs_write(args, tables=tables, data=data, started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
