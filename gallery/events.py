"""What shoppers do, recorded without slowing a page: the one owner of ``ShopperEvent`` rows.

A request notes its events in memory (``event_note``: no I/O); ``ShopperEvents`` (the middleware) gives
each browser an anonymous session id (a random cookie: nothing personal) and, once the response is made,
pushes the request's events to a Redis list in one round trip. A Celery task (``gallery.events_flush``,
every EVENTS_FLUSH_INTERVAL_S) moves them into the database in batches; another
(``gallery.events_purge``, hourly) deletes those older than EVENTS_RETENTION_DAYS.

When Redis is down the events are dropped and counted (``events_dropped``), never a failed or slow page:
after a failed push this process skips Redis for EVENTS_BACKOFF_S. Each event carries a random id, unique
in the table, so a flush that dies between its insert and its trim inserts nothing twice when repeated.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from gallery.experiments import arm_of
from gallery.models import ShopperEvent

logger = logging.getLogger(__name__)

KINDS = frozenset(ShopperEvent.Kind.values)
_SESSION_CHARS = 22  # secrets.token_urlsafe(16)
FLUSH_LOCK_TIMEOUT_S = 120
EVENTS_BACKOFF_S = 5.0

_down_until = 0.0
_dropped_here = 0  # dropped while Redis was away, added to the shared counter once it is back
_lock = threading.Lock()


def _key(name: str) -> str:
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
    return f"{prefix}:events:{name}"


BUFFER = "buffer"
DROPPED = "dropped"


_clients: dict[str, redis.Redis] = {}


def _redis() -> redis.Redis:
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        # Short timeouts: a push happens after the page is made, and an event is worth less than a page.
        client = _clients[url] = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    return client


def client_reset() -> None:
    """Forget this process's back-off and the count not yet shared (tests that stop or move Redis)."""
    global _down_until, _dropped_here
    _down_until = 0.0
    _dropped_here = 0


# --- Sessions ---------------------------------------------------------------------------------


def session_valid(value: str) -> bool:
    return len(value) == _SESSION_CHARS and all(ch.isalnum() or ch in "-_" for ch in value)


def session_of(request: HttpRequest) -> str:
    """The request's anonymous session id: its cookie's, or a new random one the response will set."""
    session = getattr(request, "shopper_session", None)
    if session is None:
        cookie = request.COOKIES.get(settings.EVENTS_COOKIE_NAME, "")
        session = cookie if session_valid(cookie) else ""
        request.shopper_session = session
    return session


# --- Recording ---------------------------------------------------------------------------------


def event_note(request: HttpRequest, kind: str, **data: object) -> None:
    """Note one event of ``kind`` for this request (pushed after the response is made); no I/O here.

    ``data`` is JSON: ``query``, ``count``, ``product_id``, ``position``, ``arm``, ``grid`` (the grid
    kind), ``ids`` and anything else the event tells. Does nothing when EVENTS_ENABLED is off.
    """
    if not settings.EVENTS_ENABLED:
        return
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    notes = getattr(request, "shopper_events", None)
    if notes is None:
        notes = request.shopper_events = []
    notes.append({"id": secrets.token_hex(8), "at": time.time(), "kind": kind, **data})


def events_push(session: str, events: list[dict[str, object]]) -> bool:
    """Append ``events`` to the shared buffer in one round trip; False (and counted) when Redis is away."""
    global _down_until, _dropped_here
    if not events:
        return True
    if time.monotonic() < _down_until:
        with _lock:
            _dropped_here += len(events)
        return False
    payload = [json.dumps({**event, "session": session}, separators=(",", ":")) for event in events]
    with _lock:
        carried, _dropped_here = _dropped_here, 0
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.rpush(_key(BUFFER), *payload)
        if carried:
            pipe.incrby(_key(DROPPED), carried)
        length = pipe.execute()[0]
        overflow = int(length) - settings.EVENTS_BUFFER_MAX
        if overflow > 0:
            # The flusher is away for long: keep the newest, count the rest as dropped.
            pipe = _redis().pipeline(transaction=False)
            pipe.ltrim(_key(BUFFER), overflow, -1)
            pipe.incrby(_key(DROPPED), overflow)
            pipe.execute()
        return True
    except (redis.RedisError, OSError) as exc:
        _down_until = time.monotonic() + EVENTS_BACKOFF_S
        with _lock:
            _dropped_here += len(events) + carried
        logger.warning("Shopper events dropped: Redis unavailable (%s)", exc.__class__.__name__)
        return False


def events_dropped() -> int:
    """Events dropped so far: counted in Redis, plus those this process could not count there yet."""
    try:
        shared = int(_redis().get(_key(DROPPED)) or 0)
    except (redis.RedisError, OSError):
        shared = 0
    return shared + _dropped_here


def events_buffered() -> int | None:
    """Events waiting in Redis for the next flush (None when Redis is away)."""
    try:
        return int(_redis().llen(_key(BUFFER)))
    except (redis.RedisError, OSError):
        return None


