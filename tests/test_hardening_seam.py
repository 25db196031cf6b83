"""Hardening of the engine's side: costly images within the limits, version races, the sweep, leaks, broken weights."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from gallery.models import Product
from gallery.services import image_prepare_for_store, product_save
from recommender import runtime, services, state, tasks
from recommender.models import EmbeddingState, EmbedStatus
from tests.conftest import ROOT, jpeg_bytes, subprocess_env

MB = 1024 * 1024


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _big_sixteen_bit_grey() -> bytes:
    """6300x6300 16-bit greyscale: ~90 KB on disk, 40 megapixels decoded."""
    return _png(Image.new("I;16", (6300, 6300), 40000))


def _big_transparent() -> bytes:
    img = Image.new("RGBA", (6200, 6200), (0, 0, 0, 0))
    img.paste((200, 20, 20, 255), (1000, 1000, 5000, 5000))
    return _png(img)


PEAK_PROBE = r"""
import resource, sys, json
from recommender.preprocess import image_prepare, image_load
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
square = image_prepare(data, size=224)
stored = image_load(data, max_side=1200)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grown_kb": after - before, "shape": list(square.shape), "stored": list(stored.size)}))
"""


@pytest.mark.parametrize("make", [_big_sixteen_bit_grey, _big_transparent], ids=["16-bit grey", "transparent RGBA"])
def test_a_large_image_within_the_limits_costs_its_decoded_size_at_most(tmp_path: Path, make):
    path = tmp_path / "big.png"
    path.write_bytes(make())
    out = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE, str(path)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["shape"] == [224, 224, 3]
    assert max(report["stored"]) >= 1200
    # Decoding 40 MP once is unavoidable (80-160 MB); no float64 copy, no full-size composite.
    assert report["grown_kb"] * 1024 < 300 * MB, report


@pytest.mark.django_db
def test_the_photo_api_answers_a_large_sixteen_bit_png(client, demo_catalog_db):
    response = client.post("/api/search-by-image", {"image": SimpleUploadedFile("big.png", _big_sixteen_bit_grey())})
    assert response.status_code == 200, response.content[:300]
    assert len(response.json()["results"]) == 25


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


@pytest.mark.django_db
def test_status_and_footer_never_show_server_paths(client, demo_catalog_db, settings):
    directory = runtime.index_dir(runtime.active_space())
    version = (directory / "CURRENT").read_text()
    (directory / "builds" / version / "vectors.ann").write_bytes(b"garbage")
    runtime.reset()
    status = client.get("/api/status").json()
    assert "error" in status["index"]
    assert str(settings.INDEX_DIR) not in json.dumps(status)

    settings.EMBEDDING_HEAD = "head256-00000000"  # names no projection file
    runtime.reset()
    page = client.get("/").content.decode()
    assert "misconfigured" in page
    assert str(settings.INDEX_DIR) not in page


@pytest.mark.django_db
def test_photo_links_carry_a_short_token_and_only_the_sites_own_thumbnails_show(client, demo_catalog_db):
    page = client.post("/search-by-image", {"image": SimpleUploadedFile("p.jpg", jpeg_bytes())})
    html = page.content.decode()
    tokens = set(re.findall(r"photo=([A-Za-z0-9_-]+)", html))
    assert len(tokens) == 1
    token = tokens.pop()
    assert len(token) == 22
    assert "base64" not in html  # no image data in the page or its links
    assert len(html) < 200_000
    thumbnail = client.get(f"/photo/{token}.jpg")
    assert thumbnail.status_code == 200 and thumbnail["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumbnail.content)).size[0] <= 64

    assert "Your photo" in client.get("/", {"photo": token}).content.decode()

    # A made-up token (or any picture someone encodes into a link) shows no photo.
    forged = "A" * 22
    assert client.get(f"/photo/{forged}.jpg").status_code == 404
    assert "Your photo" not in client.get("/", {"photo": forged}).content.decode()
    assert (
        "Your photo"
        not in client.get("/", {"photo": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"}).content.decode()
    )


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


@pytest.mark.django_db
def test_retrying_embeddings_needs_the_change_permission(client, django_capture_on_commit_callbacks):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_product"))
    client.force_login(viewer)
    Product.objects.create(id=901, name="Broken", image="products/b.jpg", image_version=1)
    EmbeddingState.objects.create(
        product_id=901, image_name="products/b.jpg", image_version=1, status=EmbedStatus.FAILED, error="truncated"
    )
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        client.post("/admin/gallery/product/", {"action": "retry_embedding", "_selected_action": [901]})
    assert EmbeddingState.objects.get(product_id=901).status == EmbedStatus.FAILED
    assert not callbacks
