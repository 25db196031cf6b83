"""A fixed-window rate limit per client, counted in the shared cache (Redis)."""

from __future__ import annotations

import time

from django.core.cache import cache
from django.http import HttpRequest


def client_key(request: HttpRequest) -> str:
    # REMOTE_ADDR as the WSGI server saw it; behind a proxy, the proxy sets it
    # from X-Forwarded-For (never trusted from the client here).
    return request.META.get("REMOTE_ADDR") or "unknown"


def rate_limit_hit(*, scope: str, request: HttpRequest, per_minute: int) -> int:
    """Count one request; returns 0 when allowed, else the seconds until the window resets.

    With the cache unreachable the limit fails open: refusing every shopper
    because Redis blinked would be worse than a burst of photo searches.
    """
    if per_minute <= 0:
        return 0
    now = time.time()
    window = int(now // 60)
    key = f"ratelimit:{scope}:{client_key(request)}:{window}"
    if cache.add(key, 1, timeout=61):
        return 0
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=61)
        return 0
    if count is None or count <= per_minute:
        return 0
    return max(1, int(60 - now % 60) + 1)
