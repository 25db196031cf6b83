"""The embedding state machine: the only module that writes ``EmbeddingState``.

    (new image) --request--> pending --claim--> processing --store--> done
                               ^   ^                 |  \\--fail---> failed
                               |   \\----release-----/                 |
                               \\-------------retry / new space---------/

``request`` comes from the shop when a product gets an image (``recommender.api``), and
deletes the product's earlier vectors in its transaction;
``claim``, ``done``, ``fail`` and ``release`` from the embedding tasks; ``retry``
from the admin; the sweep re-requests what was lost. Every transition is one
conditional UPDATE (or an upsert), so two workers never both hold a product and
a late worker never overwrites a newer image's state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from recommender.models import Embedding, EmbeddingState, EmbedStatus

MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class ImageRef:
    """A product's image as the engine embeds it: the stored file and the shop's version number for it."""

    product_id: int
    image_name: str
    image_version: int


def states_request(*, images: Iterable[ImageRef]) -> list[int]:
    """Mark these products' images as waiting for vectors (an upsert per product); returns their ids.

    A product's newer image replaces its state whatever it was (a task still
    working on the old image stores nothing: its version no longer matches),
    and its earlier vectors are deleted in the same transaction (the caller's,
    when one is open): a product's old look is never served.
    """
    now = timezone.now()
    rows = [
        EmbeddingState(
            product_id=ref.product_id,
            image_name=ref.image_name,
            image_version=ref.image_version,
            status=EmbedStatus.PENDING,
            error="",
            requested_at=now,
            queued_at=None,
            claimed_at=None,
            claimed_by="",
        )
        for ref in images
        if ref.image_name
    ]
    if not rows:
        return []
    ids = [row.product_id for row in rows]
    with transaction.atomic(savepoint=False):
        # One statement, safe against a concurrent import of the same products.
        EmbeddingState.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["product"],
            update_fields=[
                "image_name",
                "image_version",
                "status",
                "error",
                "requested_at",
                "queued_at",
                "claimed_at",
                "claimed_by",
                "updated_at",
            ],
        )
        Embedding.objects.filter(product_id__in=ids).delete()
    return ids


def states_queued(*, product_ids: list[int]) -> None:
    """Record that embedding tasks for these pending products reached the queue."""
    EmbeddingState.objects.filter(product_id__in=product_ids, status=EmbedStatus.PENDING).update(
        queued_at=timezone.now()
    )


def states_claim(*, product_ids: Iterable[int], claimant: str) -> list[ImageRef]:
    """Mark the given products as being embedded by ``claimant`` and return the images it got.

    A product is claimable when pending, when this claimant already holds it
    (a redelivered task), or when another claim is older than
    EMBED_STALE_AFTER_S (its worker died). One conditional UPDATE: two workers
    never both claim a product.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.EMBED_STALE_AFTER_S)
    claimable = Q(status=EmbedStatus.PENDING) | Q(
        Q(claimed_by=claimant) | Q(claimed_at__lt=stale), status=EmbedStatus.PROCESSING
    )
    ids = list(product_ids)
    EmbeddingState.objects.filter(claimable, product_id__in=ids).update(
        status=EmbedStatus.PROCESSING, claimed_at=now, claimed_by=claimant
    )
    return [
        ImageRef(product_id=pid, image_name=name, image_version=version)
        for pid, name, version in EmbeddingState.objects.filter(
            product_id__in=ids, status=EmbedStatus.PROCESSING, claimed_by=claimant
        )
        .order_by("product_id")
        .values_list("product_id", "image_name", "image_version")
    ]


def states_current_versions(*, product_ids: list[int]) -> dict[int, int]:
    """The image version each product's vector must come from, row-locked until the transaction ends.

    Locked in id order, so two batches never deadlock: concurrent workers on one
    product serialise here, and a new image's request waits for the store in flight.
    """
    return dict(
        EmbeddingState.objects.select_for_update()
        .filter(product_id__in=product_ids)
        .order_by("product_id")
        .values_list("product_id", "image_version")
    )


