"""The catalog admin: product edits, bulk zip uploads, embedding state and retries."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from gallery.models import Product
from recommender import runtime, services
from recommender.models import Embedding, EmbeddingState, EmbedStatus
from tests.support.catalog_files import HEADER, job_id_of, run_job_inline
from tests.support.clients import admin_product_form
from tests.support.engine import embed_status
from tests.support.images import jpeg_bytes

pytestmark = pytest.mark.django_db


def catalog_zip(rows: list[str], images: dict[int, bytes], *, folder: str = "") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(f"{folder}styles.csv", "\n".join([HEADER, *rows]) + "\n")
        for product_id, data in images.items():
            archive.writestr(f"{folder}images/{product_id}.jpg", data)
        archive.writestr(f"{folder}README.txt", "ignored")
    return out.getvalue()


def test_bulk_zip_is_imported_by_its_job_queues_embedding_after_commit_and_reports_skips(
    staff, django_capture_on_commit_callbacks, monkeypatch, settings, tmp_path
):
    settings.IMPORT_JOBS_DIR = tmp_path / "imports"
    queued: list[list[int]] = []
    sent: list[int] = []
    monkeypatch.setattr("recommender.tasks.embed_enqueue", lambda *, product_ids: queued.append(product_ids) or 0)
    monkeypatch.setattr("gallery.tasks.import_job_enqueue", lambda *, job_id: sent.append(job_id) or True)
    data = catalog_zip(
        [
            "501,Men,Apparel,Topwear,Shirts,Blue,Fall,2012,Casual,Blue Shirt",
            "502,Women,Footwear,Shoes,Heels,Red,Fall,2013,Formal,Red Heels, Strappy",
            "503,Women,Footwear,Shoes,Heels,Red,Fall,2013,Formal,No Image Heels",
        ],
        {501: jpeg_bytes(colour=(20, 40, 200)), 502: jpeg_bytes(colour=(200, 20, 20))},
        folder="fashion/",
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post("/admin/gallery/product/bulk-upload/", {"archive": SimpleUploadedFile("c.zip", data)})
    job_id = job_id_of(response)
    assert sent == [job_id] and not Product.objects.exists()  # the request only stores and queues
    with django_capture_on_commit_callbacks(execute=True):
        job = run_job_inline(job_id)

    assert (job.status, job.created, job.skipped) == ("done", 2, 1)
    page = staff.get(response["Location"]).content.decode()
    assert "Red Heels, Strappy" not in page  # the summary, not the rows
    assert "images/503.jpg is missing" in page
    assert sorted(Product.objects.values_list("id", flat=True)) == [501, 502]
    assert Product.objects.get(id=502).name == "Red Heels, Strappy"
    assert queued == [[501, 502]]  # one enqueue, after the batch commits


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a readable zip"),
        (catalog_zip([], {}, folder="a/b/c/"), "exactly one styles.csv"),
    ],
)
def test_bulk_upload_refuses_bad_archives_clearly(staff, data: bytes, message: str):
    response = staff.post("/admin/gallery/product/bulk-upload/", {"archive": SimpleUploadedFile("c.zip", data)})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Product.objects.exists()


def test_editing_a_products_image_replaces_its_vector_and_queues_it(
    staff, django_capture_on_commit_callbacks, monkeypatch, settings
):
    queued: list[list[int]] = []
    monkeypatch.setattr("recommender.tasks.embed_enqueue", lambda *, product_ids: queued.append(product_ids) or 0)
    form = admin_product_form(601, name="Green Tshirt", base_colour="Green", year=2014)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            "/admin/gallery/product/add/",
            {**form, "image_upload": SimpleUploadedFile("my holiday.png", jpeg_bytes(format="PNG"))},
        )
    assert response.status_code == 302
    product = Product.objects.get(id=601)
    assert product.image.name.startswith("products/") and "holiday" not in product.image.name
    assert embed_status(601) == EmbedStatus.PENDING
    services.products_embed(product_ids=[601])
    old_file = product.image.path
    assert Embedding.objects.filter(product_id=601, space=runtime.active_space()).count() == 1

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            "/admin/gallery/product/601/change/",
            {**form, "image_upload": SimpleUploadedFile("new.jpg", jpeg_bytes(colour=(10, 200, 10), shape="disc"))},
        )
    assert response.status_code == 302
    product.refresh_from_db()
    assert product.image_version == 2
    assert embed_status(601) == EmbedStatus.PENDING
    assert not Embedding.objects.filter(product_id=601).exists()  # the stale vector is gone at once
    assert queued == [[601], [601]]
    assert not Path(old_file).exists()  # the replaced file is deleted after the commit

    # Editing the text only keeps the image and its vector.
    services.products_embed(product_ids=[601])
    with django_capture_on_commit_callbacks(execute=True):
        staff.post("/admin/gallery/product/601/change/", {**form, "name": "Green Crew Tshirt"})
    product.refresh_from_db()
    assert (product.name, product.image_version, embed_status(601)) == ("Green Crew Tshirt", 2, EmbedStatus.DONE)
    assert queued == [[601], [601]]


def test_a_new_product_needs_a_valid_image(staff):
    response = staff.post("/admin/gallery/product/add/", {"id": 602, "name": "No image"})
    assert response.status_code == 400
    assert "needs an image" in response.content.decode()
    response = staff.post(
        "/admin/gallery/product/add/",
        {"id": 602, "name": "Bad image", "image_upload": SimpleUploadedFile("x.jpg", b"%PDF-1.4 not an image")},
    )
    assert "not an image we can read" in response.content.decode()
    assert not Product.objects.exists()


def test_list_shows_embedding_state_filters_by_it_and_retries_failures(
    staff, django_capture_on_commit_callbacks, monkeypatch
):
    queued: list[list[int]] = []
    monkeypatch.setattr("recommender.tasks.embed_enqueue", lambda *, product_ids: queued.append(product_ids) or 0)
    Product.objects.create(id=701, name="Done", image="products/a.jpg", image_version=1)
    EmbeddingState.objects.create(product_id=701, image_name="products/a.jpg", image_version=1, status=EmbedStatus.DONE)
    Product.objects.create(id=702, name="Broken", image="products/b.jpg", image_version=1)
    EmbeddingState.objects.create(
        product_id=702, image_name="products/b.jpg", image_version=1, status=EmbedStatus.FAILED, error="truncated"
    )

    listing = staff.get("/admin/gallery/product/", {"embedding_state__status__exact": "failed"}).content.decode()
    rows = listing.split("<tbody>")[1].split("</tbody>")[0]
    assert "Broken" in rows and ">Done<" not in rows
    assert "Failed" in listing
    assert "truncated" in staff.get("/admin/gallery/product/702/change/").content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        staff.post("/admin/gallery/product/", {"action": "retry_embedding", "_selected_action": [702]})
    broken = EmbeddingState.objects.get(product_id=702)
    assert (broken.status, broken.error) == (EmbedStatus.PENDING, "")
    assert queued == [[702]]


def test_admin_and_pages_show_the_encoder_and_why_it_is_a_fallback(staff, settings, tmp_path, monkeypatch):
    page = staff.get("/admin/").content.decode()
    assert f"Similarity encoder: {runtime.active_space()}." in page

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    settings.ENCODER = "auto"
    runtime.reset()
    for url in ("/admin/", "/"):
        page = staff.get(url).content.decode()
        assert "ResNet50 ImageNet weights not found" in page
