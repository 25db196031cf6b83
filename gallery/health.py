"""Health endpoints for load balancers: liveness and readiness."""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from recommender import api

logger = logging.getLogger(__name__)


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches nothing else."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return f"error: {exc.__class__.__name__}"
    return "ok"


def _check_redis() -> str:
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1).ping()
    except redis.RedisError as exc:
        return f"error: {exc.__class__.__name__}"
    return "ok"


def _check_index() -> str:
    return api.index_health()


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: database, Redis and the published index. 503 when one fails.

    With an index store (INDEX_STORE), this node's copy of the published build is reported too
    (``index_delivery``), without failing readiness on its own.

    Redis down only degrades the site (uploads wait as pending; text and
    similar search still answer), so it is reported but does not fail
    readiness; neither does a missing index on a catalog still being embedded.
    """
    checks = {"database": _check_database(), "redis": _check_redis(), "index": _check_index()}
    # With builds fetched from a store: this node's copy. Reported, never failing readiness by itself:
    # a node that cannot fetch keeps serving its build, and a store outage must not empty the pool.
    delivery = api.index_delivery_health()
    if delivery is not None:
        checks["index_delivery"] = delivery
    ready = checks["database"] == "ok" and not checks["index"].startswith("error")
    if not ready:
        logger.warning("Not ready: %s", checks)
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)