class ShopperEvents:
    """Middleware: the anonymous session cookie, and the request's events pushed once the response is made.

    The cookie is set on shopper pages only (not the API, the admin or static files); an API client that
    sends it back is counted in its session, one that does not is recorded without a session.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not settings.EVENTS_ENABLED:
            return self.get_response(request)
        session = session_of(request)
        shopper_page = not request.path.startswith(("/api/", "/admin/", settings.STATIC_URL, settings.MEDIA_URL))
        if not session and shopper_page:
            session = request.shopper_session = secrets.token_urlsafe(16)
            request.shopper_session_new = True
        response = self.get_response(request)
        if getattr(request, "shopper_session_new", False) and response.status_code < 500:
            response.set_cookie(
                settings.EVENTS_COOKIE_NAME,
                session,
                max_age=settings.EVENTS_SESSION_DAYS * 86400,
                httponly=True,
                samesite="Lax",
                secure=request.is_secure(),
            )
        events = getattr(request, "shopper_events", None)
        if events:
            arm = arm_of(session)  # every event of a session in an experiment names its arm
            for event in events:
                event["arm"] = arm
            events_push(session, events)
        return response


# --- Storing -------------------------------------------------------------------------------------

_FIELDS = ("query", "count", "product_id", "position", "arm", "grid")


def _row(raw: bytes) -> ShopperEvent | None:
    try:
        event = json.loads(raw)
        at = datetime.fromtimestamp(float(event.pop("at")), tz=UTC)
        kind = str(event.pop("kind"))
        if kind not in KINDS:
            raise ValueError(kind)
        fields = {name: event.pop(name, None) for name in _FIELDS}
        return ShopperEvent(
            event_id=str(event.pop("id"))[:16],
            at=at,
            session=str(event.pop("session", ""))[:_SESSION_CHARS],
            kind=kind,
            query=str(fields["query"] or "")[:255],
            count=int(fields["count"]) if fields["count"] is not None else None,
            product_id=int(fields["product_id"]) if fields["product_id"] is not None else None,
            position=int(fields["position"]) if fields["position"] is not None else None,
            arm=str(fields["arm"] or "")[:32],
            grid=str(fields["grid"] or "")[:16],
            data=event,
        )
    except (ValueError, TypeError, KeyError, OverflowError, AttributeError):
        logger.warning("A malformed shopper event was skipped: %r", raw[:200])
        return None


def events_flush(*, batch_size: int = 1000, max_batches: int = 100) -> int:
    """Move buffered events from Redis into the database, in batches; returns how many rows were stored.

    One flusher at a time (a Redis lock). Each batch is read, inserted (an event already stored is
    skipped by its id) and only then trimmed from the buffer, so a flush that dies midway loses nothing
    and duplicates nothing. Raises redis.RedisError when Redis is away (the task retries on schedule).
    """
    client = _redis()
    lock = client.lock(_key("flush-lock"), timeout=FLUSH_LOCK_TIMEOUT_S, blocking_timeout=0)
    if not lock.acquire(blocking=False):
        return 0
    stored = 0
    try:
        for _ in range(max_batches):
            raws = client.lrange(_key(BUFFER), 0, batch_size - 1)
            if not raws:
                break
            rows = [row for row in map(_row, raws) if row is not None]
            with transaction.atomic():
                ShopperEvent.objects.bulk_create(rows, ignore_conflicts=True)
            client.ltrim(_key(BUFFER), len(raws), -1)
            stored += len(rows)
            if len(raws) < batch_size:
                break
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            logger.warning("The events flush lock expired before release")
    return stored


def events_purge(*, now: datetime | None = None) -> int:
    """Delete events older than EVENTS_RETENTION_DAYS; returns how many."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.EVENTS_RETENTION_DAYS)
    deleted, _ = ShopperEvent.objects.filter(at__lt=cutoff).delete()
    return deleted


# --- What the views note ------------------------------------------------------------------------

POSITION_PARAM = "at"  # a grid tile's 1-based place, carried by its link
ACTION_PARAM = "act"  # a trail edit, carried by the trail's links
TRAIL_ACTIONS = {"p": "pin", "n": "not like this", "a": "aspect", "r": "remove"}
MAX_POSITION = 1000


def position_of(request: HttpRequest) -> int | None:
    """The clicked tile's place from the link (None when absent or not a sensible number: never an error)."""
    value = request.GET.get(POSITION_PARAM, "")
    return int(value) if value.isascii() and value.isdigit() and 0 < int(value) <= MAX_POSITION else None


def search_noted(request: HttpRequest, *, query: str, found: object, grid: str) -> None:
    """A text search (query, result count, corrected or partial) and the grid it showed."""
    ids = [product.id for product in found]
    if query:
        corrections = getattr(found, "corrections", {}) or {}
        event_note(
            request,
            "search",
            query=query[:255],
            count=len(ids),
            corrected=bool(corrections),
            partial=bool(getattr(found, "partial", False)),
        )
    event_note(request, "grid", grid=grid, query=query[:255], count=len(ids), ids=ids)


def grid_noted(request: HttpRequest, *, grid: str, ids: list[int], **data: object) -> None:
    """A grid shown: its kind and the ids in order (the middleware adds the session's experiment arm)."""
    event_note(request, "grid", grid=grid, count=len(ids), ids=ids, **data)


def click_noted(request: HttpRequest, *, product_id: int) -> None:
    """A tile clicked (its place from the link), or a trail edited (the link names the edit)."""
    action = TRAIL_ACTIONS.get(request.GET.get(ACTION_PARAM, ""))
    if action:
        event_note(request, "trail", product_id=product_id, action=action)
        return
    position = position_of(request)
    if position is not None:
        event_note(request, "click", product_id=product_id, position=position)
