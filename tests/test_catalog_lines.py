"""No silent row: every line of styles.csv is imported or skipped on its own line number, with a reason.

The file below holds each way a line can fail to read (an unclosed quote, a
quoted field with more after it, too few fields, a bad id, blank lines, a NUL
byte, invalid UTF-8, an over-long line, a stray carriage return) among lines
that must import (unquoted commas in the name, a quote inside a name, ``NA``),
with a BOM and CRLF endings. It goes through the reader, ``import_catalog``
as a user runs it, and a bulk upload's job. Image names match in any case.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client

from gallery import bulk, catalog, tasks
from gallery.catalog import COLUMNS, MAX_LINE_BYTES, CatalogRow, RowError, image_id_of, styles_read
from gallery.models import ImportJob, ImportStatus, Product
from tests.support import ROOT
from tests.support.images import jpeg_bytes

HEADER = ",".join(COLUMNS).encode()
REAL_STYLES = ROOT.parent / "shared" / "data" / "styles.csv"
BULK = "/admin/gallery/product/bulk-upload/"


def line(product_id: object, name: str | None = None, *, usage: str = "Casual") -> bytes:
    return f"{product_id},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,{usage},{name or f'Tshirt {product_id}'}".encode()


# Each data line in file order (line 2 onwards) and what must become of it: ("created", the product's name)
# or ("skipped", words its reason holds).
NASTY: list[tuple[bytes, tuple[str, str]]] = [
    (line(101), ("created", "Tshirt 101")),
    (line(102, '"Nike Tempo Short'), ("skipped", "a quoted field is never closed")),
    # The quote in this name would have closed the one above: under pandas the two lines became one row.
    (line(103, "Nike Women's Tempo 3.5\" Pink Short"), ("created", "Nike Women's Tempo 3.5\" Pink Short")),
    (line(104, '"Nike" Tempo Short'), ("skipped", "a quoted field is followed by more characters")),
    (b"105,Men,Apparel", ("skipped", "the line has 3 fields, the header 10")),
    (line("1o6"), ("skipped", "id '1o6' is not a whole number")),
    (b"", ("skipped", "the line is blank")),
    (line(107, "Nike\x00 Short"), ("skipped", "NUL byte")),
    (line(108, "Caf") + b"\xe9 Shirt", ("skipped", "not UTF-8 text (byte 0xe9 at column 59)")),
    (line(109, "x" * 100_000), ("skipped", f"longer than {MAX_LINE_BYTES} bytes")),
    (line(110, "Titan Women Silver Watch, Analog, Steel"), ("created", "Titan Women Silver Watch, Analog, Steel")),
    (line(111, '"Puma Socks, Pack of 3"'), ("created", "Puma Socks, Pack of 3")),
    (line(112, "Streetwear Nail Polish", usage="NA"), ("created", "Streetwear Nail Polish")),
    (b"113,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,", ("skipped", "productDisplayName is empty")),
    (line(114, "Foo\rBar"), ("skipped", "carriage return")),
    (b"   ", ("skipped", "the line is blank")),
    (line(101, "Again"), ("skipped", "id 101 appears earlier in the file")),
    (line(115), ("created", "Tshirt 115")),
]
DATA_LINES = len(NASTY)
CREATED = {int(raw.split(b",")[0]): outcome[1] for raw, outcome in NASTY if outcome[0] == "created"}
SKIPPED = [(number, outcome[1]) for number, (_, outcome) in enumerate(NASTY, start=2) if outcome[0] == "skipped"]


def nasty_styles() -> bytes:
    """The file: a BOM, CRLF endings but one plain LF, and no ending after the last line."""
    out = b"\xef\xbb\xbf" + HEADER + b"\r\n"
    for number, (raw, _) in enumerate(NASTY, start=2):
        if number < DATA_LINES + 1:
            out += raw + (b"\n" if number == 5 else b"\r\n")
        else:
            out += raw
    return out


def nasty_catalog(directory: Path) -> Path:
    (directory / "images").mkdir(parents=True)
    (directory / "styles.csv").write_bytes(nasty_styles())
    for product_id in CREATED:
        (directory / "images" / f"{product_id}.jpg").write_bytes(jpeg_bytes(colour=(product_id, 40, 90)))
    return directory


def zip_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def assert_every_line_accounted_for(job: ImportJob) -> None:
    assert job.status == ImportStatus.DONE, job.error
    assert job.rows_total == job.rows_read == DATA_LINES
    assert job.created + job.updated + job.unchanged + job.skipped == DATA_LINES
    assert (job.created, job.skipped) == (len(CREATED), len(SKIPPED))
    assert [r["line"] for r in job.reasons] == [number for number, _ in SKIPPED]
    for stored, (number, words) in zip(job.reasons, SKIPPED, strict=True):
        assert words in stored["reason"], (number, stored["reason"])
    assert dict(Product.objects.values_list("id", "name")) == CREATED
    assert Product.objects.get(id=112).usage == "NA"


@pytest.fixture(autouse=True)
def _jobs_dir(settings, tmp_path: Path) -> Path:
    settings.IMPORT_JOBS_DIR = tmp_path / "imports"
    return settings.IMPORT_JOBS_DIR


@pytest.fixture
def staff(db, monkeypatch) -> Client:
    """An admin's client; a job's task is not sent (each test runs it in-process) and decodes in-process."""
    monkeypatch.setattr(tasks, "import_job_enqueue", lambda *, job_id: True)
    monkeypatch.setattr(tasks, "DECODE_WORKERS", 1)
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def bulk_job(client: Client, data: bytes) -> ImportJob:
    """Upload ``data`` as a catalog zip and run its job's task as a worker would."""
    response = client.post(BULK, {"archive": SimpleUploadedFile("c.zip", data, content_type="application/zip")})
    assert response.status_code == 302, response.content.decode()[:2000]
    job_id = int(response["Location"].split("/")[-3])
    tasks.import_catalog_job.apply(args=[job_id])
    return ImportJob.objects.get(id=job_id)


