"""Faults: Redis, the database, the index or the encoder's weights failing, and concurrent writers; what
shoppers and staff get meanwhile, and how the shop recovers.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError
from django.db.backends.utils import CursorWrapper
from django.test import Client
from django.urls import path

from gallery.models import Product
from gallery.services import image_prepare_for_store, product_save
from recommender import index as index_module
from recommender import runtime, selectors, services, state, tasks
from recommender.models import EmbeddingState, EmbedStatus
from tests.support.answers import message_of, record
from tests.support.clients import admin_add, photo_api
from tests.support.engine import embed_status
from tests.support.images import jpeg_bytes
from tests.support.processes import (
    celery_broker,
    connection_attempts,
)

# --- Redis down ----------------------------------------------------------------------------------------------------


DEAD_REDIS_PORT = 1
DEAD_REDIS = f"redis://127.0.0.1:{DEAD_REDIS_PORT}/0"


@pytest.fixture
def redis_down(settings) -> Iterator[None]:
    """Cache, broker and locks all pointed at a port where nothing listens."""
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": DEAD_REDIS}}
    settings.REDIS_URL = DEAD_REDIS
    tasks._queue_down_until = 0.0
    with celery_broker(DEAD_REDIS):
        yield


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_with_redis_down_search_and_similar_keep_working(hostile_client, embedded_catalog, redis_down, settings):
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 1  # the limit fails open rather than refusing everyone
    with connection_attempts(DEAD_REDIS_PORT) as attempts:
        checks = [
            ("GET /", hostile_client.get("/", {"q": "red"})),
            ("GET /api/search", hostile_client.get("/api/search", {"q": "red", "gender": "Men"})),
            ("GET /similar/<id>/", hostile_client.get(f"/similar/{embedded_catalog[0]}/", {"trail": "p102,n103"})),
            ("GET /api/similar/<id>", hostile_client.get(f"/api/similar/{embedded_catalog[0]}", {"colour": "Red"})),
            *[("POST /api/search-by-image", photo_api(hostile_client, jpeg_bytes(), k="5")) for _ in range(2)],
        ]
    for where, response in checks:
        record(where, "Redis down (cache and broker on a dead port)", response)
        assert response.status_code == 200, (where, message_of(response))
    assert hostile_client.get("/api/search", {"q": "red"}).json()["results"]
    # Bounded, not timed: a few tries per request, each with a connect timeout, so no request can hang.
    assert attempts, "Redis was never tried"
    assert len(attempts) <= 3 * len(checks), f"{len(attempts)} connection attempts for {len(checks)} requests"
    assert None not in attempts, "a connection attempt had no timeout"
    assert sum(attempts) <= 20


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_with_redis_down_an_admin_upload_is_saved_pending(
    superuser_client, redis_down, django_capture_on_commit_callbacks
):
    with (
        connection_attempts(DEAD_REDIS_PORT) as attempts,
        django_capture_on_commit_callbacks(execute=True) as callbacks,
    ):
        response = admin_add(superuser_client, 880060, jpeg_bytes())
    record("admin add (image_upload)", "valid JPEG while Redis is down", response)
    assert response.status_code == 302, message_of(response)
    assert callbacks, "the embedding was never queued"
    # The upload tried the queue a bounded number of times, each try with a timeout: it cannot hang.
    assert attempts, "the task queue was never tried"
    assert None not in attempts and sum(attempts) <= 15, attempts
    product = Product.objects.get(id=880060)
    assert embed_status(880060) == EmbedStatus.PENDING
    assert Path(product.image.path).exists()


# --- A broken index ------------------------------------------------------------------------------------------------


@pytest.fixture
def big_catalog(embedded_catalog, monkeypatch, settings) -> list[int]:
    """The catalog, too large for the exact fallback; a rebuild already requested (no worker runs here)."""
    from django.core.cache import cache

    monkeypatch.setattr(selectors, "EXACT_FALLBACK_MAX", 5)
    cache.set(tasks.BUILD_REQUESTED, "requested by the test", 60)
    return embedded_catalog


def _index_dir() -> Path:
    """Where the active space's builds are published (one directory per space)."""
    return runtime.index_dir(runtime.active_space())


