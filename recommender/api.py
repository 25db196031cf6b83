"""The vector engine's public surface: everything the shop calls, and nothing else.

Products are ids; images are storage names with the shop's version number;
vectors are numpy arrays; filters are sorted arrays of the ids that pass. The
engine never imports the shop (``gallery``). Importing this module does not
import torch: only ``photo_vector`` loads the encoder, once per process.

Refusals are typed (``recommender.errors``): each carries the HTTP status and,
where waiting helps, ``retry_after``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import transaction

from recommender import refine, runtime, selectors, state
from recommender.errors import (
    EngineError,
    ImageRejected,
    NotEmbeddedYet,
    PhotoSearchBusy,
    SimilarityUnavailable,
)
from recommender.index import IndexCorrupt
from recommender.models import Embedding, EmbedStatus
from recommender.preprocess import image_check, image_load
from recommender.refine import StepRef
from recommender.selectors import Neighbour
from recommender.state import ImageRef

logger = logging.getLogger(__name__)

__all__ = [
    "EmbedStatus",
    "EngineError",
    "ImageRef",
    "ImageRejected",
    "Neighbour",
    "NotEmbeddedYet",
    "PhotoSearchBusy",
    "PhotoVector",
    "SimilarityUnavailable",
    "StepRef",
    "embedding_enqueue_on_commit",
    "embedding_request",
    "embedding_retry",
    "image_load",
    "index_health",
    "encoder_notice",
    "engine_status",
    "nearest",
    "photo_vector",
    "published_version",
    "trail_grid",
    "typical_products",
]


# --- Embedding ------------------------------------------------------------------------------


def embedding_enqueue_on_commit(*, product_ids: list[int]) -> None:
    """Queue embedding tasks for these requested products once the current transaction commits.

    With the queue down they stay pending and the periodic sweep sends them.
    """
    from recommender.tasks import embed_enqueue

    if product_ids:
        ids = [int(i) for i in product_ids]
        transaction.on_commit(lambda: embed_enqueue(product_ids=ids))


def embedding_request(*, images: list[ImageRef]) -> list[int]:
    """Record that these products have new images to embed; returns the ids recorded.

    Call inside the transaction that saves the images, then queue the work with
    ``embedding_enqueue_on_commit`` (or leave it to ``embed_catalog``). Side
    effects: the products' earlier vectors are dropped (a product's old look is
    never served) and their state becomes pending.
    """
    ids = state.states_request(images=images)
    if ids:
        Embedding.objects.filter(product_id__in=ids).delete()
    return ids


def embedding_retry(*, product_ids: list[int]) -> int:
    """Queue the given products for embedding again (after a failure); returns how many have an image."""
    count = state.states_retry(product_ids=product_ids)
    embedding_enqueue_on_commit(product_ids=product_ids)
    return count


# --- Queries --------------------------------------------------------------------------------


def trail_grid(
    *,
    steps: list[StepRef],
    k: int,
    allowed_ids: np.ndarray | None = None,
    shown_first: Callable[[], Sequence[int]] | None = None,
    searched: bool = True,
) -> list[Neighbour]:
    """The grid for a refinement trail (oldest step first): ``k`` products in display order, none on the trail.

    Ranked by the served strategy (REFINE_STRATEGY, recommender.feedback): the newest click pulls hardest,
    what looks like it comes first, products the trail's earlier grids showed and the shopper passed over
    yield to new ones about as alike, "not like this" sinks what is nearer it than every liked step, and
    each step's aspect sets how much its colour counts. ``shown_first`` gives the grid the first step was
    clicked from (a text search, the starting grid), called only by a strategy that counts it. ``searched``
    is False for a trail begun on the starting grid: the shopper has not named a kind of product, so its
    grids span more of what looks alike. Raises NotEmbeddedYet when no liked step has a vector yet,
    SimilarityUnavailable when no index can answer.
    """
    return refine.trail_grid(steps=steps, k=k, allowed_ids=allowed_ids, shown_first=shown_first, searched=searched)


def nearest(
    *,
    vector: np.ndarray,
    k: int,
    exclude_ids: frozenset[int] = frozenset(),
    allowed_ids: np.ndarray | None = None,
) -> list[Neighbour]:
    """The ``k`` products nearest ``vector``, best first, none of ``exclude_ids``, only ``allowed_ids`` if given.

    Raises SimilarityUnavailable when no index can answer.
    """
    return selectors.similar_products(vector=vector, k=k, exclude_ids=exclude_ids, allowed_ids=allowed_ids)


def typical_products(*, groups: list[list[int]]) -> list[int | None]:
    """Per group of product ids, the product that looks most like the group as a whole (nearest its mean
    vector in the published build); None where the build holds none of the group.

    Raises SimilarityUnavailable while a damaged build is being repaired.
    """
    return selectors.typical_products(groups=groups)


def published_version() -> str | None:
    """The published build's version, for caches of anything derived from it; None when there is none."""
    try:
        loaded = runtime.index_reader().current()
    except IndexCorrupt:
        return None
    return loaded.meta.version if loaded is not None else None


