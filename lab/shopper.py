"""Simulated shoppers for click-to-refine: labelled catalogs with vectors, a judge, and the browsing loop.

A shopper wants one target product. They start from the starting grid or from a text query, and each round
click the shown product that a *judge* built from the catalog's labels ranks closest to the target; in a
variant they also pin steps, mark products "not like this", or say "same colour" on a step. A shopper has
*found* the target when it, or a product equal to it on the judged labels, is in the grid. Everything runs
in memory with exact cosine search over the catalog's vectors (no HTTP, no database); grids are ranked by the
functions the gallery's similarity grids are meant to call (:mod:`recommender.feedback`, :mod:`recommender.colour`).

Two catalogs: the drawn demo catalog (:mod:`lab.demo`) and rows of a real ``styles.csv`` drawn the same
way (:func:`real_rows_draw`), one image per row, so the labels and their skew are the real catalog's.
Lab code: no Django; called by ``bench/shopper_bench.py`` and the tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from gallery.catalog import CatalogRow, styles_read
from lab import demo
from recommender import colour, feedback
from recommender.preprocess import ImageRejected, image_prepare

logger = logging.getLogger(__name__)

CACHE_DIR = Path.home() / ".cache" / "visual-gallery" / "bench" / "shopper"
GRID = 25
ROUNDS = 8

RGB = tuple[int, int, int]

# --- Real rows, drawn ------------------------------------------------------------------------------------------

# The colours the real styles.csv names, beyond the demo's palette, as sRGB a catalog photo would show.
REAL_COLOURS: dict[str, RGB] = {
    **demo.PALETTE,
    "Silver": (192, 192, 196),
    "Gold": (206, 168, 78),
    "Multi": (200, 80, 150),
    "Cream": (240, 228, 196),
    "Steel": (120, 130, 140),
    "Charcoal": (64, 66, 70),
    "Peach": (250, 180, 140),
    "Off White": (236, 232, 218),
    "Skin": (230, 190, 160),
    "Lavender": (180, 160, 220),
    "Grey Melange": (170, 170, 172),
    "Khaki": (190, 170, 110),
    "Magenta": (200, 30, 140),
    "Tan": (200, 150, 100),
    "Mustard": (220, 170, 40),
    "Bronze": (160, 110, 50),
    "Copper": (184, 115, 51),
    "Turquoise Blue": (40, 190, 200),
    "Rust": (180, 70, 30),
    "Burgundy": (110, 20, 40),
    "Metallic": (170, 170, 180),
    "Coffee Brown": (90, 60, 40),
    "Mauve": (180, 120, 150),
    "Rose": (230, 100, 120),
    "Nude": (225, 185, 160),
    "Sea Green": (46, 160, 120),
    "Mushroom Brown": (150, 120, 100),
    "Taupe": (140, 120, 105),
    "Lime Green": (140, 210, 60),
    "Fluorescent Green": (100, 255, 60),
    "NA": (128, 128, 128),
}

# Real articleTypes drawn with a demo drawer: by type, then subCategory, then masterCategory. A type that is
# not itself a demo type gets its own proportions (see _real_article), so two types sharing a drawer differ.
_BY_TYPE = {
    "Kurtas": "Shirts",
    "Kurtis": "Tops",
    "Tunics": "Tops",
    "Sweaters": "Sweatshirts",
    "Blazers": "Jackets",
    "Waistcoat": "Jackets",
    "Shrug": "Jackets",
    "Rain Jacket": "Jackets",
    "Track Pants": "Trousers",
    "Leggings": "Jeans",
    "Capris": "Trousers",
    "Sarees": "Dresses",
    "Nightdress": "Dresses",
    "Night suits": "Shirts",
    "Lounge Pants": "Trousers",
    "Briefs": "Shorts",
    "Trunk": "Shorts",
    "Boxers": "Shorts",
    "Bra": "Tops",
    "Innerwear Vests": "Tops",
    "Camisoles": "Tops",
    "Flats": "Casual Shoes",
    "Clutches": "Handbags",
    "Wallets": "Handbags",
    "Duffel Bag": "Backpacks",
    "Laptop Bag": "Handbags",
    "Messenger Bag": "Handbags",
    "Ties": "Belts",
    "Socks": "Flip Flops",
}
_BY_SUB = {
    "Topwear": "Tshirts",
    "Bottomwear": "Trousers",
    "Dress": "Dresses",
    "Saree": "Dresses",
    "Innerwear": "Shorts",
    "Loungewear and Nightwear": "Dresses",
    "Apparel Set": "Tshirts",
    "Shoes": "Casual Shoes",
    "Sandal": "Sandals",
    "Flip Flops": "Flip Flops",
    "Bags": "Handbags",
    "Wallets": "Handbags",
    "Watches": "Watches",
    "Jewellery": "Watches",
    "Eyewear": "Sunglasses",
    "Belts": "Belts",
    "Headwear": "Caps",
    "Ties": "Belts",
    "Cufflinks": "Watches",
}
_BY_MASTER = {"Apparel": "Tshirts", "Footwear": "Casual Shoes", "Accessories": "Backpacks"}
_FALLBACK = "Handbags"  # personal care, free gifts, sporting goods: boxes and bottles

_PATTERNS = (
    (re.compile(r"\bpolka\b", re.IGNORECASE), "Polka Dot"),
    (re.compile(r"\bstrip(?:e|ed|es)\b", re.IGNORECASE), "Striped"),
    (re.compile(r"\bcheck(?:s|ed)?\b", re.IGNORECASE), "Checked"),
    (re.compile(r"\bprint(?:s|ed)?\b", re.IGNORECASE), "Printed"),
)


def pattern_from_name(name: str) -> str:
    """The pattern a display name states (Striped, Checked, Polka Dot, Printed), else Solid."""
    for expression, pattern in _PATTERNS:
        if expression.search(name):
            return pattern
    return "Solid"


def _unit_hash(*parts: object) -> float:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _real_article(article_type: str, sub: str, master: str) -> demo.Article:
    by_name = {a.name: a for a in demo.ARTICLES}
    if article_type in by_name:
        return by_name[article_type]
    base = by_name[drawn_as(article_type, sub, master)]
    # Proportions from the type's name: stable across runs, different for types sharing a drawer.
    stretch = 0.7 + 0.6 * _unit_hash("aspect", article_type)
    size = 0.75 + 0.25 * _unit_hash("size", article_type)
    return replace(
        base, name=article_type, aspect=(base.aspect[0] * stretch, base.aspect[1] * stretch), size=base.size * size
    )


def _render(article: demo.Article, base_rgb: RGB, pattern: str, r: random.Random, noise: Image.Image) -> Image.Image:
    """One product photo, drawn as lab.demo draws its own, in any colour, on one of four backgrounds."""
    return demo.product_render(article, base_rgb, pattern, r, noise, backgrounds=demo.BACKGROUNDS[:4])[0]


def product_draw(
    *, article_type: str, colour_name: str, pattern: str = "Solid", seed: int = 0, sub: str = "", master: str = ""
) -> Image.Image:
    """One product photo as the demo catalog draws it: ``article_type`` (a demo or real type), a colour name
    of REAL_COLOURS, a pattern (Solid, Striped, Checked, Polka Dot, Printed). Deterministic for a seed."""
    article = _real_article(article_type, sub, master)
    return _render(article, REAL_COLOURS[colour_name], pattern, random.Random(seed), _film_grain(seed))


def _film_grain(seed: int) -> Image.Image:
    grain = np.random.default_rng(seed).normal(128.0, 2.0, (800, 640, 3))
    return Image.fromarray(np.clip(np.rint(grain), 0, 255).astype(np.uint8), "RGB")


def drawn_as(article_type: str, sub: str = "", master: str = "") -> str:
    """The demo drawer (a demo article type) that draws a real ``article_type``."""
    names = {a.name for a in demo.ARTICLES}
    if article_type in names:
        return article_type
    return _BY_TYPE.get(article_type) or _BY_SUB.get(sub) or _BY_MASTER.get(master) or _FALLBACK


def row_label(row: CatalogRow) -> dict[str, object]:
    """The labels of one styles.csv row that the harnesses read (``rows.json``), the pattern as it is drawn."""
    f = row.fields
    name = str(f["name"] or "")
    return {
        "id": row.id,
        "gender": f["gender"],
        "masterCategory": f["master_category"],
        "subCategory": f["sub_category"],
        "articleType": f["article_type"],
        "baseColour": f["base_colour"],
        "pattern": "Printed" if f["base_colour"] == "Multi" else pattern_from_name(name),
        "productDisplayName": name,
    }


def real_row_image(row: CatalogRow, *, seed: int, noise: Image.Image | None = None) -> Image.Image:
    """One real styles.csv row drawn as the demo draws: its articleType mapped to a demo drawer (with the
    type's own proportions), its baseColour as sRGB, the pattern its name states. Deterministic for a seed."""
    f, label = row.fields, row_label(row)
    article = _real_article(str(f["article_type"]), str(f["sub_category"]), str(f["master_category"]))
    rgb = REAL_COLOURS.get(str(f["base_colour"]), REAL_COLOURS["NA"])
    noise = noise if noise is not None else _film_grain(seed)
    return _render(article, rgb, str(label["pattern"]), random.Random(f"{seed}:{row.id}"), noise)


def _rows_save(job: tuple[Path, list[CatalogRow], int]) -> int:
    images, rows, seed = job
    noise = _film_grain(seed)
    for row in rows:
        real_row_image(row, seed=seed, noise=noise).save(images / f"{row.id}.jpg", format="JPEG", quality=90)
    return len(rows)


def real_rows_images(
    rows: Sequence[CatalogRow], *, images: Path, seed: int, processes: int = 1, log: Callable[[str], None] | None = None
) -> None:
    """Save ``images/<id>.jpg`` for each row (see real_row_image), in ``processes`` processes, 500 rows a job."""
    images.mkdir(parents=True, exist_ok=True)
    jobs = [(images, list(rows[i : i + 500]), seed) for i in range(0, len(rows), 500)]
    if processes <= 1:
        for job in jobs:
            _rows_save(job)
        return
    with get_context("fork").Pool(processes) as pool:
        done = 0
        for n in pool.imap_unordered(_rows_save, jobs):
            done += n
            if log and done % 5000 < 500:
                log(f"  drawn {done}/{len(rows)} images")


def real_rows_draw(*, styles: Path, out_dir: Path, count: int, seed: int) -> Path:
    """Draw ``count`` rows sampled (seeded) from a real ``styles.csv`` into ``out_dir``; returns ``out_dir``.

    Writes ``out_dir/rows.json`` (the sampled rows' labels, see row_label) and ``out_dir/images/<id>.jpg``
    (see real_row_image). Rows that cannot be parsed are left out. Deterministic for a seed; overwrites files
    of the same names only.
    """
    rows = [row for row in styles_read(Path(styles)) if isinstance(row, CatalogRow)]
    chosen = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))]
    real_rows_images(chosen, images=Path(out_dir) / "images", seed=seed)
    (Path(out_dir) / "rows.json").write_text(json.dumps([row_label(row) for row in chosen]), encoding="utf-8")
    return Path(out_dir)