def _published_ann() -> Path:
    version = index_module.published_version(_index_dir())
    assert version, "no index is published"
    return _index_dir() / index_module.BUILDS_DIR / version / index_module.INDEX_FILE


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = os.urandom(64)
    path.write_bytes(bytes(data))


def _delete_index_dir(path: Path) -> None:
    shutil.rmtree(_index_dir())


INDEX_FAULTS = {
    "corrupt bytes in vectors.ann": _corrupt,
    "vectors.ann deleted": lambda path: path.unlink(),
    "vectors.ann truncated": lambda path: path.write_bytes(path.read_bytes()[:100]),
    "items.npy deleted": lambda path: (path.parent / index_module.ITEMS_FILE).unlink(),
    "meta.json garbage": lambda path: (path.parent / index_module.META_FILE).write_text("{not json"),
    "no index published at all": _delete_index_dir,
}


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize("fault", list(INDEX_FAULTS))
def test_a_broken_index_gives_503_for_similarity_while_text_search_works_and_a_rebuild_restores_it(
    hostile_client, big_catalog, fault: str
):
    pid = big_catalog[0]
    assert hostile_client.get(f"/api/similar/{pid}").status_code == 200
    INDEX_FAULTS[fault](_published_ann())
    runtime.reset()

    text = hostile_client.get("/", {"q": "red"})
    text_api = hostile_client.get("/api/search", {"q": "red"})
    api = hostile_client.get(f"/api/similar/{pid}")
    page = hostile_client.get(f"/similar/{pid}/")
    photo = photo_api(hostile_client, jpeg_bytes())
    for where, response in (
        ("GET /api/similar/<id>", api),
        ("GET /similar/<id>/", page),
        ("POST /api/search-by-image", photo),
    ):
        record(where, f"index fault: {fault}, catalog over EXACT_FALLBACK_MAX", response)
    assert text.status_code == 200
    assert text_api.status_code == 200 and text_api.json()["results"]
    assert api.status_code == 503, message_of(api)
    assert api["Content-Type"] == "application/json"
    assert "try again in a minute" in api.json()["error"]
    assert page.status_code == 503, message_of(page)
    assert "try again in a minute" in message_of(page)
    assert photo.status_code == 503, message_of(photo)

    assert services.index_rebuild() is not None
    restored = hostile_client.get(f"/api/similar/{pid}")
    assert restored.status_code == 200
    assert restored.json()["results"]
    assert hostile_client.get(f"/similar/{pid}/").status_code == 200


class _BuildFault(Exception):
    pass


def _served_ids(client: Client, pid: int) -> list[int]:
    response = client.get(f"/api/similar/{pid}", {"k": "10"})
    assert response.status_code == 200, message_of(response)
    return [r["id"] for r in response.json()["results"]]


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize(
    "fault",
    [
        "KeyboardInterrupt after 10 items",
        "exception after 10 items",
        "disk full saving the index",
        "disk full on CURRENT",
    ],
)
def test_a_rebuild_killed_midway_leaves_the_previous_index_in_service(hostile_client, big_catalog, monkeypatch, fault):
    pid = big_catalog[0]
    before_version = index_module.published_version(_index_dir())
    before = _served_ids(hostile_client, pid)
    builds = _index_dir() / index_module.BUILDS_DIR
    real_annoy = index_module.AnnoyIndex

    class FailingAnnoy(real_annoy):
        def add_item(self, item, vector):
            if item >= 10 and fault.endswith("after 10 items"):
                raise KeyboardInterrupt if fault.startswith("Keyboard") else _BuildFault("worker lost")
            return super().add_item(item, vector)

        def save(self, path, *args, **kwargs):
            if fault == "disk full saving the index":
                Path(path).write_bytes(b"\0" * 4096)  # a partial file, as a full disk leaves it
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().save(path, *args, **kwargs)

    real_write = index_module._write_synced

    def write_synced(path: Path, data: bytes) -> None:
        if fault == "disk full on CURRENT" and path.name.startswith(f".{index_module.POINTER_FILE}"):
            path.write_bytes(b"")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(index_module, "AnnoyIndex", FailingAnnoy)
    monkeypatch.setattr(index_module, "_write_synced", write_synced)
    with pytest.raises((KeyboardInterrupt, _BuildFault, OSError)):
        services.index_rebuild()
    monkeypatch.undo()

    assert index_module.published_version(_index_dir()) == before_version
    assert not list(builds.glob(".tmp-*")), "the half-written build was left behind"
    for reader in ("the same process", "a fresh process"):
        if reader == "a fresh process":
            runtime.reset()
        assert _served_ids(hostile_client, pid) == before, reader
    # And the next rebuild succeeds.
    assert services.index_rebuild().version != before_version
    assert _served_ids(hostile_client, pid)


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_a_build_left_half_written_by_a_killed_process_is_ignored(hostile_client, big_catalog):
    """What SIGKILL leaves: a .tmp- build folder with a partial file. Readers never look at it."""
    pid = big_catalog[0]
    before = _served_ids(hostile_client, pid)
    partial = _index_dir() / index_module.BUILDS_DIR / ".tmp-20990101T000000000000-dead00"
    partial.mkdir()
    (partial / index_module.INDEX_FILE).write_bytes(os.urandom(5000))
    runtime.reset()
    assert _served_ids(hostile_client, pid) == before