# --- The reader ---------------------------------------------------------------------------------


def test_the_reader_yields_one_outcome_per_physical_line_whatever_the_line_holds(tmp_path: Path):
    path = tmp_path / "styles.csv"
    path.write_bytes(nasty_styles())

    items = list(styles_read(path))

    assert [item.line for item in items] == list(range(2, DATA_LINES + 2))
    for item, (raw, (outcome, expected)) in zip(items, NASTY, strict=True):
        if "appears earlier" in expected:
            assert isinstance(item, CatalogRow)  # a repeated id is the import's finding, not the reader's
        elif outcome == "created":
            assert isinstance(item, CatalogRow), (item, raw[:80])
            assert item.fields["name"] == expected
        else:
            assert isinstance(item, RowError), (item, raw[:80])
            assert expected in item.reason, (item, raw[:80])


def test_an_unclosed_quote_on_the_last_line_is_skipped_not_an_error_of_the_file(tmp_path: Path):
    path = tmp_path / "styles.csv"
    path.write_bytes(HEADER + b"\n" + line(1) + b"\n" + line(2, '"Open'))

    items = list(styles_read(path))

    assert [(item.line, type(item).__name__) for item in items] == [(2, "CatalogRow"), (3, "RowError")]


def test_the_real_catalog_reads_every_line_with_its_own_number():
    if not REAL_STYLES.is_file():
        pytest.skip(f"the real catalog's styles.csv is not at {REAL_STYLES} (see the shared data README)")
    raw_lines = REAL_STYLES.read_bytes().split(b"\n")[1:-1]

    items = list(styles_read(REAL_STYLES))

    assert len(items) == len(raw_lines) == 44_446
    assert [item.line for item in items] == list(range(2, 44_448))
    assert [item for item in items if isinstance(item, RowError)] == []
    by_id = {item.id: item.fields for item in items}
    # The 22 lines with unquoted commas in the name keep them; a quote inside a name is a character.
    joined = [int(raw.split(b",")[0]) for raw in raw_lines if raw.count(b",") > 9]
    assert len(joined) == 22 and all("," in by_id[product_id]["name"] for product_id in joined)
    assert by_id[44065]["name"] == "Boss Men Perfume, After Shave Balm and Shower Gel Set"
    assert by_id[7491]["name"] == "Nike Women's EM Tempo 3.5\" Pink Short"
    assert by_id[56489]["usage"] == "NA"


