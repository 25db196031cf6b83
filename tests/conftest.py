"""Shared fixtures: isolated media and index directories, real images, the demo catalog, real workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from gallery import cards, search
from gallery.catalog import styles_read
from gallery.models import Product
from gallery.selectors import filter_choices_key
from gallery.services import catalog_import
from lab.demo import demo_catalog_write
from recommender import runtime, services, tasks
from recommender.colour import COLOUR_SPACE
from recommender.models import Embedding
from recommender.services import index_rebuild, products_embed
from tests.support import ROOT
from tests.support.browser import CHROMIUM, SLICE
from tests.support.clients import media_files, staff_user
from tests.support.engine import demo_rows_store
from tests.support.images import jpeg_bytes
from tests.support.network import network_forbidden
from tests.support.processes import process_group_stop, subprocess_env
from tests.support.shop import CATALOG, CATALOG_IDS, PRODUCTS

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


@pytest.fixture
def demo_catalog_db(
    db, demo_dir: Path, demo_vectors: dict[int, np.ndarray], demo_colours: dict[int, np.ndarray]
) -> list[int]:
    """The demo catalog's rows, vectors and colours in the database (no image files: fast), with an index built."""
    rows = [row for row in styles_read(demo_dir / "styles.csv") if hasattr(row, "fields")]
    ids = demo_rows_store(rows, demo_vectors, demo_colours)
    # Saved a while ago, as on a site in use: a catalog saved within the last minute is still settling
    # (gallery.cards.CATALOG_SETTLE_S) and its version moves every second.
    # Its vectors too: the build's watermark passes them (recommender.services.WATERMARK_MARGIN).
    Product.objects.update(updated_at=timezone.now() - timedelta(minutes=5))
    Embedding.objects.update(created_at=timezone.now() - timedelta(minutes=5))
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


# --- Small embedded catalogs, the test encoder loaded once, clients that show crashes as 500s ------


@pytest.fixture(scope="session")
def session_encoder():
    """The test encoder (EfficientNet-Lite0, the weights shipped with the package), loaded once per session."""
    from recommender.encoders import encoder_load

    return encoder_load(name="efficientnet-lite0")