def real_catalog_draw(
    *, styles: Path, out_dir: Path, rows: int | None, seed: int, log: Callable[[str], None] | None = None
) -> int:
    """``out_dir/styles.csv``, the first ``rows`` data lines of ``styles`` (all when None) copied byte for byte,
    and an image of each row that parses, drawn in two processes (see real_row_image); returns the lines.

    The lines are copied unchanged, so the catalog keeps the real file's faults (unquoted commas, empty
    names) for an import to meet.
    """
    lines = Path(styles).read_text(encoding="utf-8").splitlines(keepends=True)
    header, body = lines[0], [line for line in lines[1:] if line.strip()]
    body = body[:rows] if rows else body
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "styles.csv").write_text(header + "".join(body), encoding="utf-8")
    parsed = [row for row in styles_read(out_dir / "styles.csv") if isinstance(row, CatalogRow)]
    real_rows_images(parsed, images=out_dir / "images", seed=seed, processes=2, log=log)
    return len(body)


# --- Labelled catalogs with vectors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopperCatalog:
    """Products aligned row by row: labels the judge reads, image vectors and colour descriptors the grids use."""

    name: str
    ids: np.ndarray
    names: tuple[str, ...]
    article_types: np.ndarray
    sub_categories: np.ndarray
    master_categories: np.ndarray
    colours: np.ndarray
    patterns: np.ndarray
    vectors: np.ndarray
    colour_vectors: np.ndarray
    encoder_id: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def with_vectors(self, vectors: np.ndarray, *, encoder_id: str) -> ShopperCatalog:
        """The same products and labels in another space (another encoder, a projection)."""
        if len(vectors) != len(self):
            raise ValueError("one vector per product is needed")
        return replace(self, vectors=np.asarray(vectors, dtype=np.float32), encoder_id=encoder_id)


