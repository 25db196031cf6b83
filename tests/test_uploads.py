"""Uploads: what the photo search, the admin and the bulk upload accept, refuse and store.

Every hostile file goes through the Django test client with the real middleware, forms, Pillow and zipfile;
stored files are read back byte by byte. Set HARDENING_LOG=/some/file.jsonl to collect "input -> response" lines.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, ImageCms, PngImagePlugin

from gallery.models import Product
from gallery.services import catalog_import
from recommender.models import EmbedStatus
from recommender.preprocess import ImageRejected as PreprocessRejected
from recommender.preprocess import image_check, image_load, image_prepare
from tests.support import ROOT
from tests.support.answers import message_of, record
from tests.support.catalog_files import STYLES_HEADER, make_zip, styles_csv
from tests.support.clients import (
    ADMIN_ADD,
    BULK,
    admin_add,
    bulk_upload,
    media_files,
    photo_api,
    photo_page,
    wsgi_post,
)
from tests.support.engine import embed_status
from tests.support.images import (
    HTML,
    SVG,
    TEXT,
    animated_gif,
    bmp_bytes,
    cmyk_jpeg,
    executable_bytes,
    exif_jpeg,
    first_half,
    gif_claiming,
    gif_php_polyglot,
    ico_bytes,
    jpeg_bytes,
    jpeg_claiming,
    noise_image,
    palette_png_transparent,
    pdf_bytes,
    pil_bytes,
    png16_grey,
    png16_rgb_by_hand,
    png_bomb_valid,
    png_chunk,
    png_claiming,
    product_picture,
    rgba_png,
    tiff_bytes,
    webp_bytes,
)
from tests.support.processes import (
    subprocess_env,
)

# --- Measuring "refused fast" ---------------------------------------------------------------


def _rss_peak_kb() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class Cost:
    pixels_decoded: int = 0  # pixels Pillow decoded (ImageFile.load), at the size it decoded them
    python_peak_bytes: int = 0
    rss_growth_bytes: int | None = None  # includes Pillow's and zlib's C allocations (Linux)


@contextmanager
def measured() -> Iterator[Cost]:
    """The work the block did: pixels decoded and peak memory growth (never wall time: it varies by machine).

    Every ``ImageFile.load`` counts the pixels of the image it decodes. On
    Linux the RSS high-water mark is reset and read back: it counts Pillow's
    and zlib's C allocations as well as Python's. Elsewhere tracemalloc's peak
    (Python allocations only) stands in.
    """
    from PIL import ImageFile

    cost = Cost()
    real_load = ImageFile.ImageFile.load

    def counting_load(image: ImageFile.ImageFile):
        cost.pixels_decoded += image.size[0] * image.size[1]
        return real_load(image)

    rss_before = _rss_peak_kb() if _rss_peak_reset() else None
    if rss_before is None:
        tracemalloc.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ImageFile.ImageFile, "load", counting_load)
            yield cost
    finally:
        if rss_before is None:
            cost.python_peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        else:
            rss_after = _rss_peak_kb()
            cost.rss_growth_bytes = (rss_after - rss_before) * 1024 if rss_after is not None else None


def assert_cheap(cost: Cost, *, megapixels: float = 0.25, megabytes: float = 40) -> None:
    """No more decoding than a small photo takes, whatever the file claims, and bounded memory."""
    assert cost.pixels_decoded <= megapixels * 1e6, f"decoded {cost.pixels_decoded / 1e6:.1f} megapixels"
    assert cost.python_peak_bytes < megabytes * 1e6, f"Python peak {cost.python_peak_bytes / 1e6:.1f} MB"
    if cost.rss_growth_bytes is not None:
        assert cost.rss_growth_bytes < megabytes * 1e6, f"RSS grew {cost.rss_growth_bytes / 1e6:.1f} MB"


# --- Files refused: other formats, bombs, truncated files ----------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    label: str
    data: Callable[[], bytes]
    name: str
    content_type: str
    message: str  # a phrase the answer must hold


MSG_NOT_IMAGE = "not an image we can read: JPEG, PNG, WebP or GIF"
MSG_CORRUPT = "truncated or corrupt"


REFUSED = [
    Refused("BMP", bmp_bytes, "photo.bmp", "image/bmp", MSG_NOT_IMAGE),
    Refused("BMP named .jpg, sent as image/jpeg", bmp_bytes, "photo.jpg", "image/jpeg", MSG_NOT_IMAGE),
    Refused("TIFF", tiff_bytes, "photo.tiff", "image/tiff", MSG_NOT_IMAGE),
    Refused("ICO", ico_bytes, "favicon.ico", "image/x-icon", MSG_NOT_IMAGE),
    Refused("SVG with a script", lambda: SVG, "photo.svg", "image/svg+xml", MSG_NOT_IMAGE),
    Refused("SVG named .png", lambda: SVG, "photo.png", "image/png", MSG_NOT_IMAGE),
    Refused("PDF", pdf_bytes, "photo.pdf", "application/pdf", MSG_NOT_IMAGE),
    Refused("HTML sent as image/jpeg", lambda: HTML, "photo.jpg", "image/jpeg", MSG_NOT_IMAGE),
    Refused("ELF executable", executable_bytes, "photo.exe", "application/octet-stream", MSG_NOT_IMAGE),
    Refused("ELF executable named .jpg", executable_bytes, "photo.jpg", "image/jpeg", MSG_NOT_IMAGE),
    Refused("text file named .jpg", lambda: TEXT, "photo.jpg", "image/jpeg", MSG_NOT_IMAGE),
    Refused("GIF header + PHP (polyglot)", gif_php_polyglot, "shell.gif", "image/gif", "image"),
    Refused(
        "truncated JPEG (first half)", lambda: first_half(noise_image(), "JPEG"), "cut.jpg", "image/jpeg", MSG_CORRUPT
    ),
    Refused(
        "truncated PNG (first half)", lambda: first_half(noise_image(), "PNG"), "cut.png", "image/png", MSG_CORRUPT
    ),
    Refused(
        "PNG header claiming 20000x20000 (1 KB bomb)",
        lambda: png_claiming(20000, 20000),
        "bomb.png",
        "image/png",
        "too large",
    ),
    Refused("valid 9000x9000 PNG (81 Mpx, <100 KB)", png_bomb_valid, "bomb.png", "image/png", "too large"),
    Refused(
        "GIF screen claiming 65535x65535", lambda: gif_claiming(65535, 65535), "bomb.gif", "image/gif", "too large"
    ),
    Refused(
        "JPEG header claiming 65500x65500", lambda: jpeg_claiming(65500, 65500), "bomb.jpg", "image/jpeg", "too large"
    ),
]
_BYTES_CACHE: dict[str, bytes] = {}


def refused_bytes(case: Refused) -> bytes:
    if case.label not in _BYTES_CACHE:
        _BYTES_CACHE[case.label] = case.data()
    return _BYTES_CACHE[case.label]


def _ids(cases) -> list[str]:
    return [re.sub(r"[^a-z0-9]+", "-", c.label.lower()).strip("-") for c in cases]


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize("case", REFUSED, ids=_ids(REFUSED))
def test_photo_api_refuses_anything_but_jpeg_png_webp_gif_with_400_cheaply_and_stores_nothing(
    hostile_client, nothing_stored, case: Refused
):
    data = refused_bytes(case)
    with measured() as cost:
        response = photo_api(hostile_client, data, name=case.name, content_type=case.content_type)
    record("POST /api/search-by-image", case.label, response)
    assert response.status_code == 400, message_of(response)
    assert response["Content-Type"] == "application/json"
    assert case.message in response.json()["error"]
    assert_cheap(cost)
    nothing_stored()


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize("case", REFUSED, ids=_ids(REFUSED))
def test_photo_page_refuses_the_same_files_with_a_400_page(hostile_client, nothing_stored, case: Refused):
    response = photo_page(hostile_client, refused_bytes(case), name=case.name, content_type=case.content_type)
    record("POST /search-by-image", case.label, response)
    assert response.status_code == 400, message_of(response)
    assert case.message in message_of(response)
    nothing_stored()


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize("case", REFUSED, ids=_ids(REFUSED))
def test_admin_add_refuses_the_same_files_and_stores_nothing(superuser_client, nothing_stored, case: Refused):
    with measured() as cost:
        response = admin_add(
            superuser_client, 880001, refused_bytes(case), name=case.name, content_type=case.content_type
        )
    record("admin add (image_upload)", case.label, response)
    # Django's admin re-renders an invalid form (200); the strict status is checked below.
    assert response.status_code in (200, 400), message_of(response)
    assert case.message in message_of(response)
    assert_cheap(cost)
    nothing_stored()


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_admin_add_answers_400_when_the_image_is_refused(superuser_client, nothing_stored):
    """Issue 7: every refused upload gets 400, the admin's add form included."""
    response = admin_add(superuser_client, 880001, TEXT, name="photo.jpg")
    assert MSG_NOT_IMAGE in message_of(response)
    nothing_stored()
    assert response.status_code == 400, f"admin add answered {response.status_code} to a refused image"


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_a_zero_byte_file_is_refused_everywhere(hostile_client, superuser_client, nothing_stored):
    api = photo_api(hostile_client, b"", name="empty.jpg")
    page = photo_page(hostile_client, b"", name="empty.jpg")
    admin = admin_add(superuser_client, 880002, b"", name="empty.jpg")
    for where, response in (("POST /api/search-by-image", api), ("POST /search-by-image", page)):
        record(where, "zero-byte file", response)
        assert response.status_code == 400
        assert "empty" in message_of(response)
    record("admin add (image_upload)", "zero-byte file", admin)
    assert "empty" in message_of(admin)
    nothing_stored()


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_a_photo_search_without_a_file_is_a_400_saying_so(hostile_client, db):
    response = hostile_client.post("/api/search-by-image", {"k": "5"})
    record("POST /api/search-by-image", "no image field", response)
    assert response.status_code == 400
    assert "Choose a photo" in response.json()["error"]


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_an_image_over_image_max_pixels_is_refused_from_its_header(
    hostile_client, superuser_client, embedded_catalog, nothing_stored, settings
):
    settings.IMAGE_MAX_PIXELS = 10_000
    data = jpeg_bytes(size=(200, 200))
    api = photo_api(hostile_client, data)
    admin = admin_add(superuser_client, 880003, data)
    record("POST /api/search-by-image", "200x200 JPEG with IMAGE_MAX_PIXELS=10000", api)
    record("admin add (image_upload)", "200x200 JPEG with IMAGE_MAX_PIXELS=10000", admin)
    assert api.status_code == 400
    assert "too large: 200x200 pixels" in api.json()["error"]
    assert "too large: 200x200 pixels" in message_of(admin)
    nothing_stored()


