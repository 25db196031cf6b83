"""Catalog imports as background jobs (issue 17): upload, job page, worker, resume, concurrency, limits.

In-process tests run a job's task eagerly (``Task.apply``) against the real
zip, extraction and import code; the worker tests start real ``celery worker``
processes on the test Redis and database, kill one mid-job, and run two
overlapping jobs at once.
"""

from __future__ import annotations

import hashlib
import html.parser
import io
import os
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from gallery import jobs, services, tasks
from gallery.catalog import COLUMNS
from gallery.models import ImportJob, ImportStatus, Product
from gallery.services import catalog_import
from tests.support import ROOT
from tests.support.catalog_files import job_id_of, run_job_inline
from tests.support.clients import BULK, wsgi_post
from tests.support.images import jpeg_bytes
from tests.support.processes import wait_for

HEADER = ",".join(COLUMNS)
REAL_STYLES = ROOT.parent / "shared" / "data" / "styles.csv"


# --- Helpers ---------------------------------------------------------------------------------


def row(product_id: int, name: str | None = None) -> str:
    return f"{product_id},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,{name or f'Bulk Tshirt {product_id}'}"


def colour_of(product_id: int, shift: int = 0) -> tuple[int, int, int]:
    return ((product_id * 37 + shift) % 200 + 20, (product_id * 91) % 200 + 20, (product_id * 53 + shift) % 200 + 20)


