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
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.conf import settings
from django.db import transaction

from config.timing import stage
from recommender import index, refine, runtime, selectors, services, state, tasks
from recommender.errors import (
    EncoderUnavailable,
    EngineError,
    ImageRejected,
    NotEmbeddedYet,
    PhotoSearchBusy,
    SimilarityUnavailable,
)
from recommender.index import IndexCorrupt
from recommender.models import Embedding, EmbeddingState, EmbedStatus
from recommender.preprocess import image_check, image_load, image_prepare
from recommender.refine import StepRef, trail_grid
from recommender.scan import ScanResult, pair_groups, vectors_scan
from recommender.selectors import Neighbour
from recommender.state import ImageRef

logger = logging.getLogger(__name__)

__all__ = [
    "CatalogScan",
    "EmbedStatus",
    "EngineError",
    "EngineMetrics",
    "ImageRef",
    "ImageRejected",
    "Neighbour",
    "NotEmbeddedYet",
    "PhotoSearchBusy",
    "PhotoVector",
    "SimilarityUnavailable",
    "StepRef",
    "catalog_scan",
    "embedding_enqueue_on_commit",
    "embedding_failures",
    "embedding_request",
    "embedding_retry",
    "image_load",
    "index_delivery_health",
    "index_delivery_start",
    "index_health",
    "encoder_notice",
    "engine_metrics",
    "engine_status",
    "nearest",
    "pair_groups",
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
    if product_ids:
        ids = [int(i) for i in product_ids]
        transaction.on_commit(lambda: tasks.embed_enqueue(product_ids=ids))


def embedding_request(*, images: list[ImageRef]) -> list[int]:
    """Record that these products have new images to embed; returns the ids recorded.

    Call inside the transaction that saves the images, then queue the work with
    ``embedding_enqueue_on_commit`` (or leave it to ``embed_catalog``). Side
    effects: the products' earlier vectors are dropped (a product's old look is
    never served) and their state becomes pending.
    """
    return state.states_request(images=images)


def embedding_retry(*, product_ids: list[int]) -> int:
    """Queue the given products for embedding again (after a failure); returns how many have an image."""
    count = state.states_retry(product_ids=product_ids)
    embedding_enqueue_on_commit(product_ids=product_ids)
    return count


def embedding_failures() -> list[tuple[int, str]]:
    """(product id, why) of every product whose current image could not be embedded, in id order."""
    return list(
        EmbeddingState.objects.filter(status=EmbedStatus.FAILED)
        .order_by("product_id")
        .values_list("product_id", "error")
    )


# --- Queries --------------------------------------------------------------------------------


# trail_grid: recommender.refine's, imported above (one signature; the shop calls it as api.trail_grid).


def strategies_served() -> tuple[str, ...]:
    """The names of the strategies a trail may be ranked by (REFINE_STRATEGY's and an experiment's choices)."""
    return tuple(refine.SERVED)


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

    Raises SimilarityUnavailable while a damaged build is being repaired or the encoder is misconfigured.
    """
    try:
        return selectors.typical_products(groups=groups)
    except EncoderUnavailable as exc:
        raise SimilarityUnavailable("The image model is misconfigured; similar products are unavailable.") from exc


def published_version() -> str | None:
    """The version this node's pointer names, for keys of caches derived from the build; None when nothing is
    published (or the encoder is misconfigured). Reads the pointer only: the build is not loaded or checked."""
    try:
        directory = runtime.index_dir(runtime.active_space())
    except EncoderUnavailable:
        return None
    return index.published_version(directory)


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
    # Refused from its header before anything costly: a bad upload must not load the encoder (seconds and
    # hundreds of MB in a web process that served only text and clicks) nor take a place in the queue.
    with stage("decode"):
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
        with stage("decode"):
            square = image_prepare(data, size=encoder.input_size, max_pixels=settings.IMAGE_MAX_PIXELS)
        with stage("encode"), _photo_slots:  # a wait for a free slot counts as encoding
            vector = runtime.project(runtime.active_space(), encoder.embed_images([square]))[0]
    finally:
        _photo_admitted.release()
    return PhotoVector(vector=vector, image=square)


# --- Catalog scan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogScan:
    """A scan of the published build: its version, space and size, and what ``recommender.scan`` found."""

    version: str
    space: str
    count: int
    result: ScanResult


# From SCAN_REDUCED_FROM products on, the health scan multiplies the vectors in SCAN_REDUCED_DIMS principal
# directions, then re-ranks exactly (``recommender.scan.vectors_scan``): five times fewer operations at 1280-d,
# 0.998-0.999 of the exact neighbours kept on the measured catalogs (docs/quality.md). Below, the exact scan
# takes seconds.
SCAN_REDUCED_DIMS = 256
SCAN_REDUCED_FROM = 8192


def catalog_scan(
    *,
    k: int,
    duplicate_cosine: float,
    block_rows: int = 1024,
    reduce_to: int | None = SCAN_REDUCED_DIMS,
    progress: Callable[[int, int], None] | None = None,
) -> CatalogScan:
    """Scan the active space's published build, in blocks: each product's ``k`` nearest products with their
    cosines, every pair above ``duplicate_cosine`` and an isolation score (``recommender.scan.vectors_scan``).

    Reads the build's memory-mapped vectors; writes nothing. Products embedded since the build are not in it.
    Raises SimilarityUnavailable when no usable build is published.
    """
    space = runtime.active_space()
    try:
        loaded = selectors.published_index(space)
    except IndexCorrupt as exc:
        raise SimilarityUnavailable("The published index cannot be read; rebuild it before a scan.") from exc
    if loaded is None:
        raise SimilarityUnavailable("No index is published yet: embed the catalog and build the index first.")
    result = vectors_scan(
        vectors=loaded.vectors_all(),
        product_ids=loaded.product_ids,
        k=k,
        duplicate_cosine=duplicate_cosine,
        block_rows=block_rows,
        reduce_to=reduce_to if len(loaded.product_ids) >= SCAN_REDUCED_FROM else None,
        progress=progress,
    )
    return CatalogScan(version=loaded.meta.version, space=space, count=loaded.meta.count, result=result)


# --- Status ---------------------------------------------------------------------------------


def engine_status() -> dict[str, object]:
    """Encoder, published index and embedding queue, as /api/status reports them."""
    return selectors.index_status()


@dataclass(frozen=True)
class EngineMetrics:
    """The engine's state as /metrics reports it (read when scraped)."""

    index_built_at: float | None  # the published build's time (Unix seconds); None: no usable build
    index_vectors: int  # vectors the build holds
    index_bytes: int  # size of its Annoy file
    vectors_outside_index: int  # vectors stored since the build, searched exactly until the next one
    products: dict[str, int]  # embedding state -> products in it
    embedded_per_second: float  # products embedded per second over the last minutes


def engine_metrics() -> EngineMetrics:
    """Index age and size, vectors since the build, the embedding backlog and rate. A damaged build counts as none."""
    space = runtime.active_space()
    try:
        loaded = selectors.published_index(space)
    except IndexCorrupt:
        loaded = None
    meta = loaded.meta if loaded is not None else None
    outside = tasks.vectors_outside_index()  # -1: no usable build, every vector is outside one
    return EngineMetrics(
        index_built_at=datetime.fromisoformat(meta.built_at).timestamp() if meta else None,
        index_vectors=meta.count if meta else 0,
        index_bytes=meta.file_bytes if meta else 0,
        vectors_outside_index=outside if outside >= 0 else Embedding.objects.filter(space=space).count(),
        products=state.states_count(),
        embedded_per_second=state.states_done_since(seconds=selectors.RATE_WINDOW_S) / selectors.RATE_WINDOW_S,
    )


def index_health() -> str:
    """The published index as readiness checks report it: "ok", "missing", or "error: ..." (no paths)."""
    try:
        loaded = selectors.published_index()
    except selectors.IndexOfAnotherSpace as exc:
        return f"error: built for {exc.meta.space}"
    except IndexCorrupt:
        # Damaged or unreadable: said without the reason, which names paths.
        return "error: corrupt"
    return "missing" if loaded is None else "ok"


def index_delivery_health() -> str | None:
    """This node's copy of the published index as readiness checks report it; None without a store.

    "ok", "fetching <version>", or "error: ..." (no paths). The node serves the build it has meanwhile.
    """
    report = selectors.index_delivery(space=runtime.active_space())
    if report is None:
        return None
    if report["error"]:
        return f"error: {report['error']}; serving {report['serving'] or 'no build'}"
    if not report["checking"]:
        return "error: the store has not been checked lately (is the fetcher running?)"
    if report["behind"]:
        return f"fetching {report['published']}"
    return "ok"


# The fetcher thread of this process, started once by index_delivery_start.
_fetcher: threading.Thread | None = None
_fetcher_lock = threading.Lock()


def index_delivery_start() -> bool:
    """Start this web process's index fetcher (a daemon thread) when builds come from a store; True if it runs.

    Every INDEX_FETCH_INTERVAL_S it looks at the store's pointer and, on a new build, fetches it into
    this node's INDEX_DIR (one process of the node at a time: a file lock), verifies it and flips the
    node's pointer; every process of the node switches on its next query.
    """
    global _fetcher
    if runtime.index_store() is None:
        return False
    with _fetcher_lock:
        if _fetcher is not None and _fetcher.is_alive():
            return True

        def loop() -> None:
            while True:
                try:
                    services.index_sync()
                except Exception:  # a fault here must never stop the fetcher, nor the process  # noqa: BLE001
                    logger.exception("Index fetch failed")
                time.sleep(settings.INDEX_FETCH_INTERVAL_S)

        _fetcher = threading.Thread(target=loop, name="index-fetcher", daemon=True)
        _fetcher.start()
    return True


def encoder_notice() -> tuple[str | None, str | None]:
    """(the active space, the note to show when its encoder is a fallback) for the footer and admin."""
    try:
        choice = runtime.encoder_choice()
        space = runtime.active_space()
    except EncoderUnavailable:
        # The reason names settings and paths: it goes to the log, not to the page.
        logger.exception("The encoder settings cannot be served")
        return None, "The image model is misconfigured (see the server log); similar-product search is unavailable."
    # The note speaks of the encoder: it holds while a head projects that encoder's vectors.
    return space, choice.note if runtime.space_encoder_id(space) == choice.space else None
