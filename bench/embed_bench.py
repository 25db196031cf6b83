"""Section ``embed``: how close the embedding pipeline gets to the bare model, in fp32 and bf16.

Measures, on the demo catalog's images imported into the throwaway database (so the files are the
re-encoded JPEGs the product stores, about 480x640):

* bare forward: ``Encoder.embed_tensor`` on batches already decoded, resized and normalised (the ceiling);
* the product path: ``recommender.services.products_embed`` (what ``embed_catalog`` and the Celery task
  call: decode in ``embed_stream``'s DataLoader, resize, forward, one ``embedding_store`` transaction per
  product), with ENCODER_DECODE_WORKERS 0 and 1;
* the naive loop: PIL open, full-size decode, resize, forward a batch of 1, store the row;
* the stages alone: decoding with and without Pillow's JPEG draft, the database writes;
* agreement: bf16-autocast vectors against fp32 ones (cosine, top-25 neighbour overlap), and likewise
  vectors from draft-decoded against fully decoded images.

Throughputs are images per second over the whole set; ratios compare runs made minutes apart in one process
(bare forward is measured before and after the pipeline runs and averaged).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import BenchContext, SectionResult, Table, Target, catalog_reset, settings_set

BATCH = 32


def _products() -> list:
    from gallery.models import Product

    return list(Product.objects.only("id", "image", "image_version").order_by("id"))


def _paths(products: list) -> list[Path]:
    from django.core.files.storage import default_storage

    return [Path(default_storage.path(p.image.name)) for p in products]


def _image_sizes(paths: list[Path]) -> str:
    """The range of image sizes, as 'WxH..WxH'."""
    from PIL import Image

    sizes = []
    for path in paths:
        with Image.open(path) as img:
            sizes.append(img.size)
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    return f"{min(widths)}-{max(widths)} x {min(heights)}-{max(heights)}"


def _stored_vectors(space: str, ids: list[int]) -> np.ndarray:
    """The vectors the pipeline stored, in ``ids`` order."""
    from recommender.models import Embedding

    rows = dict(Embedding.objects.filter(space=space, product_id__in=ids).values_list("product_id", "vector"))
    return np.stack([np.frombuffer(rows[i], dtype="<f4") for i in ids])


def _agreement(a: np.ndarray, b: np.ndarray, k: int = 25) -> dict[str, float]:
    """Cosine between paired rows, and overlap of each row's top-k neighbours (itself excluded) in a vs b."""
    cosine = np.sum(a * b, axis=1)

    def top(x: np.ndarray) -> np.ndarray:
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k, axis=1)[:, :k]

    ta, tb = top(a), top(b)
    overlap = np.array([len(set(r) & set(s)) / k for r, s in zip(ta.tolist(), tb.tolist(), strict=True)])
    return {
        "cos_min": float(cosine.min()),
        "cos_mean": float(cosine.mean()),
        "top25_overlap_mean": float(overlap.mean()),
        "top25_overlap_min": float(overlap.min()),
    }


@contextlib.contextmanager
def _jpeg_draft_off() -> Iterator[None]:
    """Make the pipeline decode JPEGs at full size (Pillow's draft off) for the duration of the block."""
    from recommender import pipeline

    original = pipeline.image_prepare
    pipeline.image_prepare = functools.partial(original, jpeg_draft=False)
    try:
        yield
    finally:
        pipeline.image_prepare = original


def _pipeline_rate(products: list, *, decode_workers: int) -> float:
    from recommender import services

    started = time.perf_counter()
    report = services.products_embed(products=products, decode_workers=decode_workers)
    seconds = time.perf_counter() - started
    if report.embedded != len(products):
        raise RuntimeError(f"pipeline embedded {report.embedded} of {len(products)}: {report}")
    return len(products) / seconds


def _bare_rate(encoder, tensors: list) -> float:  # noqa: ANN001
    started = time.perf_counter()
    count = 0
    for batch in tensors:
        encoder.embed_tensor(batch)
        count += batch.shape[0]
    return count / (time.perf_counter() - started)


