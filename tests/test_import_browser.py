"""A catalog admin's bulk upload in a real browser: headless Chromium, the live server, a real worker.

The admin logs in, uploads the demo catalog as one zip and lands on the job's
page while no worker runs yet (so the page can only come from the upload
answering before any import); then a worker starts and the page, polled by
htmx, follows the import to the end. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from gallery.catalog import styles_read
from gallery.models import ImportJob, Product
from tests.support.browser import ARTIFACTS, CHROMIUM, COUNT_SWAPS, chromium, page_ready

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TIMEOUT_MS = 15_000
IMPORT_TIMEOUT_MS = 180_000
# Each poll's answer, as htmx settles it: the rows read then.
RECORD_ROWS = (
    "window.__rows = [];"
    "document.addEventListener('htmx:afterSettle', () => {"
    "  const el = document.querySelector('#import-progress .rows-read');"
    "  if (el) window.__rows.push(Number(el.textContent));"
    "});"
)


@pytest.fixture
def catalog_zip(demo_dir: Path, tmp_path: Path) -> tuple[Path, list[int]]:
    """The whole demo catalog (styles.csv + images/) as one zip, in a folder as people zip it."""
    path = tmp_path / "demo-catalog.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(demo_dir / "styles.csv", "demo-catalog/styles.csv")
        for image in sorted((demo_dir / "images").glob("*.jpg")):
            archive.write(image, f"demo-catalog/images/{image.name}")
    ids = [row.id for row in styles_read(demo_dir / "styles.csv") if hasattr(row, "fields")]
    return path, ids


def test_an_admin_uploads_a_catalog_zip_and_follows_its_import_to_the_end(
    live_server, start_worker, settings, tmp_path: Path, catalog_zip: tuple[Path, list[int]]
):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/browser-deps.sh to install Debian's chromium")
    settings.IMPORT_JOBS_DIR = tmp_path / "imports"
    archive, ids = catalog_zip
    User.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    js_errors: list[str] = []

    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(COUNT_SWAPS + RECORD_ROWS)
        page = context.new_page()
        page.on("response", lambda r: r.status >= 400 and "favicon" not in r.url and failed.append(r.url))
        page.on("pageerror", lambda exc: js_errors.append(str(exc)))

        page.goto(f"{live_server.url}/admin/login/?next=/admin/gallery/product/bulk-upload/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "pw-admin-123")
        page.click("input[type=submit]")
        expect(page).to_have_url(re.compile(r"/admin/gallery/product/bulk-upload/$"))
        expect(page.locator("form[enctype]")).to_contain_text("images/<id>.jpg")

        # The upload: no worker runs yet, so the job page can only be the upload's own answer.
        page.set_input_files("#id_archive", str(archive))
        page.click("input[type=submit][value=Upload]")
        expect(page).to_have_url(re.compile(r"/admin/gallery/importjob/\d+/change/$"))
        status = page.locator("#import-progress .import-status")
        expect(status).to_have_text("Queued")
        expect(page.locator("#import-progress")).to_contain_text(f"0 of {len(ids)} rows read")
        # htmx is a deferred script: the progress block can be on screen before it has run, so wait for it
        # (the URL assertion above waits only for the navigation to commit).
        page_ready(page, timeout_ms=TIMEOUT_MS)
        assert page.evaluate("typeof window.htmx") == "object", "htmx did not load"
        page.screenshot(path=str(ARTIFACTS / "import-01-queued.png"), full_page=True)
        job_id = int(page.url.rstrip("/").split("/")[-2])

        start_worker(IMPORT_JOBS_DIR=str(settings.IMPORT_JOBS_DIR))
        expect(status).to_have_text("Done", timeout=IMPORT_TIMEOUT_MS)
        expect(page.locator("#import-progress")).to_contain_text(f"{len(ids)} of {len(ids)} rows read (100%)")
        expect(page.locator("#import-progress .count-created")).to_have_text(str(len(ids)))
        page.screenshot(path=str(ARTIFACTS / "import-02-done.png"), full_page=True)
        # The embedding panel follows the worker embedding the new images, to a browsable catalog.
        panel = page.locator("#embedding-progress")
        expect(panel).to_contain_text(f"{len(ids)} of {len(ids)} products embedded", timeout=IMPORT_TIMEOUT_MS)
        expect(panel).to_contain_text("Every product is findable by similarity")
        page.screenshot(path=str(ARTIFACTS / "import-03-embedded.png"), full_page=True)

        rows_seen = page.evaluate("window.__rows")
        # Followed live, by htmx swaps on the same page: never a reload.
        assert page.evaluate("window.__swaps") > 0
        assert rows_seen == sorted(rows_seen) and rows_seen[-1] == len(ids), rows_seen

    assert not failed, failed
    assert not js_errors, js_errors
    job = ImportJob.objects.get(id=job_id)
    assert (job.status, job.created, job.skipped, job.rows_read) == ("done", len(ids), 0, len(ids))
    assert sorted(Product.objects.values_list("id", flat=True)) == sorted(ids)
    print(f"progress the page showed (rows read at each poll): {rows_seen}")