# --- Every failure under /api/ is JSON -----------------------------------------------------------------------------


@contextmanager
def database_down() -> Iterator[None]:
    """Every SQL statement in the block fails as it does when the database server is gone."""

    def refuse(self, sql, params=None):
        raise OperationalError("connection to server at 127.0.0.1 failed: password=hunter2 refused")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CursorWrapper, "execute", refuse)
        yield


@pytest.mark.parametrize("path", ["/api/search?q=red", "/api/similar/11", "/api/status"])
def test_with_the_database_down_the_api_answers_a_json_500_that_leaks_nothing(hostile_client, shop, path: str):
    with database_down():
        response = hostile_client.get(path)
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "The server failed to answer; try again later."}
    assert b"hunter2" not in response.content and b"Traceback" not in response.content


def _broken_view(request):
    raise KeyError("INDEX_DIR misconfigured")


@pytest.fixture
def broken_api_view(settings) -> None:
    """The site's own URLs and error handlers, plus /api/broken and /broken, views that raise."""
    import config.urls

    urls = types.ModuleType("round2_broken_urls")
    urls.__dict__.update({name: value for name, value in vars(config.urls).items() if name.startswith("handler")})
    urls.urlpatterns = [path("api/broken", _broken_view), path("broken", _broken_view), *config.urls.urlpatterns]
    sys.modules[urls.__name__] = urls
    settings.ROOT_URLCONF = urls.__name__
    yield
    del sys.modules[urls.__name__]


def test_an_unexpected_exception_in_an_api_view_is_a_json_500(hostile_client, db, broken_api_view):
    response = hostile_client.get("/api/broken")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "The server failed to answer; try again later."}
    assert b"INDEX_DIR" not in response.content
    page = hostile_client.get("/broken")
    assert page.status_code == 500
    assert page["Content-Type"].startswith("text/html")


def test_pages_outside_the_api_keep_the_html_500(hostile_client, shop):
    with database_down():
        response = hostile_client.get("/")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
    assert b"hunter2" not in response.content


# --- Concurrent writers, lost work, damaged weights ----------------------------------------------------------------