# --- Oversize bodies: 413 from the Content-Length, before the body is read -------------------


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize(
    "path", ["/api/search-by-image", "/search-by-image", ADMIN_ADD, BULK], ids=["api", "page", "admin-add", "bulk"]
)
def test_a_body_claiming_a_terabyte_gets_413_without_being_read(db, path: str):
    with measured() as cost:
        status, headers, body, stream = wsgi_post(path, content_length=str(10**12))
    assert status.startswith("413"), status
    assert b"too large" in body
    assert stream.read_bytes == 0
    assert_cheap(cost, megapixels=0, megabytes=10)
    if path.startswith("/api/"):
        assert headers["Content-Type"] == "application/json"
        assert "too large" in json.loads(body)["error"]


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize("content_length", ["abc", "1e9", "12 34"], ids=["letters", "float", "space"])
def test_a_malformed_content_length_is_a_400_not_a_crash(db, content_length: str):
    status, _, body, stream = wsgi_post("/api/search-by-image", content_length=content_length)
    assert status.startswith("400"), status
    assert b"Content-Length" in body
    assert stream.read_bytes == 0


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_an_oversize_upload_through_the_client_gets_413_and_stores_nothing(
    hostile_client, superuser_client, embedded_catalog, nothing_stored, settings
):
    settings.IMAGE_MAX_BYTES = 1_000_000  # the body limit is this plus 256 KB for the form
    big = os.urandom(1_400_000)
    api = photo_api(hostile_client, big, name="big.jpg")
    page = photo_page(hostile_client, big, name="big.jpg")
    admin = admin_add(superuser_client, 880004, big, name="big.jpg")
    for where, response in (
        ("POST /api/search-by-image", api),
        ("POST /search-by-image", page),
        ("admin add (image_upload)", admin),
    ):
        record(where, "1.4 MB body with IMAGE_MAX_BYTES=1 MB", response)
        assert response.status_code == 413, (where, response.status_code)
        assert "too large" in message_of(response)
    assert api.json()["error"].startswith("The upload is too large")
    nothing_stored()


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_an_upload_over_image_max_bytes_but_under_the_body_limit_is_a_400(
    hostile_client, superuser_client, embedded_catalog, nothing_stored, settings
):
    settings.IMAGE_MAX_BYTES = 1_000_000
    data = os.urandom(1_100_000)
    api = photo_api(hostile_client, data, name="big.jpg")
    admin = admin_add(superuser_client, 880005, data, name="big.jpg")
    record("POST /api/search-by-image", "1.1 MB file with IMAGE_MAX_BYTES=1 MB", api)
    record("admin add (image_upload)", "1.1 MB file with IMAGE_MAX_BYTES=1 MB", admin)
    assert api.status_code == 400
    assert "limit is 1 MB" in api.json()["error"]
    assert "limit is 1 MB" in message_of(admin)
    nothing_stored()


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_an_oversize_bulk_zip_gets_413(superuser_client, nothing_stored, settings):
    settings.BULK_UPLOAD_MAX_BYTES = 200_000
    response = bulk_upload(superuser_client, os.urandom(300_000))
    record("admin bulk upload", "300 KB zip with BULK_UPLOAD_MAX_BYTES=200 KB", response)
    assert response.status_code == 413
    assert "too large" in message_of(response)
    nothing_stored()


