"""The lab's in-memory shoppers on drawn catalogs: the colour descriptor's precision, and the encoders compared.

    nice -n 10 .venv/bin/python bench/shopper_bench.py                 # both catalogs, both sections
    nice -n 10 .venv/bin/python bench/shopper_bench.py --quick         # 400 demo products, 150 shoppers: a smoke run
    .venv/bin/python bench/shopper_bench.py --only colour              # sections: colour, encoders
    .venv/bin/python bench/shopper_bench.py --markdown /tmp/shoppers.md --json /tmp/shoppers.json

Catalogs: the drawn demo catalog (2,000 products, seed 7) and 5,000 rows sampled (seed 1) from the real
``../shared/data/styles.csv``, each drawn as the demo draws (``lab.shopper.real_rows_draw``); the real one is
skipped, saying so, when that file is absent. Images, vectors and colour descriptors are cached under
``~/.cache/visual-gallery/bench/shopper/`` (never in the repository), so a second run embeds nothing.

Sections:

* ``colour``: precision@10 by type and by colour of the image vectors, the colour descriptor, and blends of
  the two (recommender.colour), on the harness's held-out split (lab.evaluation.split_stratified).
* ``encoders``: EfficientNet-Lite0/1/2 on the demo catalog: quality (type and colour p@10, found within 3
  and 8 clicks by the lab's in-memory shoppers) and cost (images/s through recommender.pipeline, fp32 and bf16).

On these catalogs the labels are what the images are drawn from, and the lab's shoppers count a product
with equal labels as found: these numbers compare encoders and colour blends on one catalog, they do not
judge refinement strategies. Strategies are judged through the served site on real art by
``bench/served_shoppers.py`` (docs/quality.md, "Coherence and convergence").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Thousands of small matrix products per second: one BLAS thread each is 3-4x faster than two threads that
# spin-wait for each other on a shared 2-core machine. Set before numpy loads its BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Table, outputs_arguments, outputs_write  # noqa: E402
from lab import shopper  # noqa: E402
from lab.demo import demo_catalog_write  # noqa: E402
from lab.evaluation import split_stratified  # noqa: E402
from recommender import colour, feedback  # noqa: E402

logger = logging.getLogger("bench.shopper")

REAL_STYLES = ROOT.parent / "shared" / "data" / "styles.csv"
DEMO_COUNT, DEMO_SEED = 2000, 7
REAL_COUNT, REAL_SEED = 5000, 1
SHOPPERS = 500
TARGET_SEED = 3
K_PRECISION = 10


# --- Catalogs and encoders -----------------------------------------------------------------------------------


def encoder_make(name: str, *, bf16: bool):  # noqa: ANN201 - torch types stay out of this module's signatures
    """Lite0 through the product's loader, Lite1/Lite2 through their own; CPU, bf16 autocast as asked."""
    from recommender import encoders

    if name == "efficientnet-lite0":
        return encoders.encoder_load(name=name, device="cpu", bf16=bf16)
    return encoders.lite_encoder_load(variant=name, device="cpu", bf16=bf16)


def bf16_default() -> bool:
    """What ENCODER_BF16=auto picks on this CPU for the product's encoder (native bfloat16 or not)."""
    from recommender.encoders import cpu_has_native_bf16

    return cpu_has_native_bf16()


def embedder(name: str, *, bf16: bool) -> Callable[[Sequence[Path]], np.ndarray]:
    """A function image paths -> unit rows through recommender.pipeline (the product's embedding path)."""

    def embed(paths: Sequence[Path]) -> np.ndarray:
        from lab.evaluation import embed_sources

        encoder = encoder_make(name, bf16=bf16)
        started = time.perf_counter()
        vectors, ok = embed_sources(encoder=encoder, sources=list(paths))
        logger.info("embedded %d images with %s in %.0f s", len(paths), encoder.id, time.perf_counter() - started)
        if not ok.all():
            raise RuntimeError(f"{int((~ok).sum())} catalog images could not be embedded")
        return vectors

    return embed