def catalog_zip(
    lines: list[str],
    images: dict[int, bytes],
    *,
    folder: str = "",
    extra: list[tuple[str | zipfile.ZipInfo, bytes]] = (),
    method: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in extra:
            archive.writestr(name, data)
        archive.writestr(f"{folder}styles.csv", "\n".join([HEADER, *lines]) + "\n")
        for product_id, data in images.items():
            archive.writestr(f"{folder}images/{product_id}.jpg", data)
    return out.getvalue()


def simple_zip(ids: list[int], *, size: tuple[int, int] = (240, 320), name: str = "{id}", shift: int = 0) -> bytes:
    return catalog_zip(
        [row(i, name.format(id=i)) for i in ids],
        {i: jpeg_bytes(colour=colour_of(i, shift), size=size) for i in ids},
    )


def upload(client: Client, data: bytes, *, name: str = "catalog.zip"):
    return client.post(BULK, {"archive": SimpleUploadedFile(name, data, content_type="application/zip")})


def stored_files() -> list[str]:
    root = jobs.jobs_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def visible_text(page: str) -> str:
    """The text a browser shows for ``page``: markup removed, tags it does not know included."""

    class Text(html.parser.HTMLParser):
        parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    parser = Text()
    parser.parts = []
    parser.feed(page)
    return " ".join(" ".join(parser.parts).split())


def user_with(username: str, *codenames: str, staff: bool = True) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", "pw", is_staff=staff)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def client_for(user: User) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def _jobs_dir(settings, tmp_path: Path) -> Path:
    settings.IMPORT_JOBS_DIR = tmp_path / "imports"
    return settings.IMPORT_JOBS_DIR


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """Job ids whose task was sent (in-process tests: nothing reaches Redis)."""
    ids: list[int] = []
    monkeypatch.setattr(tasks, "import_job_enqueue", lambda *, job_id: ids.append(job_id) or True)
    monkeypatch.setattr(tasks, "DECODE_WORKERS", 1)
    return ids


@pytest.fixture
def staff(db) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


# --- The upload answers at once with a job; the task imports ---------------------------------


def test_a_bulk_upload_stores_the_zip_queues_a_job_and_answers_with_its_page(
    staff, sent, django_capture_on_commit_callbacks
):
    data = catalog_zip([row(501), row(502, "Red Heels, Strappy"), row(503)], {501: jpeg_bytes(), 502: jpeg_bytes()})
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(staff, data, name="spring.zip")

    job = ImportJob.objects.get(id=job_id_of(response))
    assert (job.status, job.source, job.original_name, job.rows_total) == ("queued", "upload", "spring.zip", 3)
    assert job.created_by.username == "admin"
    assert sent == [job.id]  # the task is sent once the job is committed
    assert not Product.objects.exists()  # nothing is imported inside the request
    assert stored_files() == [job.archive] and (jobs.jobs_dir() / job.archive).read_bytes() == data
    assert "spring.zip" not in job.archive  # the stored name is random

    page = staff.get(response["Location"]).content.decode()
    assert "Queued" in page and "waiting for a worker" in page
    assert 'hx-trigger="every 1s"' in page  # the progress block polls while the job is unfinished


def test_the_task_imports_the_zip_reports_every_count_and_removes_its_files(staff, sent):
    data = catalog_zip(
        [row(501), row(502, "Red Heels, Strappy"), row(503), "504,Men,Apparel"],
        {501: jpeg_bytes(), 502: jpeg_bytes(colour=(20, 200, 20))},
        folder="fashion/",
    )
    job_id = job_id_of(upload(staff, data))

    job = run_job_inline(job_id)

    assert job.status == ImportStatus.DONE, job.error
    assert (job.rows_read, job.created, job.updated, job.unchanged, job.skipped) == (4, 2, 0, 0, 2)
    assert job.images_queued == 2
    assert [r["line"] for r in job.reasons] == [4, 5]
    assert "images/503.jpg is missing" in job.reasons[0]["reason"]
    assert job.lines_done == 5 and job.finished_at is not None
    assert sorted(Product.objects.values_list("id", flat=True)) == [501, 502]
    assert Product.objects.get(id=502).name == "Red Heels, Strappy"
    assert stored_files() == [] and job.archive == ""  # zip and scratch folder are gone

    page = staff.get(f"/admin/gallery/importjob/{job_id}/change/").content.decode()
    text = visible_text(page)
    assert "Done" in text and "4 of 4 rows read (100%)" in text
    assert "line 4: image images/503.jpg is missing" in text
    fragment = staff.get(f"/admin/gallery/importjob/{job_id}/progress/").content.decode()
    assert "hx-trigger" not in fragment  # finished: the polling stops
    listing = staff.get("/admin/gallery/importjob/").content.decode()
    assert "4 / 4 rows (100%)" in listing


def test_running_a_jobs_task_again_does_nothing(staff, sent):
    job_id = job_id_of(upload(staff, simple_zip([11, 12])))
    assert run_job_inline(job_id).created == 2
    result = tasks.import_catalog_job.apply(args=[job_id]).result
    assert result.startswith("not queued")
    job = ImportJob.objects.get(id=job_id)
    assert (job.status, job.created, job.rows_read) == ("done", 2, 2)


def test_uploading_the_same_zip_again_reports_every_row_unchanged(staff, sent):
    data = simple_zip([21, 22, 23])
    run_job_inline(job_id_of(upload(staff, data)))
    again = run_job_inline(job_id_of(upload(staff, data)))
    assert (again.created, again.updated, again.unchanged, again.images_queued) == (0, 0, 3, 0)


def test_a_damaged_member_fails_the_job_with_its_reason_and_stores_nothing(staff, sent):
    data = bytearray(catalog_zip([row(31)], {31: jpeg_bytes()}))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("images/31.jpg")
    data[info.header_offset + 30 + len(info.filename) + 40] ^= 0xFF  # a bad CRC in the image, not in styles.csv
    job_id = job_id_of(upload(staff, bytes(data)))

    job = run_job_inline(job_id)

    assert job.status == ImportStatus.FAILED
    assert "damaged" in job.error and "images/31.jpg" in job.error
    assert str(jobs.jobs_dir()) not in job.error
    assert not Product.objects.exists()
    assert stored_files() == []
    assert "damaged" in visible_text(staff.get(f"/admin/gallery/importjob/{job_id}/change/").content.decode())


# --- Resume after a lost worker; fail with the reason ----------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing catches it, the batch in flight rolls back."""


def test_a_job_interrupted_mid_batch_resumes_after_its_last_committed_batch(staff, sent, monkeypatch, settings):
    ids = list(range(1001, 1031))  # 30 rows: batches of 10
    job_id = job_id_of(upload(staff, simple_zip(ids)))
    job = jobs.import_job_claim(job_id=job_id, claimant="first")
    real = jobs._progress_writer
    batches: list[int] = []

    def dies_on_the_third_batch(job_id: int, claimant: str):
        write = real(job_id, claimant)

        def on_batch(report):
            batches.append(report.last_line)
            if len(batches) == 3:
                raise Killed
            write(report)

        return on_batch

    monkeypatch.setattr(jobs, "_progress_writer", dies_on_the_third_batch)
    with pytest.raises(Killed):
        jobs.import_job_run(job=job, workers=1)
    monkeypatch.setattr(jobs, "_progress_writer", real)

    job.refresh_from_db()
    assert (job.status, job.lines_done, job.created) == ("running", 21, 20)
    assert Product.objects.count() == 20  # two whole batches, nothing of the third
    media = [p for p in Path(settings.MEDIA_ROOT).rglob("*.jpg")]
    assert len(media) == 40  # image + thumbnail of each: the rolled-back batch's files are gone

    decoded: list[int] = []
    prepare = services.image_prepare_for_store
    monkeypatch.setattr(services, "image_prepare_for_store", lambda **kw: decoded.append(1) or prepare(**kw))
    assert tasks.import_jobs_sweep(stale_after_s=0)["resumed"] == 1
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("queued", 1)
    assert "Resumed after line 21" in job.error

    job = run_job_inline(job_id)

    assert job.status == ImportStatus.DONE
    assert len(decoded) == 10  # only the third batch was decoded again
    assert (job.rows_read, job.created, job.updated, job.unchanged, job.skipped) == (30, 30, 0, 0, 0)
    assert sorted(Product.objects.values_list("id", flat=True)) == ids
    assert len(list(Path(settings.MEDIA_ROOT).rglob("*.jpg"))) == 60
    assert stored_files() == []


def test_a_job_whose_worker_keeps_dying_is_failed_with_the_reason(staff, sent):
    job_id = job_id_of(upload(staff, simple_zip([41, 42])))
    ImportJob.objects.filter(id=job_id).update(
        status=ImportStatus.RUNNING,
        claimed_by="gone",
        attempts=jobs.MAX_RESUMES,
        lines_done=2,
        heartbeat_at=timezone.now() - timedelta(hours=1),
    )
    (jobs.jobs_dir() / f"job-{job_id}").mkdir()  # a dead worker's scratch folder

    assert tasks.import_jobs_sweep()["failed"] == 1

    job = ImportJob.objects.get(id=job_id)
    assert job.status == ImportStatus.FAILED
    assert f"stopped {jobs.MAX_RESUMES + 1} times" in job.error and "after line 2" in job.error
    assert stored_files() == []
    page = visible_text(staff.get(f"/admin/gallery/importjob/{job_id}/change/").content.decode())
    assert "Failed" in page and "killed, out of memory or shut down" in page


def test_a_runner_that_lost_its_job_to_the_sweep_applies_nothing_more(staff, sent):
    job_id = job_id_of(upload(staff, simple_zip([51, 52])))
    job = jobs.import_job_claim(job_id=job_id, claimant="slow")
    ImportJob.objects.filter(id=job_id).update(claimed_by="someone-else")
    with pytest.raises(jobs.ImportJobLost):
        jobs.import_job_run(job=job, workers=1)
    assert not Product.objects.exists()  # its batch rolled back


def test_a_job_left_queued_while_redis_was_down_is_sent_again_by_the_sweep(staff, sent):
    job_id = job_id_of(upload(staff, simple_zip([61])))
    ImportJob.objects.filter(id=job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert tasks.import_jobs_sweep()["resent"] == 1
    assert sent[-1] == job_id


def test_with_redis_down_an_upload_still_answers_and_waits_queued(staff, django_capture_on_commit_callbacks, settings):
    from tests.support.processes import celery_broker

    with celery_broker("redis://127.0.0.1:1/0"), django_capture_on_commit_callbacks(execute=True):
        response = upload(staff, simple_zip([62]))
    job = ImportJob.objects.get(id=job_id_of(response))
    assert job.status == ImportStatus.QUEUED


def test_orphaned_zips_and_scratch_folders_are_removed_by_the_sweep(db):
    directory = jobs.jobs_dir()
    directory.mkdir(parents=True)
    (directory / "0123.zip").write_bytes(b"left by a web process that died mid-upload")
    (directory / "job-999").mkdir()
    old = (timezone.now() - timedelta(hours=2)).timestamp()
    for entry in directory.iterdir():
        os.utime(entry, (old, old))
    assert tasks.import_jobs_sweep()["files_removed"] == 2
    assert stored_files() == []


# --- import_catalog reports into the same job model ------------------------------------------


def test_import_catalog_on_the_command_line_is_recorded_as_a_job(db, tmp_path: Path):
    directory = tmp_path / "cat"
    (directory / "images").mkdir(parents=True)
    (directory / "styles.csv").write_text("\n".join([HEADER, row(71), row(72)]) + "\n")
    for product_id in (71, 72):
        (directory / "images" / f"{product_id}.jpg").write_bytes(jpeg_bytes())
    out = io.StringIO()

    call_command("import_catalog", str(directory), "--workers", "1", "--no-enqueue", "-v", "0", stdout=out)

    job = ImportJob.objects.get()
    assert (job.source, job.status, job.rows_total, job.created, job.rows_read) == ("command", "done", 2, 2, 2)
    assert job.original_name == str(directory.resolve())
    assert f"Recorded as catalog import {job.id}" in out.getvalue()


def test_a_killed_import_catalog_process_leaves_a_job_the_sweep_fails_with_the_reason(db, tmp_path: Path):
    job = jobs.import_job_command_start(directory=tmp_path, rows_total=100)
    ImportJob.objects.filter(id=job.id).update(lines_done=41, heartbeat_at=timezone.now() - timedelta(hours=1))
    assert tasks.import_jobs_sweep()["failed"] == 1
    job.refresh_from_db()
    assert job.status == ImportStatus.FAILED
    assert "import_catalog process stopped" in job.error and "after line 41" in job.error


# --- Hardening --------------------------------------------------------------------------------


def test_a_product_created_by_another_import_between_read_and_save_is_updated_not_a_crash(
    db, tmp_path: Path, monkeypatch
):
    """Two imports of the same zip: the other one creates a row after ours read the catalog, before we save.

    Before the fix: Django's update-then-insert wrote NULL into created_at
    (IntegrityError, a 500 with part of the rows applied).
    """
    directory = tmp_path / "cat"
    (directory / "images").mkdir(parents=True)
    (directory / "styles.csv").write_text("\n".join([HEADER, row(81, "Ours 81"), row(82, "Ours 82")]) + "\n")
    ours = {81: jpeg_bytes(colour=(200, 10, 10)), 82: jpeg_bytes(colour=(10, 10, 200))}
    for product_id, data in ours.items():
        (directory / "images" / f"{product_id}.jpg").write_bytes(data)
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "styles.csv").write_text("\n".join([HEADER, row(81, "Theirs 81")]) + "\n")
    (other / "images" / "81.jpg").write_bytes(jpeg_bytes(colour=(10, 200, 10)))

    real = services._image_job_run
    meanwhile: list[int] = []

    def decode_while_the_other_import_commits(job):
        if not meanwhile:
            meanwhile.append(1)
            monkeypatch.setattr(services, "_image_job_run", real)
            catalog_import(directory=other, enqueue=False, workers=1)
            monkeypatch.setattr(services, "_image_job_run", decode_while_the_other_import_commits)
        return real(job)

    monkeypatch.setattr(services, "_image_job_run", decode_while_the_other_import_commits)

    summary = catalog_import(directory=directory, enqueue=False, workers=1)

    assert (summary.created, summary.updated, summary.skipped) == (1, 1, 0)
    product = Product.objects.get(id=81)
    # The whole row is ours, image included: never their image with our name.
    assert product.name == "Ours 81"
    assert product.image_sha256 == hashlib.sha256(ours[81]).hexdigest()
    assert product.created_at is not None


def test_the_bulk_upload_help_text_shows_the_image_name_pattern(staff):
    page = staff.get(BULK).content.decode()
    text = visible_text(page)
    assert "A zip holding styles.csv and images/<id>.jpg, the layout import_catalog reads." in text
    assert "images/.jpg" not in text


def test_an_anonymous_bulk_body_over_the_ordinary_limit_is_refused_unread(db):
    """Before the fix the 1 GB limit applied to anyone: the CSRF check spooled the body before the login redirect."""
    body = b'--x\r\nContent-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\nforged\r\n--x--\r\n'
    status, _, _, stream = wsgi_post(BULK, content_length="500000000", body=body, cookie="csrftoken=" + "a" * 32)
    assert status.startswith("413"), status
    assert stream.read_bytes == 0


def test_the_large_bulk_limit_applies_to_staff_who_may_upload_and_no_one_else(db, sent, settings):
    settings.IMAGE_MAX_BYTES = 1_000_000  # the ordinary limit becomes about 1.25 MB
    filler = os.urandom(2_000_000)
    data = catalog_zip([row(91)], {91: jpeg_bytes()}, extra=[("README.bin", filler)], method=zipfile.ZIP_STORED)

    uploader = client_for(user_with("uploader", "add_product", "change_product"))
    viewer = client_for(user_with("viewer", "view_product"))
    assert upload(viewer, data).status_code == 413
    assert upload(uploader, data).status_code == 302
    assert ImportJob.objects.count() == 1


def test_bulk_upload_needs_the_change_permission_too(db, sent):
    adder = client_for(user_with("adder", "add_product", "view_product"))
    response = upload(adder, simple_zip([92]))
    assert response.status_code == 403
    assert "add and to change products" in response.content.decode()
    assert not ImportJob.objects.exists() and stored_files() == []
    assert adder.get(BULK).status_code == 403


def test_uploaders_follow_their_jobs_and_no_one_edits_them(db, sent):
    uploader = client_for(user_with("uploader", "add_product", "change_product"))
    job_id = job_id_of(upload(uploader, simple_zip([93])))
    assert uploader.get(f"/admin/gallery/importjob/{job_id}/change/").status_code == 200
    assert uploader.get("/admin/gallery/importjob/").status_code == 200
    assert uploader.get("/admin/gallery/importjob/add/").status_code == 403
    viewer = client_for(user_with("viewer", "view_product"))
    assert viewer.get(f"/admin/gallery/importjob/{job_id}/change/").status_code == 403
    assert viewer.get(f"/admin/gallery/importjob/{job_id}/progress/").status_code == 403
    anonymous = Client()
    assert anonymous.get(f"/admin/gallery/importjob/{job_id}/progress/").status_code == 302


def test_a_running_job_cannot_be_deleted_a_finished_one_can(staff, sent):
    job_id = job_id_of(upload(staff, simple_zip([94])))
    assert staff.post(f"/admin/gallery/importjob/{job_id}/delete/", {"post": "yes"}).status_code == 403
    run_job_inline(job_id)
    assert staff.post(f"/admin/gallery/importjob/{job_id}/delete/", {"post": "yes"}).status_code == 302
    assert not ImportJob.objects.exists()


def test_a_zip_listing_its_own_folder_as_dot_slash_is_accepted(staff, sent):
    data = catalog_zip([row(95)], {95: jpeg_bytes()}, extra=[(zipfile.ZipInfo("./"), b"")])
    job = run_job_inline(job_id_of(upload(staff, data)))
    assert (job.status, job.created) == ("done", 1)


def test_a_folder_named_styles_csv_is_refused_without_a_server_path(staff, sent):
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr(zipfile.ZipInfo("styles.csv/"), b"")
        archive.writestr("images/96.jpg", jpeg_bytes())
    response = upload(staff, data.getvalue())
    assert response.status_code == 400
    text = visible_text(response.content.decode())
    assert "exactly one styles.csv file" in text
    assert "/tmp" not in text and str(jobs.jobs_dir()) not in text
    assert stored_files() == [] and not ImportJob.objects.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a readable zip"),
        (catalog_zip([], {}, folder="a/b/c/"), "exactly one styles.csv"),
        (catalog_zip([], {}, extra=[("a/styles.csv", b"foo,bar\n1,2\n")], folder="b/c/"), "lacks the columns"),
    ],
    ids=["not-a-zip", "too-deep", "bad-header"],
)
def test_a_bad_archive_is_refused_in_the_request_and_nothing_is_kept(staff, sent, data: bytes, message: str):
    response = upload(staff, data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert stored_files() == [] and not ImportJob.objects.exists() and sent == []


def test_a_zip_the_size_of_the_real_catalog_is_accepted_at_once(staff, sent):
    """styles.csv of the real catalog (44,446 rows) with an image member per row: stored and queued, not imported."""
    if not REAL_STYLES.is_file():
        pytest.skip(f"the real catalog's styles.csv is not at {REAL_STYLES}")
    ids = [line.split(",", 1)[0] for line in REAL_STYLES.read_text(errors="replace").splitlines()[1:]]
    image = jpeg_bytes(size=(60, 80))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.write(REAL_STYLES, "fashion-dataset/styles.csv")
        for product_id in ids:
            archive.writestr(f"fashion-dataset/images/{product_id}.jpg", image)

    response = upload(staff, out.getvalue(), name="fashion-dataset.zip")

    job = ImportJob.objects.get(id=job_id_of(response))
    assert job.rows_total == 44_446
    assert job.status == ImportStatus.QUEUED and not Product.objects.exists()


# --- The embedding panel ---------------------------------------------------------------------


def test_the_admin_shows_products_awaiting_embedding_the_rate_and_when_they_are_findable(staff, sent, monkeypatch):
    from recommender import selectors
    from recommender.models import EmbeddingState
    from tests.support.engine import engine_knows

    # The rate is the engine's (products marked done over its window), here a minute.
    monkeypatch.setattr(selectors, "RATE_WINDOW_S", 60)
    for product_id in range(1, 11):
        Product.objects.create(id=product_id, name=f"P{product_id}")
        engine_knows(product_id)  # pending: no vector yet
    first = jobs.embedding_progress()
    assert (first.total, first.awaiting, first.per_second) == (10, 10, 0.0)

    # 30 products embedded within the last minute: 0.5 a second.
    for product_id in range(11, 41):
        Product.objects.create(id=product_id, name=f"P{product_id}")
        engine_knows(product_id)
    EmbeddingState.objects.filter(product_id__gt=10).update(status="done")
    progress = jobs.embedding_progress()
    assert progress.done == 30 and progress.awaiting == 10
    assert progress.per_second == pytest.approx(0.5, rel=0.05)
    assert progress.eta_seconds == pytest.approx(20, rel=0.05)

    page = visible_text(staff.get("/admin/gallery/product/").content.decode())
    assert "30 of 40 products embedded; 10 awaiting embedding" in page
    assert "Embedding 30 a minute: the rest are findable by similarity in about 20 s" in page
    fragment = staff.get("/admin/gallery/importjob/embedding-progress/").content.decode()
    assert 'hx-trigger="every 2s"' in fragment


def test_the_embedding_panel_writes_nothing_to_the_cache_when_read(staff, sent, monkeypatch):
    from django.core.cache import cache

    from tests.support.engine import engine_knows

    Product.objects.create(id=1, name="P1")
    engine_knows(1)
    writes: list[str] = []
    for name in ("set", "add", "set_many", "incr"):
        monkeypatch.setattr(cache, name, lambda *args, _name=name, **kwargs: writes.append(_name))
    for _ in range(2):
        assert staff.get("/admin/gallery/importjob/embedding-progress/").status_code == 200
    assert writes == []


# --- Real workers ----------------------------------------------------------------------------

worker_db = pytest.mark.django_db(transaction=True)


def wait_job(job_id: int, *, timeout: float = 120) -> ImportJob:
    # Ended, and its files removed (that follows the status change).
    wait_for(
        lambda: ImportJob.objects.filter(id=job_id, status__in=jobs.FINISHED, archive="").exists(),
        timeout=timeout,
        what=f"import job {job_id} to end",
    )
    return ImportJob.objects.get(id=job_id)


@worker_db
def test_a_worker_imports_an_uploaded_zip_and_embeds_its_images(start_worker, _jobs_dir: Path):
    client = client_for(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    start_worker(IMPORT_JOBS_DIR=str(_jobs_dir))
    ids = list(range(2001, 2021))
    job = wait_job(job_id_of(upload(client, simple_zip(ids))))
    assert job.status == ImportStatus.DONE, job.error
    assert (job.created, job.images_queued, job.rows_read) == (20, 20, 20)
    assert sorted(Product.objects.values_list("id", flat=True)) == ids
    assert stored_files() == []
    wait_for(lambda: jobs.embedding_progress().awaiting == 0, timeout=120, what="the imported images to be embedded")


@worker_db
def test_two_overlapping_uploads_at_once_both_finish_with_the_right_rows(start_worker, _jobs_dir: Path, settings):
    client = client_for(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    first_ids, second_ids = list(range(3001, 3041)), list(range(3021, 3061))
    first = simple_zip(first_ids, size=(1500, 1500), name="First {id}")
    second = simple_zip(second_ids, size=(1500, 1500), name="Second {id}", shift=100)
    start_worker(IMPORT_JOBS_DIR=str(_jobs_dir), concurrency=2)

    a, b = job_id_of(upload(client, first)), job_id_of(upload(client, second))
    wait_for(
        lambda: ImportJob.objects.filter(id__in=[a, b], status__in=jobs.FINISHED, archive="").count() == 2,
        timeout=180,
        what="both jobs to end",
    )

    ja, jb = ImportJob.objects.get(id=a), ImportJob.objects.get(id=b)
    assert (ja.status, jb.status) == ("done", "done"), (ja.error, jb.error)
    assert ja.created + ja.updated + ja.unchanged == 40 and jb.created + jb.updated + jb.unchanged == 40
    assert ja.created + jb.created == 60 and ja.skipped == jb.skipped == 0
    assert sorted(Product.objects.values_list("id", flat=True)) == list(range(3001, 3061))
    images = {
        "First": {i: jpeg_bytes(colour=colour_of(i), size=(1500, 1500)) for i in first_ids},
        "Second": {i: jpeg_bytes(colour=colour_of(i, 100), size=(1500, 1500)) for i in second_ids},
    }
    for product in Product.objects.all():
        # Each row whole from one upload: its name and its image from the same zip.
        source = product.name.split()[0]
        assert product.image_sha256 == hashlib.sha256(images[source][product.id]).hexdigest(), product.id
        assert Path(product.image.path).is_file() and Path(product.thumbnail.path).is_file()
        assert product.created_at is not None
    assert stored_files() == []


@worker_db
def test_a_job_whose_worker_is_killed_resumes_in_another_after_its_last_committed_batch(
    start_worker, _jobs_dir: Path, settings
):
    client = client_for(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    ids = list(range(4001, 4061))  # 60 rows in batches of 10; large photos make each batch take seconds
    data = simple_zip(ids, size=(3000, 3000))
    doomed = start_worker(name="doomed", IMPORT_JOBS_DIR=str(_jobs_dir))

    job_id = job_id_of(upload(client, data))
    wait_for(
        lambda: ImportJob.objects.filter(id=job_id, lines_done__gt=0).exists(),
        timeout=120,
        what="the first batch to commit",
    )
    doomed.kill()

    job = ImportJob.objects.get(id=job_id)
    assert job.status == ImportStatus.RUNNING and 0 < job.created < 60
    assert Product.objects.count() == job.created  # committed batches only, each whole
    for product in Product.objects.all():
        assert product.image and Path(product.image.path).is_file()

    start_worker(name="rescuer", IMPORT_JOBS_DIR=str(_jobs_dir))
    assert tasks.import_jobs_sweep(stale_after_s=0)["resumed"] == 1
    job = wait_job(job_id, timeout=180)

    assert job.status == ImportStatus.DONE, job.error
    assert job.attempts == 1
    assert (job.rows_read, job.created, job.updated, job.unchanged) == (60, 60, 0, 0)
    assert sorted(Product.objects.values_list("id", flat=True)) == ids
    assert stored_files() == []


def test_the_sweep_is_a_registered_task_on_the_beat_schedule(settings):
    from config.celery import app

    app.loader.import_default_modules()
    entry = settings.CELERY_BEAT_SCHEDULE["import-sweep"]
    assert entry["task"] in app.tasks
    assert entry["schedule"] < jobs.IMPORT_STALE_AFTER_S
    assert tasks.import_catalog_job.name in app.tasks
    assert tasks.import_catalog_job.acks_late and tasks.import_catalog_job.reject_on_worker_lost
