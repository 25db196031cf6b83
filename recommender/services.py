"""Writes about vectors: claiming work, embedding products, building the index."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from gallery.models import EmbedStatus, Product
from recommender import runtime
from recommender.encoders import Encoder
from recommender.index import IndexMeta, index_build
from recommender.models import Embedding
from recommender.pipeline import ImageItem, embed_stream

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


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


def products_claim(*, product_ids: Iterable[int], claimant: str) -> list[Product]:
    """Mark the given products as being embedded by ``claimant`` and return those it got.

    A product is claimable when pending, when this claimant already holds it
    (a redelivered task), or when another claim is older than
    EMBED_STALE_AFTER_S (its worker died). One conditional UPDATE: two workers
    never both claim a product.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.EMBED_STALE_AFTER_S)
    claimable = Q(embed_status=EmbedStatus.PENDING) | Q(
        Q(embed_claimed_by=claimant) | Q(embed_claimed_at__lt=stale), embed_status=EmbedStatus.PROCESSING
    )
    ids = list(product_ids)
    Product.objects.filter(claimable, id__in=ids).exclude(image="").update(
        embed_status=EmbedStatus.PROCESSING, embed_claimed_at=now, embed_claimed_by=claimant
    )
    return list(
        Product.objects.filter(id__in=ids, embed_status=EmbedStatus.PROCESSING, embed_claimed_by=claimant).only(
            "id", "image", "image_version"
        )
    )


def embeddings_store(*, space: str, vectors: list[tuple[int, int, np.ndarray]], mark_done: bool = True) -> set[int]:
    """Store (product id, image version, vector) rows of ``space`` in one transaction; returns the ids stored.

    A vector is stored only if its product still has the image it was computed
    from. It replaces any earlier vector of that space with a new row (a new
    id, so an index build that holds the old one knows it is stale). With
    ``mark_done`` the products are marked done (their status speaks of the
    active space).
    """
    if not vectors:
        return set()
    latest = {pid: (version, vector) for pid, version, vector in vectors}
    with transaction.atomic():
        # Lock the product rows, in id order so two batches never deadlock:
        # concurrent workers on one product serialise here.
        current = dict(
            Product.objects.select_for_update()
            .filter(id__in=list(latest))
            .order_by("id")
            .values_list("id", "image_version")
        )
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
            Product.objects.filter(id__in=list(keep)).update(
                embed_status=EmbedStatus.DONE, embed_error="", embed_claimed_at=None, embed_claimed_by=""
            )
    return set(keep)


def embedding_store(
    *, product_id: int, image_version: int, space: str, vector: np.ndarray, mark_done: bool = True
) -> bool:
    """embeddings_store for one product: whether its vector was stored."""
    return bool(embeddings_store(space=space, vectors=[(product_id, image_version, vector)], mark_done=mark_done))


def product_embed_fail(*, product_id: int, image_version: int, reason: str) -> None:
    """Record that a product's image can never be embedded (until it gets a new one)."""
    Product.objects.filter(id=product_id, image_version=image_version).update(
        embed_status=EmbedStatus.FAILED,
        embed_error=reason[:MAX_ERROR_CHARS],
        embed_claimed_at=None,
        embed_claimed_by="",
    )


def products_embed(
    *,
    products: list[Product],
    decode_workers: int = 0,
    progress: Callable[[int], None] | None = None,
    encoder: Encoder | None = None,
) -> EmbedReport:
    """Embed the given products' images and store the vectors.

    With the active encoder (the default) products are marked done or failed;
    with another ``encoder`` (a space being built beside the active one, see
    reembed_catalog) their status is left alone.
    """
    report = EmbedReport()
    if not products:
        return report
    active = encoder is None
    encoder = encoder or runtime.encoder()
    target = runtime.active_space() if active else encoder.id
    # A head's space keeps the raw vectors too: new heads are trained, and
    # spaces re-projected, from them without decoding an image again.
    spaces = [encoder.id] if target == encoder.id else [encoder.id, target]
    items = []
    for product in products:
        if not product.image:
            report.skipped += 1
            continue
        items.append(ImageItem(key=product.id, source=image_source(product.image.name), version=product.image_version))
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
                    product_embed_fail(
                        product_id=result.item.key, image_version=result.item.version, reason=result.error
                    )
                report.failed += 1
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
            Embedding.objects.filter(space=base, product__image_version=F("image_version"))
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


