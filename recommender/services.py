"""Writes about vectors: embedding images, storing vectors, re-projecting spaces, building the index.

Products are known by id only; which image to embed comes from their
``EmbeddingState`` (``recommender.state``, the state machine's one owner).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Max
from django.utils import timezone

from recommender import runtime, state
from recommender.colour import COLOUR_SPACE, colour_descriptor
from recommender.delivery import (
    DeliveryState,
    Store,
    StoreUnavailable,
    build_publish,
    build_publish_pending,
    index_fetch,
)
from recommender.index import IndexCorrupt, IndexMeta, index_build
from recommender.locks import index_build_lock
from recommender.models import Embedding, EmbeddingState, EmbedStatus
from recommender.preprocess import ImageRejected, image_prepare
from recommender.projection import ProjectionCorrupt
from recommender.state import ImageRef

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = state.MAX_ERROR_CHARS


@dataclass
class EmbedReport:
    embedded: int = 0
    failed: int = 0
    skipped: int = 0


def image_source(name: str) -> Path | bytes:
    """A stored image as a local path, or its bytes when the storage is remote."""
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:  # remote storage: fetch the bytes
        with default_storage.open(name, "rb") as fh:
            return fh.read()


def embeddings_store(*, space: str, vectors: list[tuple[int, int, np.ndarray]], mark_done: bool = True) -> set[int]:
    """Store (product id, image version, vector) rows of ``space`` in one transaction; returns the ids stored.

    A vector is stored only if its product's current image (its EmbeddingState)
    is still the version it was computed from. It replaces any earlier vector of
    that space with a new row (a new id, so an index build that holds the old
    one knows it is stale). With ``mark_done`` the products are marked done
    (their state speaks of the active space).
    """
    if not vectors:
        return set()
    latest = {pid: (version, vector) for pid, version, vector in vectors}
    with transaction.atomic():
        current = state.states_current_versions(product_ids=list(latest))
        keep = {pid: (version, vector) for pid, (version, vector) in latest.items() if current.get(pid) == version}
        if not keep:
            return set()
        Embedding.objects.filter(product_id__in=list(keep), space=space).delete()
        rows = []
        for pid, (version, vector) in keep.items():
            data = np.ascontiguousarray(vector, dtype="<f4")
            rows.append(
                Embedding(product_id=pid, space=space, dim=len(data), vector=data.tobytes(), image_version=version)
            )
        Embedding.objects.bulk_create(rows)
        if mark_done:
            state.states_done(product_ids=list(keep))
    return set(keep)


def embedding_store(
    *, product_id: int, image_version: int, space: str, vector: np.ndarray, mark_done: bool = True
) -> bool:
    """embeddings_store for one product: whether its vector was stored."""
    return bool(embeddings_store(space=space, vectors=[(product_id, image_version, vector)], mark_done=mark_done))


def images_embed(
    *,
    images: list[ImageRef],
    decode_workers: int = 0,
    progress: Callable[[int], None] | None = None,
    encoder: object | None = None,
) -> EmbedReport:
    """Embed the given images and store the vectors.

    With the active encoder (the default) products are marked done or failed;
    with another ``encoder`` (a space being built beside the active one, see
    reembed_catalog) their state is left alone.
    """
    # torch is imported lazily (recommender.pipeline): only where images are embedded, never in a web process.
    from recommender.pipeline import ImageItem, embed_stream

    report = EmbedReport()
    if not images:
        return report
    active = encoder is None
    encoder = encoder or runtime.encoder()
    target = runtime.active_space() if active else encoder.id
    # A head's space keeps the raw vectors too: new heads are trained, and
    # spaces re-projected, from them without decoding an image again.
    spaces = [encoder.id] if target == encoder.id else [encoder.id, target]
    items = [
        ImageItem(key=ref.product_id, source=image_source(ref.image_name), version=ref.image_version) for ref in images
    ]
    for batch in embed_stream(
        items,
        encoder=encoder,
        batch_size=settings.ENCODER_BATCH_SIZE,
        decode_workers=decode_workers,
        max_pixels=settings.IMAGE_MAX_PIXELS,
    ):
        good = [result for result in batch if result.vector is not None]
        for result in batch:
            if result.vector is None:
                if active:
                    state.state_fail(product_id=result.item.key, image_version=result.item.version, reason=result.error)
                report.failed += 1
        # The colour first: a product marked done below has its colour descriptor already.
        colours = [(r.item.key, r.item.version, r.colour) for r in good if r.colour is not None]
        embeddings_store(space=COLOUR_SPACE, vectors=colours, mark_done=False)
        stored = None
        for space in spaces:
            vectors = runtime.project(space, np.stack([r.vector for r in good])) if good else []
            rows = [(r.item.key, r.item.version, vector) for r, vector in zip(good, vectors, strict=True)]
            done = embeddings_store(space=space, vectors=rows, mark_done=active and space == target)
            stored = done if stored is None else stored & done
        report.embedded += len(stored or ())
        report.skipped += len(good) - len(stored or ())
        if progress:
            progress(len(batch))
    return report


def products_embed(
    *,
    product_ids: list[int],
    decode_workers: int = 0,
    progress: Callable[[int], None] | None = None,
    encoder: object | None = None,
) -> EmbedReport:
    """images_embed for the current images of ``product_ids`` (those without an image are skipped)."""
    images = state.states_images(product_ids=list(product_ids))
    report = images_embed(images=images, decode_workers=decode_workers, progress=progress, encoder=encoder)
    report.skipped += len(set(product_ids)) - len(images)
    return report


def space_reproject(*, space: str, chunk: int = 2000) -> int:
    """Store ``space`` vectors projected from the raw ones for every product lacking them; returns how many.

    No image is decoded: this is how switching heads stays cheap. A raw vector
    is projected only while it belongs to the product's current image.
    """
    base = runtime.space_encoder_id(space)
    if base == space:
        return 0
    done = 0
    while True:
        have = Embedding.objects.filter(space=space).values("product_id")
        rows = list(
            # Only raw vectors of the product's current image (its state's version).
            Embedding.objects.filter(space=base, product__embedding_state__image_version=F("image_version"))
            .exclude(product_id__in=have)
            .order_by("product_id")
            .values_list("product_id", "image_version", "vector")[:chunk]
        )
        if not rows:
            return done
        projected = runtime.project(space, np.stack([np.frombuffer(v, "<f4") for _, _, v in rows]))
        with transaction.atomic():
            Embedding.objects.filter(space=space, product_id__in=[pid for pid, _, _ in rows]).delete()
            Embedding.objects.bulk_create(
                Embedding(
                    product_id=pid,
                    space=space,
                    dim=projected.shape[1],
                    vector=vec.astype("<f4").tobytes(),
                    image_version=ver,
                )
                for (pid, ver, _), vec in zip(rows, projected, strict=True)
            )
        done += len(rows)


def _products_without(states, space: str) -> list[int]:  # noqa: ANN001 - an EmbeddingState queryset
    """Ids, ascending, of the products among ``states`` with no vector in ``space``."""
    have = Embedding.objects.filter(space=space).values("product_id")
    return list(states.exclude(product_id__in=have).order_by("product_id").values_list("product_id", flat=True))


def products_needing_embedding(*, space: str) -> list[int]:
    """Ids of products with an image but no vector in ``space`` (failed ones excluded)."""
    return _products_without(EmbeddingState.objects.exclude(status=EmbedStatus.FAILED), space)


def products_without_colour() -> list[int]:
    """Products done (they have a vector) but with no colour descriptor: embedded before colours were kept."""
    return _products_without(EmbeddingState.objects.filter(status=EmbedStatus.DONE), COLOUR_SPACE)


def colours_backfill(*, product_ids: list[int], progress: Callable[[int], None] | None = None) -> int:
    """Store the colour descriptor of each product's current image (no model: a decode and a histogram each).

    For products whose vectors were stored before colour descriptors were; an unreadable image is skipped
    (its state is the embedding's business). Returns how many were stored.
    """
    stored = 0
    images = state.states_images(product_ids=list(product_ids))
    for start in range(0, len(images), 256):
        rows = []
        for ref in images[start : start + 256]:
            try:
                square = image_prepare(image_source(ref.image_name), size=224, max_pixels=settings.IMAGE_MAX_PIXELS)
            except (ImageRejected, FileNotFoundError):
                continue
            rows.append((ref.product_id, ref.image_version, colour_descriptor(square)))
        stored += len(embeddings_store(space=COLOUR_SPACE, vectors=rows, mark_done=False))
        if progress:
            progress(len(images[start : start + 256]))
    return stored


def products_missing_from_space(*, space: str, limit: int = 5000) -> list[int]:
    """Products done for another space but without a vector in ``space`` (after a switch of space)."""
    have = Embedding.objects.filter(space=space).values("product_id")
    return list(
        EmbeddingState.objects.filter(status=EmbedStatus.DONE)
        .exclude(product_id__in=have)
        .order_by("product_id")
        .values_list("product_id", flat=True)[:limit]
    )


# --- Index ------------------------------------------------------------------------------

# A vector is stored in a transaction lasting milliseconds, so a row created
# more than this margin before the build started is certainly visible to it.
# Rows after the watermark are checked against the index at query time: one
# that committed late (with a lower id than one the build saw) is never missed.
WATERMARK_MARGIN = timedelta(seconds=60)


def index_rebuild(*, space: str | None = None, n_trees: int | None = None, wait: bool = True) -> IndexMeta | None:
    """Build and publish an index from every stored vector of ``space`` (the active one by default).

    Takes the build lock for the whole build: with ``wait`` it waits for a build
    in progress, else raises BuildInProgress. Returns None when there is nothing
    to index.
    """
    with index_build_lock(wait=wait):
        return _index_rebuild_locked(space=space or runtime.active_space(), n_trees=n_trees)


def _colours_aligned(product_ids: np.ndarray) -> np.ndarray | None:
    """The stored colour descriptor of each of ``product_ids``, in order (zeros where none); None if none at all."""
    order = np.argsort(product_ids, kind="stable")
    sorted_ids = product_ids[order]
    colours: np.ndarray | None = None
    rows = Embedding.objects.filter(space=COLOUR_SPACE).values_list("product_id", "vector")
    for product_id, vector in rows.iterator(chunk_size=2000):
        position = int(np.searchsorted(sorted_ids, product_id))
        if position >= len(sorted_ids) or sorted_ids[position] != product_id:
            continue  # a product without a vector in this space
        descriptor = np.frombuffer(vector, dtype="<f4")
        if colours is None:
            colours = np.zeros((len(product_ids), len(descriptor)), dtype=np.float16)
        if len(descriptor) == colours.shape[1]:
            colours[order[position]] = descriptor
    return colours


def _index_rebuild_locked(*, space: str, n_trees: int | None) -> IndexMeta | None:
    started = timezone.now()
    rows = Embedding.objects.filter(space=space, product__isnull=False).order_by("id")
    # Over every space's rows: a query reads the rows above the watermark on every click, and rows of another
    # space stored after this one's (colour descriptors stored later, a head's vectors) are none of its business.
    recent = Embedding.objects.filter(created_at__lt=started - WATERMARK_MARGIN)
    watermark_row = recent.aggregate(m=Max("id"))["m"] or 0
    ids, products, chunks = [], [], []
    for emb_id, product_id, vector in rows.values_list("id", "product_id", "vector").iterator(chunk_size=2000):
        ids.append(emb_id)
        products.append(product_id)
        chunks.append(np.frombuffer(vector, dtype="<f4"))
    if not chunks:
        return None
    product_ids = np.asarray(products, dtype=np.int64)
    meta = index_build(
        directory=runtime.index_dir(space),
        vectors=np.stack(chunks),
        product_ids=product_ids,
        embedding_ids=np.asarray(ids, dtype=np.int64),
        colours=_colours_aligned(product_ids),
        space=space,
        n_trees=n_trees or settings.INDEX_N_TREES,
        search_k=settings.INDEX_SEARCH_K,
        watermark=watermark_row,
        keep=settings.INDEX_KEEP_BUILDS,
    )
    store = runtime.index_store()
    if store is not None:
        # Still under the build lock: builds reach the store in the order they were made. A failure
        # raises (the build serves here; index_sync publishes it on the worker's next sweep).
        build_publish(
            store=store,
            space=space,
            local=runtime.index_dir(space),
            version=meta.version,
            keep=settings.INDEX_KEEP_BUILDS,
        )
        index_sync(space=space)
    return meta


def _space_follow(store: Store) -> None:
    """Follow a space switch published to the store (``runtime.space_switch_write`` on another machine).

    The head's file and the new space's build are fetched first; this node switches only once it
    holds a whole build of the new space, and serves the old one until then. Never raises.
    """
    try:
        raw = store.file_read(runtime.ACTIVE_SPACE_FILE)
        if raw is None:
            return
        space = raw.decode("utf-8", "replace").strip()
        if space == runtime.active_space():
            return
        _, _, version = space.partition("+")
        if version and not runtime.head_path(version).exists():
            head = runtime.head_path(version)
            data = store.file_read(f"{head.parent.name}/{head.name}")
            if data is None:
                logger.error("The index store switches to %s but holds no file for its projection", space)
                return
            head.parent.mkdir(parents=True, exist_ok=True)
            tmp = head.with_name(f".{head.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(head)
        if not runtime.space_known(space):
            logger.error("The index store switches to %r, which this node cannot serve", space)
            return
        state = index_fetch(store=store, space=space, local=runtime.index_dir(space), keep=settings.INDEX_KEEP_BUILDS)
        if state is not None and state.serving and state.error is None:
            runtime.space_switch_local(space)
            logger.info("Switched to space %s, as the index store says", space)
    except (StoreUnavailable, ProjectionCorrupt, OSError) as exc:
        # The index fetch that follows reports an unreachable store in the node's status.
        logger.error("Could not follow the index store's space: %s", exc)


def index_sync(*, space: str | None = None, publish: bool = False) -> DeliveryState | None:
    """Bring this node's copy of the index to the store's published build (a no-op without a store).

    With ``publish`` (workers) a local build newer than the store's, whose publication failed, is
    published first. Never raises for a store fault: the node keeps its build and the reason is in
    its ``DELIVERY.json`` (``index_delivery``). Returns that record, or None when there is no store
    or another process of this node is fetching.
    """
    store = runtime.index_store()
    if store is None:
        return None
    if space is None:
        _space_follow(store)
        space = runtime.active_space()
    local = runtime.index_dir(space)
    if publish:
        try:
            build_publish_pending(store=store, space=space, local=local, keep=settings.INDEX_KEEP_BUILDS)
        except (StoreUnavailable, IndexCorrupt) as exc:
            logger.error("Could not publish the local index build to the %s store: %s", store.kind, exc)
    return index_fetch(store=store, space=space, local=local, keep=settings.INDEX_KEEP_BUILDS)