def demo_dir(count: int, seed: int) -> Path:
    directory = shopper.CACHE_DIR / f"demo-{count}-seed{seed}"
    if not (directory / "styles.csv").is_file():
        logger.info("drawing the demo catalog: %d products, seed %d", count, seed)
        demo_catalog_write(out_dir=directory, count=count, seed=seed)
    return directory


def real_dir(count: int, seed: int) -> Path | None:
    if not REAL_STYLES.is_file():
        logger.warning("%s is absent: the real-rows catalog is skipped", REAL_STYLES)
        return None
    stat = REAL_STYLES.stat()
    directory = shopper.CACHE_DIR / f"real-{count}-seed{seed}-{stat.st_size}"
    if not (directory / "rows.json").is_file():
        logger.info("drawing %d rows of %s, seed %d", count, REAL_STYLES, seed)
        shopper.real_rows_draw(styles=REAL_STYLES, out_dir=directory, count=count, seed=seed)
    return directory


def catalog(kind: str, *, count: int, seed: int, encoder: str, bf16: bool) -> shopper.ShopperCatalog | None:
    """The demo or real-rows catalog with ``encoder``'s vectors (cached), or None when its source is absent."""
    directory = demo_dir(count, seed) if kind == "demo" else real_dir(count, seed)
    if directory is None:
        return None
    key = f"{encoder}-{'bf16' if bf16 else 'fp32'}"
    return shopper.catalog_load(directory, name=f"{kind} {count}", embed=embedder(encoder, bf16=bf16), encoder_key=key)


# --- Section: colour ------------------------------------------------------------------------------------------


def precision_by(cat: shopper.ShopperCatalog, scores_of: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict:
    """p@10 type, colour and type+colour of a scoring (query rows, index rows) -> (Q, I) on the held-out split."""
    split = split_stratified(ids=cat.ids, strata=cat.article_types)
    scores = scores_of(split.query, split.index)
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :K_PRECISION]
    out = {}
    for name, labels in (
        ("type", cat.article_types),
        ("colour", cat.colours),
        ("type+colour", np.char.add(np.char.add(cat.article_types, "|"), cat.colours)),
    ):
        found = labels[split.index][ranked] == labels[split.query][:, None]
        out[name] = float(found.mean())
    return out


def colour_section(cats: Sequence[shopper.ShopperCatalog], weights: Sequence[float]) -> tuple[list[Table], dict]:
    tables, data = [], {}
    for cat in cats:
        table = Table(
            f"Colour blend, {cat.name} ({cat.encoder_id}): p@{K_PRECISION} on the held-out split",
            ["scoring", "p@10 type", "p@10 colour", "p@10 type+colour"],
        )
        rows = {}

        def image(q: np.ndarray, i: np.ndarray, cat: shopper.ShopperCatalog = cat) -> np.ndarray:
            return cat.vectors[q] @ cat.vectors[i].T

        def colours_only(q: np.ndarray, i: np.ndarray, cat: shopper.ShopperCatalog = cat) -> np.ndarray:
            return cat.colour_vectors[q] @ cat.colour_vectors[i].T

        rows["image vector (today)"] = precision_by(cat, image)
        rows["colour descriptor alone"] = precision_by(cat, colours_only)
        for w in weights:

            def blended(q: np.ndarray, i: np.ndarray, w: float = w, cat: shopper.ShopperCatalog = cat) -> np.ndarray:
                return colour.blend(
                    cat.vectors[q] @ cat.vectors[i].T, cat.colour_vectors[q] @ cat.colour_vectors[i].T, colour_weight=w
                )

            rows[f"blend w={w:g}"] = precision_by(cat, blended)
        for name, values in rows.items():
            table.add(name, values["type"], values["colour"], values["type+colour"])
        tables.append(table)
        data[cat.name] = rows
    return tables, data


