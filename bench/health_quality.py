"""Catalog health on catalogs where the truth is known, and the scan's cost at the real catalog's size.

    .venv/bin/python bench/health_quality.py                 # drawn real rows (5,000) and real art: quality
    .venv/bin/python bench/health_quality.py --catalogs art  # one catalog only (drawn, art, art-full)
    .venv/bin/python bench/health_quality.py --timing        # the whole scan at 44,446: seconds, peak memory

Quality. Into each catalog it injects, with a fixed seed:

* 200 copies of randomly chosen products' photos, each re-encoded (JPEG quality 45-80), resized (to 45-85 %)
  and/or lightly cropped (2-8 % off each side), stored as new products with the original's labels: the
  truth pairs of the near-duplicate kind;
* 2 % of the original products' articleType flipped to another type of the catalog (for drawn rows, one drawn
  as another shape, so the photo really contradicts the label): the truth of the suspect-label kind;
* 20 broken photos (blank white, grey or black, a "no image" placeholder, noise, a corner of a photo blown up):
  the truth of the outlier kind. Each is a product of the catalog whose photo went wrong: it carries the labels
  and name of the original product its photo was made from (as a shop's product with a broken upload does),
  so three "no image" placeholders stand for products of three kinds.

Images and vectors are cached under ~/.cache/visual-gallery/bench/health/ (never committed).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CACHE = Path.home() / ".cache" / "visual-gallery" / "bench" / "health"
STYLES = ROOT.parent / "shared" / "data" / "styles.csv"
SEED = 26
COPIES = 200
FLIP_SHARE = 0.02
BROKEN = 20
COPY_BASE = 9_000_000
BROKEN_BASE = 9_500_000


@dataclass
class Catalog:
    name: str
    images: dict[int, Path]  # product id -> image file
    article: dict[int, str]  # as the catalog says (flips applied)
    master: dict[int, str]
    colour: dict[int, str]
    names: dict[int, str]  # the product's display name (a copy carries its original's)
    copies: dict[int, int]  # copy id -> original id
    flipped: dict[int, tuple[str, str]]  # product id -> (true type, label given)
    broken: set[int]
    same_subject: set[tuple[int, int]]  # pairs that show one subject drawn twice (art: two vendors), not copies
    known: dict[int, np.ndarray] | None = None  # vectors already embedded elsewhere (the art catalog's cache)


def wilson(hits: int, total: int) -> tuple[float, float]:
    """The 95 % Wilson interval of hits/total (scipy's binomtest)."""
    if total == 0:
        return (float("nan"), float("nan"))
    from scipy.stats import binomtest

    ci = binomtest(hits, total).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


def share(hits: int, total: int) -> str:
    if total == 0:
        return "n/a (0)"
    low, high = wilson(hits, total)
    return f"{hits / total:.3f} ({hits}/{total}; {low:.3f}-{high:.3f})"


# --- Catalogs ----------------------------------------------------------------------------------------------


def _drawn(rows: int, log) -> Catalog:  # noqa: ANN001
    from lab.shopper import drawn_as, real_rows_draw

    if not STYLES.exists():
        raise SystemExit(f"{STYLES} not found: the drawn catalog needs the real styles.csv")
    directory = CACHE / f"real-rows-{rows}-{SEED}"
    if not (directory / "done").exists():
        log(f"drawing {rows} real rows into {directory / 'images'}")
        real_rows_draw(styles=STYLES, out_dir=directory, count=rows, seed=SEED)
        (directory / "done").write_text("ok")
    drawn = json.loads((directory / "rows.json").read_text(encoding="utf-8"))
    catalog = Catalog(
        name=f"drawn real rows ({rows})",
        images={int(r["id"]): directory / "images" / f"{r['id']}.jpg" for r in drawn},
        article={int(r["id"]): r["articleType"] for r in drawn},
        master={int(r["id"]): r["masterCategory"] for r in drawn},
        colour={int(r["id"]): r["baseColour"] for r in drawn},
        names={int(r["id"]): r["productDisplayName"] for r in drawn},
        copies={},
        flipped={},
        broken=set(),
        same_subject=set(),
    )
    # Flip to a type drawn as another shape: the photo contradicts the label.
    shape = {r["articleType"]: drawn_as(r["articleType"], r["subCategory"], r["masterCategory"]) for r in drawn}
    types = sorted(shape)
    _inject(catalog, directory, flip_to=lambda t, rng: rng.choice([o for o in types if shape[o] != shape[t]]), log=log)
    return catalog


def _art(log, size: str = "small") -> Catalog:  # noqa: ANN001
    from bench.art_catalog import art_catalog_dir

    directory = art_catalog_dir(size=size)
    rows = json.loads((directory / "rows.json").read_text(encoding="utf-8"))
    catalog = Catalog(
        name=f"real art ({len(rows)} emoji drawings)",
        images={int(r["id"]): directory / "images" / f"{r['id']}.jpg" for r in rows},
        article={int(r["id"]): r["articleType"] for r in rows},
        master={int(r["id"]): r["masterCategory"] for r in rows},
        colour={int(r["id"]): r["baseColour"] for r in rows},
        names={int(r["id"]): r["productDisplayName"] for r in rows},
        copies={},
        flipped={},
        broken=set(),
        same_subject=set(),
    )
    cached = directory / "vectors-efficientnet-lite0-bf16.npy"  # lab.shopper's cache, rows in id order
    if cached.exists():
        vectors = np.load(cached)
        if len(vectors) == len(rows):
            catalog.known = {int(r["id"]): vectors[i] for i, r in enumerate(sorted(rows, key=lambda r: int(r["id"])))}
    small = CACHE / "vectors" / f"art-small-{SEED}.npz"  # the small catalog's drawings are the full one's too
    if size == "full" and catalog.known is None and small.exists():
        saved = np.load(small)
        catalog.known = {
            int(pid): vector
            for pid, vector in zip(saved["ids"], saved["vectors"], strict=True)
            if int(pid) in catalog.images
        }
    by_emoji: dict[str, list[int]] = {}
    for r in rows:
        by_emoji.setdefault(r["emoji"], []).append(int(r["id"]))
    catalog.same_subject = {(a, b) for ids in by_emoji.values() for a in ids for b in ids if a < b}
    types = sorted(set(catalog.article.values()))
    _inject(
        catalog,
        CACHE / ("art" if size == "small" else f"art-{size}"),
        flip_to=lambda t, rng: rng.choice([o for o in types if o != t]),
        log=log,
    )
    return catalog


def _copy(image: Image.Image, rng: random.Random) -> bytes:
    """A re-encoded, resized and/or lightly cropped copy of ``image``: at least one of the three, often two."""
    image = image.convert("RGB")
    kinds = rng.choice(
        [("encode",), ("resize",), ("crop",), ("encode", "resize"), ("resize", "crop"), ("crop", "encode")]
    )
    if "crop" in kinds:
        w, h = image.size
        cut = [rng.uniform(0.02, 0.08) for _ in range(4)]
        image = image.crop((int(w * cut[0]), int(h * cut[1]), int(w * (1 - cut[2])), int(h * (1 - cut[3]))))
    if "resize" in kinds:
        f = rng.uniform(0.45, 0.85)
        image = image.resize((max(16, int(image.width * f)), max(16, int(image.height * f))), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=rng.randint(45, 80) if "encode" in kinds else 90)
    return out.getvalue()


def _broken(i: int, rng: random.Random, source: Image.Image) -> Image.Image:
    kind = i % 6
    size = (400, 500)
    if kind == 0:
        return Image.new("RGB", size, (255, 255, 255))
    if kind == 1:
        return Image.new("RGB", size, tuple([rng.randint(150, 220)] * 3))
    if kind == 2:
        return Image.new("RGB", size, (rng.randint(0, 25),) * 3)
    if kind == 3:
        image = Image.new("RGB", size, (235, 235, 235))
        draw = ImageDraw.Draw(image)
        draw.rectangle([60, 80, 340, 420], outline=(150, 150, 150), width=6)
        draw.line([60, 80, 340, 420], fill=(150, 150, 150), width=4)
        draw.text((120, 440), f"NO IMAGE {i}", fill=(90, 90, 90))
        return image
    if kind == 4:
        noise = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        return Image.fromarray(noise, "RGB")
    w, h = source.size  # a broken crop: one corner blown up
    return source.convert("RGB").crop((0, 0, w // 6, h // 6)).resize(size)


def _inject(catalog: Catalog, directory: Path, *, flip_to, log) -> None:  # noqa: ANN001
    rng = random.Random(SEED)
    originals = sorted(catalog.images)
    extra = directory / "injected"
    extra.mkdir(parents=True, exist_ok=True)
    for i, original in enumerate(rng.sample(originals, COPIES)):
        copy_id = COPY_BASE + i
        path = extra / f"{copy_id}.jpg"
        data_rng = random.Random(f"{SEED}:{copy_id}")
        if not path.exists():
            with Image.open(catalog.images[original]) as image:
                path.write_bytes(_copy(image, data_rng))
        catalog.images[copy_id] = path
        catalog.copies[copy_id] = original
        for labels in (catalog.article, catalog.master, catalog.colour, catalog.names):
            labels[copy_id] = labels[original]
    for i in range(BROKEN):
        broken_id = BROKEN_BASE + i
        path = extra / f"{broken_id}.jpg"
        source_id = originals[(i * 37) % len(originals)]
        if not path.exists():
            with Image.open(catalog.images[source_id]) as source:
                _broken(i, random.Random(f"{SEED}:b{i}"), source).save(path, "JPEG", quality=85)
        catalog.images[broken_id] = path
        catalog.broken.add(broken_id)
        # A real product whose photo went wrong: the labels and name of the product the photo was made from.
        for labels in (catalog.article, catalog.master, catalog.colour, catalog.names):
            labels[broken_id] = labels[source_id]
    for product in rng.sample(originals, round(FLIP_SHARE * len(originals))):
        true = catalog.article[product]
        catalog.flipped[product] = (true, flip_to(true, rng))
        catalog.article[product] = catalog.flipped[product][1]
    log(f"{catalog.name}: +{COPIES} copies, +{BROKEN} broken photos, {len(catalog.flipped)} labels flipped")


def _vectors(catalog: Catalog, cache: Path, log) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(ids, unit vectors) of every image, embedded with EfficientNet-Lite0 once and cached."""
    ids = np.array(sorted(catalog.images), dtype=np.int64)
    if cache.exists():
        saved = np.load(cache)
        if np.array_equal(saved["ids"], ids):
            return ids, saved["vectors"]
    from lab.evaluation import embed_sources
    from recommender.encoders import encoder_load

    known = catalog.known or {}
    todo = [int(pid) for pid in ids if int(pid) not in known]
    started, done = time.perf_counter(), 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if done % 1024 < 32:
            log(f"  embedded {done}/{len(ids)} ({time.perf_counter() - started:.0f}s)")

    found, _ = embed_sources(encoder=encoder_load(name="efficientnet-lite0"), decode_workers=1, progress=progress,
                             sources=[catalog.images[pid] for pid in todo])  # fmt: skip
    embedded = dict(zip(todo, found, strict=True)) | known
    vectors = np.stack([embedded[int(pid)] for pid in ids]).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, ids=ids, vectors=vectors)
    return ids, vectors


# --- Measuring -------------------------------------------------------------------------------------------------


def measure(catalog: Catalog, ids: np.ndarray, vectors: np.ndarray, log) -> dict:  # noqa: ANN001
    from gallery import catalog_health as health
    from gallery.health_photos import photo_read
    from recommender.api import SCAN_REDUCED_DIMS
    from recommender.scan import vectors_scan

    started = time.perf_counter()
    result = vectors_scan(
        vectors=vectors,
        product_ids=ids,
        k=health.NEIGHBOURS,
        duplicate_cosine=health.DUPLICATE_COSINE,
        max_pairs=1_000_000,
        reduce_to=SCAN_REDUCED_DIMS,
    )
    seconds = time.perf_counter() - started
    exact = vectors_scan(
        vectors=vectors, product_ids=ids, k=health.NEIGHBOURS, duplicate_cosine=health.DUPLICATE_COSINE
    )
    kept = [
        len(set(a) & set(b)) for a, b in zip(exact.neighbour_ids.tolist(), result.neighbour_ids.tolist(), strict=True)
    ]
    truth = {tuple(sorted((c, o))) for c, o in catalog.copies.items()}
    out: dict = {"catalog": catalog.name, "products": len(ids), "scan_seconds": round(seconds, 2)}
    out["reduced_scan_keeps"] = {
        "neighbours": share(sum(kept), health.NEIGHBOURS * len(ids)),
        "pairs": share(
            len({tuple(x) for x in exact.pairs.tolist()} & {tuple(x) for x in result.pairs.tolist()}), len(exact.pairs)
        ),
    }

    # Near-duplicates: pairs of products. The vectors' candidates, pre-selected by the photos' small fingerprints
    # and judged by the registered photos' largest difference (read here from the image files; the product reads
    # its 320-pixel thumbnails, the same at 96 pixels). Left out of the counts: pairs among the injected broken
    # photos (identical placeholders are duplicates too, but not the copies counted) and pairs of original
    # products with byte-identical images (the same picture under two ids: a duplicate by any measure, raised
    # as an exact copy, and no copy injected here).
    digests: dict[str, list[int]] = {}
    for pid in ids.tolist():
        digests.setdefault(hashlib.sha256(catalog.images[pid].read_bytes()).hexdigest(), []).append(pid)
    hash_pairs = {tuple(sorted((a, b))) for g in digests.values() for a in g for b in g if a < b}
    identical = {p for p in hash_pairs - truth if p[0] not in catalog.broken and p[1] not in catalog.broken}

    def evaluated(found: set) -> set:
        return {p for p in found if p[0] not in catalog.broken and p[1] not in catalog.broken} - identical

    candidates, cnn = health.candidate_pairs(result=result, duplicate_cosine=health.DUPLICATE_COSINE)
    kept = health.pairs_to_fingerprint(pairs=candidates, cosines=cnn, limit=health.MAX_FINGERPRINTS)
    candidates, cnn = candidates[kept], cnn[kept]  # all of them below MAX_FINGERPRINTS products, as here
    listed = [tuple(p) for p in candidates.tolist()]
    started = time.perf_counter()
    judged = {pid: health.photo_judged(catalog.images[pid]) for pid in np.unique(candidates).tolist()}
    prints = {pid: fingerprint for pid, (fingerprint, _) in judged.items()}
    out["fingerprint_seconds"] = round(time.perf_counter() - started, 1)
    prefilter = health.pairs_verify(pairs=candidates, fingerprints=prints)
    chosen = health.pairs_to_compare(
        pairs=candidates, prefilter=prefilter, minimum=health.DUPLICATE_PREFILTER, limit=health.MAX_COMPARED
    )
    photo = functools.lru_cache(maxsize=4096)(lambda pid: photo_read(catalog.images[pid]))
    started = time.perf_counter()
    difference = health.pairs_compare(pairs=candidates[chosen], photo=photo)
    seconds = time.perf_counter() - started
    out["compare"] = {
        "pairs": len(chosen),
        "seconds": round(seconds, 1),
        "ms_per_pair": round(1000 * seconds / max(1, len(chosen)), 2),
    }
    compared = [listed[i] for i in chosen.tolist()]
    # One picture shown for products of several kinds (a placeholder): the duplicate groups the scan forms, broken
    # photos included, and exact copies by their bytes.
    joined = np.array(
        [p for p, d in zip(compared, difference.tolist(), strict=True) if d <= health.DUPLICATE_DIFFERENCE], np.int64
    ).reshape(-1, 2)
    groups = health.duplicate_groups(
        pairs=joined, pair_cosines=np.ones(len(joined)), hashes={pid: d for d, g in digests.items() for pid in g}
    )
    placeholder = set(health.placeholders(groups=groups, kind_of=catalog.article))

    def as_duplicates(found: set) -> set:
        """The pairs the scan raises as near-duplicates: a placeholder's products (one picture for three or more
        kinds) are raised as having no usable image instead."""
        return {p for p in found if not (p[0] in placeholder and p[1] in placeholder)}

    def found_at(threshold: float, half: int | None = None) -> tuple[int, int, int]:
        found = as_duplicates(
            evaluated({p for p, d in zip(compared, difference.tolist(), strict=True) if d <= threshold})
        )
        wanted = truth
        if half is not None:  # two halves of every pair, true or not, by the parity of the ids' sum
            found = {p for p in found if sum(p) % 2 == half}
            wanted = {p for p in truth if sum(p) % 2 == half}
        return len(found & wanted), len(found), len(wanted)

    sweep = [(t, *found_at(t, 0), *found_at(t, 1)) for t in range(4, 62, 2)]
    out["duplicate_sweep_difference"] = sweep  # threshold, (hits, found, truth) on half 0, then on half 1
    # The threshold is chosen on half 0 (the smallest with the best min(precision, recall)) and reported on half 1.
    best = max(sweep, key=lambda row: (min(row[1] / max(1, row[2]), row[1] / max(1, row[3])), -row[0]))
    hits, found, wanted = found_at(health.DUPLICATE_DIFFERENCE, 1)
    all_hits, all_found, all_wanted = found_at(health.DUPLICATE_DIFFERENCE)
    same = as_duplicates(
        evaluated({p for p, d in zip(compared, difference.tolist(), strict=True) if d <= health.DUPLICATE_DIFFERENCE})
    )
    out["duplicates"] = {
        "threshold": (health.DUPLICATE_COSINE, health.DUPLICATE_PREFILTER, health.DUPLICATE_DIFFERENCE),
        "best_on_half_0": best[0],
        "precision_half_1": share(hits, found),
        "recall_half_1": share(hits, wanted),
        "precision": share(all_hits, all_found),
        "recall": share(all_hits, all_wanted),
        "false_pairs": [p for p in sorted(same - truth)][:20],
        "false_pairs_same_drawing": sum(  # aligned difference at most 4: one drawing, placed or scaled otherwise
            1 for p, d in zip(compared, difference.tolist(), strict=True) if d <= 4 and p in same - truth
        ),
        "missed": sorted(truth - same)[:20],
        "same_emoji_other_vendor_flagged": len(same & catalog.same_subject),
        "candidates_holding_copies": share(len(set(listed) & truth), len(truth)),
        "prefiltered_holding_copies": share(len(set(compared) & truth), len(truth)),
        "identical_originals_left_out": len(identical),
    }
    # The rule before: the 32 x 32 fingerprint's cosine at least 0.945 among the vector's pairs above 0.84.
    before = evaluated(
        {p for p, c, x in zip(listed, cnn, prefilter, strict=True) if c >= 0.84 and x >= 0.945}  # noqa: PLR2004
    )
    out["duplicates_fingerprint_0945"] = {
        "precision": share(len(before & truth), len(before)),
        "recall": share(len(before & truth), len(truth)),
    }
    vector_only = []
    for threshold in (0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98):
        found_v = evaluated({p for p, c in zip(listed, cnn, strict=True) if c >= threshold})
        vector_only.append((threshold, len(found_v & truth), len(found_v), len(truth)))
    out["duplicate_sweep_vector_only"] = vector_only
    # The simplest alternative: identical bytes. Every copy was re-encoded, so it finds none of them.
    out["duplicates_by_hash"] = {"recall": share(len(hash_pairs & truth), len(truth)), "pairs": len(hash_pairs)}

    # Outliers.
    iso = result.isolation
    outliers = {int(ids[i]) for i in np.nonzero(iso >= health.OUTLIER_ISOLATION)[0]}
    most_isolated = [int(ids[i]) for i in np.argsort(-iso)[:BROKEN]]
    out["outliers"] = {
        "isolation": health.OUTLIER_ISOLATION,
        "precision": share(len(outliers & catalog.broken), len(outliers)),
        "recall": share(len(outliers & catalog.broken), len(catalog.broken)),
        "recall_in_top_20": share(len(set(most_isolated) & catalog.broken), len(catalog.broken)),
        "isolation_quantiles": {
            "broken min": round(float(min(iso[np.isin(ids, list(catalog.broken))])), 3),
            "catalog p99": round(float(np.quantile(iso[~np.isin(ids, list(catalog.broken))], 0.99)), 3),
            "catalog max": round(float(max(iso[~np.isin(ids, list(catalog.broken))])), 3),
        },
    }
    # Blank photos and static (the "no usable image" kind): judged from the photos the scan reads anyway, those of
    # the duplicate candidates and of the outliers ...
    # ... and, as the scan reads them, those of the products whose label is suspect (every field, the most confident
    # first, at most MAX_LABEL_READS): a broken photo's look-alikes are chance.
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], result.neighbour_ids.clip(min=0))
    neighbour_rows = np.where(result.neighbour_ids >= 0, order[pos.clip(max=len(ids) - 1)], -1)
    names = [catalog.names[pid] for pid in ids.tolist()]
    suspected = (
        (s.confidence, int(ids[s.row]))
        for field, values in (
            ("article_type", catalog.article),
            ("master_category", catalog.master),
            ("base_colour", catalog.colour),
        )
        for s in health.label_suspects(
            labels=[values[pid] for pid in ids.tolist()],
            neighbour_rows=neighbour_rows,
            names=names if field in health.NAME_WITNESSED else None,
        )
    )
    for pid in health.photos_to_read(outliers=outliers, suspects=suspected, read=judged):
        judged[pid] = health.photo_judged(catalog.images[pid])
    blank = {pid for pid, (fp, _) in judged.items() if fp is not None and not fp.any()}
    static = {pid for pid, (_, noise) in judged.items() if noise}
    false_groups = [g.product_ids for g in groups if set(g.product_ids) <= placeholder - catalog.broken]
    raised = blank | static | outliers | placeholder
    out["blank_or_outlier"] = {
        "blank_precision": share(len(blank & catalog.broken), len(blank)),
        "static_precision": share(len(static & catalog.broken), len(static)),
        "placeholder_precision": share(len(placeholder & catalog.broken), len(placeholder)),
        "placeholder_false_groups": [  # (products, their types, their master categories)
            (len(g), sorted({catalog.article[p] for p in g}), sorted({catalog.master[p] for p in g}))
            for g in false_groups
        ][:40],
        "recall": share(len(raised & catalog.broken), len(catalog.broken)),
        "recall_without_placeholder": share(len((blank | static | outliers) & catalog.broken), len(catalog.broken)),
        "recall_without_static": share(len((blank | outliers) & catalog.broken), len(catalog.broken)),
        "broken_fingerprinted": len(catalog.broken & set(judged)),
        "broken_missed": [  # (id, read or not)
            (pid, pid in judged) for pid in sorted(catalog.broken - raised)
        ],
    }
    # The scan judges no label of a product without a usable image (blank, static, a placeholder): its look-alikes
    # are chance.
    unusable = blank | static | placeholder

    # Suspect labels (articleType): ranked by the likelihood ratio.
    labels = [catalog.article[pid] for pid in ids.tolist()]
    flips = set(catalog.flipped)

    def ranked(suspects: list, key: str) -> dict:
        suspects = [s for s in suspects if int(ids[s.row]) not in unusable]
        flagged = [int(ids[s.row]) for s in suspects]
        top = flagged[:100]
        return {
            "flagged": len(flagged),
            "precision_at_100": share(len(set(top) & flips), len(top)),
            "p100": len(set(top) & flips) / len(top) if top else float("nan"),
            "recall": share(len(set(flagged) & flips), len(flips)),
            "precision_all": share(len(set(flagged) & flips), len(flagged)),
            "suggested_right": share(
                sum(
                    1
                    for s in suspects
                    if int(ids[s.row]) in flips and s.suggested == catalog.flipped[int(ids[s.row])][0]
                ),
                len(set(flagged) & flips),
            ),
            "rule": key,
        }

    suspects = health.label_suspects(labels=labels, neighbour_rows=neighbour_rows, names=names)
    out["labels"] = ranked(suspects, f"look-alikes and name: likelihood ratio >= e^{health.LABEL_MIN_RATIO}")
    # How much the look-alikes weigh beside the name (LOOK_WEIGHT, chosen on real art by the flips among its first
    # len(flips) suspects): weight, flips among the first len(flips), among the first 100, raised, flips raised.
    sweep = []
    for weight in (1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2):
        weighed = health.label_suspects(labels=labels, neighbour_rows=neighbour_rows, names=names, look_weight=weight)
        raised = [int(ids[s.row]) for s in weighed if int(ids[s.row]) not in unusable]
        sweep.append((weight, len(set(raised[: len(flips)]) & flips), len(set(raised[:100]) & flips), len(raised),
                      len(set(raised) & flips)))  # fmt: skip
    out["labels_look_weight_sweep"] = sweep
    looks = health.label_suspects(labels=labels, neighbour_rows=neighbour_rows)
    out["labels_looks_only"] = ranked(looks, f"look-alikes alone: likelihood ratio >= e^{health.LABEL_MIN_RATIO}")
    out["labels_names_only"] = ranked(_names_only(labels, names), "name alone: likelihood ratio >= e^10")
    everything = health.label_suspects(labels=labels, neighbour_rows=neighbour_rows, names=names, min_ratio=0.0)
    out["labels_ratio_sweep"] = [
        (t, *(lambda f: (len(f & flips), len(f)))({int(ids[s.row]) for s in everything if s.ratio >= t} - unusable))
        for t in (0, 2, 5, 8, 10, 12, 15, 20, 30)
    ]  # threshold, flips raised, raised
    # The rule before: at least 70 % of the ten nearest carry one other label, ranked by (share - own share).
    out["labels_majority_70"] = ranked(_majority_suspects(labels, neighbour_rows), "70 % of the 10 nearest")
    # The simplest alternative: flag a product whose single nearest neighbour carries another type.
    one = [
        (float(result.neighbour_cosines[i, 0]), int(ids[i]))
        for i in range(len(ids))
        if int(ids[i]) not in unusable
        and neighbour_rows[i, 0] >= 0
        and labels[neighbour_rows[i, 0]]
        and labels[neighbour_rows[i, 0]] != labels[i]
    ]
    one.sort(reverse=True)
    top1 = [pid for _, pid in one[:100]]
    out["labels_nearest_only"] = {
        "precision_at_100": share(len(set(top1) & flips), len(top1)),
        "recall": share(len({pid for _, pid in one} & flips), len(flips)),
    }

    log(json.dumps(out, indent=1, default=str))
    return out


@dataclass(frozen=True)
class _Majority:
    row: int
    suggested: str


def _names_only(labels: list[str], names: list[str], min_ratio: float = 10.0) -> list:
    """The simplest text alternative: rows whose name's words are much likelier under another label than under
    their own (the scan's name model, ``catalog_health._name_likelihoods``, without the look-alikes)."""
    from gallery import catalog_health as health

    values, codes, empty = health.label_codes(labels)
    likelihood, own = health._name_likelihoods(names=names, codes=codes, size=len(values), empty=empty)
    best = health.likeliest_other(likelihood, codes=codes, empty=empty)
    ratio = likelihood[np.arange(len(codes)), best] - own
    rows = [r for r in np.argsort(-ratio, kind="stable").tolist() if codes[r] != empty and ratio[r] >= min_ratio]
    return [health.LabelSuspect(row=r, suggested=str(values[best[r]]), ratio=float(ratio[r]), share=0.0, votes=0,
                                own_share=0.0, name_ratio=float(ratio[r])) for r in rows]  # fmt: skip


def _majority_suspects(labels: list[str], neighbour_rows: np.ndarray, min_share: float = 0.7) -> list[_Majority]:
    """The rule the scan used before: rows where at least ``min_share`` of the labelled neighbours agree on another
    label, ranked by that share minus the share carrying the row's own label."""
    out = []
    for row, neighbours in enumerate(neighbour_rows.tolist()):
        votes = [labels[j] for j in neighbours if j >= 0 and labels[j]]
        if not labels[row] or len(votes) * 2 < len(neighbours):
            continue
        top, count = max(((v, votes.count(v)) for v in set(votes)), key=lambda vc: (vc[1], vc[0]))
        if top != labels[row] and count / len(votes) >= min_share:
            out.append((count / len(votes) - votes.count(labels[row]) / len(votes), row, top))
    out.sort(key=lambda x: (-x[0], x[1]))
    return [_Majority(row=row, suggested=top) for _, row, top in out]


# --- Timing at 44k -----------------------------------------------------------------------------------------------


def timing(n: int, dim: int, log) -> dict:  # noqa: ANN001
    """The whole scan at ``n`` products, as ``health_scan_run`` runs it, in a child process (its peak memory alone).

    Vector part: ``n`` synthetic clustered unit vectors memory-mapped as the build holds them, scanned as
    ``recommender.api.catalog_scan`` does. Label part: the three label fields of ``n`` rows of the real styles.csv
    judged from those neighbours (type and category from the rows' names too). Pixel part, at its bound:
    MAX_FINGERPRINTS thumbnails read for their fingerprints (as many as the scan reads when every product is a
    duplicate candidate), MAX_LABEL_READS more for the suspect labels (as many as were raised here below the
    bound) and MAX_COMPARED pairs registered, each photo read again (the cache missing every
    time): per-read and per-pair costs measured on real drawn thumbnails (320 pixels, a product and a resized,
    cropped copy of another's).
    """
    from bench.common import synthetic_vectors
    from gallery.catalog import styles_read

    fields = [[row.fields[f] for f in ("article_type", "master_category", "base_colour", "name")]
              for row in styles_read(STYLES) if hasattr(row, "fields")][:n]  # fmt: skip
    from lab.shopper import real_rows_draw

    sample = CACHE / f"real-rows-400-{SEED}"  # the per-read and per-pair costs' photos
    if not (sample / "done").exists():
        real_rows_draw(styles=STYLES, out_dir=sample, count=400, seed=SEED)
        (sample / "done").write_text("ok")
    drawn = sorted((sample / "images").glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vectors.npy"
        np.save(path, synthetic_vectors(n, dim, queries=0, seed=SEED).vectors)
        labels = Path(tmp) / "labels.json"
        labels.write_text(json.dumps(fields + [["", "", "", ""]] * (n - len(fields))))
        thumbs = Path(tmp) / "thumbs"
        thumbs.mkdir()
        rng = random.Random(SEED)
        for i in range(len(drawn)):
            with Image.open(drawn[i - i % 2]) as image:
                image = image.convert("RGB")
                if i % 2:  # every other one a copy of the one before: cropped, resized, re-encoded
                    image = Image.open(io.BytesIO(_copy(image, rng)))
                image.thumbnail((320, 320))
                image.save(thumbs / f"{i}.jpg", "JPEG", quality=85)
        log(f"scanning {n} x {dim} (memory-mapped, in a child process), labels and pixels as the scan does")
        done = subprocess.run(
            [sys.executable, "-c", _TIMING_CHILD, str(ROOT), str(path), str(labels), str(thumbs)],
            capture_output=True,
            text=True,
            check=True,
        )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out.update({"n": n, "dim": dim, "vectors_mib": round(n * dim * 4 / 2**20)})
    out["load_average"] = os.getloadavg()
    return out


_TIMING_CHILD = """
import functools, json, resource, sys, time
from pathlib import Path
import numpy as np
root, vectors_path, labels_path, thumbs = sys.argv[1:5]
sys.path.insert(0, root)
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
import django
django.setup()
from gallery import catalog_health as health
from gallery.health_photos import photo_read
from recommender.api import SCAN_REDUCED_DIMS, SCAN_REDUCED_FROM
from recommender.scan import vectors_scan


def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def peak_mib():
    return round(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024)


v = np.load(vectors_path, mmap_mode="r")
ids = np.arange(len(v), dtype=np.int64) * 3 + 1
out = {"rss_before_mib": peak_mib()}
t, c = time.perf_counter(), cpu()
r = vectors_scan(vectors=v, product_ids=ids, k=health.NEIGHBOURS, duplicate_cosine=health.DUPLICATE_COSINE,
                 reduce_to=SCAN_REDUCED_DIMS if len(ids) >= SCAN_REDUCED_FROM else None)
pairs, _ = health.candidate_pairs(result=r, duplicate_cosine=health.DUPLICATE_COSINE)
out["candidate_products"] = int(len(np.unique(pairs)))
out["vector_seconds"], out["vector_cpu_seconds"] = round(time.perf_counter() - t, 1), round(cpu() - c, 1)
out["candidate_pairs"] = len(pairs)
out["peak_after_vectors_mib"] = peak_mib()
t, c = time.perf_counter(), cpu()
labels = json.loads(Path(labels_path).read_text())
order = np.argsort(ids)
pos = np.searchsorted(ids[order], r.neighbour_ids.clip(min=0))
rows = np.where(r.neighbour_ids >= 0, order[pos.clip(max=len(ids) - 1)], -1)
names = [x[3] for x in labels]
raised = [s.row for i, field in enumerate(("article_type", "master_category", "base_colour"))
          for s in health.label_suspects(labels=[x[i] for x in labels], neighbour_rows=rows,
                                         names=names if field in health.NAME_WITNESSED else None)]
out["label_seconds"], out["label_cpu_seconds"], out["labels_raised"] = (
    round(time.perf_counter() - t, 1), round(cpu() - c, 1), len(raised))
# Their photos are read too (at most MAX_LABEL_READS), to tell a broken photo raised for its chance look-alikes.
out["label_photos_read"] = min(len(set(raised)), health.MAX_LABEL_READS)
files = sorted(Path(thumbs).glob("*.jpg"), key=lambda p: int(p.stem))
from concurrent.futures import ThreadPoolExecutor
t, c = time.perf_counter(), cpu()
photos = [photo_read(f) for f in files]
read = (time.perf_counter() - t) / len(files)
t = time.perf_counter()
with ThreadPoolExecutor(max_workers=health.READERS) as pool:  # as the scan reads the candidates' fingerprints
    list(pool.map(photo_read, files))
read_pooled = (time.perf_counter() - t) / len(files)
out["read_pooled_ms"] = round(read_pooled * 1000, 2)
pairs_local = [(i, i + 1) for i in range(0, len(files) - 1, 2)] + [(i, i + 3) for i in range(0, len(files) - 3, 2)]
t = time.perf_counter()
diff = health.pairs_compare(pairs=np.array(pairs_local), photo=lambda i: photos[i])
per_pair = (time.perf_counter() - t) / len(pairs_local)
n = len(ids)
out.update({
    "read_ms": round(read * 1000, 2), "compare_ms": round(per_pair * 1000, 2),
    "copies_matched": int((diff[: len(files) // 2] <= health.DUPLICATE_DIFFERENCE).sum()), "copies": len(files) // 2,
    "fingerprints_bound": min(n, health.MAX_FINGERPRINTS),
    "pixel_bound_seconds": round(
        (min(n, health.MAX_FINGERPRINTS) + health.MAX_LABEL_READS) * read_pooled
        + health.MAX_COMPARED * (per_pair + 2 * read), 1),
    "pixel_seconds_these_candidates": round(
        (min(out["candidate_products"], health.MAX_FINGERPRINTS) + out["label_photos_read"]) * read_pooled
        + min(health.MAX_COMPARED, len(pairs)) * (per_pair + 2 * read), 1),
})
out["peak_rss_mib"] = peak_mib()
out["bound_total_seconds"] = round(out["vector_seconds"] + out["label_seconds"] + out["pixel_bound_seconds"], 1)
out["total_seconds_these_candidates"] = round(
    out["vector_seconds"] + out["label_seconds"] + out["pixel_seconds_these_candidates"], 1)
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalogs", default="drawn,art", help="comma-separated: drawn, art, art-full")
    parser.add_argument("--rows", type=int, default=5000, help="real rows drawn (default 5000)")
    parser.add_argument("--timing", action="store_true", help="time the scan at --n x --dim instead")
    parser.add_argument("--n", type=int, default=44_446)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)  # noqa: T201

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()  # the shop's judgements import its models; no database is touched
    results = []
    if args.timing:
        results.append(timing(args.n, args.dim, log))
        log(json.dumps(results[-1]))
    else:
        for name in args.catalogs.split(","):
            if name not in {"drawn", "art", "art-full"}:
                raise SystemExit(f"unknown catalog {name!r}: drawn, art or art-full")
            catalog = (
                _drawn(args.rows, log) if name == "drawn" else _art(log, "full" if name == "art-full" else "small")
            )
            # drawn-*: the earlier drawing (before the lab's one drawer), kept apart
            label = f"real-rows-{args.rows}" if name == "drawn" else ("art-full" if name == "art-full" else "art-small")
            cache = CACHE / "vectors" / f"{label}-{SEED}.npz"
            ids, vectors = _vectors(catalog, cache, log)
            results.append(measure(catalog, ids, vectors, log))
    log(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
