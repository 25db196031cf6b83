"""Shared fixtures: isolated media and index directories, real images, the demo catalog, real workers."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from PIL import Image, ImageDraw

from gallery import cards, search
from gallery.catalog import styles_read
from lab.demo import demo_catalog_write
from recommender import runtime, tasks

ROOT = Path(__file__).resolve().parent.parent
DEMO_COUNT = 300
DEMO_SEED = 7


@pytest.fixture(autouse=True)
def _isolated_files(settings, tmp_path: Path) -> Iterator[None]:
    """Every test gets its own media and index directories and fresh per-process singletons."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.INDEX_DIR = tmp_path / "index"
    runtime.reset()
    cards.forget()
    search.search_index_reset()
    tasks._queue_down_until = 0.0
    cache.clear()  # cached filter menus and rate-limit counters belong to one test
    yield
    runtime.reset()


def jpeg_bytes(
    *, colour: tuple[int, int, int] = (200, 30, 30), shape: str = "box", size: tuple[int, int] = (240, 320), **save
) -> bytes:
    """A product-like JPEG: a coloured shape on white."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    w, h = size
    if shape == "box":
        draw.rectangle([w * 0.2, h * 0.15, w * 0.8, h * 0.85], fill=colour)
    elif shape == "disc":
        draw.ellipse([w * 0.15, h * 0.25, w * 0.85, h * 0.75], fill=colour)
    else:
        draw.polygon([(w * 0.5, h * 0.1), (w * 0.9, h * 0.9), (w * 0.1, h * 0.9)], fill=colour)
    out = io.BytesIO()
    img.save(out, format=save.pop("format", "JPEG"), **save)
    return out.getvalue()


@pytest.fixture
def make_jpeg() -> Callable[..., bytes]:
    return jpeg_bytes


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo catalog (styles.csv + images/), generated once per test session."""
    directory = tmp_path_factory.mktemp("demo") / "catalog"
    demo_catalog_write(out_dir=directory, count=DEMO_COUNT, seed=DEMO_SEED)
    return directory


@pytest.fixture(scope="session")
def demo_vectors(demo_dir: Path) -> dict[int, np.ndarray]:
    """Demo product id -> its vector from the test encoder, computed once per session (no database)."""
    from recommender.encoders import encoder_load
    from recommender.pipeline import ImageItem, embed_stream

    encoder = encoder_load(name="efficientnet-lite0")
    items = [
        ImageItem(key=row.id, source=demo_dir / "images" / f"{row.id}.jpg")
        for row in styles_read(demo_dir / "styles.csv")
    ]
    vectors: dict[int, np.ndarray] = {}
    for batch in embed_stream(items, encoder=encoder, batch_size=32):
        for result in batch:
            vectors[result.item.key] = result.vector
    return vectors


@pytest.fixture(scope="session")
def demo_colours(demo_dir: Path) -> dict[int, np.ndarray]:
    """Demo product id -> its colour descriptor, as the embedding pipeline stores it (no database)."""
    from recommender.colour import colour_descriptor
    from recommender.preprocess import image_prepare

    return {
        row.id: colour_descriptor(image_prepare(demo_dir / "images" / f"{row.id}.jpg", size=224))
        for row in styles_read(demo_dir / "styles.csv")
        if hasattr(row, "fields")
    }


@pytest.fixture
def staff(db, client):
    """The test client signed in as a superuser (the catalog admin)."""
    from django.contrib.auth.models import User

    User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.login(username="admin", password="pw")
    return client


def admin_product_form(product_id: int, image: bytes | None = None, **fields: object) -> dict[str, object]:
    """The admin's add/change form for a product, with an image upload when ``image`` is given."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    form: dict[str, object] = {
        "id": product_id,
        "name": "Uploaded product",
        "gender": "Men",
        "master_category": "Apparel",
        "sub_category": "Topwear",
        "article_type": "Tshirts",
        "base_colour": "Red",
        "season": "Summer",
        "year": 2013,
        "usage": "Casual",
    }
    form.update(fields)
    if image is not None:
        name = str(form.pop("filename", "photo.jpg"))
        content_type = str(form.pop("content_type", "image/jpeg"))
        form["image_upload"] = SimpleUploadedFile(name, image, content_type=content_type)
    return form


def embed_status(product_id: int) -> str | None:
    """A product's embedding state as the vector engine holds it (None: the engine was never told of an image)."""
    from recommender.models import EmbeddingState

    return EmbeddingState.objects.filter(product_id=product_id).values_list("status", flat=True).first()