@pytest.mark.django_db
def test_two_writers_of_one_product_never_share_an_image_version():
    first = image_prepare_for_store(data=jpeg_bytes(colour=(200, 0, 0)), max_pixels=10**7)
    second = image_prepare_for_store(data=jpeg_bytes(colour=(0, 0, 200)), max_pixels=10**7)
    third = image_prepare_for_store(data=jpeg_bytes(colour=(0, 200, 0)), max_pixels=10**7)
    product = Product(id=31, name="Raced")
    product_save(product=product, stored=first, enqueue=False)
    # Two editors loaded the product at version 1; both give it a new image.
    one, two = Product.objects.get(id=31), Product.objects.get(id=31)
    product_save(product=one, stored=second, enqueue=False)
    product_save(product=two, stored=third, enqueue=False)

    saved = Product.objects.get(id=31)
    assert (one.image_version, two.image_version, saved.image_version) == (2, 3, 3)
    assert saved.image_sha256 == third.sha256
    engine = EmbeddingState.objects.get(product_id=31)
    assert (engine.image_version, engine.image_name) == (3, saved.image.name)
    # A vector computed from the second image is not stored for the product.
    vector = np.ones(1280, dtype=np.float32) / np.sqrt(1280)
    assert not services.embedding_store(product_id=31, image_version=2, space=runtime.active_space(), vector=vector)
    assert services.embedding_store(product_id=31, image_version=3, space=runtime.active_space(), vector=vector)


@pytest.mark.django_db
def test_the_sweep_resends_lost_work_but_not_work_still_waiting_in_the_queue(redis_db, settings):
    from django.utils import timezone

    settings.EMBED_STALE_AFTER_S = 60
    old = timezone.now() - timezone.timedelta(seconds=600)
    for pid, queued in ((1, None), (2, old), (3, timezone.now())):
        Product.objects.create(id=pid, name=f"P{pid}", image_version=1)
        EmbeddingState.objects.create(
            product_id=pid, image_name=f"p/{pid}.jpg", image_version=1, requested_at=old, queued_at=queued
        )
    Product.objects.create(id=4, name="P4", image_version=1)
    EmbeddingState.objects.create(
        product_id=4, image_name="p/4.jpg", image_version=1, status=EmbedStatus.PROCESSING, claimed_at=old
    )

    redis_db.rpush(tasks.EMBED_QUEUE, "a message still waiting")
    # Never published (1) and a dead worker's claim (4) always; an old message in a long queue (2) is waiting.
    assert state.states_lost(queue_empty=tasks.embed_queue_empty()) == [1, 4]
    redis_db.delete(tasks.EMBED_QUEUE)
    # The queue is empty: the old message (2) was lost; the fresh one (3) may still be in a worker's hands.
    assert state.states_lost(queue_empty=tasks.embed_queue_empty()) == [1, 2, 4]


def _truncated_checkpoint(tmp_path: Path) -> Path:
    import torch
    import torchvision

    good = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), good)
    bad = tmp_path / "resnet50-cut.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return bad


@pytest.mark.django_db
def test_a_damaged_weights_file_falls_back_loudly_instead_of_failing_photos(
    client, demo_catalog_db, settings, tmp_path
):
    settings.ENCODER = "auto"
    settings.RESNET50_WEIGHTS_FILE = str(_truncated_checkpoint(tmp_path))
    runtime.reset()
    choice = runtime.encoder_choice()
    assert choice.space == "efficientnet-lite0-imagenet"
    assert "could not be read" in choice.note
    response = client.post("/api/search-by-image", {"image": SimpleUploadedFile("p.jpg", jpeg_bytes())})
    assert response.status_code == 200


@pytest.mark.django_db
def test_weights_that_cannot_load_give_503_and_fail_tasks_once(client, demo_catalog_db, settings, tmp_path):
    import torch
    import torchvision

    other = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)  # a readable file of the wrong model
    settings.ENCODER = "resnet50"
    settings.RESNET50_WEIGHTS_FILE = str(other)
    runtime.reset()
    response = client.post("/api/search-by-image", {"image": SimpleUploadedFile("p.jpg", jpeg_bytes())})
    assert response.status_code == 503
    assert "unavailable" in response.json()["error"] and str(tmp_path) not in response.json()["error"]

    Product.objects.create(id=555, name="New", image_version=1)
    EmbeddingState.objects.create(product_id=555, image_name="p/555.jpg", image_version=1)
    report = tasks.embed_products.apply(args=[[555]]).get()
    assert report["failed"] == 1
    failed = EmbeddingState.objects.get(product_id=555)
    assert failed.status == EmbedStatus.FAILED and "does not match" in failed.error
