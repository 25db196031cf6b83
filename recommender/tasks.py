"""Celery tasks: thin callers of recommender.services. Arguments are ids only.

Every task is idempotent: a product is claimed with one conditional UPDATE
before work starts, a vector is stored only for the image version it was made
from, and a rebuild runs under a Redis lock. Messages are acknowledged after
the task ends (``acks_late``) and given back when a worker dies mid-task
(``reject_on_worker_lost``); a periodic sweep re-queues whatever was lost while
Redis or every worker was down.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict

import redis
from celery import Task, shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import KombuError

from gallery.models import EmbedStatus, Product
from recommender import runtime, services
from recommender.models import Embedding

logger = logging.getLogger(__name__)

BUILD_LOCK = "gallery:index-build-lock"
BUILD_REQUESTED = "gallery:index-build-requested"
TRANSIENT = (OperationalError, InterfaceError, OSError, redis.RedisError)
QUEUE_DOWN = (KombuError, redis.RedisError, OSError)


@functools.cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=10)


# After a failed publish, skip publishing for a while: every upload during an
# outage would otherwise wait out the connection timeout again.
QUEUE_BACKOFF_S = 15.0
_queue_down_until = 0.0


def embed_enqueue(*, product_ids: list[int]) -> int:
    """Queue embedding tasks for ``product_ids`` in batches; returns how many were queued.

    Never raises: with Redis away the products stay pending and the sweep
    queues them once it is back.
    """
    global _queue_down_until
    if time.monotonic() < _queue_down_until:
        logger.warning("Task queue down recently; %d products stay pending for the sweep", len(product_ids))
        return 0
    size = max(1, settings.ENCODER_BATCH_SIZE)
    queued = 0
    for start in range(0, len(product_ids), size):
        chunk = [int(i) for i in product_ids[start : start + size]]
        try:
            embed_products.apply_async(args=[chunk], retry=False)
        except QUEUE_DOWN as exc:
            _queue_down_until = time.monotonic() + QUEUE_BACKOFF_S
            logger.warning(
                "Task queue unavailable (%s); %d products stay pending for the sweep", exc, len(product_ids) - queued
            )
            break
        queued += len(chunk)
    return queued


class EmbedTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ANN001
        """Retries exhausted on a transient error: hand the products back to the sweep, saying why."""
        product_ids = args[0] if args else kwargs.get("product_ids", [])
        Product.objects.filter(
            id__in=product_ids, embed_status=EmbedStatus.PROCESSING, embed_claimed_by=task_id
        ).update(
            embed_status=EmbedStatus.PENDING,
            embed_error=f"{type(exc).__name__}: {exc}"[: services.MAX_ERROR_CHARS],
            embed_requested_at=timezone.now(),
            embed_claimed_at=None,
            embed_claimed_by="",
        )


@shared_task(
    name="recommender.embed_products",
    bind=True,
    base=EmbedTask,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
    soft_time_limit=240,
    time_limit=300,
)
def embed_products(self: Task, product_ids: list[int]) -> dict[str, int]:
    """Embed the products in ``product_ids`` that are still waiting; skip the rest."""
    claimant = self.request.id or "local"
    products = services.products_claim(product_ids=product_ids, claimant=claimant)
    if not products:
        return {"embedded": 0, "failed": 0, "skipped": len(product_ids)}
    report = services.products_embed(products=products)
    index_rebuild_if_needed()
    return asdict(report)


def index_rebuild_request(*, reason: str) -> bool:
    """Ask a worker for an index rebuild, at most once a minute. Never raises."""
    if not cache.add(BUILD_REQUESTED, reason, timeout=60):
        return False
    try:
        build_index.apply_async(kwargs={"reason": reason}, retry=False)
    except QUEUE_DOWN as exc:
        logger.warning("Could not request an index rebuild (%s): %s", reason, exc)
        cache.delete(BUILD_REQUESTED)
        return False
    logger.info("Index rebuild requested: %s", reason)
    return True


def vectors_outside_index() -> int:
    """How many vectors of the active space the published index does not hold (-1: no usable index)."""
    space = runtime.active_space()
    try:
        loaded = runtime.index_reader().current()
    except Exception:  # a corrupt build counts as none  # noqa: BLE001
        loaded = None
    if loaded is None or loaded.meta.space != space:
        return -1
    newest = int(loaded.embedding_ids.max()) if loaded.meta.count else 0
    return Embedding.objects.filter(space=space, id__gt=newest).count()


def index_watermark_lags() -> bool:
    """Whether the published build's watermark is below its newest vector.

    Then every query checks the ids above it; a build made right after a bulk
    embed is in that state until rebuilt.
    """
    try:
        loaded = runtime.index_reader().current()
    except Exception:  # a corrupt build is handled by the query path  # noqa: BLE001
        return False
    return bool(loaded and loaded.meta.count and loaded.meta.watermark < int(loaded.embedding_ids.max()))


def index_rebuild_if_needed() -> None:
    outside = vectors_outside_index()
    if outside < 0:
        index_rebuild_request(reason="no usable index for the active space")
    elif outside >= settings.INDEX_REBUILD_DELTA:
        index_rebuild_request(reason=f"{outside} vectors outside the index")


@shared_task(
    name="recommender.build_index",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    max_retries=5,
    soft_time_limit=3300,
    time_limit=3600,
)
def build_index(reason: str = "") -> str:
    """Rebuild and publish the index; one build at a time across all workers (a Redis lock)."""
    lock = redis_client().lock(BUILD_LOCK, timeout=3600, blocking=False)
    if not lock.acquire():
        return "another build is running"
    try:
        cache.delete(BUILD_REQUESTED)
        meta = services.index_rebuild()
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            logger.warning("Index build lock expired before release")
    return f"published {meta.version} ({meta.count} vectors; {reason})" if meta else "nothing to index"


@shared_task(name="recommender.index_refresh", acks_late=True)
def index_refresh() -> str:
    """Scheduled: rebuild when any vector waits outside the index."""
    outside = vectors_outside_index()
    if outside == 0 and not index_watermark_lags():
        return "index is current"
    if outside < 0 and not Embedding.objects.filter(space=runtime.active_space()).exists():
        return "nothing to index"
    return build_index(reason="scheduled")


@shared_task(name="recommender.embed_sweep", acks_late=True)
def embed_sweep() -> int:
    """Scheduled: re-queue products whose embedding task was lost (Redis or workers were down).

    Also catches up products embedded only in another space (uploaded while
    reembed_catalog was building the space now active).
    """
    space = runtime.active_space()
    services.space_reproject(space=space)  # a head space: cheap, from the raw vectors
    missing = services.products_missing_from_space(space=space)
    if missing:
        services.products_mark_pending(product_ids=missing)
    ids = services.products_stale_pending() + missing
    if not ids:
        return 0
    Product.objects.filter(Q(embed_status=EmbedStatus.PENDING), id__in=ids).update(embed_requested_at=timezone.now())
    queued = embed_enqueue(product_ids=ids)
    logger.info("Sweep re-queued %d of %d waiting products", queued, len(ids))
    return queued
