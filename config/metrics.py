"""The site's Prometheus series that processes count as they work, and the Celery task outcomes.

Web servers run several processes (gunicorn workers): each counts into its own
memory-mapped files under ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode, set by the settings before this module is imported), and
``/metrics`` sums every process's files, so the numbers are whole for the
machine. Task outcomes are reported by the Celery workers, which may run on
other machines: they are counted in Redis, where any web node reads them.
Series that describe state (index age, backlog, import jobs) are read when
scraped, in ``gallery/metrics.py``.
"""

from __future__ import annotations

import functools
import logging

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import Counter, Histogram, values

logger = logging.getLogger(__name__)

if values.ValueClass.__name__ != "MmapedValue":
    # Counts kept in process memory would show one gunicorn worker's share, changing with each scrape.
    raise ImproperlyConfigured(
        "prometheus_client was imported before the settings set PROMETHEUS_MULTIPROC_DIR: "
        "load Django's settings first (DJANGO_SETTINGS_MODULE)"
    )

REQUEST_LATENCY = Histogram(
    "gallery_http_request_duration_seconds",
    "Time from a request's arrival to its answer, by view (the URL pattern's name) and method.",
    ["view", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RESPONSES = Counter(
    "gallery_http_responses",
    "Answers by view and HTTP status.",
    ["view", "status"],
)
GRIDS = Counter(
    "gallery_grids_served",
    "Product grids served (pages and API) by how they were asked for: text, starting, similar, photo.",
    ["kind", "filtered"],
)
CACHE_LOOKUPS = Counter(
    "gallery_cache_lookups",
    "Lookups in the site's caches: catalog memory (per process), trail grids (per process, then shared).",
    ["cache", "result"],
)

GRID_KINDS = ("text", "starting", "similar", "photo")
TASK_OUTCOMES_KEY = "metrics:celery-task-outcomes"


def grid_served(*, kind: str, filtered: bool) -> None:
    """Count one grid served (``kind`` one of GRID_KINDS)."""
    GRIDS.labels(kind=kind, filtered="yes" if filtered else "no").inc()


@functools.cache
def _cache_child(cache: str, hit: bool) -> Counter:
    return CACHE_LOOKUPS.labels(cache=cache, result="hit" if hit else "miss")


def cache_lookup(*, cache: str, hit: bool) -> None:
    """Count one lookup in the cache named ``cache`` (a few names, fixed in the code)."""
    _cache_child(cache, hit).inc()


# --- Celery task outcomes: counted by the workers in Redis -----------------------------------------------


@functools.cache
def _redis() -> redis.Redis:
    # redis-py opens new connections after a fork, so one client serves a prefork pool's children too.
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)


def _outcomes_key() -> str:
    return f"{settings.CACHES['default'].get('KEY_PREFIX', '')}:{TASK_OUTCOMES_KEY}"


def task_outcome_record(*, task: str, outcome: str) -> None:
    """Count one outcome (success, failure, retry, revoked...) of ``task``. Never raises: a count is not worth one."""
    try:
        _redis().hincrby(_outcomes_key(), f"{task}|{outcome.lower()}", 1)
    except redis.RedisError:
        logger.warning("Could not count the outcome of %s in Redis", task, exc_info=True)


def task_outcomes() -> dict[tuple[str, str], int]:
    """(task name, outcome) -> how many times every worker reported it; {} when Redis does not answer."""
    try:
        raw = _redis().hgetall(_outcomes_key())
    except redis.RedisError:
        logger.warning("Could not read the task outcomes from Redis", exc_info=True)
        return {}
    counts = {}
    for field, value in raw.items():
        task, _, outcome = field.decode(errors="replace").rpartition("|")
        counts[(task, outcome)] = int(value)
    return counts


def on_task_postrun(sender=None, task_id=None, task=None, state=None, **_kwargs) -> None:  # noqa: ANN001
    """Celery's task_postrun: count the state the task ended in (SUCCESS, FAILURE, RETRY, ...)."""
    task_outcome_record(task=getattr(task, "name", None) or "unknown", outcome=state or "unknown")


def on_task_revoked(sender=None, request=None, **_kwargs) -> None:  # noqa: ANN001
    """Celery's task_revoked: a task that will not run (revoked, expired, time limit terminated)."""
    task_outcome_record(task=getattr(sender, "name", None) or "unknown", outcome="revoked")
