"""Where a request's time goes, by stage, for the ``Server-Timing`` header (SERVER_TIMING; off by default).

A request's clock is always in one stage: ``other`` (Django, middleware, what no stage names) until code
enters one (``stage("index")``), and every statement sent to the database is the ``db`` stage wherever it
runs. Stages nest and each counts only its own time (a query inside ``index`` is ``db``'s), so the stages
of one request add up to its whole time. Off, ``stage`` costs one context-variable read.

The header is what browsers' developer tools, ``bench/realscale.py`` and ``bench/click_floor.py`` read
(``db;dur=1.204, index;...``; ``bench.common.server_timing``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse


class _Clock:
    def __init__(self) -> None:
        self.totals: defaultdict[str, float] = defaultdict(float)
        self.current = "other"
        self.stack: list[str] = []
        self.mark = time.perf_counter()

    def switch(self, name: str) -> None:
        now = time.perf_counter()
        self.totals[self.current] += now - self.mark
        self.current, self.mark = name, now


_clock: ContextVar[_Clock | None] = ContextVar("request_clock", default=None)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the block's own time (less that of stages inside it) as ``name`` in this request's clock."""
    clock = _clock.get()
    if clock is None:
        yield
        return
    clock.stack.append(clock.current)
    clock.switch(name)
    try:
        yield
    finally:
        clock.switch(clock.stack.pop())


def _db_timed(execute: Callable, sql: str, params: object, many: bool, context: dict) -> object:
    with stage("db"):
        return execute(sql, params, many, context)


class ServerTiming:
    """Middleware: with SERVER_TIMING on, times each request by stage and sends ``Server-Timing``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not settings.SERVER_TIMING:
            return self.get_response(request)
        clock = _Clock()
        token = _clock.set(clock)
        try:
            with connections["default"].execute_wrapper(_db_timed):
                response = self.get_response(request)
            clock.switch("other")
        finally:
            _clock.reset(token)
        response["Server-Timing"] = ", ".join(
            f"{name};dur={seconds * 1000:.3f}" for name, seconds in sorted(clock.totals.items())
        )
        return response
