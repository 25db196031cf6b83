"""Celery tasks: thin callers of recommender.services. Arguments are ids only.

Every task is idempotent: a product is claimed with one conditional UPDATE
before work starts, a vector is stored only for the image version it was made
from, and a rebuild runs under a Redis lock. Messages are acknowledged after
the task ends (``acks_late``) and given back when a worker dies mid-task
(``reject_on_worker_lost``); a periodic sweep re-queues whatever was lost while
Redis or every worker was down.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import redis
from celery import Task, shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError
from kombu.exceptions import KombuError

from recommender import runtime, selectors, services, state
from recommender.errors import EncoderUnavailable
from recommender.index import IndexCorrupt, index_files_verify, published_version
from recommender.locks import BUILD_LOCK, BuildInProgress, redis_client  # noqa: F401 (BUILD_LOCK re-exported)
from recommender.models import Embedding

logger = logging.getLogger(__name__)

BUILD_REQUESTED = "gallery:index-build-requested"
TRANSIENT = (OperationalError, InterfaceError, OSError, redis.RedisError)
QUEUE_DOWN = (KombuError, redis.RedisError, OSError)
# Celery's default queue: an empty one means nothing pending is still on its way to a worker.
EMBED_QUEUE = "celery"


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
            sent = embed_products.apply_async(args=[chunk], retry=False)
        except QUEUE_DOWN as exc:
            _queue_down_until = time.monotonic() + QUEUE_BACKOFF_S
            logger.warning(
                "Task queue unavailable (%s); %d products stay pending for the sweep", exc, len(product_ids) - queued
            )
            break
        state.states_queued(product_ids=chunk)
        queued += len(chunk)
        logger.info("Queued embedding task %s for %d products", sent.id, len(chunk))
    return queued


class EmbedTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ANN001
        """Retries exhausted on a transient error: hand the products back to the sweep, saying why."""
        product_ids = args[0] if args else kwargs.get("product_ids", [])
        state.states_release(product_ids=product_ids, claimant=task_id, reason=f"{type(exc).__name__}: {exc}")


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
    images = state.states_claim(product_ids=product_ids, claimant=claimant)
    if not images:
        return {"embedded": 0, "failed": 0, "skipped": len(product_ids)}
    try:
        report = services.images_embed(images=images)
    except EncoderUnavailable as exc:
        # A broken weights file is no transient fault: retrying would loop for
        # ever. The products fail with the reason; the admin's retry (or
        # embed_catalog --retry-failed) sends them again once it is fixed.
        logger.error("Encoder unavailable; %d products fail: %s", len(images), exc)
        for image in images:
            state.state_fail(product_id=image.product_id, image_version=image.image_version, reason=str(exc))
        return {"embedded": 0, "failed": len(images), "skipped": len(product_ids) - len(images)}
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
        loaded = selectors.published_index(space)
    except IndexCorrupt:  # a damaged build counts as none
        loaded = None
    if loaded is None:
        return -1
    newest = int(loaded.embedding_ids.max()) if loaded.meta.count else 0
    return Embedding.objects.filter(space=space, id__gt=newest).count()


def index_watermark_lags() -> bool:
    """Whether the published build's watermark is below its newest vector.

    Then every query checks the ids above it; a build made right after a bulk
    embed is in that state until rebuilt.
    """
    try:
        loaded = selectors.published_index()
    except IndexCorrupt:  # a damaged build is index_repair_if_needed's business
        return False
    return bool(loaded and loaded.meta.count and loaded.meta.watermark < int(loaded.embedding_ids.max()))


def index_rebuild_if_needed() -> None:
    # With a store, this worker judges from the published build, not from a stale copy of its own.
    services.index_sync(publish=True)
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
    """Rebuild and publish the index; one build at a time across all workers (the build lock)."""
    cache.delete(BUILD_REQUESTED)
    try:
        meta = services.index_rebuild(wait=False)
    except BuildInProgress:
        return "another build is running"
    return f"published {meta.version} ({meta.count} vectors; {reason})" if meta else "nothing to index"


# The sweep checks the sizes of the published build's files on every run (a few stat calls) and
# reads them whole against their checksums when they changed since the last pass that did, and at
# least this often: ~0.5 s of one core at 44k x 1280-d, kept off every minute's sweep.
INDEX_CHECKSUM_EVERY_S = 3600.0
# directory -> (version, file signature, monotonic time) of the last build whose checksums passed.
_index_checksummed: dict[str, tuple[str, tuple, float]] = {}


def index_files_check(*, space: str) -> None:
    """Check the files of the build published for ``space`` on disk, not this process's mapping of it.

    Sizes on every call; every byte against the checksums recorded at publish when the files
    changed since they last passed, or INDEX_CHECKSUM_EVERY_S later. Raises IndexCorrupt.
    """
    directory = runtime.index_dir(space)
    version = published_version(directory)
    if version is None:
        return
    signature = index_files_verify(directory, version, checksum=False)
    last = _index_checksummed.get(str(directory))
    if last is not None and last[:2] == (version, signature) and time.monotonic() - last[2] < INDEX_CHECKSUM_EVERY_S:
        return
    index_files_verify(directory, version, checksum=True)
    _index_checksummed[str(directory)] = (version, signature, time.monotonic())


def index_repair_if_needed() -> None:
    """Request a build when the published index cannot serve the active space (damaged, missing, other space).

    Judged from the published build's files (``index_files_check``), not from the build this
    process has loaded: a file cut or changed under running processes is found within one
    sweep, and rebuilt from the stored vectors without an operator. Queries answer 503 (or
    search exactly, in a small catalog) meanwhile and never write; this periodic check is what repairs.
    """
    space = runtime.active_space()
    try:
        index_files_check(space=space)
        loaded = selectors.published_index(space)
    except selectors.IndexOfAnotherSpace:
        loaded = None  # none for this space yet
    except IndexCorrupt as exc:
        logger.error("The published index cannot be served: %s", exc)
        if Embedding.objects.filter(space=space).exists():
            index_rebuild_request(reason="published index unusable")
        return
    if loaded is None and Embedding.objects.filter(space=space).exists():
        index_rebuild_request(reason="no usable index for the active space")


@shared_task(name="recommender.index_refresh", acks_late=True)
def index_refresh() -> str:
    """Scheduled: rebuild when any vector waits outside the index."""
    services.index_sync(publish=True)
    outside = vectors_outside_index()
    if outside == 0 and not index_watermark_lags():
        return "index is current"
    if outside < 0 and not Embedding.objects.filter(space=runtime.active_space()).exists():
        return "nothing to index"
    return build_index(reason="scheduled")


def embed_queue_empty() -> bool:
    """Whether the embedding queue holds no message (False when Redis cannot tell: then nothing is re-sent)."""
    try:
        return int(redis_client().llen(EMBED_QUEUE)) == 0
    except redis.RedisError:
        return False


@shared_task(name="recommender.embed_sweep", acks_late=True)
def embed_sweep() -> int:
    """Scheduled: re-queue products whose embedding task was lost (Redis or workers were down).

    Also catches up products embedded only in another space (uploaded while
    reembed_catalog was building the space now active).
    """
    # With a store: follow its space, publish a build whose publication failed, fetch the store's newer one.
    services.index_sync(publish=True)
    space = runtime.active_space()
    index_repair_if_needed()
    services.space_reproject(space=space)  # a head space: cheap, from the raw vectors
    missing = services.products_missing_from_space(space=space)
    if missing:
        state.states_retry(product_ids=missing)
    ids = sorted(set(state.states_lost(queue_empty=embed_queue_empty()) + missing))
    if not ids:
        return 0
    queued = embed_enqueue(product_ids=ids)
    logger.info("Sweep re-queued %d of %d waiting products", queued, len(ids))
    return queued
