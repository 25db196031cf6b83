"""What an operator sees: /metrics (Prometheus) and log lines that trace a request into its tasks."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from prometheus_client.parser import text_string_to_metric_families

from config.logging import ContextFilter, JsonFormatter
from gallery.models import ImportJob, ImportStatus
from recommender.models import EmbedStatus
from tests.support import ROOT
from tests.support.clients import admin_product_form
from tests.support.engine import embed_status
from tests.support.images import jpeg_bytes
from tests.support.processes import free_port, subprocess_env, wait_for

TOKEN = "a-scraper-token-0123456789"


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from /metrics through the Django test client."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain; version=")
    return parse(response.content.decode())


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= set(got))


def has(samples: dict, name: str, **labels: str) -> bool:
    wanted = set(labels.items())
    return any(n == name and wanted <= set(got) for (n, got) in samples)


# --- /metrics -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_exposes_every_listed_series(client, demo_catalog_db, make_jpeg):
    ImportJob.objects.create(status=ImportStatus.QUEUED, original_name="a.zip")
    ImportJob.objects.create(status=ImportStatus.FAILED, original_name="b.zip", error="bad zip")
    before = scrape(client)
    first, second = demo_catalog_db[:2]

    assert client.get("/").status_code == 200  # the starting grid
    assert client.get("/", {"q": "shirt"}).status_code == 200  # a text search
    assert client.get("/", {"q": "shirt", "gender": "Men"}).status_code == 200  # filtered
    assert client.get(f"/similar/{first}/").status_code == 200  # a click
    assert client.get(f"/similar/{second}/", {"trail": f"{first},{second}"}).status_code == 200  # a second click
    assert client.get(f"/api/similar/{first}").status_code == 200
    photo = client.post("/api/search-by-image", {"image": io.BytesIO(make_jpeg())})
    assert photo.status_code == 200, photo.content[:300]

    after = scrape(client)
    grown = {
        kind: value(after, "gallery_grids_served_total", kind=kind)
        - value(before, "gallery_grids_served_total", kind=kind)
        for kind in ("starting", "text", "similar", "photo")
    }
    assert grown == {"starting": 1, "text": 2, "similar": 3, "photo": 1}
    assert (
        value(after, "gallery_grids_served_total", filtered="yes")
        - value(before, "gallery_grids_served_total", filtered="yes")
        == 1
    )
    # Request latency by view: one observation per request, in the view's histogram.
    home = {"view": "gallery:home", "method": "GET"}  # the same labels on both sides: other tests send HEADs
    grew = value(after, "gallery_http_request_duration_seconds_count", **home) - value(
        before, "gallery_http_request_duration_seconds_count", **home
    )
    assert grew == 3
    assert has(after, "gallery_http_request_duration_seconds_bucket", view="gallery:similar", le="0.25")
    assert value(after, "gallery_http_responses_total", view="gallery:api-search-by-image", status="200") >= 1
    # Cache lookups: the catalog memory answers again for the same filters; the second click finds the
    # first click's grid remembered in this process.
    for cache, result in [("catalog-memory", "hit"), ("catalog-memory", "miss"), ("grids-process", "hit")]:
        grew = value(after, "gallery_cache_lookups_total", cache=cache, result=result) - value(
            before, "gallery_cache_lookups_total", cache=cache, result=result
        )
        assert grew >= 1, (cache, result)
    # The engine's state, read when scraped.
    assert value(after, "gallery_index_build_vectors") == len(demo_catalog_db)
    assert value(after, "gallery_index_build_bytes") > 0
    assert 0 <= value(after, "gallery_index_build_age_seconds") < 3600
    assert value(after, "gallery_vectors_outside_index") == 0
    assert value(after, "gallery_embedding_backlog") == 0
    assert has(after, "gallery_embedding_rate_per_second")
    assert value(after, "gallery_products_by_embedding_status", status="done") == len(demo_catalog_db)
    assert value(after, "gallery_import_jobs", status="queued") == 1
    assert value(after, "gallery_import_jobs", status="failed") == 1
    assert value(after, "gallery_import_jobs", status="running") == 0
    # Declared even before any worker reported (the worker test below counts one).
    assert "# TYPE gallery_celery_tasks_total counter" in client.get("/metrics").content.decode()


@pytest.mark.django_db
def test_metrics_count_vectors_stored_since_the_build_and_the_backlog(client, demo_catalog_db):
    from recommender.models import Embedding, EmbeddingState
    from recommender.runtime import active_space

    newest = Embedding.objects.filter(space=active_space()).order_by("-id").first()
    # One vector stored after the build (a copy of one under a new row) and two products waiting.
    Embedding.objects.filter(id=newest.id).delete()
    Embedding.objects.create(
        product_id=newest.product_id, space=newest.space, dim=newest.dim, vector=newest.vector, image_version=1
    )
    EmbeddingState.objects.filter(product_id__in=demo_catalog_db[:2]).update(status=EmbedStatus.PENDING)
    samples = scrape(client)
    assert value(samples, "gallery_vectors_outside_index") == 1
    assert value(samples, "gallery_embedding_backlog") == 2


@pytest.mark.django_db
def test_metrics_are_refused_to_the_public(client, settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    # Not from an allowed network, no token: as if there were no such page.
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token-0123456789").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.20.30.40").status_code == 200
    # A wrong token is refused even from an allowed network: the token, once offered, decides.
    assert client.get("/metrics", REMOTE_ADDR="10.20.30.40", HTTP_AUTHORIZATION="Bearer nope").status_code == 404
    # Behind a front server on this host every request comes from 127.0.0.1: the client is whom it vouches for.
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]
    settings.TRUSTED_PROXY_COUNT = 1
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 404
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="127.0.0.1, 203.0.113.9").status_code == 404
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 200
    # Read-only.
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


@pytest.mark.django_db(transaction=True)
def test_metrics_sum_every_gunicorn_worker(tmp_path: Path):
    """Three gunicorn workers answer 60 requests between them: /metrics counts all 60, whichever answers it."""
    port = free_port()
    log = (tmp_path / "web.log").open("wb")
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "--workers", "3"],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def get(path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.read()

    def up() -> bool:
        try:
            return bool(get("/readyz"))
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, what="gunicorn")
        before = value(parse(get("/metrics").decode()), "gallery_http_responses_total", view="healthz")
        for _ in range(60):
            get("/healthz")
        # Whichever worker answers a scrape, it counts the answers of all three.
        scrapes = [
            value(parse(get("/metrics").decode()), "gallery_http_responses_total", view="healthz") for _ in range(6)
        ]
        assert scrapes == [before + 60] * 6
    finally:
        web.terminate()
        web.wait(timeout=20)
        log.close()


@pytest.mark.django_db(transaction=True)
def test_a_workers_task_outcomes_are_counted(client, start_worker):
    """A real worker reports each task's outcome; /metrics on the web side counts it."""
    from recommender.tasks import embed_products

    start_worker()
    outcome = {"task": "recommender.embed_products", "outcome": "success"}
    before = value(scrape(client), "gallery_celery_tasks_total", **outcome)
    embed_products.apply_async(args=[[987654]])  # no such product: the task ends at once, successfully
    wait_for(
        lambda: value(scrape(client), "gallery_celery_tasks_total", **outcome) == before + 1,
        timeout=60,
        what="the worker's outcome in /metrics",
    )


