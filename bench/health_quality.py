"""Catalog health on catalogs where the truth is known, and the scan's cost at the real catalog's size.

    .venv/bin/python bench/health_quality.py                 # drawn real rows (5,000) and real art: quality
    .venv/bin/python bench/health_quality.py --catalogs art  # one catalog only (drawn, art)
    .venv/bin/python bench/health_quality.py --timing        # the scan at 44,446 x 1280-d: seconds, peak memory

Quality. Into each catalog it injects, with a fixed seed:

* 200 copies of randomly chosen products' photos, each re-encoded (JPEG quality 45-80), resized (to 45-85 %)
  and/or lightly cropped (2-8 % off each side), stored as new products with the original's labels: the
  truth pairs of the near-duplicate kind;
* 2 % of the original products' articleType flipped to another type of the catalog (for drawn rows, one drawn
  as another shape, so the photo really contradicts the label): the truth of the suspect-label kind;
* 20 broken photos (blank white, grey or black, a "no image" placeholder, noise, a corner of a photo blown up):
  the truth of the outlier kind.

Catalogs: (a) ``--rows`` rows drawn at random from the real styles.csv (``../shared/data/styles.csv``), each
drawn by the lab's real-row drawer (``lab.shopper.real_rows_draw``: the row's type picks the shape, its
colour the paint); (b) the
real-art catalog of ``bench/art_catalog.py`` (emoji by three vendors; the same emoji by two vendors is *not*
a duplicate, so a pair of them counts against precision). Every image is embedded with the offline encoder
(EfficientNet-Lite0), the scan runs (``recommender.scan.vectors_scan``) and the shop's judgements
(``gallery.catalog_health``) are applied at the product's thresholds. Precision and recall come with 95 %
Wilson intervals, beside the simplest alternative (exact file hashes for duplicates; the single nearest
neighbour's label for labels). The duplicate threshold sweep is printed too: the threshold was chosen on the
drawn rows, and the art catalog is the check it generalises.

Images and vectors are cached under ~/.cache/visual-gallery/bench/health/ (never committed).
"""

from __future__ import annotations

import argparse
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