# Photo searches run the CNN inside the web process. At most
# PHOTO_SEARCH_CONCURRENCY run at once and PHOTO_SEARCH_QUEUE more wait; the
# rest are turned away at once, so waiting photos never hold every server
# thread while text searches and clicks queue behind them.
_photo_slots = threading.BoundedSemaphore(max(1, settings.PHOTO_SEARCH_CONCURRENCY))
_photo_admitted = threading.BoundedSemaphore(max(1, settings.PHOTO_SEARCH_CONCURRENCY) + settings.PHOTO_SEARCH_QUEUE)


@dataclass(frozen=True)
class PhotoVector:
    vector: np.ndarray
    # The photo as the encoder saw it (uint8, square, padded on white): enough for a thumbnail.
    image: np.ndarray


def photo_vector(*, data: bytes) -> PhotoVector:
    """The vector of a shopper's photo in the active space; the photo is decoded in memory and dropped.

    Raises ImageRejected (a bad or oversized image: an empty file, an unknown format or too many pixels
    are refused from the header, before the encoder loads), PhotoSearchBusy, or SimilarityUnavailable
    when the encoder cannot load here.
    """
    from recommender.errors import EncoderUnavailable
    from recommender.preprocess import image_prepare

    # Refused from its header before anything costly: a bad upload must not load the encoder (seconds and
    # hundreds of MB in a web process that served only text and clicks) nor take a place in the queue.
    image_check(data, max_pixels=settings.IMAGE_MAX_PIXELS)
    if not _photo_admitted.acquire(blocking=False):
        raise PhotoSearchBusy(f"Photo search is busy; please try again in {PhotoSearchBusy.retry_after} seconds.")
    try:
        try:
            encoder = runtime.encoder()
        except EncoderUnavailable as exc:
            raise SimilarityUnavailable(
                "Search by photo is unavailable right now (the image model cannot load); text search still works."
            ) from exc
        # The same decoding as catalog images: header checked first, reduced before any conversion.
        square = image_prepare(data, size=encoder.input_size, max_pixels=settings.IMAGE_MAX_PIXELS)
        with _photo_slots:
            vector = runtime.project(runtime.active_space(), encoder.embed_images([square]))[0]
    finally:
        _photo_admitted.release()
    return PhotoVector(vector=vector, image=square)


# --- Status ---------------------------------------------------------------------------------


def engine_status() -> dict[str, object]:
    """Encoder, published index and embedding queue, as /api/status reports them."""
    return selectors.index_status()


def index_health() -> str:
    """The published index as readiness checks report it: "ok", "missing", or "error: ..." (no paths)."""
    try:
        loaded = runtime.index_reader().current()
    except IndexCorrupt:
        return "error: corrupt"
    if loaded is None:
        return "missing"
    if loaded.meta.space != runtime.active_space():
        return f"error: built for {loaded.meta.space}"
    return "ok"


def encoder_notice() -> tuple[str | None, str | None]:
    """(the active space, the note to show when its encoder is a fallback) for the footer and admin."""
    from recommender.errors import EncoderUnavailable

    try:
        choice = runtime.encoder_choice()
        space = runtime.active_space()
    except EncoderUnavailable:
        # The reason names settings and paths: it goes to the log, not to the page.
        logger.exception("The encoder settings cannot be served")
        return None, "The image model is misconfigured (see the server log); similar-product search is unavailable."
    # The note speaks of the encoder: it holds while a head projects that encoder's vectors.
    return space, choice.note if runtime.space_encoder_id(space) == choice.space else None