def products_needing_embedding(*, space: str) -> list[int]:
    """Ids of products with an image but no vector in ``space`` (failed ones excluded)."""
    have = Embedding.objects.filter(space=space).values("product_id")
    return list(
        Product.objects.exclude(image="")
        .exclude(embed_status=EmbedStatus.FAILED)
        .exclude(id__in=have)
        .order_by("id")
        .values_list("id", flat=True)
    )


def products_missing_from_space(*, space: str, limit: int = 5000) -> list[int]:
    """Products done for another space but without a vector in ``space`` (after a switch of space)."""
    have = Embedding.objects.filter(space=space).values("product_id")
    return list(
        Product.objects.filter(embed_status=EmbedStatus.DONE)
        .exclude(image="")
        .exclude(id__in=have)
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )


def products_mark_pending(*, product_ids: list[int]) -> int:
    """Put products back in the queue (admin retry, encoder switch). Returns how many."""
    return (
        Product.objects.filter(id__in=product_ids)
        .exclude(image="")
        .update(
            embed_status=EmbedStatus.PENDING,
            embed_error="",
            embed_requested_at=timezone.now(),
            embed_claimed_at=None,
            embed_claimed_by="",
        )
    )


def products_stale_pending() -> list[int]:
    """Products pending, or claimed, for longer than EMBED_STALE_AFTER_S: their task was lost."""
    stale = timezone.now() - timedelta(seconds=settings.EMBED_STALE_AFTER_S)
    return list(
        Product.objects.filter(
            Q(embed_status=EmbedStatus.PENDING, embed_requested_at__lt=stale)
            | Q(embed_status=EmbedStatus.PENDING, embed_requested_at__isnull=True)
            | Q(embed_status=EmbedStatus.PROCESSING, embed_claimed_at__lt=stale)
        )
        .exclude(image="")
        .order_by("id")
        .values_list("id", flat=True)[:5000]
    )


# --- Index ------------------------------------------------------------------------------

# A vector is stored in a transaction lasting milliseconds, so a row created
# more than this margin before the build started is certainly visible to it.
# Rows after the watermark are checked against the index at query time: one
# that committed late (with a lower id than one the build saw) is never missed.
WATERMARK_MARGIN = timedelta(seconds=60)


def index_rebuild(*, space: str | None = None, n_trees: int | None = None) -> IndexMeta | None:
    """Build and publish an index from every stored vector of the active space.

    Returns None when there is nothing to index. The caller holds the build lock.
    """
    space = space or runtime.active_space()
    started = timezone.now()
    rows = Embedding.objects.filter(space=space, product__isnull=False).order_by("id")
    watermark_row = rows.filter(created_at__lt=started - WATERMARK_MARGIN).aggregate(m=Max("id"))["m"] or 0
    ids, products, chunks = [], [], []
    for emb_id, product_id, vector in rows.values_list("id", "product_id", "vector").iterator(chunk_size=2000):
        ids.append(emb_id)
        products.append(product_id)
        chunks.append(np.frombuffer(vector, dtype="<f4"))
    if not chunks:
        return None
    return index_build(
        directory=runtime.index_dir(space),
        vectors=np.stack(chunks),
        product_ids=np.asarray(products, dtype=np.int64),
        embedding_ids=np.asarray(ids, dtype=np.int64),
        space=space,
        n_trees=n_trees or settings.INDEX_N_TREES,
        search_k=settings.INDEX_SEARCH_K,
        watermark=watermark_row,
        keep=settings.INDEX_KEEP_BUILDS,
    )