# --- Spaces and shoppers -------------------------------------------------------------------------------------


def head_space(cat: shopper.ShopperCatalog, directory: Path) -> shopper.ShopperCatalog:
    """The catalog in a head256 space trained (lab.heads, the catalog recipe) on its index products only.

    What ``scripts/run.sh`` serves on the demo catalog when the head wins; the held-out products the
    shoppers want were never seen in training. Projected vectors are cached beside the raw ones.
    """
    cache = directory / f"head256-{cat.encoder_id}.npy"
    if cache.is_file():
        projected = np.load(cache)
    else:
        from lab.heads import train_catalog_head

        split = split_stratified(ids=cat.ids, strata=cat.article_types)
        started = time.perf_counter()
        head, _ = train_catalog_head(
            cat.vectors[split.index],
            article_types=cat.article_types[split.index].tolist(),
            colours=cat.colours[split.index].tolist(),
            out_dim=256,
            epochs=30,
            seed=0,
            encoder_id=cat.encoder_id,
        )
        logger.info("trained head256 on %d products in %.0f s", len(split.index), time.perf_counter() - started)
        projected = head.apply(cat.vectors)
        np.save(cache, projected)
    return cat.with_vectors(projected, encoder_id=f"{cat.encoder_id}+head256")


def target_halves(cat: shopper.ShopperCatalog) -> tuple[np.ndarray, np.ndarray]:
    """(tuning, report) targets: the held-out products of the harness's split, halved by a keyed hash of the id.

    Strategies and weights were chosen on the tuning half; the tables report the other half.
    """
    import hashlib

    split = split_stratified(ids=cat.ids, strata=cat.article_types)
    parity = np.array(
        [hashlib.blake2b(f"shopper:{int(cat.ids[r])}".encode(), digest_size=1).digest()[0] % 2 for r in split.query]
    )
    return split.query[parity == 0], split.query[parity == 1]


ENCODERS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def encoder_costs(paths: Sequence[Path], *, repeats: int = 2) -> dict[str, dict[str, float]]:
    """Images/s of each encoder, fp32 and bf16, through recommender.pipeline.embed_stream on ``paths``.

    Decoding, resizing and the forward pass, as the product embeds; no database write (the same for every
    encoder). Variants take turns, ``repeats`` rounds, and the best round counts, so a burst of load on the
    shared machine does not decide the comparison.
    """
    from recommender.pipeline import ImageItem, embed_stream

    items = [ImageItem(key=i, source=path) for i, path in enumerate(paths)]
    loaded = {name: encoder_make(name, bf16=False) for name in ENCODERS}
    for encoder in loaded.values():  # warm-up: first-call allocations and oneDNN kernel choice
        for bf16 in (False, True):
            encoder.bf16 = bf16
            list(embed_stream(items[:32], encoder=encoder))
    best: dict[str, dict[str, float]] = {name: {} for name in ENCODERS}
    for _ in range(repeats):
        for name, encoder in loaded.items():
            for precision, bf16 in (("fp32", False), ("bf16", True)):
                encoder.bf16 = bf16
                started = time.perf_counter()
                done = sum(len(batch) for batch in embed_stream(items, encoder=encoder))
                rate = done / (time.perf_counter() - started)
                best[name][precision] = max(best[name].get(precision, 0.0), rate)
    return best


