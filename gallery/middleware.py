"""Refuse oversize requests (addresses longer than the site answers, bodies before a byte of them is read);
give each request its id, count it for /metrics, send the Permissions-Policy header."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.log import log_response

from config.logging import request_id_var
from config.metrics import REQUEST_LATENCY, RESPONSES
from gallery.cards import catalog_version_held
from gallery.jobs import bulk_upload_allowed
from gallery.ratelimit import via_trusted_proxy

BULK_UPLOAD_PATH = "/admin/gallery/product/bulk-upload/"


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size < 10e6 else f"{size / 1e6:.0f} MB"


def _may_bulk_upload(request: HttpRequest) -> bool:
    """Whether the request's session belongs to a user allowed to upload catalog zips.

    This middleware runs before the session and authentication middleware (it
    must judge the body before anything reads it), so it loads the session
    from its cookie itself.
    """
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if not key:
        return False
    session = import_module(settings.SESSION_ENGINE).SessionStore(key)
    return bulk_upload_allowed(user=get_user(SimpleNamespace(session=session)))


class RequestUriLimit:
    """414 for a request address (path and query string) longer than REQUEST_URI_MAX_CHARS; JSON under /api/.

    gunicorn refuses long request lines itself, with an HTML page whatever the path. Its limit is raised
    above this one (the Procfile), so the addresses it lets through that are still too long are refused
    here, in the answer each part of the site gives.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # gunicorn hands over the address as the client sent it; other servers (runserver, the test client)
        # only its parts, put back together here as a client would have encoded them.
        address = request.META.get("RAW_URI") or request.get_full_path()
        limit = settings.REQUEST_URI_MAX_CHARS
        if len(address) > limit:
            message = f"The address is too long: {len(address)} characters, the limit is {limit}."
            if request.path.startswith("/api/"):
                return JsonResponse({"error": message}, status=414)
            return HttpResponse(message, status=414, content_type="text/plain")
        return self.get_response(request)


class RequestSizeLimit:
    """413 for bodies larger than the endpoint accepts, judged from Content-Length.

    Django limits form fields but not file uploads; without this a client
    could make the server spool gigabytes to disk before any validation ran.
    The bulk upload's large limit applies only to staff allowed to use it:
    for anyone else (an anonymous client with a forged CSRF cookie included)
    the CSRF check would otherwise spool the whole body before the redirect
    to the login page.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return HttpResponse("Bad Content-Length.", status=400, content_type="text/plain")
        limit = self.limit_for(request, length=length)
        if length > limit:
            message = f"The upload is too large: {megabytes(length)}, the limit is {megabytes(limit)}."
            if request.path.startswith("/api/"):
                return JsonResponse({"error": message}, status=413)
            return HttpResponse(message, status=413, content_type="text/plain")
        return self.get_response(request)

    @staticmethod
    def limit_for(request: HttpRequest, *, length: int) -> int:
        # One image plus the form around it.
        ordinary = settings.IMAGE_MAX_BYTES + 256 * 1024
        if not request.path.startswith(BULK_UPLOAD_PATH):
            return ordinary
        anyone = min(ordinary, settings.BULK_UPLOAD_MAX_BYTES)
        # The session is looked up only for a body larger than anyone may send.
        if length > anyone and _may_bulk_upload(request):
            return settings.BULK_UPLOAD_MAX_BYTES
        return anyone


# --- Request ids, metrics, headers ---------------------------------------------------------------------

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_QUIET_VIEWS = frozenset({"healthz", "readyz", "metrics"})
request_logger = logging.getLogger("gallery.requests")


def request_id_for(request: HttpRequest) -> str:
    """The id of ``request``: the one a trusted proxy passed in X-Request-ID when well formed, else a new one."""
    offered = request.META.get("HTTP_X_REQUEST_ID", "")
    if (
        offered
        and settings.REQUEST_ID_FROM_PROXY
        and _REQUEST_ID.fullmatch(offered)
        and via_trusted_proxy(request=request)
    ):
        return offered
    return uuid.uuid4().hex


class RequestId:
    """Gives each request an id (``request.id``), puts it on every log line written while it is answered
    (``config.logging``) and on the tasks it queues, and echoes it in the answer's X-Request-ID header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.id = request_id_for(request)
        token = request_id_var.set(request.id)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            self.log(request, response, seconds=time.perf_counter() - started)
            if response.status_code >= 400:
                # Django logs a 4xx or 5xx answer after the middleware returns, outside the request's id;
                # logged here, it carries it (and Django sees that it was logged).
                log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request.id
        return response

    @staticmethod
    def log(request: HttpRequest, response: HttpResponse, *, seconds: float) -> None:
        """One line per answer, with its fields; probes and scrapes only at DEBUG (they come every few seconds)."""
        match = getattr(request, "resolver_match", None)
        view = match.view_name if match else None
        level = logging.DEBUG if view in _QUIET_VIEWS else logging.INFO
        if not request_logger.isEnabledFor(level):
            return
        status = response.status_code
        request_logger.log(
            level,
            "%s %s %d in %.0f ms",
            request.method,
            request.path,
            status,
            seconds * 1000,
            extra={
                "method": request.method,
                "path": request.path,
                "status": status,
                "view": view,
                "duration_ms": round(seconds * 1000, 1),
            },
        )


class RequestMetrics:
    """Counts each answer and its time by view (the URL pattern's name) for /metrics."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        # Named patterns only: a label per raw path would let any client mint series without end.
        view = (match.view_name or "unnamed") if match else "unresolved"
        method = request.method if request.method in _METHODS else "other"
        REQUEST_LATENCY.labels(view=view, method=method).observe(time.perf_counter() - started)
        RESPONSES.labels(view=view, status=str(response.status_code)).inc()
        return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class PermissionsPolicy:
    """Sends the Permissions-Policy header (PERMISSIONS_POLICY), which Django's SecurityMiddleware does not."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if settings.PERMISSIONS_POLICY:
            response.setdefault("Permissions-Policy", settings.PERMISSIONS_POLICY)
        return response


class CatalogVersionHeld:
    """A read request (GET, HEAD: it writes nothing) reads the catalog's version once.

    Every per-process memory the request consults (filters, the starting grid, cards, text search) is then
    of the same version, and the database is asked once rather than by each (``gallery.cards``).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return self.get_response(request)
        with catalog_version_held():
            return self.get_response(request)