def _art(log) -> Catalog:  # noqa: ANN001
    from bench.art_catalog import art_catalog_dir

    directory = art_catalog_dir(size="small")
    rows = json.loads((directory / "rows.json").read_text(encoding="utf-8"))
    catalog = Catalog(
        name=f"real art ({len(rows)} emoji drawings)",
        images={int(r["id"]): directory / "images" / f"{r['id']}.jpg" for r in rows},
        article={int(r["id"]): r["articleType"] for r in rows},
        master={int(r["id"]): r["masterCategory"] for r in rows},
        colour={int(r["id"]): r["baseColour"] for r in rows},
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
    by_emoji: dict[str, list[int]] = {}
    for r in rows:
        by_emoji.setdefault(r["emoji"], []).append(int(r["id"]))
    catalog.same_subject = {(a, b) for ids in by_emoji.values() for a in ids for b in ids if a < b}
    types = sorted(set(catalog.article.values()))
    _inject(catalog, CACHE / "art", flip_to=lambda t, rng: rng.choice([o for o in types if o != t]), log=log)
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
        for labels in (catalog.article, catalog.master, catalog.colour):
            labels[copy_id] = labels[original]
    for i in range(BROKEN):
        broken_id = BROKEN_BASE + i
        path = extra / f"{broken_id}.jpg"
        if not path.exists():
            with Image.open(catalog.images[originals[(i * 37) % len(originals)]]) as source:
                _broken(i, random.Random(f"{SEED}:b{i}"), source).save(path, "JPEG", quality=85)
        catalog.images[broken_id] = path
        catalog.broken.add(broken_id)
        catalog.article[broken_id], catalog.master[broken_id], catalog.colour[broken_id] = "", "", ""
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
    from recommender.scan import vectors_scan

    started = time.perf_counter()
    result = vectors_scan(
        vectors=vectors, product_ids=ids, k=health.NEIGHBOURS, duplicate_cosine=0.80, max_pairs=1_000_000
    )
    seconds = time.perf_counter() - started
    truth = {tuple(sorted((c, o))) for c, o in catalog.copies.items()}
    out: dict = {"catalog": catalog.name, "products": len(ids), "scan_seconds": round(seconds, 2)}

    # Near-duplicates: pairs of products. The vectors' candidates, confirmed by the photos' fingerprints (computed
    # here from the image files; the product reads its 320-pixel thumbnails, the same at 32 x 32). Pairs among the
    # injected broken photos are left out: identical placeholders are duplicates too, but not the copies counted.
    def evaluated(found: set) -> set:
        return {p for p in found if p[0] not in catalog.broken and p[1] not in catalog.broken}

    candidates, cnn = health.candidate_pairs(result=result, duplicate_cosine=0.80)
    started = time.perf_counter()
    prints = {pid: health.photo_fingerprint(catalog.images[pid]) for pid in np.unique(candidates).tolist()}
    out["fingerprint_seconds"] = round(time.perf_counter() - started, 1)
    pixels = health.pairs_verify(pairs=candidates, fingerprints=prints)
    listed = [tuple(p) for p in candidates.tolist()]
    sweep = []
    for threshold in (0.92, 0.93, 0.94, 0.945, 0.95, 0.96, 0.97):
        found = evaluated(
            {p for p, c, x in zip(listed, cnn, pixels, strict=True) if c >= health.DUPLICATE_COSINE and x >= threshold}
        )
        sweep.append((threshold, len(found & truth), len(found), len(truth), len(found & catalog.same_subject)))
    out["duplicate_sweep_pixels"] = sweep
    vector_only = []
    for threshold in (0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98):
        found = evaluated({p for p, c in zip(listed, cnn, strict=True) if c >= threshold})
        vector_only.append((threshold, len(found & truth), len(found), len(truth), len(found & catalog.same_subject)))
    out["duplicate_sweep_vector_only"] = vector_only
    chosen = evaluated(
        {
            p
            for p, c, x in zip(listed, cnn, pixels, strict=True)
            if c >= health.DUPLICATE_COSINE and x >= health.DUPLICATE_PIXELS
        }
    )
    hits = len(chosen & truth)
    out["duplicates"] = {
        "threshold": (health.DUPLICATE_COSINE, health.DUPLICATE_PIXELS),
        "precision": share(hits, len(chosen)),
        "recall": share(hits, len(truth)),
        "same_emoji_other_vendor_flagged": len(chosen & catalog.same_subject),
        "candidates_holding_copies": share(len(set(listed) & truth), len(truth)),
    }
    # The simplest alternative: identical bytes. Every copy was re-encoded, so it finds none of them.
    digests: dict[str, list[int]] = {}
    for pid in ids.tolist():
        digests.setdefault(__import__("hashlib").sha256(catalog.images[pid].read_bytes()).hexdigest(), []).append(pid)
    hash_pairs = {tuple(sorted((a, b))) for g in digests.values() for a in g for b in g if a < b}
    out["duplicates_by_hash"] = {"recall": share(len(hash_pairs & truth), len(truth)), "pairs": len(hash_pairs)}

    # Suspect labels (articleType): ranked by confidence.
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], result.neighbour_ids.clip(min=0))
    neighbour_rows = np.where(result.neighbour_ids >= 0, order[pos.clip(max=len(ids) - 1)], -1)
    labels = [catalog.article[pid] for pid in ids.tolist()]
    suspects = health.label_suspects(
        labels=labels, neighbour_rows=neighbour_rows, neighbour_cosines=result.neighbour_cosines
    )
    flagged = [int(ids[s.row]) for s in suspects]
    flips = set(catalog.flipped)
    top = flagged[:100]
    out["labels"] = {
        "min_share": health.LABEL_MIN_SHARE,
        "flagged": len(flagged),
        "precision_at_100": share(len(set(top) & flips), len(top)),
        "p100": len(set(top) & flips) / len(top) if top else float("nan"),
        "recall": share(len(set(flagged) & flips), len(flips)),
        "precision_all": share(len(set(flagged) & flips), len(flagged)),
        "suggested_right": share(
            sum(1 for s in suspects if int(ids[s.row]) in flips and s.suggested == catalog.flipped[int(ids[s.row])][0]),
            len(set(flagged) & flips),
        ),
    }
    # The simplest alternative: flag a product whose single nearest neighbour carries another type.
    one = [
        (float(result.neighbour_cosines[i, 0]), int(ids[i]))
        for i in range(len(ids))
        if neighbour_rows[i, 0] >= 0 and labels[neighbour_rows[i, 0]] and labels[neighbour_rows[i, 0]] != labels[i]
    ]
    one.sort(reverse=True)
    top1 = [pid for _, pid in one[:100]]
    out["labels_nearest_only"] = {
        "precision_at_100": share(len(set(top1) & flips), len(top1)),
        "recall": share(len({pid for _, pid in one} & flips), len(flips)),
    }

    # Outliers.
    iso = result.isolation
    outliers = {int(ids[i]) for i in np.nonzero(iso >= health.OUTLIER_ISOLATION)[0]}
    ranked = [int(ids[i]) for i in np.argsort(-iso)[:BROKEN]]
    out["outliers"] = {
        "isolation": health.OUTLIER_ISOLATION,
        "precision": share(len(outliers & catalog.broken), len(outliers)),
        "recall": share(len(outliers & catalog.broken), len(catalog.broken)),
        "recall_in_top_20": share(len(set(ranked) & catalog.broken), len(catalog.broken)),
        "isolation_quantiles": {
            "broken min": round(float(min(iso[np.isin(ids, list(catalog.broken))])), 3),
            "catalog p99": round(float(np.quantile(iso[~np.isin(ids, list(catalog.broken))], 0.99)), 3),
            "catalog max": round(float(max(iso[~np.isin(ids, list(catalog.broken))])), 3),
        },
    }
    # Blank photos (the "no usable image" kind): judged from the fingerprints the scan reads anyway, those of
    # the duplicate candidates and of the outliers.
    for pid in outliers:
        if pid not in prints:
            prints[pid] = health.photo_fingerprint(catalog.images[pid])
    blank = {pid for pid, fp in prints.items() if fp is not None and not fp.any()}
    raised = blank | outliers
    out["blank_or_outlier"] = {
        "blank_precision": share(len(blank & catalog.broken), len(blank)),
        "recall": share(len(raised & catalog.broken), len(catalog.broken)),
        "broken_fingerprinted": len(catalog.broken & set(prints)),
    }
    log(json.dumps(out, indent=1, default=str))
    return out


