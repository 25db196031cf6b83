"""The index a process serves: built from the catalog's rows or loaded from the copy another process shared.

Each search asks the database one indexed question, the catalog's version (``gallery.cards.catalog_version``,
from 10k products at most once a second per process); when it moved, the index is rebuilt: at once under
10k products, otherwise in a background thread while searches go on with the previous index. A process that
starts loads the copy another process shared through Redis instead of building it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection
from django_redis import get_redis_connection

from gallery.cards import catalog_version
from gallery.models import Product
from gallery.search.index import (
    CACHE_VERSION,
    INDEX_FIELDS,
    IndexDataError,
    SearchIndex,
    search_index_build,
    search_index_dumps,
    search_index_loads,
)
from gallery.search.words import catalog_stems_keep

logger = logging.getLogger(__name__)

# Below this many products a rebuild runs in the search that finds the catalog changed (about 0.1 s
# of CPU at 10k); from it, in a background thread, at most once per REBUILD_INTERVAL_FACTOR times its
# own duration, while searches go on with the previous index (which then lags writes by that much).
# A count, not a duration: whether a search may see a stale index must not depend on the machine's load.
REBUILD_IN_BACKGROUND_FROM = 10_000
REBUILD_INTERVAL_FACTOR = 10
# From that size on, the version is also read at most this often per process: a search then asks the
# database one question (its products), not two.
VERSION_CHECK_INTERVAL_S = 1.0
# Writes that bypass updated_at (queryset.update()) are picked up by this age at the latest.
INDEX_MAX_AGE_S = 600
CACHE_TIMEOUT_S = 24 * 3600


@dataclass
class _Served:
    index: SearchIndex
    source: str  # which database
    version: str  # the catalog's latest updated_at when the build started
    built_at: float  # time.monotonic() of the build (or load)
    stale: bool = False  # a product it returned is gone
    checked_at: float = 0.0  # time.monotonic() when the catalog's version was last read and matched


_served: _Served | None = None
_build_lock = threading.Lock()


def database_source() -> str:
    """Which database this process reads: an index is served, and shared, per database."""
    db = connection.settings_dict
    return f"{connection.vendor}:{db.get('HOST') or ''}:{db.get('PORT') or ''}:{db['NAME']}"


def shared_key(source: str) -> str:
    """The cache key of the index shared for the database ``source``."""
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"{prefix}:search-index:{CACHE_VERSION}:{digest}"


def shared_client():  # noqa: ANN202 - redis.Redis, or None without a Redis cache
    try:
        return get_redis_connection("default")
    except NotImplementedError:  # the cache is not django-redis: no index is shared
        return None


def _shared_load(source: str, version: str) -> SearchIndex | None:
    """The index another process stored for this catalog version, if any. Never raises."""
    client = shared_client()
    if client is None:
        return None
    try:
        data = client.get(shared_key(source))
        return search_index_loads(data, version=version) if data else None
    except (redis.RedisError, IndexDataError) as exc:
        logger.warning("Shared search index not used: %s", exc)
        return None


def _shared_store(source: str, version: str, index: SearchIndex) -> None:
    """Offer ``index`` to other processes (one entry per database, replaced by each build). Never raises."""
    client = shared_client()
    if client is None:
        return
    try:
        client.set(shared_key(source), search_index_dumps(index, version=version), ex=CACHE_TIMEOUT_S)
    except redis.RedisError as exc:
        logger.warning("Search index not shared: %s", exc)


def _rows() -> Iterator[tuple]:
    # Products off sale are not indexed; taking one off sale or back moves the catalog version.
    products = Product.objects.filter(active=True).order_by("id")
    return products.values_list("id", "name", *INDEX_FIELDS).iterator(chunk_size=5000)


def _fresh_enough(served: _Served, *, version: str) -> bool:
    age = time.monotonic() - served.built_at
    if age > INDEX_MAX_AGE_S:
        return False
    if served.version == version and not served.stale:
        return True
    # The catalog changed: a slow build reruns no more often than REBUILD_INTERVAL_FACTOR times its duration.
    slow = len(served.index) >= REBUILD_IN_BACKGROUND_FROM
    return slow and age < served.index.built_seconds * REBUILD_INTERVAL_FACTOR


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # A build allocates tens of thousands of small objects; in a web process with a large heap the
    # collections they trigger cost more than the build itself (measured: 3x on a 44k load).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _refresh(source: str, version: str) -> SearchIndex:
    """Load (or build) the index for ``version`` and serve it; the caller holds ``_build_lock``."""
    global _served
    served = _served
    same = served is not None and served.source == source and served.version == version
    if same and not served.stale and time.monotonic() - served.built_at <= INDEX_MAX_AGE_S:
        return served.index  # another thread refreshed it meanwhile
    with _gc_paused():
        # The shared copy is what some process built for this version; a copy this process already has
        # is refreshed for a reason (a deleted product, its age), so that one is built afresh.
        index = None if same else _shared_load(source, version)
        if index is not None:
            catalog_stems_keep(index.core.stems)  # a later rebuild here then stems only new words
        else:
            index = search_index_build(_rows())
            logger.info("Search index built: %d products in %.0f ms", len(index), index.built_seconds * 1000)
            _shared_store(source, version, index)
    now = time.monotonic()
    _served = _Served(index=index, source=source, version=version, built_at=now, checked_at=now)
    return index


def _refresh_in_background(source: str, version: str) -> None:
    """Start one background refresh unless one is running; searches meanwhile use the current index."""
    if not _build_lock.acquire(blocking=False):
        return

    def run() -> None:
        try:
            _refresh(source, version)
        except Exception:
            logger.exception("Search index refresh failed; the previous index stays in use")
        finally:
            connection.close()  # this thread's own connection
            _build_lock.release()

    threading.Thread(target=run, name="search-index-refresh", daemon=True).start()


def search_index() -> SearchIndex:
    """The index of the catalog as it is now (within the bounds in the module docstring).

    Side effects: may build the index (and share it through Redis) or load the shared one, here or in a
    background thread. Concurrent callers in one process share one refresh; while a slow one runs, they
    search the previous index.
    """
    source = database_source()
    served = _served
    if (
        served is not None
        and served.source == source
        and not served.stale
        and len(served.index) >= REBUILD_IN_BACKGROUND_FROM
        and time.monotonic() - served.checked_at < VERSION_CHECK_INTERVAL_S
    ):
        return served.index  # a large catalog's version was read a moment ago
    version = str(catalog_version())  # as text: the shared copy is tagged with it
    if served is None or served.source != source:
        with _build_lock:
            return _refresh(source, version)
    if _fresh_enough(served, version=version):
        if served.version == version:
            served.checked_at = time.monotonic()
        return served.index
    if len(served.index) >= REBUILD_IN_BACKGROUND_FROM:
        _refresh_in_background(source, version)
        return served.index
    if not _build_lock.acquire(blocking=False):
        return served.index  # another thread is refreshing: this search uses the current index
    try:
        return _refresh(source, version)
    finally:
        _build_lock.release()


def search_index_warm() -> None:
    """Build or load this process's index now, so the first shopper's search does not wait for it."""
    search_index()


def search_index_reset() -> None:
    """Forget this process's index (tests; after restoring a database)."""
    global _served
    with _build_lock:
        _served = None


def search_index_mark_stale() -> None:
    """Note that a product the served index returned is gone: the next search rebuilds it."""
    served = _served
    if served is not None:
        served.stale = True