# --- Images that must work ----------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    label: str
    data: Callable[[], bytes]
    name: str
    content_type: str


ACCEPTED = [
    Accepted("CMYK JPEG", cmyk_jpeg, "cmyk.jpg", "image/jpeg"),
    Accepted("palette PNG with transparency", palette_png_transparent, "pal.png", "image/png"),
    Accepted("16-bit greyscale PNG", png16_grey, "grey16.png", "image/png"),
    Accepted("16-bit RGB PNG", png16_rgb_by_hand, "rgb16.png", "image/png"),
    Accepted("RGBA PNG", rgba_png, "rgba.png", "image/png"),
    Accepted("animated GIF", animated_gif, "anim.gif", "image/gif"),
    Accepted("EXIF-rotated JPEG (orientation 6)", lambda: exif_jpeg(orientation=6), "rotated.jpg", "image/jpeg"),
    Accepted("WebP", webp_bytes, "photo.webp", "image/webp"),
    Accepted("progressive JPEG", lambda: pil_bytes(product_picture(), "JPEG", progressive=True), "p.jpg", "image/jpeg"),
    Accepted("greyscale JPEG", lambda: pil_bytes(product_picture(mode="L"), "JPEG"), "grey.jpg", "image/jpeg"),
    Accepted(
        "PNG sent as image/gif (content decides)", lambda: pil_bytes(product_picture(), "PNG"), "photo.gif", "image/gif"
    ),
    Accepted("JPEG named .exe, application/octet-stream", jpeg_bytes, "photo.exe", "application/octet-stream"),
    Accepted("JPEG with HTML appended (polyglot)", lambda: jpeg_bytes() + HTML, "poly.jpg", "image/jpeg"),
]