# --- Timing at 44k -----------------------------------------------------------------------------------------------


def timing(n: int, dim: int, log) -> dict:  # noqa: ANN001
    """The scan over ``n`` synthetic clustered unit vectors, memory-mapped as the build holds them, in a child."""
    from bench.common import synthetic_vectors

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vectors.npy"
        np.save(path, synthetic_vectors(n, dim, queries=0, seed=SEED).vectors)
        code = (
            "import json, resource, sys, time\n"
            "import numpy as np\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from recommender.scan import vectors_scan\n"
            f"v = np.load({str(path)!r}, mmap_mode='r')\n"
            "ids = np.arange(len(v), dtype=np.int64)\n"
            "before = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
            "t = time.perf_counter()\n"
            "c = resource.getrusage(resource.RUSAGE_SELF)\n"
            "r = vectors_scan(vectors=v, product_ids=ids, k=10, duplicate_cosine=0.84)\n"
            "s = time.perf_counter() - t\n"
            "e = resource.getrusage(resource.RUSAGE_SELF)\n"
            "cpu = e.ru_utime - c.ru_utime + e.ru_stime - c.ru_stime\n"
            "peak = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
            "print(json.dumps({'seconds': round(s, 1), 'cpu_seconds': round(cpu, 1), 'pairs': len(r.pairs), "
            "'peak_rss_mib': round(peak / 1024), "
            "'rss_before_mib': round(before / 1024)}))\n"
        )
        log(f"scanning {n} x {dim} (memory-mapped, in a child process)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out.update({"n": n, "dim": dim, "vectors_mib": round(n * dim * 4 / 2**20)})
    # The pixel check reads each candidate's 320-pixel thumbnail: timed on 2,000 drawn real rows' thumbnails
    # and scaled to every product of the catalog being a candidate (the bound).
    from gallery import catalog_health as health

    drawn = sorted((CACHE / "drawn-5000-26" / "images").glob("*.jpg"))[:2000]
    if drawn:
        thumbs = []
        for path in drawn:
            with Image.open(path) as image:
                image.thumbnail((320, 320))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, "JPEG", quality=85)
                thumbs.append(buffer.getvalue())
        started = time.perf_counter()
        for data in thumbs:
            health.photo_fingerprint(io.BytesIO(data))
        per = (time.perf_counter() - started) / len(thumbs)
        out.update({"fingerprint_ms": round(per * 1000, 2), "fingerprints_all_seconds": round(per * n, 1)})
    out["load_average"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalogs", default="drawn,art", help="comma-separated: drawn, art")
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
            catalog = _drawn(args.rows, log) if name == "drawn" else _art(log)
            label = f"real-rows-{args.rows}" if name == "drawn" else "art-small"  # drawn-*: the earlier drawing
            cache = CACHE / "vectors" / f"{label}-{SEED}.npz"
            ids, vectors = _vectors(catalog, cache, log)
            results.append(measure(catalog, ids, vectors, log))
    log(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