# --- Request ids ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_answer_echoes_a_request_id_made_here_unless_a_trusted_proxy_sent_one(client, settings):
    first, second = client.get("/healthz"), client.get("/api/nothing-here")
    assert len(first["X-Request-ID"]) == 32 and first["X-Request-ID"] != second["X-Request-ID"]
    assert second.status_code == 404 and second["X-Request-ID"]
    # From a client directly: its own id is not taken (it could be anything, another shopper's included).
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] != "abc-123"
    # From a declared proxy: taken, when well formed.
    settings.TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.1/32")]
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    for bad in ["", "a b", "x" * 129, "<script>", "ü"]:
        assert client.get("/healthz", HTTP_X_REQUEST_ID=bad)["X-Request-ID"] != bad
    assert client.get("/healthz", REMOTE_ADDR="192.0.2.1", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] != "abc-123"
    settings.REQUEST_ID_FROM_PROXY = False
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] != "abc-123"


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


@pytest.mark.django_db(transaction=True)
def test_an_uploads_request_id_is_on_its_web_lines_and_its_tasks_lines(client, start_worker):
    """One admin upload: the web lines and the worker's lines for the task it queued carry one request id."""
    worker = start_worker(LOG_FORMAT="json")
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.login(username="admin", password="pw")

    # The web side's lines as the settings' handler writes them: the context filter and the JSON formatter.
    web_log = io.StringIO()
    handler = logging.StreamHandler(web_log)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        response = client.post(
            "/admin/gallery/product/add/", admin_product_form(4242, jpeg_bytes(colour=(20, 160, 90)), name="Green")
        )
        logging.getLogger("gallery.test").info("after the request")
    finally:
        root.removeHandler(handler)
    assert response.status_code == 302, response.content.decode()[:2000]
    request_id = response["X-Request-ID"]

    web_lines = json_lines(web_log.getvalue())
    traced = [line for line in web_lines if line.get("request_id") == request_id]
    assert traced, web_log.getvalue()[-2000:]
    # The request's own line, and the line of the task it queued (after the commit) with the task's id.
    assert any(line["logger"] == "gallery.requests" and line["status"] == 302 for line in traced), traced
    queued = [line for line in traced if line["message"].startswith("Queued embedding task")]
    assert len(queued) == 1, traced
    queued_task_id = queued[0]["message"].split()[3]
    assert not any(line.get("request_id") for line in web_lines if line["message"] == "after the request")

    wait_for(lambda: embed_status(4242) == EmbedStatus.DONE, timeout=90, what="the worker to embed the upload")

    def task_lines() -> list[dict]:
        return [
            line
            for line in json_lines(worker.log.read_text(errors="replace"))
            if line.get("task_name") == "recommender.embed_products" and line.get("request_id") == request_id
        ]

    lines = wait_for(lambda: [line for line in task_lines() if "succeeded" in line["message"]], what="the task's line")
    task_id = lines[0]["task_id"]
    assert task_id == queued_task_id and task_id in lines[0]["message"]
    # Every line the task wrote carries its task id and the request's id.
    assert all(line["task_id"] == task_id for line in task_lines())


