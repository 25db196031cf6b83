"""The grids shoppers browse: a refinement trail or a photo in, catalog products with scores out."""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from PIL import Image

from gallery.models import Product
from gallery.selectors import ProductFilters
from gallery.trail import Trail
from recommender import runtime
from recommender.encoders import INPUT_SIZE
from recommender.preprocess import image_open, image_to_rgb, image_to_square
from recommender.selectors import NotEmbeddedYet, query_vector, similar_products


@dataclass(frozen=True)
class GridItem:
    product: Product
    score: float | None
    url: str | None = None


@dataclass(frozen=True)
class SimilarGrid:
    items: list[GridItem]
    trail_products: dict[int, Product] = field(default_factory=dict)
    notice: str = ""


def similar_grid(
    *,
    anchor: Product,
    trail: Trail,
    k: int,
    filters: ProductFilters | None = None,
    link: Callable[[int, Trail], str] | None = None,
) -> SimilarGrid:
    """The ``k`` products that look most like the trail: ``anchor`` and the pinned steps, away from disliked ones.

    Products on the trail never appear in the grid. When the anchor has no
    vector yet the grid is empty and ``notice`` says why. Raises
    SimilarityUnavailable when the index cannot answer.
    """
    liked = [step.product_id for step in trail.steps if step.pinned and step.product_id != anchor.id] + [anchor.id]
    trail_products = Product.objects.in_bulk(trail.product_ids)
    try:
        vector = query_vector(liked_ids=liked, disliked_ids=trail.disliked_ids)
    except NotEmbeddedYet as exc:
        return SimilarGrid(items=[], trail_products=trail_products, notice=str(exc))
    neighbours = similar_products(
        vector=vector, k=k, exclude_ids=frozenset(trail.product_ids), filters=filters.q() if filters else None
    )
    products = Product.objects.in_bulk([n.product_id for n in neighbours])
    items = [
        GridItem(products[n.product_id], n.score, link(n.product_id, trail.then(n.product_id)) if link else None)
        for n in neighbours
        if n.product_id in products
    ]
    return SimilarGrid(items=items, trail_products=trail_products)


# --- Search by photo ------------------------------------------------------------------

PHOTO_TOKEN_SIDE = 64
PHOTO_TOKEN_MAX_CHARS = 4000
_PHOTO_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,4000}={0,2}$")

# Photo searches run the CNN inside the web process. At most
# PHOTO_SEARCH_CONCURRENCY run at once and PHOTO_SEARCH_QUEUE more wait; the
# rest are turned away at once, so waiting photos never hold every server
# thread while text searches and clicks queue behind them.
_photo_slots = threading.BoundedSemaphore(max(1, settings.PHOTO_SEARCH_CONCURRENCY))
_photo_admitted = threading.BoundedSemaphore(max(1, settings.PHOTO_SEARCH_CONCURRENCY) + settings.PHOTO_SEARCH_QUEUE)
PHOTO_BUSY_RETRY_S = 2


class PhotoSearchBusy(Exception):
    """Too many photo searches in this process right now; the message says when to retry."""


@dataclass(frozen=True)
class PhotoGrid:
    items: list[GridItem]
    # A thumbnail of the shopper's photo that travels in links (never stored).
    photo_token: str


def photo_token_make(rgb: Image.Image) -> str:
    """A small JPEG of the shopper's photo, URL-safe base64: shown at the start of the trail."""
    thumb = rgb.copy()
    thumb.thumbnail((PHOTO_TOKEN_SIDE, PHOTO_TOKEN_SIDE))
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=60)
    return base64.urlsafe_b64encode(out.getvalue()).decode()


def photo_token_valid(token: str) -> bool:
    return len(token) <= PHOTO_TOKEN_MAX_CHARS and bool(_PHOTO_TOKEN.match(token))


def photo_grid(*, data: bytes, k: int, filters: ProductFilters | None = None) -> PhotoGrid:
    """The ``k`` products that look most like the photo ``data``; it is embedded in memory and dropped.

    Raises ImageRejected (a bad or oversized image), PhotoSearchBusy or SimilarityUnavailable.
    """
    if not _photo_admitted.acquire(blocking=False):
        raise PhotoSearchBusy(f"Photo search is busy; please try again in {PHOTO_BUSY_RETRY_S} seconds.")
    try:
        rgb = image_to_rgb(image_open(data, max_pixels=settings.IMAGE_MAX_PIXELS))
        square = np.asarray(image_to_square(rgb, size=INPUT_SIZE))
        with _photo_slots:
            vector = runtime.query_vectors([square])[0]
    finally:
        _photo_admitted.release()
    neighbours = similar_products(vector=vector, k=k, filters=filters.q() if filters else None)
    products = Product.objects.in_bulk([n.product_id for n in neighbours])
    items = [GridItem(products[n.product_id], n.score) for n in neighbours if n.product_id in products]
    return PhotoGrid(items=items, photo_token=photo_token_make(rgb))
