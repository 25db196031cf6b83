"""How the shared cache (django-redis) stores values, JSON never pickle, and how it behaves while Redis is down.

Unpickling runs whatever the stored bytes tell it to, so with pickle anyone
able to write to Redis could run code in every web process (the filter menus
are read from the cache on every page). JSON only ever yields data.

While Redis is down every cache call is a miss (``IGNORE_EXCEPTIONS``); ``FailFastPool`` makes that miss
immediate after the first failed connection, for CACHE_BACKOFF_S, rather than a connection timeout per call.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from django_redis.exceptions import ConnectionInterrupted
from django_redis.serializers.json import JSONSerializer as DjangoRedisJSONSerializer

logger = logging.getLogger(__name__)


class JSONSerializer(DjangoRedisJSONSerializer):
    """django-redis' JSON serializer; a stored value that is not our JSON reads as a cache outage.

    Bytes written by something else (an old pickling release, a hostile
    client) raise ``ConnectionInterrupted``, which the cache's
    ``IGNORE_EXCEPTIONS`` turns into a miss: the caller computes the value
    instead of failing the page.
    """

    def loads(self, value: bytes) -> Any:
        try:
            return super().loads(value)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
            logger.warning("A cached value is not JSON (%d bytes); treated as a miss", len(value))
            raise ConnectionInterrupted(connection=None) from exc


# After a failed connection, the cache's calls fail at once for this long (misses, and writes dropped).
CACHE_BACKOFF_S = 5.0


class FailFastPool(redis.ConnectionPool):
    """The cache's connection pool: once a connection to Redis fails, refuse at once for CACHE_BACKOFF_S.

    A page makes several cache calls (grids, the search index, rate limits, thumbnails), and redis-py retries
    each: during an outage every one of them would wait out a connection timeout. Refused here, each is a miss
    at once, and the next connection after the pause tries Redis again.
    """

    _down_until = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> redis.Connection:
        if time.monotonic() < self._down_until:
            raise redis.ConnectionError("Redis was unreachable a moment ago; not tried again yet")
        try:
            return super().get_connection(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._down_until = time.monotonic() + CACHE_BACKOFF_S
            raise
