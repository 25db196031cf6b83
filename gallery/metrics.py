"""``/metrics``: the site's Prometheus series, for the scrapers the operator allowed.

Allowed: a bearer token (METRICS_TOKEN) or a client address (METRICS_ALLOWED_NETWORKS); anyone else gets 404.

What processes count as they answer (request latency, grids, cache lookups) is
summed over this machine's processes (``config/metrics.py``); the engine's state,
the import jobs and the Celery task outcomes are read when scraped.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from config.metrics import task_outcomes
from gallery.models import ImportJob, ImportStatus
from gallery.ratelimit import client_address
from recommender.api import engine_metrics

logger = logging.getLogger(__name__)


def metrics_allowed(*, request: HttpRequest) -> bool:
    """Whether ``request`` may read /metrics: the right bearer token, or a client address the operator allowed."""
    token = settings.METRICS_TOKEN
    offered = request.META.get("HTTP_AUTHORIZATION", "")
    if token and offered:
        scheme, _, value = offered.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
            return True
        logger.warning("/metrics refused: a wrong token")
        return False
    address = client_address(request=request)
    return address is not None and any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)


class StateCollector(Collector):
    """The series read when scraped: the index, the embedding queue, import jobs, Celery task outcomes."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        engine = engine_metrics()
        age = GaugeMetricFamily(
            "gallery_index_build_age_seconds", "Seconds since the published index build was made (absent: none)."
        )
        if engine.index_built_at is not None:
            age.add_metric([], max(0.0, time.time() - engine.index_built_at))
        yield age
        yield GaugeMetricFamily(
            "gallery_index_build_vectors", "Vectors the published index build holds.", value=engine.index_vectors
        )
        yield GaugeMetricFamily(
            "gallery_index_build_bytes", "Size of the published build's Annoy file.", value=engine.index_bytes
        )
        yield GaugeMetricFamily(
            "gallery_vectors_outside_index",
            "Vectors stored since the published build, searched exactly until the next build.",
            value=engine.vectors_outside_index,
        )
        backlog = engine.products.get("pending", 0) + engine.products.get("processing", 0)
        yield GaugeMetricFamily(
            "gallery_embedding_backlog", "Products waiting to be embedded (pending or processing).", value=backlog
        )
        yield GaugeMetricFamily(
            "gallery_embedding_rate_per_second",
            "Products embedded per second over the last five minutes.",
            value=engine.embedded_per_second,
        )
        products = GaugeMetricFamily(
            "gallery_products_by_embedding_status", "Products by embedding state.", labels=["status"]
        )
        for status, count in sorted(engine.products.items()):
            products.add_metric([status], count)
        yield products

        jobs = GaugeMetricFamily("gallery_import_jobs", "Catalog import jobs by status.", labels=["status"])
        counts = dict(ImportJob.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in ImportStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs

        tasks = CounterMetricFamily(
            "gallery_celery_tasks",
            "Celery task outcomes as the workers reported them (every worker, every machine).",
            labels=["task", "outcome"],
        )
        for (task, outcome), count in sorted(task_outcomes().items()):
            tasks.add_metric([task, outcome], count)
        yield tasks


def metrics_render() -> bytes:
    """Every series in Prometheus' text format: this machine's processes summed, and the state read now."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(settings.METRICS_DIR))
    registry.register(StateCollector())
    return generate_latest(registry)


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    # 404, not 403: the public is not told that the endpoint exists.
    if not metrics_allowed(request=request):
        raise Http404("No such page.")
    return HttpResponse(metrics_render(), content_type=CONTENT_TYPE_LATEST)