PHOTO_ACCEPTED = [c for c in ACCEPTED if not c.label.startswith(("progressive", "greyscale JPEG", "JPEG named"))]


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize("case", PHOTO_ACCEPTED, ids=_ids(PHOTO_ACCEPTED))
def test_photo_api_accepts_real_world_image_variants(hostile_client, embedded_catalog, case: Accepted):
    response = photo_api(hostile_client, case.data(), name=case.name, content_type=case.content_type, k="5")
    record("POST /api/search-by-image", case.label, response)
    assert response.status_code == 200, message_of(response)
    results = response.json()["results"]
    assert len(results) == 5
    assert {r["id"] for r in results} <= set(embedded_catalog)
    assert media_files() == set()  # a photo search stores nothing


def _stored(product: Product) -> tuple[Path, Path]:
    image, thumb = Path(product.image.path), Path(product.thumbnail.path)
    return image, thumb


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize("case", ACCEPTED, ids=_ids(ACCEPTED))
def test_admin_add_stores_real_world_image_variants_as_plain_jpeg(superuser_client, case: Accepted):
    response = admin_add(superuser_client, 880010, case.data(), name=case.name, content_type=case.content_type)
    record("admin add (image_upload)", case.label, response)
    assert response.status_code == 302, message_of(response)
    product = Product.objects.get(id=880010)
    assert embed_status(880010) == EmbedStatus.PENDING
    for path in _stored(product):
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert img.mode == "RGB"
            assert not img.getexif()
    assert HTML not in _stored(product)[0].read_bytes()


def _pixel(path: Path, fx: float, fy: float) -> tuple[int, int, int]:
    with Image.open(path) as img:
        return img.convert("RGB").getpixel((int(img.width * fx), int(img.height * fy)))


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_stored_images_show_what_the_shopper_saw(superuser_client):
    """Transparency on white, 16-bit scaled (not clipped), CMYK colours, GIF frame 0, EXIF rotation applied."""
    cases = {
        880020: palette_png_transparent(),
        880021: png16_grey(32768),
        880022: cmyk_jpeg(),
        880023: animated_gif(),
        880024: exif_jpeg(orientation=6, size=(160, 100)),
        880025: rgba_png(),
        880026: png16_rgb_by_hand(),
    }
    for pid, data in cases.items():
        assert admin_add(superuser_client, pid, data).status_code == 302, pid
    stored = {pid: Path(Product.objects.get(id=pid).image.path) for pid in cases}

    corner = _pixel(stored[880020], 0.02, 0.02)
    assert min(corner) > 235, f"transparent palette background became {corner}, not white"
    centre = _pixel(stored[880020], 0.5, 0.5)
    assert centre[0] > 150 and centre[1] < 90
    grey = _pixel(stored[880021], 0.5, 0.5)
    assert all(110 < c < 145 for c in grey), f"16-bit mid-grey stored as {grey}"
    red = _pixel(stored[880022], 0.5, 0.5)
    assert red[0] > 180 and red[1] < 80 and red[2] < 80, f"CMYK red stored as {red}"
    first_frame = _pixel(stored[880023], 0.5, 0.5)
    assert first_frame[0] > 150 and first_frame[1] < 90 and first_frame[2] < 90, f"GIF centre {first_frame}"
    with Image.open(stored[880024]) as img:
        assert img.size[0] < img.size[1], f"orientation 6 not applied: {img.size}"
    # Orientation 6 turns the raw top-left marker into the top-right corner.
    marker = _pixel(stored[880024], 0.97, 0.03)
    assert marker[1] > 150 and marker[0] < 90, f"rotation marker at top-right is {marker}"
    assert min(_pixel(stored[880025], 0.02, 0.02)) > 235
    rgb16 = _pixel(stored[880026], 0.5, 0.5)
    assert rgb16[0] > 170 and rgb16[1] < 60, f"16-bit RGB red stored as {rgb16}"


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_stored_catalog_images_get_random_names_under_media_root_without_exif_or_gps(superuser_client, settings):
    original = exif_jpeg(gps=True)
    with Image.open(io.BytesIO(original)) as img:
        assert img.getexif().get_ifd(0x8825), "the fixture must carry GPS"
    response = admin_add(superuser_client, 880030, original, name="holiday-at-home-51.5N.jpg")
    assert response.status_code == 302
    product = Product.objects.get(id=880030)
    media_root = Path(settings.MEDIA_ROOT).resolve()
    static_dirs = [Path(settings.STATIC_ROOT).resolve(), *(Path(d).resolve() for d in settings.STATICFILES_DIRS)]
    for field, prefix in ((product.image, "products"), (product.thumbnail, "thumbs")):
        assert re.fullmatch(rf"{prefix}/[0-9a-f]{{2}}/[0-9a-f]{{32}}\.jpg", field.name), field.name
        assert "holiday" not in field.name
        path = Path(field.path).resolve()
        assert path.is_relative_to(media_root)
        assert not any(path.is_relative_to(d) for d in static_dirs)
        data = path.read_bytes()
        assert data != original
        assert b"Exif" not in data and b"HackCam" not in data
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert not img.getexif()
            assert not img.getexif().get_ifd(0x8825)
            assert "exif" not in img.info
    assert len(media_files()) == 2  # the image and its thumbnail; the original bytes are not kept