def catalog_rows(directory: Path) -> list[dict[str, object]]:
    """Labelled rows of a catalog directory: ``rows.json`` (real rows drawn here) or ``styles.csv`` (the demo)."""
    directory = Path(directory)
    if (directory / "rows.json").is_file():
        return json.loads((directory / "rows.json").read_text(encoding="utf-8"))
    return [row_label(row) for row in styles_read(directory / "styles.csv") if isinstance(row, CatalogRow)]


def colour_descriptors_of(paths: Sequence[Path], *, size: int = 224) -> np.ndarray:
    """Colour descriptors of image files as the product path would compute them: on the prepared white square."""
    out = np.zeros((len(paths), colour.COLOUR_DIM), dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            out[i] = colour.colour_descriptor(image_prepare(path, size=size))
        except (ImageRejected, OSError) as exc:
            logger.warning("No colour descriptor for %s: %s", path, exc)
    return out


def catalog_load(
    directory: Path,
    *,
    name: str,
    embed: Callable[[Sequence[Path]], np.ndarray],
    encoder_key: str,
    cache: Path | None = None,
) -> ShopperCatalog:
    """The catalog in ``directory`` with its vectors, embedding (``embed``) only what ``cache`` lacks.

    ``cache`` (default: ``directory``) keeps ``vectors-<encoder_key>.npy`` and ``colours-<COLOUR_DIM>.npy``, so a
    second run reads them instead of embedding again. ``embed`` maps image paths to unit rows.
    """
    directory = Path(directory)
    cache = Path(cache or directory)
    cache.mkdir(parents=True, exist_ok=True)
    rows = catalog_rows(directory)
    paths = [directory / "images" / f"{row['id']}.jpg" for row in rows]
    vectors_file = cache / f"vectors-{encoder_key}.npy"
    if vectors_file.is_file():
        vectors = np.load(vectors_file)
    else:
        vectors = np.asarray(embed(paths), dtype=np.float32)
        np.save(vectors_file, vectors)
    colours_file = cache / f"colours-{colour.COLOUR_DIM}.npy"
    if colours_file.is_file():
        colour_vectors = np.load(colours_file)
    else:
        colour_vectors = colour_descriptors_of(paths)
        np.save(colours_file, colour_vectors)
    if len(vectors) != len(rows) or len(colour_vectors) != len(rows):
        raise ValueError(f"cached vectors in {cache} do not match the catalog's {len(rows)} rows; delete them")

    def column(key: str) -> np.ndarray:
        return np.asarray([str(row[key] or "") for row in rows], dtype=str)

    return ShopperCatalog(
        name=name,
        ids=np.asarray([int(row["id"]) for row in rows], dtype=np.int64),
        names=tuple(str(row["productDisplayName"] or "") for row in rows),
        article_types=column("articleType"),
        sub_categories=column("subCategory"),
        master_categories=column("masterCategory"),
        colours=column("baseColour"),
        patterns=column("pattern"),
        vectors=vectors,
        colour_vectors=colour_vectors,
        encoder_id=encoder_key,
    )


# --- The judge ---------------------------------------------------------------------------------------------------

# How far apart two products are for a shopper, from their labels: the type matters most (a shopper after a
# red shirt takes a blue shirt over a red watch), then the colour (by perceptual distance of the named colours,
# so maroon is nearer red than green is), then the pattern.
TYPE_WEIGHT = 1.0
COLOUR_WEIGHT = 0.5
PATTERN_WEIGHT = 0.25
SAME_SUB_CATEGORY = 0.6  # type distance of another type in the same subCategory (shirt vs t-shirt)
SAME_MASTER_CATEGORY = 0.8
COLOUR_FAR_DELTA_E = 60.0  # CIELAB distance beyond which two colours are simply different


def _codes(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1].astype(np.int32)


@dataclass(frozen=True)
class Judge:
    """Ranks products by how close they are to a target on the catalog's labels (type, colour, pattern)."""

    types: np.ndarray
    subs: np.ndarray
    masters: np.ndarray
    colour_names: np.ndarray
    colour_lab: np.ndarray
    patterns: np.ndarray

    @classmethod
    def of(cls, catalog: ShopperCatalog) -> Judge:
        rgb = np.array([REAL_COLOURS.get(str(c), REAL_COLOURS["NA"]) for c in catalog.colours], dtype=np.uint8)
        return cls(
            types=_codes(catalog.article_types),
            subs=_codes(np.char.add(np.char.add(catalog.master_categories, "|"), catalog.sub_categories)),
            masters=_codes(catalog.master_categories),
            colour_names=_codes(catalog.colours),
            colour_lab=colour.srgb_to_lab(rgb),
            patterns=_codes(catalog.patterns),
        )

    def distance(self, target: int, rows: np.ndarray) -> np.ndarray:
        """Label distance of each of ``rows`` (positions) to ``target``: 0 for an equal product."""
        rows = np.asarray(rows, dtype=np.int64)
        type_distance = np.where(
            self.types[rows] == self.types[target],
            0.0,
            np.where(
                self.subs[rows] == self.subs[target],
                SAME_SUB_CATEGORY,
                np.where(self.masters[rows] == self.masters[target], SAME_MASTER_CATEGORY, 1.0),
            ),
        )
        delta_e = np.linalg.norm(self.colour_lab[rows] - self.colour_lab[target], axis=1)
        colour_distance = np.where(
            self.colour_names[rows] == self.colour_names[target], 0.0, np.minimum(1.0, delta_e / COLOUR_FAR_DELTA_E)
        )
        pattern_distance = (self.patterns[rows] != self.patterns[target]).astype(np.float64)
        return TYPE_WEIGHT * type_distance + COLOUR_WEIGHT * colour_distance + PATTERN_WEIGHT * pattern_distance

    def equal(self, target: int, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` the shopper would take for the target: same type, colour and pattern."""
        rows = np.asarray(rows, dtype=np.int64)
        return (
            (self.types[rows] == self.types[target])
            & (self.colour_names[rows] == self.colour_names[target])
            & (self.patterns[rows] == self.patterns[target])
        )


# --- Starting points ---------------------------------------------------------------------------------------------


def starting_grid(catalog: ShopperCatalog, *, k: int = GRID) -> np.ndarray:
    """Positions of the gallery's starting grid: the lowest id of each of the k most common types, then by id."""
    by_id = np.argsort(catalog.ids, kind="stable")
    lowest: dict[str, int] = {}
    for row in by_id.tolist():
        lowest.setdefault(str(catalog.article_types[row]), row)
    types, counts = np.unique(catalog.article_types, return_counts=True)
    order = sorted(range(len(types)), key=lambda i: (-counts[i], types[i]))
    rows = [lowest[str(types[i])] for i in order[:k]]
    taken = set(rows)
    rows += [row for row in by_id.tolist() if row not in taken][: k - len(rows)]
    return np.asarray(rows, dtype=np.int64)


def query_word(name: str) -> str:
    """What the simulated shopper types: the product noun, the last word of the name before any comma."""
    words = name.split(",")[0].split()
    return words[-1].lower() if words else ""


def text_search(catalog: ShopperCatalog, word: str, *, k: int = GRID) -> np.ndarray:
    """Positions the gallery's name search returns for one word: names holding it, whole words first,
    then shorter names, then id (as ``gallery.selectors.product_search`` ranks on SQLite)."""
    word = word.lower()
    pattern = re.compile(rf"\b{re.escape(word)}\b")
    hits = []
    for row, name in enumerate(catalog.names):
        lowered = name.lower()
        if word in lowered:
            hits.append((0 if pattern.search(lowered) else 1, len(name), int(catalog.ids[row]), row))
    hits.sort()
    return np.asarray([h[3] for h in hits[:k]], dtype=np.int64)


# --- The browsing loop -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """What the simulated shopper does besides clicking the shown product closest to the target.

    ``pin``: pin a click equal to the target on type and colour. ``dislike``: mark the grid's first tile
    "not like this" when it is clearly further from the target than the click (at most ``max_dislikes``).
    ``aspects``: say "same colour" on a click in the target's colour, "same shape" on one of the target's
    type in another colour. ``start``: "grid" (the starting grid) or "text" (the target's noun typed).
    """

    name: str
    start: str = "grid"
    pin: bool = False
    dislike: bool = False
    aspects: bool = False
    max_dislikes: int = 3
    dislike_margin: float = 0.3


CLICKS = Behaviour(name="click")
PIN_DISLIKE = Behaviour(name="click+pin+not-like-this", pin=True, dislike=True)
ASPECTS = Behaviour(name="click+aspects", aspects=True)


@dataclass
class _Step:
    row: int
    mark: str = ""
    aspect: str = ""


@dataclass(frozen=True)
class Engine:
    """The in-memory gallery: exact cosine candidates from the catalog's vectors, ranked by recommender.feedback."""

    catalog: ShopperCatalog
    use_colour: bool = True
    k: int = GRID
    overfetch: int | None = None  # candidates per tile; None: the strategy's own
    _text_cache: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def start(self, behaviour: Behaviour, target: int) -> np.ndarray:
        if behaviour.start == "text":
            word = query_word(self.catalog.names[target])
            if word not in self._text_cache:
                self._text_cache[word] = text_search(self.catalog, word, k=self.k)
            grid = self._text_cache[word]
            if len(grid):
                return grid
        if "" not in self._text_cache:
            self._text_cache[""] = starting_grid(self.catalog, k=self.k)
        return self._text_cache[""]

    def grid(self, *, steps: Sequence[_Step], skipped: dict[int, int], strategy: feedback.Strategy) -> np.ndarray:
        """The next grid's positions for a trail of ``steps`` (skipped: row -> clicks ago it was shown)."""
        cat = self.catalog
        rows = np.array([s.row for s in steps], dtype=np.int64)
        skipped_rows = np.fromiter(skipped.keys(), dtype=np.int64, count=len(skipped))
        skipped_age = np.fromiter(skipped.values(), dtype=np.int64, count=len(skipped))
        colours = cat.colour_vectors if self.use_colour else None
        trail = feedback.TrailVectors(
            vectors=cat.vectors[rows],
            marks=tuple(s.mark for s in steps),
            aspects=tuple(s.aspect for s in steps),
            colours=None if colours is None else colours[rows],
            skipped=cat.vectors[skipped_rows],
            skipped_age=skipped_age,
        )
        excluded = np.zeros(len(cat), dtype=bool)
        excluded[rows] = True
        seen_age = np.full(len(cat), -1, dtype=np.int64)
        recent = skipped_age < strategy.seen_grids
        seen_age[skipped_rows[recent]] = skipped_age[recent]
        if strategy.hides_seen:
            excluded[seen_age >= 0] = True
        want = self.k * (self.overfetch or strategy.overfetch)
        pool: list[np.ndarray] = []
        for query in feedback.query_vectors(trail=trail, strategy=strategy):
            scores = cat.vectors @ query
            scores[excluded] = -np.inf
            top = np.argpartition(-scores, min(want, len(scores) - 1))[:want]
            pool.append(top[np.isfinite(scores[top])])
        candidates = np.unique(np.concatenate(pool))
        positions, _ = feedback.grid_rank(
            trail=trail,
            strategy=strategy,
            candidates=cat.vectors[candidates],
            candidate_colours=None if colours is None else colours[candidates],
            candidate_seen=seen_age[candidates],
            k=self.k,
        )
        return candidates[positions]


def shopper_run(
    *,
    engine: Engine,
    judge: Judge,
    target: int,
    strategy: feedback.Strategy,
    behaviour: Behaviour,
    rounds: int = ROUNDS,
) -> int | None:
    """Clicks the shopper needed until the target (or an equal product) was in the grid; None if not in ``rounds``."""
    grid = engine.start(behaviour, target)
    steps: list[_Step] = []
    skipped: dict[int, int] = {}
    dislikes = 0
    for clicks in range(rounds + 1):
        if (grid == target).any() or judge.equal(target, grid).any():
            return clicks
        if clicks == rounds:
            return None
        distances = judge.distance(target, grid)
        pick = int(grid[int(np.argmin(distances))])  # ties: the tile shown first
        for row in skipped:
            skipped[row] += 1
        for row in grid.tolist():
            if row != pick:
                skipped[row] = 0
        skipped.pop(pick, None)
        if (
            behaviour.dislike
            and dislikes < behaviour.max_dislikes
            and int(grid[0]) != pick
            and distances[0] >= distances.min() + behaviour.dislike_margin
        ):
            steps.append(_Step(int(grid[0]), feedback.DISLIKED))
            skipped.pop(int(grid[0]), None)
            dislikes += 1
        step = _Step(pick)
        if behaviour.pin and judge.types[pick] == judge.types[target]:
            if judge.colour_names[pick] == judge.colour_names[target]:
                step.mark = feedback.PINNED
        if behaviour.aspects:
            if judge.colour_names[pick] == judge.colour_names[target]:
                step.aspect = colour.Aspect.SAME_COLOUR.value
            elif judge.types[pick] == judge.types[target]:
                step.aspect = colour.Aspect.SAME_SHAPE.value
        steps.append(step)
        grid = engine.grid(steps=steps, skipped=skipped, strategy=strategy)
    return None


def found_curve(found: Sequence[int | None], *, rounds: int = ROUNDS) -> list[float]:
    """Share of shoppers who found their target within 0..rounds clicks."""
    n = max(1, len(found))
    return [sum(1 for f in found if f is not None and f <= r) / n for r in range(rounds + 1)]


def targets_sample(catalog: ShopperCatalog, *, count: int, seed: int) -> np.ndarray:
    """Seeded positions of the shoppers' targets (every product when ``count`` covers the catalog)."""
    if count >= len(catalog):
        return np.arange(len(catalog))
    return np.sort(np.random.default_rng(seed).choice(len(catalog), count, replace=False))


def simulate(
    *,
    engine: Engine,
    judge: Judge,
    targets: np.ndarray,
    strategy: feedback.Strategy,
    behaviour: Behaviour,
    rounds: int = ROUNDS,
) -> list[float]:
    """found_curve over every target for one strategy and behaviour."""
    found = [
        shopper_run(engine=engine, judge=judge, target=int(t), strategy=strategy, behaviour=behaviour, rounds=rounds)
        for t in targets
    ]
    return found_curve(found, rounds=rounds)
