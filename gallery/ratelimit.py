"""A fixed-window rate limit per client, counted in the shared cache (Redis).

The client is the address that connected to us, unless the operator declared
the proxies in front of the web server (``TRUSTED_PROXY_COUNT`` or
``TRUSTED_PROXIES``): then it is the address the outermost trusted proxy saw,
read from the right-hand end of ``X-Forwarded-For``. Everything left of that is
written by the client and never trusted.
"""

from __future__ import annotations

import ipaddress
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> IPAddress | None:
    """An address as a proxy writes it ("203.0.113.7", "2001:db8::1", "[2001:db8::1]"), or None."""
    text = text.strip().removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack server shows IPv4 clients as ::ffff:a.b.c.d: the same client.
    return address.ipv4_mapped or address if address.version == 6 else address


def _trusted(address: IPAddress | None) -> bool:
    return address is not None and any(address in network for network in settings.TRUSTED_PROXIES)


def client_address(*, request: HttpRequest) -> IPAddress | None:
    """The shopper's address, as far as the configured proxies vouch for it; None when unreadable.

    With no trusted proxy configured this is ``REMOTE_ADDR`` and
    ``X-Forwarded-For`` is ignored: a client could write any address there.
    """
    peer = _address(request.META.get("REMOTE_ADDR") or "")
    forwarded = [hop for hop in (request.META.get("HTTP_X_FORWARDED_FOR") or "").split(",") if hop.strip()]
    if settings.TRUSTED_PROXY_COUNT:
        # Each of the N proxies appends the address it saw; the Nth from the
        # right was appended by the outermost one. Fewer hops than proxies: the
        # request did not come through all of them, so only the peer is known.
        if len(forwarded) < settings.TRUSTED_PROXY_COUNT:
            return peer
        return _address(forwarded[-settings.TRUSTED_PROXY_COUNT]) or peer
    if settings.TRUSTED_PROXIES and _trusted(peer):
        # Walk right to left past our own proxies; the first other hop is the client.
        hop = peer
        for text in reversed(forwarded):
            hop = _address(text)
            if not _trusted(hop):
                break
        return hop or peer
    return peer


def via_trusted_proxy(*, request: HttpRequest) -> bool:
    """Whether the request came through the proxies the operator declared, so that headers they set hold.

    With ``TRUSTED_PROXY_COUNT`` the connecting peer is the innermost proxy and the request passed all of
    them when it carries as many ``X-Forwarded-For`` hops; with ``TRUSTED_PROXIES``, when the peer is one.
    """
    if settings.TRUSTED_PROXY_COUNT:
        forwarded = [hop for hop in (request.META.get("HTTP_X_FORWARDED_FOR") or "").split(",") if hop.strip()]
        return len(forwarded) >= settings.TRUSTED_PROXY_COUNT
    return bool(settings.TRUSTED_PROXIES) and _trusted(_address(request.META.get("REMOTE_ADDR") or ""))


def client_key(request: HttpRequest) -> str:
    """The rate-limit bucket of a request: the client address, an IPv6 client's /64 network."""
    address = client_address(request=request)
    if address is None:
        return "unknown"
    if address.version == 6:
        # One IPv6 subscriber holds a whole /64: counting single addresses
        # would let one client take 2**64 buckets.
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


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