def engine_knows(product_id: int, *, image_version: int = 1, image_name: str = "") -> None:
    """Tell the vector engine that ``product_id`` has image ``image_version`` (as the shop does on a new image)."""
    from recommender.api import ImageRef, embedding_request

    embedding_request(
        images=[ImageRef(product_id, image_name or f"products/{product_id}-{image_version}.jpg", image_version)]
    )


def demo_rows_store(
    rows: list,
    demo_vectors: dict[int, np.ndarray],
    colours: dict[int, np.ndarray] | None = None,
    **product_fields: object,
) -> list[int]:
    """Store demo catalog rows as done products with their vectors in the active space; returns their ids.

    With ``colours`` their colour descriptors are stored too, as the embedding pipeline stores them.
    """
    from gallery.models import Product
    from recommender.colour import COLOUR_SPACE
    from recommender.models import Embedding, EmbeddingState, EmbedStatus

    space = runtime.active_space()
    Product.objects.bulk_create(
        [
            Product(
                id=row.id,
                image_version=1,
                **{key: value.format(id=row.id) for key, value in product_fields.items()},
                **row.fields,
            )
            for row in rows
        ]
    )
    EmbeddingState.objects.bulk_create(
        [
            EmbeddingState(product_id=row.id, image_name=f"demo/{row.id}.jpg", image_version=1, status=EmbedStatus.DONE)
            for row in rows
        ]
    )
    Embedding.objects.bulk_create(
        [
            Embedding(
                product_id=row.id,
                space=space,
                dim=1280,
                vector=demo_vectors[row.id].astype("<f4").tobytes(),
                image_version=1,
            )
            for row in rows
        ]
    )
    if colours:
        Embedding.objects.bulk_create(
            Embedding(
                product_id=row.id,
                space=COLOUR_SPACE,
                dim=len(colours[row.id]),
                vector=colours[row.id].astype("<f4").tobytes(),
                image_version=1,
            )
            for row in rows
            if row.id in colours
        )
    return [row.id for row in rows]


@pytest.fixture
def demo_catalog_db(
    db, demo_dir: Path, demo_vectors: dict[int, np.ndarray], demo_colours: dict[int, np.ndarray]
) -> list[int]:
    """The demo catalog's rows, vectors and colours in the database (no image files: fast), with an index built."""
    from recommender import services

    rows = [row for row in styles_read(demo_dir / "styles.csv") if hasattr(row, "fields")]
    ids = demo_rows_store(rows, demo_vectors, demo_colours)
    services.index_rebuild()
    return ids


# --- Redis and Celery workers ---------------------------------------------------------


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """The test Redis database (127.0.0.1:6379/13 by default), flushed before and after."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"The tests need Redis at {settings.REDIS_URL}: {exc}")
    client.flushdb()
    yield client
    client.flushdb()


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


class Worker:
    """A real `celery worker` process (prefork pool) for the duration of a test."""

    def __init__(self, log: Path, *, concurrency: int = 1, name: str = "w1", beat: bool = False, **env: str) -> None:
        self.log = log
        self.name = name
        self._fh = log.open("ab")
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
        if beat:  # the periodic sweep and index refresh, in this worker
            command += ["--beat", "--schedule", str(log.with_suffix(".schedule"))]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=subprocess_env(**env),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout}s: {self.log.read_text(errors='replace')[-3000:]}")

    def pool_children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self) -> None:
        process_group_stop(self.process)
        self._fh.close()

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool): nothing gets to clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._fh.close()


@pytest.fixture
def start_worker(tmp_path: Path, redis_db) -> Iterator[Callable[..., Worker]]:
    """Start real worker processes on the test Redis and database; all are stopped after the test."""
    workers: list[Worker] = []

    def start(**kwargs) -> Worker:
        name = kwargs.pop("name", f"w{len(workers) + 1}")
        worker = Worker(tmp_path / f"worker-{name}.log", name=name, **kwargs)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.process.poll() is None:
            worker.stop()


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


# --- Browser tests ----------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")  # Debian's (scripts/browser-deps.sh installs it)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """Headless Chromium for one block of a browser test, closed when the block ends; skips without it.

    A context manager, not a fixture: Playwright's sync API runs an event loop while it is open, and
    Django's ORM refuses to run inside one, so a test writes its rows before the block and reads them after.
    """
    from playwright.sync_api import sync_playwright  # imported lazily: only the browser tests need it

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/browser-deps.sh to install Debian's chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def page_ready(page: object, *, timeout_ms: float = 15_000) -> None:
    """Wait until the page's deferred scripts have run and htmx is there: a URL that changed says only that a
    navigation committed, not that the new document has run its scripts."""
    page.wait_for_load_state("load", timeout=timeout_ms)
    page.wait_for_function("() => typeof window.htmx === 'object'", timeout=timeout_ms)
