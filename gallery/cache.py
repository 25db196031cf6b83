"""How the shared cache (django-redis) stores values: JSON, never pickle.

Unpickling runs whatever the stored bytes tell it to, so with pickle anyone
able to write to Redis could run code in every web process (the filter menus
are read from the cache on every page). JSON only ever yields data.
"""

from __future__ import annotations

import logging
from typing import Any

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