@pytest.fixture(scope="session")
def catalog_vectors(session_encoder) -> dict[int, np.ndarray]:
    import torch

    from recommender.pipeline import ImageItem, embed_stream

    items = [ImageItem(key=entry.id, source=entry.image) for entry in CATALOG]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {r.item.key: r.vector for batch in embed_stream(items, encoder=session_encoder) for r in batch}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def own_cache_and_encoder(settings, monkeypatch, session_encoder) -> Iterator[None]:
    """A cache namespace of this test's own, no photo-search limit unless a test sets one, one loaded encoder.

    Runtime singletons are reset before every test (``_isolated_files``); the encoder is the
    same real model each time, so it is loaded once instead of per test. It runs
    on one thread, as in a web process (ENCODER_THREADS=1): on a busy machine
    torch's default thread pool is many times slower.
    """
    import torch

    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"hardening-{uuid.uuid4().hex[:12]}"}}
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 0
    monkeypatch.setattr(runtime, "encoder", lambda: session_encoder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def embedded_catalog(db, catalog_vectors) -> list[int]:
    """24 products with vectors from their real images, and a published index (no image files: fast)."""
    rows = [
        SimpleNamespace(
            id=e.id,
            fields={
                "name": e.name,
                "gender": e.gender,
                "master_category": "Apparel" if e.article_type == "Tshirts" else "Accessories",
                "sub_category": "Topwear" if e.article_type == "Tshirts" else "Headwear",
                "article_type": e.article_type,
                "base_colour": e.colour,
                "season": "Summer",
                "year": 2012,
                "usage": "Casual",
            },
        )
        for e in CATALOG
    ]
    demo_rows_store(rows, catalog_vectors)
    assert services.index_rebuild() is not None
    return CATALOG_IDS


@pytest.fixture
def hostile_client(client) -> Client:
    """The test client, answering a view's crash with a 500 response instead of re-raising it."""
    client.raise_request_exception = False
    return client


@pytest.fixture
def superuser_client(db) -> Client:
    """A logged-in superuser (a client of its own); view crashes come back as 500 responses."""
    client = Client(raise_request_exception=False)
    client.force_login(staff_user())
    return client


@pytest.fixture
def nothing_stored(db) -> Callable[[], None]:
    """Call at the end of a test: no product row and no file under MEDIA_ROOT appeared since it started."""
    products = set(Product.objects.values_list("id", flat=True))
    files = media_files()
    embeddings = Embedding.objects.count()

    def check() -> None:
        assert set(Product.objects.values_list("id", flat=True)) == products, "a product was stored"
        assert media_files() == files, f"files were stored: {media_files() - files}"
        assert Embedding.objects.count() == embeddings

    return check


@pytest.fixture(scope="session")
def shop_vectors(session_encoder) -> dict[int, np.ndarray]:
    from recommender.pipeline import ImageItem, embed_stream

    items = [
        ImageItem(key=pid, source=jpeg_bytes(colour=rgb, shape=shape)) for pid, (_, rgb, shape) in PRODUCTS.items()
    ]
    return {r.item.key: r.vector for batch in embed_stream(items, encoder=session_encoder) for r in batch}


@pytest.fixture
def shop(db, monkeypatch, session_encoder, shop_vectors) -> list[int]:
    """The products above, stored with their vectors and indexed; photo searches use the loaded encoder."""
    monkeypatch.setattr(runtime, "encoder", lambda: session_encoder)
    rows = [
        SimpleNamespace(
            id=pid,
            fields={
                "name": name,
                "gender": name.split()[0],
                "master_category": "Apparel",
                "sub_category": "Topwear",
                "article_type": name.split()[-1],
                "base_colour": name.split()[1],
                "season": "Summer",
                "year": 2012,
                "usage": "Casual",
            },
        )
        for pid, (name, _, _) in PRODUCTS.items()
    ]
    ids = demo_rows_store(rows, shop_vectors)
    assert services.index_rebuild() is not None
    return ids


@pytest.fixture(scope="module")
def no_network() -> Iterator[None]:
    """For a module's tests: loopback only (the test Redis); torch's download functions fail the test."""
    with network_forbidden():
        yield


# --- The browser tests' catalog ------------------------------------------------------------------


@pytest.fixture
def browser_catalog(transactional_db, settings, demo_dir: Path, tmp_path: Path) -> dict[int, dict[str, object]]:
    """The first SLICE demo products imported with their images, embedded and indexed: id -> fields."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/browser-deps.sh to install Debian's chromium")
    # Other test runs on this machine share the Redis counter of photo searches from 127.0.0.1.
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 0
    catalog = tmp_path / "catalog"
    (catalog / "images").mkdir(parents=True)
    lines = (demo_dir / "styles.csv").read_text().splitlines(keepends=True)[: SLICE + 1]
    (catalog / "styles.csv").write_text("".join(lines))
    for line in lines[1:]:
        name = f"{line.split(',', 1)[0]}.jpg"
        shutil.copy(demo_dir / "images" / name, catalog / "images" / name)

    cache.delete(filter_choices_key())  # menus from another test's catalog must not show
    summary = catalog_import(directory=catalog, enqueue=False, workers=1)
    assert summary.created == SLICE, summary.lines()
    report = products_embed(product_ids=list(Product.objects.values_list("id", flat=True)))
    assert report.embedded == SLICE
    assert index_rebuild() is not None
    # Everything the assertions need, read now: no database queries while the browser runs.
    products = {p["id"]: p for p in Product.objects.values("id", "name", "article_type", "base_colour")}
    for product_id, vector in Embedding.objects.filter(space=runtime.active_space()).values_list(
        "product_id", "vector"
    ):
        products[product_id]["vector"] = np.frombuffer(vector, dtype="<f4")
    for product_id, vector in Embedding.objects.filter(space=COLOUR_SPACE).values_list("product_id", "vector"):
        products[product_id]["colour"] = np.frombuffer(vector, dtype="<f4")
    return products