# --- Bulk zip ------------------------------------------------------------------------------------------------------


def _symlink_member(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777 << 16) | 0x20
    return info, target.encode()


def _patch_headers(data: bytes, name: bytes, edit: Callable[[bytearray, int, bool], None]) -> bytes:
    """Edit the local and central headers of member ``name`` in place."""
    out = bytearray(data)
    for match in re.finditer(rb"PK\x03\x04|PK\x01\x02", bytes(out)):
        at = match.start()
        central = out[at + 2 : at + 4] == b"\x01\x02"
        name_at = at + (46 if central else 30)
        if out[name_at : name_at + len(name)] == name:
            edit(out, at, central)
    return bytes(out)


def zip_bad_crc() -> bytes:
    data = make_zip([("styles.csv", styles_csv(1)), ("images/1.jpg", jpeg_bytes())])
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("images/1.jpg")
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + 40
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def zip_lying_bomb() -> bytes:
    """A zip bomb whose headers declare 1 KB for a member that inflates to 20 MB (ratio check passes)."""
    data = make_zip([("styles.csv", styles_csv(1)), ("images/1.jpg", b"\0" * 20_000_000)])

    def edit(out: bytearray, at: int, central: bool) -> None:
        offset = 24 if central else 22
        out[at + offset : at + offset + 4] = struct.pack("<I", 1000)

    return _patch_headers(data, b"images/1.jpg", edit)


def zip_encrypted_flag() -> bytes:
    data = make_zip([("styles.csv", styles_csv(1)), ("images/1.jpg", jpeg_bytes())])

    def edit(out: bytearray, at: int, central: bool) -> None:
        out[at + (8 if central else 6)] |= 0x01

    return _patch_headers(data, b"styles.csv", edit)


def zip_unknown_method() -> bytes:
    data = make_zip([("styles.csv", styles_csv(1)), ("images/1.jpg", jpeg_bytes())])

    def edit(out: bytearray, at: int, central: bool) -> None:
        offset = 10 if central else 8
        out[at + offset : at + offset + 2] = struct.pack("<H", 99)  # AES / unknown

    return _patch_headers(data, b"images/1.jpg", edit)


@dataclass(frozen=True)
class BadZip:
    label: str
    data: Callable[[], bytes]
    message: str  # a phrase the answer must hold (for damaged members: the member's name)
    # "request": refused by the upload itself (400); "job": only reading the images finds it, so the
    # upload is accepted and its import job fails with the reason.
    found_by: str = "request"


BAD_ZIPS = [
    BadZip(
        "member ../evil.jpg", lambda: make_zip([("styles.csv", styles_csv(1)), ("../evil.jpg", b"x")]), "unsafe path"
    ),
    BadZip(
        "member images/../../evil.jpg",
        lambda: make_zip([("styles.csv", styles_csv(1)), ("images/../../evil.jpg", b"x")]),
        "unsafe path",
    ),
    BadZip(
        "member /abs/path/evil.jpg",
        lambda: make_zip([("styles.csv", styles_csv(1)), ("/abs/path/evil.jpg", b"x")]),
        "unsafe path",
    ),
    BadZip(
        "member C:\\evil.jpg", lambda: make_zip([("styles.csv", styles_csv(1)), ("C:\\evil.jpg", b"x")]), "unsafe path"
    ),
    BadZip("member C:evil.jpg", lambda: make_zip([("styles.csv", styles_csv(1)), ("C:evil.jpg", b"x")]), "unsafe path"),
    BadZip(
        "symlink member images/1.jpg -> /etc/passwd",
        lambda: make_zip([("styles.csv", styles_csv(1)), _symlink_member("images/1.jpg", "/etc/passwd")]),
        "symbolic link",
    ),
    BadZip(
        "zip bomb (20 MB of zeros as images/1.jpg)",
        lambda: make_zip([("styles.csv", styles_csv(1)), ("images/1.jpg", b"\0" * 20_000_000)]),
        "zip bomb",
    ),
    BadZip(
        "zip bomb as styles.csv",
        lambda: make_zip([("styles.csv", STYLES_HEADER.encode() + b"\n" * 20_000_000)]),
        "zip bomb",
    ),
    BadZip("zip without styles.csv", lambda: make_zip([("images/1.jpg", jpeg_bytes())]), "styles.csv"),
    BadZip(
        "zip with two styles.csv",
        lambda: make_zip([("styles.csv", styles_csv(1)), ("a/styles.csv", styles_csv(2))]),
        "styles.csv",
    ),
    BadZip("styles.csv with the wrong header", lambda: make_zip([("styles.csv", b"foo,bar\n1,2\n")]), "lacks"),
    BadZip("not a zip (a JPEG)", jpeg_bytes, "not a readable zip"),
    BadZip("not a zip (text)", lambda: TEXT, "not a readable zip"),
    BadZip(
        "zip truncated in half",
        lambda: make_zip([("styles.csv", styles_csv(1)), ("images/1.jpg", jpeg_bytes())])[:300],
        "not a readable zip",
    ),
    BadZip("zip member with a bad CRC", zip_bad_crc, "images/1.jpg", found_by="job"),
    BadZip("zip bomb lying about its size in the headers", zip_lying_bomb, "images/1.jpg", found_by="job"),
    BadZip("zip member flagged encrypted", zip_encrypted_flag, "styles.csv"),
    BadZip("zip member with unknown compression method 99", zip_unknown_method, "images/1.jpg"),
]