def states_done(*, product_ids: list[int]) -> None:
    """Mark products done; call inside the transaction that stored their vectors."""
    EmbeddingState.objects.filter(product_id__in=product_ids).update(
        status=EmbedStatus.DONE, error="", claimed_at=None, claimed_by=""
    )


def state_fail(*, product_id: int, image_version: int, reason: str) -> None:
    """Record that a product's image can never be embedded (until it gets a new one)."""
    EmbeddingState.objects.filter(product_id=product_id, image_version=image_version).update(
        status=EmbedStatus.FAILED, error=reason[:MAX_ERROR_CHARS], claimed_at=None, claimed_by=""
    )


def states_release(*, product_ids: list[int], claimant: str, reason: str) -> int:
    """Hand products a task gave up on back to the queue (pending), saying why; returns how many."""
    return EmbeddingState.objects.filter(
        product_id__in=product_ids, status=EmbedStatus.PROCESSING, claimed_by=claimant
    ).update(
        status=EmbedStatus.PENDING,
        error=reason[:MAX_ERROR_CHARS],
        requested_at=timezone.now(),
        queued_at=None,
        claimed_at=None,
        claimed_by="",
    )


def states_retry(*, product_ids: list[int]) -> int:
    """Put products back in the queue whatever their state (admin retry, a switch of space); returns how many."""
    return EmbeddingState.objects.filter(product_id__in=product_ids).update(
        status=EmbedStatus.PENDING,
        error="",
        requested_at=timezone.now(),
        queued_at=None,
        claimed_at=None,
        claimed_by="",
    )


# --- Reads --------------------------------------------------------------------------------


def states_lost(*, now: datetime | None = None, queue_empty: bool) -> list[int]:
    """Products whose embedding task was lost: the sweep sends them again.

    Pending products whose request never reached the queue (Redis was down) are
    always lost. Pending products that reached it more than EMBED_STALE_AFTER_S
    ago are lost only when the queue is empty: in a long queue (a big import)
    they are merely waiting, and sending them again would embed them twice.
    A claim older than EMBED_STALE_AFTER_S belonged to a worker that died.
    """
    stale = (now or timezone.now()) - timedelta(seconds=settings.EMBED_STALE_AFTER_S)
    lost = Q(status=EmbedStatus.PENDING, queued_at__isnull=True) | Q(
        status=EmbedStatus.PROCESSING, claimed_at__lt=stale
    )
    if queue_empty:
        lost |= Q(status=EmbedStatus.PENDING, queued_at__lt=stale)
    return list(EmbeddingState.objects.filter(lost).order_by("product_id").values_list("product_id", flat=True)[:5000])


def states_count() -> dict[str, int]:
    """How many products are in each state."""
    counts = dict(EmbeddingState.objects.values_list("status").annotate(n=Count("product_id")).order_by())
    return {status.value: counts.get(status.value, 0) for status in EmbedStatus}


def states_done_since(*, seconds: int) -> int:
    """How many products were marked done in the last ``seconds`` (their state last changed then)."""
    since = timezone.now() - timedelta(seconds=seconds)
    return EmbeddingState.objects.filter(status=EmbedStatus.DONE, updated_at__gte=since).count()


def states_ids(*, status: str) -> list[int]:
    """Ids of the products in ``status``, in id order."""
    return list(
        EmbeddingState.objects.filter(status=status).order_by("product_id").values_list("product_id", flat=True)
    )


def states_images(*, product_ids: list[int]) -> list[ImageRef]:
    """The current images of the given products (those that have one), in id order."""
    return [
        ImageRef(product_id=pid, image_name=name, image_version=version)
        for pid, name, version in EmbeddingState.objects.filter(product_id__in=product_ids)
        .order_by("product_id")
        .values_list("product_id", "image_name", "image_version")
    ]
