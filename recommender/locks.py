"""The index build lock: one build at a time across every worker and command.

Redis holds it when Redis answers (workers on many machines share it); on a
machine whose Redis is not running (``build_index`` before ``serve`` starts the
embedded one) a file lock in the index directory stands in. A build is safe
without the lock (each is published atomically); the lock saves the work of
two builds racing each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

BUILD_LOCK = "gallery:index-build-lock"
BUILD_LOCK_TIMEOUT_S = 3600


class BuildInProgress(RuntimeError):
    """Another process holds the index build lock."""


@functools.cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=10)


@contextlib.contextmanager
def _file_lock(directory: Path, *, wait: bool) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".build.lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as exc:
            raise BuildInProgress("another index build is running") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def index_build_lock(*, wait: bool) -> Iterator[None]:
    """Hold the build lock for the block; raises BuildInProgress when ``wait`` is False and it is taken."""
    try:
        lock = redis_client().lock(BUILD_LOCK, timeout=BUILD_LOCK_TIMEOUT_S, blocking_timeout=None if wait else 0)
        acquired = lock.acquire(blocking=wait)
    except redis.RedisError as exc:
        logger.info("Redis unavailable for the build lock (%s); using a file lock", exc.__class__.__name__)
        with _file_lock(settings.INDEX_DIR, wait=wait):
            yield
        return
    if not acquired:
        raise BuildInProgress("another index build is running")
    try:
        yield
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            logger.warning("Index build lock expired before release")
        except redis.RedisError:
            logger.warning("Could not release the index build lock (it expires by itself)", exc_info=True)