@pytest.fixture
def import_jobs_dir(settings, tmp_path: Path) -> Path:
    """Where bulk uploads are stored for their import job, for this test alone."""
    settings.IMPORT_JOBS_DIR = tmp_path / "imports"
    return settings.IMPORT_JOBS_DIR


def import_jobs_files(directory: Path) -> list[Path]:
    return list(directory.rglob("*")) if directory.exists() else []


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize("case", BAD_ZIPS, ids=_ids(BAD_ZIPS))
def test_bulk_upload_refuses_unsafe_or_broken_zips_cheaply_and_stores_nothing(
    superuser_client, nothing_stored, monkeypatch, tmp_path: Path, import_jobs_dir: Path, case: BadZip
):
    from tests.support.catalog_files import job_id_of, run_job_inline

    data = case.data()
    scratch = tmp_path / "tmp"  # where Django spools uploads (tempfile's directory)
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with measured() as cost:
        response = bulk_upload(superuser_client, data)
    record("admin bulk upload", case.label, response)
    assert_cheap(cost, megabytes=60)
    if case.found_by == "request":
        assert response.status_code == 400, f"{response.status_code}: {message_of(response)}"
        assert case.message in message_of(response)
    else:
        job = run_job_inline(job_id_of(response))
        assert job.status == "failed"
        assert case.message in job.error and "damaged" in job.error
    nothing_stored()
    assert list(scratch.iterdir()) == [], "uploaded files were left behind"
    assert import_jobs_files(import_jobs_dir) == [], "the stored zip or extracted files were left behind"
    assert not list(tmp_path.rglob("evil.jpg"))


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_bulk_upload_of_a_good_zip_imports_it(superuser_client, import_jobs_dir: Path):
    """The control for the refusals above: the same layout, safe, is imported."""
    from tests.support.catalog_files import job_id_of, run_job_inline

    data = make_zip([("styles.csv", styles_csv(4242)), ("images/4242.jpg", jpeg_bytes())])
    response = bulk_upload(superuser_client, data)
    assert run_job_inline(job_id_of(response)).status == "done"
    product = Product.objects.get(id=4242)
    assert Path(product.image.path).resolve().is_relative_to(Path(settings.MEDIA_ROOT).resolve())
    assert import_jobs_files(import_jobs_dir) == []


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize(
    ("label", "member"),
    [
        ("BMP named images/<id>.jpg", bmp_bytes),
        ("SVG named images/<id>.jpg", lambda: SVG),
        ("PNG bomb named images/<id>.jpg", lambda: png_claiming(20000, 20000)),
        ("truncated JPEG as images/<id>.jpg", lambda: first_half(noise_image(), "JPEG")),
    ],
    ids=["bmp", "svg", "bomb", "truncated"],
)
def test_bulk_upload_skips_rows_whose_image_is_refused(
    superuser_client, nothing_stored, import_jobs_dir: Path, label: str, member
):
    from tests.support.catalog_files import job_id_of, run_job_inline

    data = make_zip([("styles.csv", styles_csv(4243)), ("images/4243.jpg", member())])
    response = superuser_client.post(BULK, {"archive": SimpleUploadedFile("c.zip", data)})
    job = run_job_inline(job_id_of(response))
    page = superuser_client.get(response["Location"])
    record("admin bulk upload", label, page)
    assert (job.status, job.skipped, job.created) == ("done", 1, 0)
    assert "line 2: image 4243.jpg" in page.content.decode()
    nothing_stored()


# --- Stored images are pixels only ---------------------------------------------------------------------------------

SCRIPT = b"<script>alert(document.cookie)</script>"
XMP_NS = b"http://ns.adobe.com/xap/1.0/"
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:xmp="' + XMP_NS + b'" xmlns:dc="http://purl.org/dc/elements/1.1/">'
    b"<dc:title>" + SCRIPT.replace(b"<", b"&lt;") + b"</dc:title><xmp:CreatorTool>HackCam</xmp:CreatorTool>"
    b"</rdf:Description></rdf:RDF></x:xmpmeta>"
)


# What no stored byte may hold: the upload's HTML, EXIF, XMP, ICC and its camera's name.
FORBIDDEN = (b"<script", b"Exif", b"http://ns.adobe.com/xap", b"adobe:ns:meta", b"ICC_PROFILE", b"HackCam")


# The segments a plain baseline JPEG of pixels needs: SOI's followers up to the scan (JFIF, tables, frame).
PIXEL_SEGMENTS = {0xE0, 0xDB, 0xC4, 0xC0, 0xC2, 0xDD, 0xDA}


