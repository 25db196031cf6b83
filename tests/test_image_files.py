"""No file left behind: a product image save that fails, rolls back or loses a race keeps no file of its own."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.storage import FileSystemStorage
from django.db import connection, connections, transaction
from django.test import Client, RequestFactory

from gallery.admin import ProductAdmin
from gallery.models import Product
from gallery.services import (
    StoredImage,
    catalog_import,
    image_files_guard,
    image_prepare_for_store,
    product_save,
)
from recommender.models import EmbeddingState
from tests.support.catalog_files import write_catalog
from tests.support.clients import admin_product_form
from tests.support.images import jpeg_bytes

FOLDERS = ("products", "thumbs")


def stored(colour: tuple[int, int, int]) -> StoredImage:
    return image_prepare_for_store(data=jpeg_bytes(colour=colour), max_pixels=10**7)


def files_on_disk() -> dict[str, bytes]:
    """Every file under MEDIA_ROOT's image and thumbnail folders (0-byte ones included), by storage name."""
    root = Path(settings.MEDIA_ROOT)
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for folder in FOLDERS
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def row_of(product_id: int) -> tuple:
    return (
        Product.objects.filter(id=product_id)
        .values_list("name", "image", "thumbnail", "image_sha256", "image_version")
        .get()
    )


def product_with_image(product_id: int) -> Product:
    """A committed product with an image (its replaced files are not involved: it is the first)."""
    product = Product(id=product_id, name="Stored product", article_type="Tshirts")
    with transaction.atomic():
        product_save(product=product, stored=stored((200, 30, 30)), enqueue=False)
    return product


@pytest.fixture
def no_queue(monkeypatch) -> list[list[int]]:
    queued: list[list[int]] = []
    monkeypatch.setattr("recommender.tasks.embed_enqueue", lambda *, product_ids: queued.append(product_ids) or 0)
    return queued


def staff_client() -> Client:
    user = User.objects.filter(username="admin").first() or User.objects.create_superuser(
        "admin", "admin@example.com", "pw"
    )
    client = Client()
    client.force_login(user)
    return client


class _DiskFills:
    """Upload content whose writing stops with ENOSPC after ``room`` bytes, as on a full disk."""

    def __init__(self, data: bytes, room: int) -> None:
        self.data, self.room = data, room

    def chunks(self) -> Iterator[bytes]:
        if self.room:
            yield self.data[: self.room]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def disk_fills_on(monkeypatch):
    """``disk_fills_on(folder, room, after=0)``: writes into ``folder`` (products or thumbs) fail part-way.

    The first ``after`` writes there succeed. Django's own FileSystemStorage._save runs: it creates
    the file, writes what fits and raises, leaving the partial file, as a real full disk does.
    """
    real_save = FileSystemStorage._save

    def arm(folder: str, room: int, *, after: int = 0) -> None:
        done = [0]

        def save(self, name, content):  # noqa: ANN001, ANN202
            if name.startswith(f"{folder}/"):
                done[0] += 1
                if done[0] > after:
                    content = _DiskFills(content.read(), room)
            return real_save(self, name, content)

        monkeypatch.setattr(FileSystemStorage, "_save", save)

    return arm


# --- (1) a save that fails part-way ---------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("room", [0, 1000], ids=["nothing-written", "some-bytes-written"])
def test_an_admin_save_that_runs_out_of_disk_keeps_the_files_and_the_row_as_they_were(
    no_queue, disk_fills_on, folder: str, room: int
):
    product_with_image(71)
    files, row = files_on_disk(), row_of(71)
    engine = EmbeddingState.objects.filter(product_id=71).values_list("image_name", "image_version").get()
    assert len(files) == 2

    disk_fills_on(folder, room)
    response = staff_client().post(
        "/admin/gallery/product/71/change/",
        admin_product_form(71, image=jpeg_bytes(colour=(10, 200, 10), shape="disc"), name="Renamed product"),
    )

    assert response.status_code == 503  # a clear error on the form, not a 500
    page = response.content.decode()
    assert "The image could not be stored (No space left on device). Nothing was saved" in page
    assert 'value="Renamed product"' in page  # what the admin typed is kept for the next try
    assert files_on_disk() == files  # no new file, no 0-byte file, the old ones intact
    assert row_of(71) == row
    assert EmbeddingState.objects.filter(product_id=71).values_list("image_name", "image_version").get() == engine
    assert no_queue == []


@pytest.mark.django_db
@pytest.mark.parametrize("folder", FOLDERS)
def test_an_admin_add_that_runs_out_of_disk_creates_no_product_and_no_file(no_queue, disk_fills_on, folder: str):
    disk_fills_on(folder, 500)
    response = staff_client().post("/admin/gallery/product/add/", admin_product_form(72, image=jpeg_bytes()))
    assert response.status_code == 503
    assert "The image could not be stored" in response.content.decode()
    assert files_on_disk() == {}
    assert not Product.objects.filter(id=72).exists()


@pytest.mark.django_db
def test_a_catalog_import_batch_that_runs_out_of_disk_keeps_no_file_of_its_own(disk_fills_on, tmp_path: Path):
    directory = tmp_path / "catalog"
    write_catalog(
        directory,
        [
            "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Navy Shirt",
            "39386,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,Blue Jeans",
        ],
        {15970: jpeg_bytes(colour=(20, 30, 90)), 39386: jpeg_bytes(colour=(40, 70, 160))},
    )
    disk_fills_on("thumbs", 300, after=1)  # the first product's files are written, the second's thumbnail is not
    with pytest.raises(OSError, match="No space left on device"):
        catalog_import(directory=directory, enqueue=False, workers=1)
    assert files_on_disk() == {}
    assert not Product.objects.exists()


