"""Section ``embed``: how close the embedding pipeline gets to the bare model, in fp32 and bf16.

Measures, on the demo catalog's images imported into the throwaway database (so the files are the
re-encoded JPEGs the product stores, about 480x640):

* bare forward: ``Encoder.embed_tensor`` on batches already decoded, resized and normalised (the ceiling);
* the product path: ``recommender.services.products_embed`` (what ``embed_catalog`` and the Celery task
  call: decode in ``embed_stream``'s DataLoader, resize, forward, ``embeddings_store``: one transaction
  per batch), with ENCODER_DECODE_WORKERS 0 and 1;
* the naive loop: PIL open, full-size decode, resize, forward a batch of 1, store the row;
* the stages alone: decoding with and without Pillow's JPEG draft, the database writes (one row or one
  batch per transaction), the start of a decode worker;
* agreement: bf16-autocast vectors against fp32 ones (cosine, top-25 neighbour overlap), and likewise
  vectors from draft-decoded against fully decoded images.

Throughputs are images per second over the whole set.
Every variant runs on the same chunk of images in turn (rotating the order), chunk after chunk, so a burst
of load on this shared machine hits all variants alike; ratios are of the totals.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING

import numpy as np

from bench.common import BenchContext, SectionResult, Table, Target, settings_set

if TYPE_CHECKING:
    from recommender.encoders import Encoder

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


@dataclass
class _Tally:
    """Images, wall seconds and CPU seconds a variant spent over all rounds, plus its per-round rates."""

    images: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    per_round: list[float] = field(default_factory=list)

    def add(self, images: int, seconds: float, cpu_seconds: float) -> None:
        self.images += images
        self.seconds += seconds
        self.cpu_seconds += cpu_seconds
        self.per_round.append(images / seconds)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")

    @property
    def cpu_ms_per_image(self) -> float:
        return 1e3 * self.cpu_seconds / self.images if self.images else float("nan")


def _cpu_seconds() -> float:
    """CPU time of this process's threads plus its finished children (the DataLoader's decode workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


PRECISIONS = ("fp32", "bf16")
VARIANTS = (
    "bare fp32",
    "bare bf16",
    "pipeline fp32 dw0",
    "pipeline fp32 dw1",
    "pipeline bf16 dw0",
    "pipeline bf16 dw1",
    "pipeline fp32 dw0 nodraft",
    "naive fp32",
)


def _naive(encoder: Encoder, products: list, paths: list[Path]) -> None:
    """One image at a time: PIL open, full-size decode, letterbox resize, a batch of 1, one row stored."""
    from PIL import Image

    from recommender.encoders import batch_to_tensor
    from recommender.preprocess import image_to_square
    from recommender.services import embedding_store

    for product, path in zip(products, paths, strict=True):
        with Image.open(path) as img:
            square = image_to_square(img.convert("RGB"), size=encoder.input_size)
        tensor = batch_to_tensor([np.asarray(square)], mean=encoder.mean, std=encoder.std)
        vector = encoder.embed_tensor(tensor)[0]
        embedding_store(product_id=product.id, image_version=product.image_version, space=encoder.id, vector=vector)


def _worker_start_seconds(products: list) -> float:
    """What decode workers 1 adds to one products_embed call: the median of 3 (1-image call, dw 1 minus dw 0)."""
    from recommender import services

    extra = []
    for _ in range(3):
        times = {}
        for workers in (0, 1):
            started = time.perf_counter()
            services.products_embed(product_ids=[p.id for p in products], decode_workers=workers)
            times[workers] = time.perf_counter() - started
        extra.append(times[1] - times[0])
    return median(extra)


def _stage_rate(fn: Callable[[], object], items: int) -> float:
    started = time.perf_counter()
    fn()
    return items / (time.perf_counter() - started)