def _srgb_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def swapped_profile() -> bytes:
    """An RGB profile whose red primary is sRGB's blue and the other way round: a wide-gamut stand-in whose
    correct conversion is plain to see (red pixels are blue in sRGB). Built from Pillow's sRGB profile by
    swapping the offsets of its rXYZ and bXYZ tags."""
    data = bytearray(_srgb_bytes())
    tags = {}
    for i in range(struct.unpack(">I", data[128:132])[0]):
        at = 132 + 12 * i
        signature, offset, size = struct.unpack(">4sII", data[at : at + 12])
        tags[signature] = (at, offset, size)
    (r_at, r_offset, r_size), (b_at, b_offset, b_size) = tags[b"rXYZ"], tags[b"bXYZ"]
    struct.pack_into(">4sII", data, r_at, b"rXYZ", b_offset, b_size)
    struct.pack_into(">4sII", data, b_at, b"bXYZ", r_offset, r_size)
    data[84:100] = bytes(16)  # the profile id (an MD5 of the rest) no longer holds
    return bytes(data)


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "HackCam"  # Make
    exif[0x010E] = SCRIPT.decode()  # ImageDescription
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # GPS
    return exif.tobytes()


def jpeg_with_everything() -> bytes:
    """A JPEG carrying a COM segment of HTML, EXIF (camera, GPS, HTML), XMP and an ICC profile."""
    return jpeg_bytes(comment=SCRIPT, exif=_exif(), xmp=XMP, icc_profile=_srgb_bytes())


def png_with_text_chunks() -> bytes:
    """A PNG with tEXt (one named "comment", which Pillow would write back as a JPEG comment), zTXt, iTXt XMP
    and eXIf chunks."""
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", SCRIPT.decode())
    text.add_text("Description", SCRIPT.decode(), zip=True)
    text.add_itxt("XML:com.adobe.xmp", XMP.decode())
    return jpeg_bytes(format="PNG", pnginfo=text, exif=_exif())


def _png_reads_back(data: bytes) -> None:
    """The fixtures carry what they claim (a test of nothing would pass too)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert SCRIPT.decode() in str(img.info.get("comment", "")) + str(img.info.get("Description", ""))


def jpeg_segments(data: bytes) -> list[int]:
    """The marker of every segment from the start of a JPEG up to its first scan (SOS) included."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    markers, at = [], 2
    while True:
        assert data[at] == 0xFF, f"no marker at {at}"
        marker = data[at + 1]
        markers.append(marker)
        if marker == 0xDA:
            return markers
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]


def assert_pixels_only(data: bytes, where: str) -> None:
    extra = set(jpeg_segments(data)) - PIXEL_SEGMENTS
    assert not extra, f"{where} keeps segments {sorted(hex(m) for m in extra)} (0xfe: comment, 0xe1: EXIF/XMP)"
    for needle in FORBIDDEN:
        assert needle not in data, f"{where} holds {needle!r}"
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and img.mode == "RGB"
        assert not img.getexif()
        assert not {"comment", "exif", "xmp", "icc_profile"} & set(img.info), f"{where}: {sorted(img.info)}"


def _stored_files(product_id: int) -> dict[str, bytes]:
    product = Product.objects.get(id=product_id)
    return {
        f"{product_id} image": Path(product.image.path).read_bytes(),
        f"{product_id} thumbnail": Path(product.thumbnail.path).read_bytes(),
    }