@pytest.mark.django_db
def test_a_task_run_in_place_logs_with_its_id_and_gives_the_requests_context_back():
    from config.logging import request_id_var, task_id_var
    from recommender.tasks import embed_products

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    handler.addFilter(ContextFilter())
    logging.getLogger().addHandler(handler)
    token = request_id_var.set("req-in-place")
    try:
        result = embed_products.apply(args=[[987654]], task_id="task-in-place")
        assert result.successful()
        # After the task: the request's context again, no task.
        assert (request_id_var.get(), task_id_var.get()) == ("req-in-place", None)
    finally:
        request_id_var.reset(token)
        logging.getLogger().removeHandler(handler)
    during = [r for r in records if r.task_id == "task-in-place"]
    assert during and all(r.request_id == "req-in-place" for r in during)


def test_server_timing_splits_a_click_by_stage(client, settings, demo_catalog_db):
    import re

    anchor = demo_catalog_db[5]
    assert "Server-Timing" not in client.get(f"/api/similar/{anchor}")  # off by default: nothing is timed
    settings.SERVER_TIMING = True
    for start, path in ((10, f"/api/similar/{anchor}"), (11, f"/similar/{anchor}/")):
        trail = ",".join(map(str, demo_catalog_db[start:40:10]))
        response = client.get(path, {"trail": trail, "q": "shirt"})
        assert response.status_code == 200
        stages = dict(
            re.fullmatch(r"(\w+);dur=([\d.]+)", part).groups() for part in response["Server-Timing"].split(", ")
        )
        assert {"parse", "db", "index", "rank", "cards", "render", "cache", "other"} <= set(stages), stages
        # Answered from the grid cache the second time: no index search, no ranking.
        again = client.get(path, {"trail": trail, "q": "shirt"})["Server-Timing"]
        assert "index;" not in again and "rank;" not in again and "cache;" in again


def _stages(response) -> dict[str, float]:  # noqa: ANN001
    from bench.common import server_timing

    return server_timing(response["Server-Timing"])


def test_server_timing_names_the_search_and_the_photo_stages(client, settings, demo_catalog_db, make_jpeg):
    settings.SERVER_TIMING = True
    text = client.get("/api/search", {"q": "blue shirt"})
    assert text.status_code == 200 and text.json()["results"]
    assert {"parse", "search", "cards", "render", "other"} <= set(_stages(text)), text["Server-Timing"]
    page = client.get("/", {"q": "blue shirt"})
    assert {"parse", "search", "cards", "render"} <= set(_stages(page)), page["Server-Timing"]
    photo = client.post("/api/search-by-image", {"image": io.BytesIO(make_jpeg())})
    assert photo.status_code == 200, photo.content[:300]
    stages = _stages(photo)
    assert {"parse", "decode", "encode", "index", "render"} <= set(stages), photo["Server-Timing"]
