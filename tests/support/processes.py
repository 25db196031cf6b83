"""Other processes in tests: their environment, ports, stopping them, waiting on them, a broker swap."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings
from django.db import connection

from recommender import tasks


def database_url_for_subprocess() -> str:
    """The URL of the database this test session uses (the test database), for worker processes."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a worker or web process that shares this test's database, Redis and files."""
    env = os.environ.copy()
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings_test",
            "DATABASE_URL": database_url_for_subprocess(),
            "REDIS_URL": settings.REDIS_URL,
            "GALLERY_VAR_DIR": str(settings.VAR_DIR),
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "INDEX_DIR": str(settings.INDEX_DIR),
            "ENCODER": settings.ENCODER,
            "PYTHONUNBUFFERED": "1",
            # Its own metrics files: `manage.py serve` clears the folder it is given at start, which must
            # not be this test process's (its counters would vanish from its own scrapes).
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="metrics-", dir=settings.VAR_DIR),
        }
    )
    env.update(extra)
    return env


def process_group_stop(process: subprocess.Popen, *, timeout: float = 20) -> None:
    """Stop a process started with ``start_new_session`` and its children: SIGTERM, then SIGKILL after ``timeout``."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def celery_broker(url: str) -> Iterator[None]:
    """Point this process's Celery publisher at ``url`` for a block, and back after.

    Celery caches both the connection pool and the producer pool: both are
    dropped on the way in and out, or later tests would publish to a dead broker.
    """
    from config.celery import app

    old = app.conf.broker_url

    def reset() -> None:
        app._pool = None
        app.amqp._producer_pool = None
        tasks.redis_client.cache_clear()

    app.conf.broker_url = url
    reset()
    try:
        yield
    finally:
        app.conf.broker_url = old
        reset()


def wait_for(
    predicate: Callable[[], object], *, timeout: float = 60, interval: float = 0.2, what: str = "condition"
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def connection_attempts(port: int) -> Iterator[list[float | None]]:
    """The socket timeout of every TCP connection attempt to ``port`` made in the block, in order.

    Bounds the work a request does against a server that is down without timing
    it: how many times it tries, and how long each try may wait at most.
    """
    attempts: list[float | None] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and len(address) >= 2 and address[1] == port:
            attempts.append(sock.gettimeout())
        return real_connect(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        yield attempts


def task_reports(worker) -> list[dict[str, int]]:
    """What each embed_products task the worker finished returned, from its log."""
    found = re.findall(r"embed_products\[[^\]]+\] succeeded in [\d.]+s: (\{[^}]*\})", worker.log.read_text())
    return [ast.literal_eval(report) for report in found]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