def test_the_metadata_fixtures_carry_what_they_claim():
    data = jpeg_with_everything()
    assert 0xFE in jpeg_segments(data) and 0xE1 in jpeg_segments(data) and 0xE2 in jpeg_segments(data)
    assert all(needle in data for needle in (b"<script", b"Exif", XMP_NS, b"ICC_PROFILE", b"HackCam"))
    png = png_with_text_chunks()
    assert all(chunk in png for chunk in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"))
    _png_reads_back(png)


def test_admin_uploads_are_stored_as_pixels_only(superuser_client):
    uploads = {
        880100: (jpeg_with_everything(), "photo.jpg", "image/jpeg"),
        880101: (png_with_text_chunks(), "photo.png", "image/png"),
    }
    for product_id, (data, name, content_type) in uploads.items():
        response = admin_add(superuser_client, product_id, data, name=name, content_type=content_type)
        assert response.status_code == 302, response.content[:500]
        for where, stored in _stored_files(product_id).items():
            assert_pixels_only(stored, where)


def test_catalog_imports_store_pixels_only(db, tmp_path: Path):
    directory = tmp_path / "catalog"
    (directory / "images").mkdir(parents=True)
    header = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
    rows = [f"{pid},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Shirt {pid}" for pid in (880110, 880111)]
    (directory / "styles.csv").write_text("\n".join([header, *rows]) + "\n")
    (directory / "images" / "880110.jpg").write_bytes(jpeg_with_everything())
    (directory / "images" / "880111.jpg").write_bytes(png_with_text_chunks())  # a PNG under a .jpg name

    summary = catalog_import(directory=directory, enqueue=False, workers=1)

    assert summary.created == 2, summary.lines()
    for product_id in (880110, 880111):
        for where, stored in _stored_files(product_id).items():
            assert_pixels_only(stored, where)


def _centre(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB").getpixel((img.width // 2, img.height // 2))


def _close(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 14) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def test_a_wide_gamut_photo_is_converted_to_srgb_before_its_profile_is_dropped(superuser_client):
    red = (200, 30, 30)
    uploads = {
        880120: jpeg_bytes(colour=red, icc_profile=swapped_profile()),
        880121: jpeg_bytes(colour=red, format="PNG", icc_profile=swapped_profile()),
    }
    for product_id, data in uploads.items():
        assert _close(_centre(data), red), "the fixture's raw pixels are red"
        assert admin_add(superuser_client, product_id, data).status_code == 302
        for where, stored in _stored_files(product_id).items():
            # In sRGB the swapped profile's "red" is blue: the colour the photo's owner saw is what is stored.
            assert _close(_centre(stored), (30, 30, 200)), f"{where} centre is {_centre(stored)}"
            assert_pixels_only(stored, where)


def test_photo_searches_and_embeddings_see_the_same_srgb_colours():
    """The one decoding path converts for every caller: a photo search matches the stored catalog image."""
    data = jpeg_bytes(colour=(200, 30, 30), icc_profile=swapped_profile())
    square = image_prepare(data, size=224)
    assert _close(tuple(int(c) for c in square[112, 112]), (30, 30, 200))
    assert _close(image_load(data).getpixel((120, 160)), (30, 30, 200))  # the full-size path too


@pytest.mark.parametrize(
    ("label", "profile", "mode"),
    [
        ("unreadable profile", b"not an ICC profile" * 8, "RGB"),
        ("RGB profile on CMYK pixels", swapped_profile(), "CMYK"),
        ("Lab profile on RGB pixels", ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes(), "RGB"),
    ],
)
def test_a_profile_that_does_not_fit_the_pixels_is_ignored_not_refused(superuser_client, label, profile, mode):
    img = Image.new(mode, (200, 160), "white")
    img.paste(Image.new("RGB", (100, 80), (200, 30, 30)).convert(mode), (50, 40))
    out = io.BytesIO()
    img.save(out, format="JPEG", icc_profile=profile, quality=95)
    response = admin_add(superuser_client, 880130, out.getvalue())
    assert response.status_code == 302, label
    for where, stored in _stored_files(880130).items():
        assert _close(_centre(stored), (200, 30, 30), tol=30), f"{label}: {where} centre is {_centre(stored)}"
        assert_pixels_only(stored, where)


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0"))
        + png_chunk(b"IEND", b"")
    )


REFUSED_PHOTOS = {
    "40000x40000 PNG": (png_header_claiming(40_000, 40_000), "The image is too large"),
    "8000x6000 PNG (over IMAGE_MAX_PIXELS, under Pillow's bomb limit)": (
        png_header_claiming(8000, 6000),
        "The image is too large: 8000x6000 pixels",
    ),
    "not an image": (b"%PDF-1.4\n" + b"x" * 2000, "not an image we can read"),
    "empty file": (b"", "file is empty"),
}


_REFUSED_PROBE = r"""
import json, sys
import django
django.setup()
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

cases = json.loads(sys.argv[1])
client = Client(raise_request_exception=False, HTTP_HOST="localhost")  # an allowed host of the local settings
answers = {}
for label, path in cases.items():
    with open(path, "rb") as fh:
        data = fh.read()
    api = client.post("/api/search-by-image", {"image": SimpleUploadedFile("photo.png", data, "image/png")})
    page = client.post("/search-by-image", {"image": SimpleUploadedFile("photo.png", data, "image/png")})
    answers[label] = {
        "api_status": api.status_code,
        "api_type": api["Content-Type"],
        "api_body": api.content.decode(errors="replace")[:500],
        "page_status": page.status_code,
        "page_body": page.content.decode(errors="replace"),
    }
print(json.dumps({
    "answers": answers,
    "torch": "torch" in sys.modules,
    "encoders": "recommender.encoders" in sys.modules,
}))
"""


def test_a_refused_photo_never_loads_the_encoder_in_a_fresh_web_process(db, tmp_path: Path):
    cases = {}
    for i, (label, (data, _)) in enumerate(REFUSED_PHOTOS.items()):
        path = tmp_path / f"upload-{i}"
        path.write_bytes(data)
        cases[label] = str(path)
    # Rate limits apart: every refusal here must come from the photo itself.
    env = subprocess_env(PHOTO_SEARCH_RATE_PER_MINUTE="1000", CACHE_KEY_PREFIX=f"round3-{secrets.token_hex(4)}")
    result = subprocess.run(
        [sys.executable, "-c", _REFUSED_PROBE, json.dumps(cases)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for label, (_, message) in REFUSED_PHOTOS.items():
        answer = report["answers"][label]
        assert answer["api_status"] == 400, (label, answer)
        assert answer["api_type"] == "application/json"
        assert message in json.loads(answer["api_body"])["error"], (label, answer["api_body"])
        assert answer["page_status"] == 400, (label, answer["page_status"])
        assert message in answer["page_body"], label
    assert not report["encoders"], "a refused photo loaded the encoder module"
    assert not report["torch"], "a refused photo imported torch"


def test_the_header_check_reads_no_pixels():
    assert image_check(jpeg_bytes(size=(240, 320))) == ("JPEG", 240, 320)
    with pytest.raises(PreprocessRejected, match="40000x40000|1600 megapixels"):
        image_check(png_header_claiming(40_000, 40_000))
    # A header that passes over data that cannot decode: the check passes, the decode refuses.
    whole = jpeg_bytes(size=(240, 320))
    truncated = whole[: len(whole) // 2]
    assert image_check(truncated) == ("JPEG", 240, 320)
    with pytest.raises(PreprocessRejected, match="truncated or corrupt"):
        image_load(truncated)


# --- Large images within the limits --------------------------------------------------------------------------------


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