# --- (2) two saves of one product's image -----------------------------------------------------


@pytest.mark.django_db
def test_two_saves_of_one_products_image_from_stale_reads_leave_only_the_last_ones_files(
    django_capture_on_commit_callbacks,
):
    """The interleaving of a race, in sequence: both editors read the product before either saves."""
    product_with_image(73)
    first, second = Product.objects.get(id=73), Product.objects.get(id=73)
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        product_save(product=first, stored=stored((0, 0, 200)), enqueue=False)
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        product_save(product=second, stored=stored((0, 200, 0)), enqueue=False)

    _, image, thumbnail, sha, version = row_of(73)
    assert (image, thumbnail, sha, version) == (second.image.name, second.thumbnail.name, second.image_sha256, 3)
    assert set(files_on_disk()) == {image, thumbnail}


@pytest.mark.django_db(transaction=True)
def test_two_admins_saving_one_products_image_at_once_leave_one_image_and_one_thumbnail(no_queue, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip(
            "SQLite takes the database's write lock when the admin's transaction begins (BEGIN IMMEDIATE), "
            "before the product is read: saves cannot interleave; the stale-read order is tested in sequence above"
        )
    product_with_image(74)
    old = files_on_disk()
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    # Both requests have read the product (the admin's form) before either saves it.
    both_read = threading.Barrier(2, timeout=30)
    import gallery.admin

    real_prepare = gallery.admin.image_prepare_for_store

    def prepare(**kwargs) -> StoredImage:
        result = real_prepare(**kwargs)
        both_read.wait()
        return result

    monkeypatch.setattr(gallery.admin, "image_prepare_for_store", prepare)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def save(colour: tuple[int, int, int]) -> None:
        try:
            response = staff_client().post(
                "/admin/gallery/product/74/change/", admin_product_form(74, image=jpeg_bytes(colour=colour))
            )
            statuses.append(response.status_code)
        except BaseException as exc:  # reported below, from the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=save, args=(colour,)) for colour in [(0, 0, 200), (0, 200, 0)]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert statuses == [302, 302]

    _, image, thumbnail, _, version = row_of(74)
    assert version == 3
    assert set(files_on_disk()) == {image, thumbnail}  # the winner's; the other's and the old ones are gone
    assert not set(old) & set(files_on_disk())
    assert EmbeddingState.objects.get(product_id=74).image_name == image


@pytest.mark.django_db
def test_a_text_edit_from_a_stale_form_keeps_the_image_another_admin_stored_meanwhile(
    django_capture_on_commit_callbacks, no_queue
):
    product_with_image(75)
    stale = Product.objects.get(id=75)  # the text-only editor's form was loaded here
    fresh = Product.objects.get(id=75)
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        product_save(product=fresh, stored=stored((0, 200, 0)), enqueue=False)

    stale.name = "Renamed product"
    form = type("Form", (), {"cleaned_data": {"image_upload": None}})()
    request = RequestFactory().post("/admin/gallery/product/75/change/")
    with django_capture_on_commit_callbacks(execute=True):
        ProductAdmin(Product, None).save_model(request, stale, form, change=True)

    name, image, thumbnail, sha, version = row_of(75)
    assert (name, image, thumbnail, sha, version) == (
        "Renamed product",
        fresh.image.name,
        fresh.thumbnail.name,
        fresh.image_sha256,
        2,
    )
    assert set(files_on_disk()) == {image, thumbnail}


# --- (3) a save whose transaction rolls back later ------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_a_save_inside_a_transaction_that_rolls_back_later_leaves_no_new_files():
    product_with_image(76)
    files, row = files_on_disk(), row_of(76)
    product = Product.objects.get(id=76)
    with pytest.raises(Boom), image_files_guard(), transaction.atomic():
        assert product_save(product=product, stored=stored((0, 0, 200)), enqueue=False).image_changed
        assert len(files_on_disk()) == 4  # written, and named by the uncommitted row
        raise Boom
    assert files_on_disk() == files
    assert row_of(76) == row


@pytest.mark.django_db(transaction=True)
def test_a_committed_save_inside_the_guard_keeps_its_files_and_drops_the_old_ones(no_queue):
    product_with_image(77)
    old = set(files_on_disk())
    product = Product.objects.get(id=77)
    with image_files_guard(), transaction.atomic():
        product_save(product=product, stored=stored((0, 0, 200)), enqueue=False)
    _, image, thumbnail, _, _ = row_of(77)
    assert set(files_on_disk()) == {image, thumbnail}
    assert not old & {image, thumbnail}


@pytest.mark.django_db(transaction=True)
def test_an_admin_save_rolled_back_after_the_image_was_stored_leaves_no_new_files(no_queue, monkeypatch):
    product_with_image(78)
    files, row = files_on_disk(), row_of(78)

    def log_change(*args, **kwargs) -> None:  # runs after save_model, inside the admin's transaction
        raise Boom

    monkeypatch.setattr(ProductAdmin, "log_change", log_change)
    with pytest.raises(Boom):
        staff_client().post(
            "/admin/gallery/product/78/change/",
            admin_product_form(78, image=jpeg_bytes(colour=(0, 0, 200)), name="Renamed product"),
        )
    assert files_on_disk() == files
    assert row_of(78) == row
    assert no_queue == []