# --- Every path: import_catalog and a bulk upload's job -----------------------------------------


@pytest.mark.django_db
def test_import_catalog_imports_or_skips_every_line_with_its_number_and_the_counts_add_up(tmp_path: Path):
    directory = nasty_catalog(tmp_path / "cat")
    out = io.StringIO()

    call_command("import_catalog", str(directory), "--workers", "1", "--no-enqueue", "-v", "0", stdout=out)

    assert_every_line_accounted_for(ImportJob.objects.get())
    text = out.getvalue()
    assert f"{DATA_LINES} rows in" in text and f"{len(CREATED)} created" in text
    assert f"{len(SKIPPED)} skipped" in text
    assert "line 3: a quoted field is never closed on this line" in text
    assert "line 4:" not in text  # the line after the unclosed quote was read on its own and imported


def test_a_bulk_upload_job_imports_or_skips_every_line_with_its_number_and_the_counts_add_up(staff):
    files = {"styles.csv": nasty_styles()}
    files |= {f"images/{product_id}.jpg": jpeg_bytes(colour=(product_id, 40, 90)) for product_id in CREATED}

    job = bulk_job(staff, zip_of(files))

    # rows_total is counted at upload; 18 lines run in two batches of 10.
    assert_every_line_accounted_for(job)
    assert job.lines_done == DATA_LINES + 1


# --- Image names --------------------------------------------------------------------------------


def test_one_rule_names_an_image_jpg_or_jpeg_in_any_case():
    assert bulk.image_id_of is catalog.image_id_of  # the layout check and the import share it
    for name in ("15970.jpg", "15970.JPG", "15970.jpeg", "15970.JPEG", "15970.Jpg"):
        assert image_id_of(name) == 15970, name
    for name in ("15970.png", "a.jpg", "15970.jpg.exe", ".jpg", "15970", "١٥.jpg", "1234567890123456.jpg"):
        assert image_id_of(name) is None, name


IMAGE_NAMES = {201: "201.JPG", 202: "202.jpeg", 203: "203.JPEG", 204: "204.Jpg", 205: "205.jpg"}
IMAGE_LINES = [line(product_id) for product_id in (*IMAGE_NAMES, 206, 207)]


def assert_images_found(created: int, skipped: int, reasons: list[tuple[int, str]]) -> None:
    assert (created, skipped) == (5, 2)
    assert sorted(Product.objects.exclude(image="").values_list("id", flat=True)) == list(IMAGE_NAMES)
    assert reasons[0] == (7, "images/206.JPG and images/206.jpg name the same product 206; keep one of them")
    assert reasons[1][0] == 8 and "images/207.jpg is missing" in reasons[1][1]


def test_import_catalog_finds_images_named_jpg_or_jpeg_in_any_case(db, tmp_path: Path):
    directory = tmp_path / "cat"
    (directory / "images").mkdir(parents=True)
    (directory / "styles.csv").write_bytes(b"\n".join([HEADER, *IMAGE_LINES]) + b"\n")
    for name in [*IMAGE_NAMES.values(), "206.jpg", "206.JPG", "207.png"]:
        (directory / "images" / name).write_bytes(jpeg_bytes())

    call_command("import_catalog", str(directory), "--workers", "1", "--no-enqueue", "-v", "0", stdout=io.StringIO())

    job = ImportJob.objects.get()
    assert_images_found(job.created, job.skipped, [(r["line"], r["reason"]) for r in job.reasons])


def test_a_bulk_upload_accepts_and_imports_images_named_jpg_or_jpeg_in_any_case(staff):
    files = {"styles.csv": b"\n".join([HEADER, *IMAGE_LINES]) + b"\n"}
    for name in [*IMAGE_NAMES.values(), "206.jpg", "206.JPG", "207.png"]:
        files[f"images/{name}"] = jpeg_bytes()

    job = bulk_job(staff, zip_of(files))

    assert job.status == ImportStatus.DONE, job.error
    assert job.rows_read == job.rows_total == 7
    assert_images_found(job.created, job.skipped, [(r["line"], r["reason"]) for r in job.reasons])