def run(ctx: BenchContext) -> SectionResult:
    from gallery.services import catalog_import
    from recommender import runtime, services
    from recommender.encoders import batch_to_tensor
    from recommender.preprocess import image_prepare

    count, chunk, naive_per_chunk = (64, 64, 8) if ctx.quick else (384, 64, 16)
    result = SectionResult("embed")
    ctx.reset()
    catalog_import(directory=ctx.demo_catalog(count), enqueue=False, workers=2)
    products = _products()
    ids = [p.id for p in products]
    paths = _paths(products)
    prepared = [image_prepare(path, size=224) for path in paths]

    tallies = {name: _Tally() for name in VARIANTS}
    outputs: dict[str, list[np.ndarray]] = {"fp32": [], "bf16": []}
    nodraft: list[np.ndarray] = []
    with settings_set(ENCODER_BF16="off"):
        encoder = runtime.encoder()  # the object products_embed uses; bf16 autocast is toggled on it
        for bf16 in (False, True):  # warm-up: oneDNN picks its kernels on the first call of each precision
            encoder.bf16 = bf16
            encoder.embed_tensor(batch_to_tensor(prepared[:BATCH], mean=encoder.mean, std=encoder.std))
        rounds = list(range(0, count, chunk))
        for number, start in enumerate(rounds):
            part = slice(start, start + chunk)
            batches = [
                batch_to_tensor(prepared[i : i + BATCH], mean=encoder.mean, std=encoder.std)
                for i in range(start, min(count, start + chunk), BATCH)
            ]
            order = VARIANTS[number % len(VARIANTS) :] + VARIANTS[: number % len(VARIANTS)]
            for name in order:
                encoder.bf16 = "bf16" in name
                n = len(products[part])
                started, cpu = time.perf_counter(), _cpu_seconds()
                if name.startswith("bare"):
                    vectors = [encoder.embed_tensor(batch) for batch in batches]
                elif name == "naive fp32":
                    n = min(n, naive_per_chunk)
                    _naive(encoder, products[part][:n], paths[part][:n])
                elif name.endswith("nodraft"):
                    with _jpeg_draft_off():
                        services.products_embed(product_ids=[p.id for p in products[part]], decode_workers=0)
                else:
                    services.products_embed(product_ids=[p.id for p in products[part]], decode_workers=int(name[-1]))
                tallies[name].add(n, time.perf_counter() - started, _cpu_seconds() - cpu)
                if name.startswith("bare"):
                    outputs[name.split()[1]].append(np.concatenate(vectors))
                elif name.endswith("nodraft"):
                    nodraft.append(_stored_vectors(encoder.id, ids[part]))
        encoder.bf16 = False
        vectors_fp32 = np.concatenate(outputs["fp32"])
        write_rate = _stage_rate(
            lambda: [
                services.embedding_store(product_id=p.id, image_version=p.image_version, space=encoder.id, vector=v)
                for p, v in zip(products, vectors_fp32, strict=True)
            ],
            count,
        )
        batched_write_rate = _stage_rate(
            lambda: [
                services.embeddings_store(
                    space=encoder.id,
                    vectors=[
                        (p.id, p.image_version, v)
                        for p, v in zip(products[i : i + BATCH], vectors_fp32[i : i + BATCH], strict=True)
                    ],
                )
                for i in range(0, count, BATCH)
            ],
            count,
        )
        worker_start = _worker_start_seconds(products[:1])
    with settings_set(ENCODER_BF16="auto"):
        auto_bf16 = runtime.encoder().bf16
    decode_draft = _stage_rate(lambda: [image_prepare(p, size=224, jpeg_draft=True) for p in paths], count)
    decode_full = _stage_rate(lambda: [image_prepare(p, size=224, jpeg_draft=False) for p in paths], count)
    np.save(ctx.results_dir / "embed_vectors_fp32.npy", vectors_fp32)

    bare = {p: tallies[f"bare {p}"] for p in PRECISIONS}
    table = Table(
        f"Embedding throughput: {count} demo images (stored JPEGs {_image_sizes(paths)} px), batch {BATCH}, "
        f"{len(rounds)} interleaved round{'s' if len(rounds) > 1 else ''} of {chunk}",
        [
            "path",
            "precision",
            "decode workers",
            "images/s",
            "x bare (totals)",
            "x bare (median round)",
            "x bare (min-max)",
            "CPU ms per image",
            "x bare (CPU)",
        ],
    )

    def row(label: str, name: str, precision: str, workers: object) -> None:
        tally = tallies[name]
        per_round = [r / b for r, b in zip(tally.per_round, bare[precision].per_round, strict=True)]
        spread = f"{min(per_round):.2f}-{max(per_round):.2f}"
        table.add(
            label,
            precision,
            workers,
            tally.rate,
            tally.rate / bare[precision].rate,
            median(per_round),
            spread,
            tally.cpu_ms_per_image,
            bare[precision].cpu_ms_per_image / tally.cpu_ms_per_image,
        )

    for p in PRECISIONS:
        row("bare forward (prepared tensors)", f"bare {p}", p, "-")
        for dw in (0, 1):
            row("products_embed (product path)", f"pipeline {p} dw{dw}", p, dw)
    row("products_embed, JPEG draft off", "pipeline fp32 dw0 nodraft", "fp32", 0)
    row(f"naive loop (batch 1; {naive_per_chunk} images a round)", "naive fp32", "fp32", "-")
    table.note = (
        "x bare: against bare forward of the same precision in the same rounds; totals = images/s over all rounds, "
        "median round = the median of the per-round ratios (robust to a burst of load on one round); CPU = user + "
        "system time of this process's threads and its decode workers per image, x bare (CPU) = bare's CPU per image "
        "over the variant's (what the pipeline costs beyond the model; less sensitive to load than wall time, though "
        "spinning OpenMP threads count, and blind to the overlap decode workers buy)"
    )
    result.tables.append(table)

    stages = Table("Stages alone (one process, not interleaved)", ["stage", "images/s", "ms per image"])
    stages.add("decode + resize, JPEG draft on (image_prepare)", decode_draft, 1e3 / decode_draft)
    stages.add("decode + resize, JPEG draft off", decode_full, 1e3 / decode_full)
    stages.add("database write, 1 row per transaction (embedding_store)", write_rate, 1e3 / write_rate)
    stages.add(
        f"database write, {BATCH} rows per transaction (embeddings_store, what products_embed calls)",
        batched_write_rate,
        1e3 / batched_write_rate,
    )
    for p in PRECISIONS:
        stages.add(f"forward {p} (bare, from the rounds above)", bare[p].rate, 1e3 / bare[p].rate)
    stages.add("decode worker start, once per products_embed call with decode workers 1", "-", 1e3 * worker_start)
    result.tables.append(stages)

    bf16_vs_fp32 = _agreement(vectors_fp32, np.concatenate(outputs["bf16"]))
    draft_vs_full = _agreement(vectors_fp32, np.concatenate(nodraft))
    agree = Table(
        f"Vector agreement over the {count} images",
        ["comparison", "min cosine", "mean cosine", "top-25 overlap (mean)", "top-25 overlap (min)"],
    )
    for name, a in (("bf16 vs fp32", bf16_vs_fp32), ("JPEG draft on vs off (fp32)", draft_vs_full)):
        agree.add(name, a["cos_min"], a["cos_mean"], a["top25_overlap_mean"], a["top25_overlap_min"])
    result.tables.append(agree)

    for p in PRECISIONS:
        ratios = {
            dw: median(
                [r / b for r, b in zip(tallies[f"pipeline {p} dw{dw}"].per_round, bare[p].per_round, strict=True)]
            )
            for dw in (0, 1)
        }
        best = max(ratios, key=ratios.__getitem__)
        result.targets.append(
            Target(
                f"products_embed / bare forward ({p}, median round)",
                ">= 0.8",
                f"{ratios[best]:.2f} with decode workers {best} ({ratios[1 - best]:.2f} with {1 - best})",
                ratios[best] >= 0.8,
            )
        )
    result.notes.append(
        "product path = recommender.services.products_embed over products imported by catalog_import (the stored, "
        "re-encoded JPEGs), as embed_catalog (decode workers = ENCODER_DECODE_WORKERS, default 1, 1024 products a "
        f"call) and the Celery task (decode workers 0, 32 a call) use it; here {chunk} products a call, so decode "
        "workers 1 pays a worker start per call"
    )
    result.notes.append(
        f"ENCODER_BF16=auto (the default) {'enables' if auto_bf16 else 'does not enable'} bf16 autocast on this machine"
    )
    result.data = {
        "images": count,
        "chunk": chunk,
        "batch": BATCH,
        "naive_images_per_round": naive_per_chunk,
        "variants": {name: asdict(t) | {"rate": t.rate} for name, t in tallies.items()},
        "stages_images_per_s": {
            "decode_draft": decode_draft,
            "decode_full": decode_full,
            "db_write": write_rate,
            "db_write_batched": batched_write_rate,
        },
        "decode_worker_start_seconds": worker_start,
        "agreement_bf16_vs_fp32": bf16_vs_fp32,
        "agreement_draft_vs_full": draft_vs_full,
        "auto_bf16": auto_bf16,
    }
    return result
