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