def _naive_rate(encoder, products: list, paths: list[Path]) -> float:  # noqa: ANN001
    """One image at a time: PIL open, full decode, letterbox resize, batch of 1, one row stored."""
    from PIL import Image

    from recommender.preprocess import batch_to_tensor, image_to_square
    from recommender.services import embedding_store

    started = time.perf_counter()
    for product, path in zip(products, paths, strict=True):
        with Image.open(path) as img:
            square = image_to_square(img.convert("RGB"), size=encoder.input_size)
        tensor = batch_to_tensor([np.asarray(square)], mean=encoder.mean, std=encoder.std)
        vector = encoder.embed_tensor(tensor)[0]
        embedding_store(product_id=product.id, image_version=product.image_version, space=encoder.id, vector=vector)
    return len(products) / (time.perf_counter() - started)


def _decode_rate(paths: list[Path], *, draft: bool) -> float:
    from recommender.preprocess import image_prepare

    started = time.perf_counter()
    for path in paths:
        image_prepare(path, size=224, jpeg_draft=draft)
    return len(paths) / (time.perf_counter() - started)


def _write_rate(products: list, space: str, vectors: np.ndarray) -> float:
    from recommender.services import embedding_store

    started = time.perf_counter()
    for product, vector in zip(products, vectors, strict=True):
        embedding_store(product_id=product.id, image_version=product.image_version, space=space, vector=vector)
    return len(products) / (time.perf_counter() - started)