def encoders_section(*, count: int, seed: int, shoppers: int, cost_images: int) -> tuple[list[Table], dict]:
    quality = Table(
        f"Encoders on the demo catalog ({count} products): quality",
        ["encoder", "dim", "input", "p@10 type", "p@10 colour", "p@10 type+colour", "coherent f@3", "coherent f@8",
         "neighbours f@3", "neighbours f@8"],
    )  # fmt: skip
    data: dict = {"quality": {}, "cost": {}}
    bf16 = bf16_default()
    sizes = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
    first: shopper.ShopperCatalog | None = None
    for name in ENCODERS:
        cat = catalog("demo", count=count, seed=seed, encoder=name, bf16=bf16)
        assert cat is not None
        first = first or cat
        p = precision_by(cat, lambda q, i, cat=cat: cat.vectors[q] @ cat.vectors[i].T)
        _, report = target_halves(cat)
        report = report[:shoppers]
        judge, engine = shopper.Judge.of(cat), shopper.Engine(catalog=cat)
        curves = {
            label: shopper.simulate(engine=engine, judge=judge, targets=report, strategy=s, behaviour=shopper.CLICKS)
            for label, s in (("coherent", feedback.COHERENT), ("neighbours", feedback.NEIGHBOURS))
        }
        quality.add(
            name, cat.vectors.shape[1], sizes[name], p["type"], p["colour"], p["type+colour"],
            curves["coherent"][3], curves["coherent"][8], curves["neighbours"][3], curves["neighbours"][8],
        )  # fmt: skip
        data["quality"][name] = {"precision": p, "found": curves}
    assert first is not None
    paths = [demo_dir(count, seed) / "images" / f"{int(i)}.jpg" for i in first.ids[:cost_images]]
    costs = encoder_costs(paths)
    cost = Table(
        f"Encoders: images/s through recommender.pipeline ({len(paths)} demo images, CPU, best of 2 rounds)",
        ["encoder", "fp32 img/s", "bf16 img/s", "fp32 vs Lite0", "bf16 vs Lite0"],
    )
    for name in ENCODERS:
        cost.add(
            name,
            costs[name]["fp32"],
            costs[name]["bf16"],
            costs[name]["fp32"] / costs[ENCODERS[0]]["fp32"],
            costs[name]["bf16"] / costs[ENCODERS[0]]["bf16"],
        )
    data["cost"] = costs
    return [quality, cost], data


# --- The run ---------------------------------------------------------------------------------------------------

SECTIONS = ("colour", "encoders")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 demo products, 150 shoppers, no real rows")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--shoppers", type=int, default=SHOPPERS, help=f"targets per catalog (default {SHOPPERS})")
    parser.add_argument("--no-head", action="store_true", help="skip the head256 space (no training)")
    outputs_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sections = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    shoppers = 150 if args.quick else args.shoppers
    demo_count = 400 if args.quick else DEMO_COUNT
    bf16 = bf16_default()
    started = time.perf_counter()
    tables: list[Table] = []
    data: dict = {"bf16": bf16, "shoppers": shoppers, "demo_count": demo_count}

    cats: dict[str, shopper.ShopperCatalog] = {}
    if "colour" in sections:
        demo = catalog("demo", count=demo_count, seed=DEMO_SEED, encoder=ENCODERS[0], bf16=bf16)
        assert demo is not None
        cats[demo.name] = demo
        if not args.quick:
            real = catalog("real", count=REAL_COUNT, seed=REAL_SEED, encoder=ENCODERS[0], bf16=bf16)
            if real is not None:
                cats[real.name] = real
    spaces = dict(cats)
    if not args.quick and not args.no_head:
        for name, cat in cats.items():
            directory = demo_dir(demo_count, DEMO_SEED) if name.startswith("demo") else real_dir(REAL_COUNT, REAL_SEED)
            assert directory is not None
            spaces[f"{name}, head256"] = head_space(cat, directory)

    if "colour" in sections:
        found, data["colour"] = colour_section(list(spaces.values()), [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.5])
        tables += found
    if "encoders" in sections:
        found, data["encoders"] = encoders_section(
            count=demo_count, seed=DEMO_SEED, shoppers=shoppers, cost_images=96 if args.quick else 256
        )
        tables += found

    for table in tables:
        print(table.text(), end="\n\n")
    outputs_write(args, tables=tables, data=data, started=started)
    logger.info("done in %.0f s", data["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