def run(ctx: BenchContext) -> SectionResult:
    from gallery.services import catalog_import
    from recommender import runtime
    from recommender.preprocess import batch_to_tensor, image_prepare

    count = 96 if ctx.quick else 512
    naive_count = 32 if ctx.quick else 128
    result = SectionResult("embed")
    catalog_reset()
    catalog_import(directory=ctx.demo_catalog(count), enqueue=False, workers=2)
    products = _products()
    ids = [p.id for p in products]
    paths = _paths(products)
    prepared = [image_prepare(path, size=224) for path in paths]
    sizes = _image_sizes(paths)

    rates: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    for label, mode in (("fp32", "off"), ("bf16", "on")):
        with settings_set(ENCODER_BF16=mode):
            encoder = runtime.encoder()
            tensors = [batch_to_tensor(prepared[i : i + BATCH], mean=encoder.mean, std=encoder.std)
                       for i in range(0, len(prepared), BATCH)]
            encoder.embed_tensor(tensors[0])  # warm-up: oneDNN picks its kernels on the first call
            rates[f"bare_{label}_1"] = _bare_rate(encoder, tensors)
            rates[f"pipeline_{label}_dw0"] = _pipeline_rate(products, decode_workers=0)
            vectors[label] = _stored_vectors(encoder.id, ids)
            rates[f"pipeline_{label}_dw1"] = _pipeline_rate(products, decode_workers=1)
            rates[f"bare_{label}_2"] = _bare_rate(encoder, tensors)
            if label == "fp32":
                with _jpeg_draft_off():
                    rates["pipeline_fp32_dw0_nodraft"] = _pipeline_rate(products, decode_workers=0)
                vectors["fp32_nodraft"] = _stored_vectors(encoder.id, ids)
                rates["naive_fp32"] = _naive_rate(encoder, products[:naive_count], paths[:naive_count])
                rates["write_only"] = _write_rate(products, encoder.id, vectors["fp32"])
    with settings_set(ENCODER_BF16="auto"):
        auto_bf16 = runtime.encoder().bf16
    rates["decode_draft"] = _decode_rate(paths, draft=True)
    rates["decode_nodraft"] = _decode_rate(paths, draft=False)
    np.save(ctx.results_dir / "embed_vectors_fp32.npy", vectors["fp32"])

    bare = {p: (rates[f"bare_{p}_1"] + rates[f"bare_{p}_2"]) / 2 for p in ("fp32", "bf16")}
    table = Table(
        f"Embedding throughput, {count} demo images (stored JPEGs {sizes} px), batch {BATCH}",
        ["path", "precision", "decode workers", "images/s", "x bare forward"],
    )
    for p in ("fp32", "bf16"):
        table.add("bare forward (run 1, before)", p, "-", rates[f"bare_{p}_1"], rates[f"bare_{p}_1"] / bare[p])
        table.add("bare forward (run 2, after)", p, "-", rates[f"bare_{p}_2"], rates[f"bare_{p}_2"] / bare[p])
        for dw in (0, 1):
            r = rates[f"pipeline_{p}_dw{dw}"]
            table.add("products_embed (product path)", p, dw, r, r / bare[p])
    r = rates["pipeline_fp32_dw0_nodraft"]
    table.add("products_embed, JPEG draft off", "fp32", 0, r, r / bare["fp32"])
    table.add(f"naive loop (batch 1, {naive_count} images)", "fp32", "-", rates["naive_fp32"],
              rates["naive_fp32"] / bare["fp32"])
    table.note = "x bare forward: against the mean of the two bare runs of the same precision"
    result.tables.append(table)

    stages = Table("Stages alone (one process)", ["stage", "images/s", "ms per image"])
    stages.add("decode + resize, JPEG draft on (image_prepare)", rates["decode_draft"], 1e3 / rates["decode_draft"])
    stages.add("decode + resize, JPEG draft off", rates["decode_nodraft"], 1e3 / rates["decode_nodraft"])
    stages.add("database write (embedding_store, 1 row per transaction)", rates["write_only"],
               1e3 / rates["write_only"])
    stages.add("forward fp32 (bare, mean)", bare["fp32"], 1e3 / bare["fp32"])
    stages.add("forward bf16 (bare, mean)", bare["bf16"], 1e3 / bare["bf16"])
    result.tables.append(stages)

    bf16_vs_fp32 = _agreement(vectors["fp32"], vectors["bf16"])
    draft_vs_full = _agreement(vectors["fp32"], vectors["fp32_nodraft"])
    agree = Table(
        f"Vector agreement over the {count} images",
        ["comparison", "min cosine", "mean cosine", "top-25 overlap (mean)", "top-25 overlap (min)"],
    )
    for name, a in (("bf16 vs fp32", bf16_vs_fp32), ("JPEG draft on vs off (fp32)", draft_vs_full)):
        agree.add(name, a["cos_min"], a["cos_mean"], a["top25_overlap_mean"], a["top25_overlap_min"])
    result.tables.append(agree)

    for p in ("fp32", "bf16"):
        best = max((0, 1), key=lambda dw, p=p: rates[f"pipeline_{p}_dw{dw}"])
        ratio = rates[f"pipeline_{p}_dw{best}"] / bare[p]
        result.targets.append(
            Target(
                f"pipeline / bare forward ({p})",
                ">= 0.8",
                f"{ratio:.2f} (decode workers {best}; {rates[f'pipeline_{p}_dw{1 - best}'] / bare[p]:.2f} with "
                f"{1 - best})",
                ratio >= 0.8,
            )
        )
    result.notes.append(
        "product path = recommender.services.products_embed over products imported by catalog_import (stored "
        "re-encoded JPEGs), as embed_catalog (decode workers = ENCODER_DECODE_WORKERS, default 1) and the Celery "
        "task (decode workers 0) call it"
    )
    result.notes.append(f"ENCODER_BF16=auto (the default) chose bf16={'on' if auto_bf16 else 'off'} on this machine")
    result.data = {
        "images": count,
        "naive_images": naive_count,
        "batch": BATCH,
        "rates_images_per_s": rates,
        "bare_mean": bare,
        "agreement_bf16_vs_fp32": bf16_vs_fp32,
        "agreement_draft_vs_full": draft_vs_full,
        "auto_bf16": auto_bf16,
    }
    return result
