"""Issue 7: hostile uploads and queries, security settings, and faults, against the real views.

Every hostile request goes through the Django test client (in process) with the
real middleware, forms, Pillow, zipfile, encoder and Annoy index. Clients do not
re-raise view exceptions: a crash shows up as the 500 a shopper would get (its
traceback is in the captured log).

Set HARDENING_LOG=/some/file.jsonl to collect "input -> response" lines.
"""

from __future__ import annotations

import errno
import html
import io
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image, ImageDraw

from gallery import ratelimit
from gallery.models import Product
from recommender import index as index_module
from recommender import runtime, selectors, services, tasks
from recommender.models import Embedding, EmbeddingState, EmbedStatus
from tests.conftest import ROOT, admin_product_form, celery_broker, connection_attempts, embed_status, jpeg_bytes

# --- Recording what the server answered -------------------------------------------------

_LOG_PATH = os.environ.get("HARDENING_LOG", "")
_ALERT = re.compile(r'role="alert">(.*?)</p>', re.S)
_ERRORLIST = re.compile(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', re.S)
_MESSAGELIST = re.compile(r'<ul class="messagelist">(.*?)</ul>', re.S)
_HEADING = re.compile(r"<h1>(.*?)</h1>\s*(?:<p>(.*?)</p>)?", re.S)
_TAG = re.compile(r"<[^>]+>")


def message_of(response) -> str:
    """The message a response shows: the JSON error, the page's alert or form errors, or the plain text."""
    content_type = response.get("Content-Type", "")
    body = response.content.decode("utf-8", errors="replace")
    if content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            return body[:300]
        return str(data.get("error", "")) if isinstance(data, dict) and "error" in data else "(results)"
    if content_type.startswith("text/plain"):
        return body[:300]
    found = [html.unescape(_TAG.sub(" ", m)).strip() for m in _ALERT.findall(body)]
    found += [" ".join(html.unescape(_TAG.sub(" ", m)).split()) for m in _ERRORLIST.findall(body)]
    found += [" ".join(html.unescape(_TAG.sub(" ", m)).split()) for m in _MESSAGELIST.findall(body)]
    if found:
        return " | ".join(found)[:400]
    if response.status_code in (301, 302):
        return f"redirect to {response['Location']}"
    heading = _HEADING.search(body)
    if heading:
        return " ".join(html.unescape(_TAG.sub(" ", " ".join(g for g in heading.groups() if g))).split())[:300]
    if response.status_code == 200 and "<html" in body[:200].lower():
        return "(page with results)"
    return body[:120].strip() or "(empty body)"


def record(where: str, hostile: str, response) -> None:
    """Append ``hostile input -> status + message`` to HARDENING_LOG (when set)."""
    if not _LOG_PATH:
        return
    line = {"where": where, "input": hostile, "status": response.status_code, "message": message_of(response)}
    if response.status_code == 429:
        line["retry_after"] = response.get("Retry-After")
    with open(_LOG_PATH, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, ensure_ascii=False) + "\n")


# --- Real image bytes ---------------------------------------------------------------------


def pil_bytes(img: Image.Image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def product_picture(
    colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (120, 160), mode: str = "RGB"
) -> Image.Image:
    img = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(img).rectangle([w * 0.2, h * 0.15, w * 0.8, h * 0.85], fill=colour)
    return img.convert(mode) if mode != "RGB" else img


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_by_hand(width: int, height: int, *, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A ~1 KB greyscale PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    return png_by_hand(width, height, bit_depth=8, colour_type=0, idat=zlib.compress(b"\0" * (width + 1) * 8, 9))


def png_bomb_valid(side: int = 9000) -> bytes:
    """A complete, valid all-black PNG of side x side pixels that compresses to well under 100 KB."""
    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return png_by_hand(side, side, bit_depth=8, colour_type=0, idat=idat)


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen claims width x height, holding a single 1x1 frame."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header was edited to claim width x height."""
    data = bytearray(pil_bytes(product_picture(size=(32, 32)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png16_rgb_by_hand(width: int = 60, height: int = 80) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): red box on white, big-endian samples."""
    pixels = np.full((height, width, 3), 65535, dtype=">u2")
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (52000, 8000, 8000)
    raw = b"".join(b"\0" + pixels[y].tobytes() for y in range(height))
    return png_by_hand(width, height, bit_depth=16, colour_type=2, idat=zlib.compress(raw))


def png16_grey(value: int = 32768) -> bytes:
    """A 16-bit greyscale PNG of one mid-grey value (Pillow's own convert would clip it to white)."""
    return pil_bytes(Image.fromarray(np.full((80, 60), value, dtype=np.uint16)), "PNG")


def cmyk_jpeg() -> bytes:
    img = Image.new("CMYK", (120, 160), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([24, 24, 96, 136], fill=(0, 255, 255, 0))  # red in CMYK
    return pil_bytes(img, "JPEG")


def palette_png_transparent() -> bytes:
    """A palette PNG whose background index is transparent (and black in the palette)."""
    img = Image.new("P", (120, 160), 0)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    ImageDraw.Draw(img).rectangle([24, 24, 96, 136], fill=1)
    return pil_bytes(img, "PNG", transparency=0)


def rgba_png() -> bytes:
    img = Image.new("RGBA", (120, 160), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([24, 24, 96, 136], fill=(30, 60, 200, 255))
    return pil_bytes(img, "PNG")


def animated_gif() -> bytes:
    """Three frames: red, green, blue. Only the first (red) may be used."""
    frames = [product_picture(colour=c).convert("P") for c in ((220, 20, 20), (20, 200, 20), (20, 20, 220))]
    return pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def exif_jpeg(*, orientation: int | None = None, gps: bool = False, size: tuple[int, int] = (160, 100)) -> bytes:
    """A JPEG carrying EXIF: camera make, optionally orientation and a GPS position."""
    img = product_picture(size=size)
    # A marker in the stored top-left corner, to check the rotation.
    ImageDraw.Draw(img).rectangle([0, 0, 15, 15], fill=(20, 200, 20))
    exif = Image.Exif()
    exif[0x010F] = "HackCam"
    exif[0x0110] = "Model X"
    if orientation:
        exif[0x0112] = orientation
    if gps:
        exif.get_ifd(0x8825).update({1: "N", 2: (51.0, 30.0, 12.5), 3: "W", 4: (0.0, 7.0, 39.0)})
    return pil_bytes(img, "JPEG", exif=exif)


def webp_bytes() -> bytes:
    return pil_bytes(product_picture(colour=(30, 160, 40)), "WEBP")


def bmp_bytes() -> bytes:
    return pil_bytes(product_picture(), "BMP")


def tiff_bytes() -> bytes:
    return pil_bytes(product_picture(), "TIFF")


def ico_bytes() -> bytes:
    return pil_bytes(product_picture(size=(64, 64)), "ICO")


def pdf_bytes() -> bytes:
    return pil_bytes(product_picture(), "PDF")


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
    b'<script>alert(document.cookie)</script><rect width="100" height="100" fill="red"/></svg>'
)
HTML = b"<!doctype html><html><body><script>alert(1)</script><img src=x onerror=alert(2)></body></html>"
TEXT = b"This is not a picture, just some text.\n" * 20


def executable_bytes() -> bytes:
    """The first 8 KB of the Python interpreter: a real ELF executable header."""
    return Path(sys.executable).resolve().read_bytes()[:8192]


def noise_image(size: tuple[int, int] = (200, 200)) -> Image.Image:
    """Incompressible pixels, so that half the file is half the picture."""
    return Image.frombytes("RGB", size, np.random.default_rng(7).integers(0, 256, size[0] * size[1] * 3, np.uint8))


def first_half(img: Image.Image, fmt: str) -> bytes:
    data = pil_bytes(img, fmt)
    return data[: len(data) // 2]


def gif_php_polyglot() -> bytes:
    return b"GIF89a<?php system($_GET['c']); ?>" + b"\0" * 64


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


# --- Fixtures: a small embedded catalog, isolated cache, storage guard ------------------------

COLOURS = {
    "Red": (200, 30, 30),
    "Blue": (30, 60, 200),
    "Green": (30, 160, 40),
    "Yellow": (230, 200, 20),
    "Black": (20, 20, 20),
    "Purple": (120, 40, 160),
}
TYPES = {"Tshirts": "box", "Caps": "disc"}
GENDERS = ("Men", "Women")


@dataclass(frozen=True)
class CatalogEntry:
    id: int
    name: str
    gender: str
    article_type: str
    colour: str
    image: bytes


def _catalog_entries() -> list[CatalogEntry]:
    entries = []
    pid = 101
    for colour, rgb in COLOURS.items():
        for article_type, shape in TYPES.items():
            for gender in GENDERS:
                image = jpeg_bytes(colour=rgb, shape=shape, size=(120, 160))
                name = f"{gender} {colour} {article_type} {pid}"
                entries.append(CatalogEntry(pid, name, gender, article_type, colour, image))
                pid += 1
    return entries


CATALOG = _catalog_entries()
CATALOG_IDS = [entry.id for entry in CATALOG]


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


@pytest.fixture(autouse=True)
def _isolated_cache(settings, monkeypatch, session_encoder) -> Iterator[None]:
    """A cache namespace of this test's own, no photo-search limit unless a test sets one, one loaded encoder.

    Runtime singletons are reset before every test (conftest); the encoder is the
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
def catalog(db, catalog_vectors) -> list[int]:
    """24 products with vectors from their real images, and a published index (no image files: fast)."""
    space = runtime.active_space()
    Product.objects.bulk_create(
        [
            Product(
                id=e.id,
                name=e.name,
                gender=e.gender,
                master_category="Apparel" if e.article_type == "Tshirts" else "Accessories",
                sub_category="Topwear" if e.article_type == "Tshirts" else "Headwear",
                article_type=e.article_type,
                base_colour=e.colour,
                season="Summer",
                year=2012,
                usage="Casual",
                image_version=1,
            )
            for e in CATALOG
        ]
    )
    EmbeddingState.objects.bulk_create(
        [
            EmbeddingState(product_id=e.id, image_name=f"demo/{e.id}.jpg", image_version=1, status=EmbedStatus.DONE)
            for e in CATALOG
        ]
    )
    Embedding.objects.bulk_create(
        [
            Embedding(product_id=pid, space=space, dim=len(v), vector=v.astype("<f4").tobytes(), image_version=1)
            for pid, v in catalog_vectors.items()
        ]
    )
    assert services.index_rebuild() is not None
    return CATALOG_IDS


@pytest.fixture
def hostile_client(client) -> Client:
    """The test client, answering a view's crash with a 500 response instead of re-raising it."""
    client.raise_request_exception = False
    return client


def _staff_user(*, superuser: bool = True, staff: bool = True, username: str = "admin") -> User:
    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.com", "pw-admin-123")
    return User.objects.create_user(username, f"{username}@example.com", "pw-user-123", is_staff=staff)


@pytest.fixture
def superuser_client(db) -> Client:
    """A logged-in superuser (a client of its own); view crashes come back as 500 responses."""
    client = Client(raise_request_exception=False)
    client.force_login(_staff_user())
    return client


def media_files() -> set[str]:
    root = Path(settings.MEDIA_ROOT)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


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


def photo_api(client: Client, data: bytes, *, name: str = "photo.jpg", content_type: str = "image/jpeg", **fields):
    """POST to the photo API; upper-case keywords (REMOTE_ADDR, HTTP_...) go to the WSGI environ, others are fields."""
    environ = {key: value for key, value in fields.items() if key.isupper()}
    form = {key: value for key, value in fields.items() if not key.isupper()}
    return client.post(
        "/api/search-by-image", {"image": SimpleUploadedFile(name, data, content_type=content_type), **form}, **environ
    )


def photo_page(client: Client, data: bytes, *, name: str = "photo.jpg", content_type: str = "image/jpeg", **extra):
    return client.post(
        "/search-by-image", {"image": SimpleUploadedFile(name, data, content_type=content_type)}, **extra
    )


ADMIN_ADD = "/admin/gallery/product/add/"
BULK = "/admin/gallery/product/bulk-upload/"


def admin_add(client: Client, product_id: int, data: bytes, *, name: str = "photo.jpg", content_type="image/jpeg"):
    return client.post(ADMIN_ADD, admin_product_form(product_id, data, filename=name, content_type=content_type))


# =============================================================================================
# 1. Uploads
# =============================================================================================


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


@pytest.mark.parametrize("case", REFUSED, ids=_ids(REFUSED))
def test_photo_page_refuses_the_same_files_with_a_400_page(hostile_client, nothing_stored, case: Refused):
    response = photo_page(hostile_client, refused_bytes(case), name=case.name, content_type=case.content_type)
    record("POST /search-by-image", case.label, response)
    assert response.status_code == 400, message_of(response)
    assert case.message in message_of(response)
    nothing_stored()


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


def test_admin_add_answers_400_when_the_image_is_refused(superuser_client, nothing_stored):
    """Issue 7: every refused upload gets 400, the admin's add form included."""
    response = admin_add(superuser_client, 880001, TEXT, name="photo.jpg")
    assert MSG_NOT_IMAGE in message_of(response)
    nothing_stored()
    assert response.status_code == 400, f"admin add answered {response.status_code} to a refused image"


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


def test_a_photo_search_without_a_file_is_a_400_saying_so(hostile_client, db):
    response = hostile_client.post("/api/search-by-image", {"k": "5"})
    record("POST /api/search-by-image", "no image field", response)
    assert response.status_code == 400
    assert "Choose a photo" in response.json()["error"]


def test_an_image_over_image_max_pixels_is_refused_from_its_header(
    hostile_client, superuser_client, catalog, nothing_stored, settings
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


class CountingInput(io.BytesIO):
    """A wsgi.input that counts what the application read from it."""

    read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = super().readline(size)
        self.read_bytes += len(data)
        return data


def wsgi_post(path: str, *, content_length: str, body: bytes = b"--x\r\n") -> tuple[str, dict, bytes, CountingInput]:
    from django.core.handlers.wsgi import WSGIHandler

    stream = CountingInput(body)
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "multipart/form-data; boundary=x",
        "CONTENT_LENGTH": content_length,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": stream,
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    answer: dict[str, object] = {}

    def start_response(status, headers, exc_info=None):
        answer["status"] = status
        answer["headers"] = dict(headers)

    body_out = b"".join(WSGIHandler()(environ, start_response))
    return str(answer["status"]), answer["headers"], body_out, stream


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


@pytest.mark.parametrize("content_length", ["abc", "1e9", "12 34"], ids=["letters", "float", "space"])
def test_a_malformed_content_length_is_a_400_not_a_crash(db, content_length: str):
    status, _, body, stream = wsgi_post("/api/search-by-image", content_length=content_length)
    assert status.startswith("400"), status
    assert b"Content-Length" in body
    assert stream.read_bytes == 0


def test_an_oversize_upload_through_the_client_gets_413_and_stores_nothing(
    hostile_client, superuser_client, catalog, nothing_stored, settings
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


def test_an_upload_over_image_max_bytes_but_under_the_body_limit_is_a_400(
    hostile_client, superuser_client, catalog, nothing_stored, settings
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


@pytest.mark.parametrize("case", PHOTO_ACCEPTED, ids=_ids(PHOTO_ACCEPTED))
def test_photo_api_accepts_real_world_image_variants(hostile_client, catalog, case: Accepted):
    response = photo_api(hostile_client, case.data(), name=case.name, content_type=case.content_type, k="5")
    record("POST /api/search-by-image", case.label, response)
    assert response.status_code == 200, message_of(response)
    results = response.json()["results"]
    assert len(results) == 5
    assert {r["id"] for r in results} <= set(catalog)
    assert media_files() == set()  # a photo search stores nothing


def _stored(product: Product) -> tuple[Path, Path]:
    image, thumb = Path(product.image.path), Path(product.thumbnail.path)
    return image, thumb


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


# --- Bulk zip -------------------------------------------------------------------------------------------

STYLES_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"


def styles_csv(*ids: int) -> bytes:
    rows = "".join(f"{i},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Bulk Tshirt {i}\n" for i in ids)
    return (STYLES_HEADER + rows).encode()


def make_zip(members: list[tuple[str | zipfile.ZipInfo, bytes]], *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return out.getvalue()


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


def bulk_upload(client: Client, data: bytes, *, name: str = "catalog.zip"):
    return client.post(BULK, {"archive": SimpleUploadedFile(name, data, content_type="application/zip")})


@pytest.fixture
def import_jobs_dir(settings, tmp_path: Path) -> Path:
    """Where bulk uploads are stored for their import job, for this test alone."""
    settings.IMPORT_JOBS_DIR = tmp_path / "imports"
    return settings.IMPORT_JOBS_DIR


def import_jobs_files(directory: Path) -> list[Path]:
    return list(directory.rglob("*")) if directory.exists() else []


@pytest.mark.parametrize("case", BAD_ZIPS, ids=_ids(BAD_ZIPS))
def test_bulk_upload_refuses_unsafe_or_broken_zips_cheaply_and_stores_nothing(
    superuser_client, nothing_stored, monkeypatch, tmp_path: Path, import_jobs_dir: Path, case: BadZip
):
    from tests.test_import_jobs import job_id_of, run_job_inline

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


def test_bulk_upload_of_a_good_zip_imports_it(superuser_client, import_jobs_dir: Path):
    """The control for the refusals above: the same layout, safe, is imported."""
    from tests.test_import_jobs import job_id_of, run_job_inline

    data = make_zip([("styles.csv", styles_csv(4242)), ("images/4242.jpg", jpeg_bytes())])
    response = bulk_upload(superuser_client, data)
    assert run_job_inline(job_id_of(response)).status == "done"
    product = Product.objects.get(id=4242)
    assert Path(product.image.path).resolve().is_relative_to(Path(settings.MEDIA_ROOT).resolve())
    assert import_jobs_files(import_jobs_dir) == []


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
    from tests.test_import_jobs import job_id_of, run_job_inline

    data = make_zip([("styles.csv", styles_csv(4243)), ("images/4243.jpg", member())])
    response = superuser_client.post(BULK, {"archive": SimpleUploadedFile("c.zip", data)})
    job = run_job_inline(job_id_of(response))
    page = superuser_client.get(response["Location"])
    record("admin bulk upload", label, page)
    assert (job.status, job.skipped, job.created) == ("done", 1, 0)
    assert "line 2: image 4243.jpg" in page.content.decode()
    nothing_stored()


# =============================================================================================
# 2. Queries
# =============================================================================================

LONG = "blue " * 1400  # 7k characters: under REQUEST_URI_MAX_CHARS (8000) once in an address
TOO_LONG = "blue " * 2000  # 10k characters: no address this long is answered (414)
HOSTILE_QUERIES: list[tuple[str, dict[str, str], int]] = [
    ("empty q", {"q": ""}, 200),
    ("whitespace q", {"q": " \t\n  "}, 200),
    ("7k-char q", {"q": LONG}, 200),
    ("10k-char q (the address is over REQUEST_URI_MAX_CHARS)", {"q": TOO_LONG}, 414),
    ("emoji q", {"q": "😀👗🧢 red"}, 200),
    ("RTL q (Hebrew + Arabic + RLO)", {"q": "\u202eשלום مرحبا red"}, 200),
    ("combining characters q", {"q": "re\u0301d\u0336 z\u0351\u0352\u0353algo"}, 200),
    ("NUL byte q", {"q": "red\x00cap"}, 400),
    ("control characters q", {"q": "red\x01\x1b[31m\x7f"}, 200),
    ("% q", {"q": "%"}, 200),
    ("_ q", {"q": "_"}, 200),
    ("%% __ q", {"q": "%%__%_"}, 200),
    ("backslash q", {"q": "\\"}, 200),
    ("SQL q", {"q": "'; DROP TABLE gallery_product; --"}, 200),
    ("SQL OR q", {"q": "red' OR '1'='1"}, 200),
    ("SQL UNION q", {"q": 'x" UNION SELECT password FROM auth_user --'}, 200),
    ("regex q", {"q": ".*(a+)+$ [[:alpha:]] \\b"}, 200),
    ("tsquery operators q", {"q": "red & !blue | <-> :* ("}, 200),
    ("huge k", {"q": "red", "k": "1000000"}, 400),
    ("k of 5000 digits", {"q": "red", "k": "9" * 5000}, 400),
    ("negative k", {"q": "red", "k": "-5"}, 400),
    ("zero k", {"q": "red", "k": "0"}, 400),
    ("k=abc", {"q": "red", "k": "abc"}, 400),
    ("k=1.5", {"q": "red", "k": "1.5"}, 400),
    ("k=1e3", {"q": "red", "k": "1e3"}, 400),
    ("k=NaN", {"q": "red", "k": "NaN"}, 400),
    ("filter with NUL", {"gender": "Men\x00"}, 400),
    ("filter of 7k chars", {"colour": "R" * 7_000}, 200),
    ("filter of 10k chars", {"colour": "R" * 10_000}, 414),
    ("filter SQL", {"type": "x' OR 1=1 --"}, 200),
    ("filter %", {"colour": "%"}, 200),
    ("photo token garbage (7k chars)", {"photo": "A" * 7_000}, 200),
    ("photo token javascript:", {"photo": "javascript:alert(1)"}, 200),
]
# Raw query strings, sent as they are (not re-encoded by the client).
RAW_QUERIES: list[tuple[str, str, int]] = [
    ("%00 in q", "q=red%00", 400),
    ("invalid UTF-8 %ff%fe", "q=%ff%fe%fd", 200),
    ("lone UTF-8 continuation bytes", "q=%80%80red", 200),
    ("overlong UTF-8 NUL %c0%80", "q=%c0%80", 200),
    ("UTF-16 surrogate as UTF-8 %ed%a0%80", "q=%ed%a0%80", 200),
    ("bare %", "q=%", 200),
    ("broken escape %g1", "q=%g1%2", 200),
    ("repeated q", "q=red&q=blue&q=%00", 400),
    ("k twice", "k=5&k=abc", 400),
    ("param without =", "q", 200),
    ("empty key", "=red&&&", 200),
]
TRAIL_CASES: list[tuple[str, str, int]] = [
    ("trail: very long (7k chars)", "1," * 1_700, 400),
    ("trail: very long (20k chars, over REQUEST_URI_MAX_CHARS)", "1," * 10_000, 414),
    ("trail: nested commas", ",,,101,,,,102,,", 200),
    ("trail: only commas", ",,,,,,", 200),
    ("trail: huge id (20 digits)", "99999999999999999999", 400),
    ("trail: 15-digit id (unknown product)", "999999999999999", 200),
    ("trail: negative id", "-5", 400),
    ("trail: p", "p", 400),
    ("trail: n", "n", 400),
    ("trail: pn12", "pn12", 400),
    ("trail: p0", "p0", 200),
    ("trail: 48 pinned steps", ",".join([f"p{i}" for i in range(101, 125)] * 2), 200),
    ("trail: 49 steps", ",".join(str(i) for i in range(49)), 400),
    ("trail: only dislikes", "n101,n102,n103", 200),
    ("trail: SQL", "1;DROP TABLE x", 400),
    ("trail: NUL", "101\x00", 400),
    ("trail: unicode digits", "١٠١,１０２", 200),
    ("trail: whitespace", " 101 , p102 ", 200),
]


def _endpoints(product_id: int) -> list[tuple[str, str, bool]]:
    return [
        ("/", "GET /", False),
        ("/api/search", "GET /api/search", True),
        (f"/similar/{product_id}/", "GET /similar/<id>/", False),
        (f"/api/similar/{product_id}", "GET /api/similar/<id>", True),
    ]


def _check(response, *, expected: int, api: bool) -> None:
    assert response.status_code != 500
    assert response.status_code == expected, f"{response.status_code}: {message_of(response)}"
    if api:
        assert response["Content-Type"] == "application/json"
        body = response.json()
        if expected >= 400:
            assert isinstance(body["error"], str) and body["error"]
        else:
            assert isinstance(body["results"], list)
    elif expected >= 400:
        assert message_of(response)


@pytest.mark.parametrize(("label", "params", "expected"), HOSTILE_QUERIES, ids=[c[0] for c in HOSTILE_QUERIES])
def test_hostile_query_parameters_never_cause_a_500(hostile_client, catalog, label, params, expected):
    for path, where, api in _endpoints(catalog[0]):
        response = hostile_client.get(path, params)
        record(where, label, response)
        _check(response, expected=expected, api=api)


@pytest.mark.parametrize(("label", "query", "expected"), RAW_QUERIES, ids=[c[0] for c in RAW_QUERIES])
def test_raw_query_strings_never_cause_a_500(hostile_client, catalog, label, query, expected):
    for path, where, api in _endpoints(catalog[0]):
        response = hostile_client.get(path, QUERY_STRING=query)
        record(where, label, response)
        _check(response, expected=expected, api=api)


@pytest.mark.parametrize(("label", "trail", "expected"), TRAIL_CASES, ids=[c[0] for c in TRAIL_CASES])
def test_hostile_trails_never_cause_a_500(hostile_client, catalog, label, trail, expected):
    for path, where, api in _endpoints(catalog[0])[2:]:
        response = hostile_client.get(path, {"trail": trail})
        record(where, label, response)
        _check(response, expected=expected, api=api)


def test_a_long_query_is_capped_not_refused(hostile_client, catalog, settings):
    body = hostile_client.get("/api/search", {"q": LONG}).json()
    assert len(body["query"]) <= settings.SEARCH_QUERY_MAX_CHARS
    assert body["query"].startswith("blue blue")


def test_sql_and_wildcards_are_searched_literally(hostile_client, catalog):
    # The quote and the operators are just characters: the query is the words "red", "or", "1"; it finds what
    # "red" finds (a partial match, said so), never the whole catalog.
    injected = hostile_client.get("/api/search", {"q": "red' OR '1'='1", "k": 100}).json()
    plain = hostile_client.get("/api/search", {"q": "red", "k": 100}).json()
    assert [r["id"] for r in injected["results"]] == [r["id"] for r in plain["results"]]
    assert 0 < len(plain["results"]) < len(catalog)
    # "_" holds no word: it is the empty query (the starting grid), not a LIKE wildcard.
    assert (
        hostile_client.get("/api/search", {"q": "_"}).json()["results"]
        == (hostile_client.get("/api/search", {"q": ""}).json()["results"])
    )
    assert hostile_client.get("/api/search", {"colour": "%"}).json()["results"] == []
    assert Product.objects.count() == len(catalog)


@pytest.mark.parametrize(
    ("label", "path", "expected"),
    [
        ("id 0", "/api/similar/0", 404),
        ("id past 2^63", "/api/similar/99999999999999999999999", 404),
        ("id 2^63-1", f"/api/similar/{2**63 - 1}", 404),
        ("id 2^64", f"/api/similar/{2**64}", 404),
        ("negative id", "/api/similar/-1", 404),
        ("non-numeric id", "/api/similar/abc", 404),
        ("percent-escaped garbage id", "/api/similar/%ff%00", 404),
        ("page: id past 2^63", "/similar/99999999999999999999999/", 404),
        ("page: id 0", "/similar/0/", 404),
        ("page: id 2^64", f"/similar/{2**64}/", 404),
    ],
    ids=lambda v: v if isinstance(v, str) and not v.startswith("/") else None,
)
def test_out_of_range_product_ids_are_404_not_500(hostile_client, catalog, label, path, expected):
    response = hostile_client.get(path, {"trail": "101"})
    record(f"GET {path[:40]}", label, response)
    assert response.status_code == expected, message_of(response)
    if path.startswith("/api/similar/") and path.split("/")[-1].isdigit():
        assert "No product has id" in response.json()["error"]


def test_too_many_query_parameters_are_a_400_not_a_500(hostile_client, catalog):
    # Short names: the address stays under REQUEST_URI_MAX_CHARS, so the field count is what is judged.
    query = "&".join(f"{i:x}" for i in range(1500))
    for path, where, _ in _endpoints(catalog[0]):
        response = hostile_client.get(path, QUERY_STRING=query)
        record(where, "1500 query parameters", response)
        assert response.status_code == 400


def test_reflected_input_is_escaped_and_pages_carry_the_security_headers(hostile_client, catalog):
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    for path, params in (
        ("/", {"q": payload}),
        (f"/similar/{catalog[0]}/", {"trail": payload}),
        (f"/similar/{catalog[0]}/", {"q": payload, "colour": payload}),
        ("/", {"photo": "javascript:alert(1)"}),
    ):
        response = hostile_client.get(path, params)
        record(f"GET {path}", f"reflected XSS in {', '.join(params)}", response)
        body = response.content.decode()
        # The payload shows only escaped (&lt;script&gt;...), never as markup.
        assert "<script>alert" not in body
        assert "<img src=x" not in body
        assert 'src="javascript:' not in body
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    "path",
    [
        "/media/../config/settings.py",
        "/media/%2e%2e/%2e%2e/etc/passwd",
        "/media/..%2f..%2fmanage.py",
        "/media//etc/passwd",
    ],
)
def test_media_urls_cannot_escape_media_root(hostile_client, db, path: str):
    response = hostile_client.get(path)
    record("GET /media/...", f"path traversal {path}", response)
    assert response.status_code in (400, 404)
    assert b"DJANGO_SETTINGS_MODULE" not in response.content and b"root:" not in response.content


def test_wrong_methods_are_405(hostile_client, catalog):
    for method, path in (("get", "/api/search-by-image"), ("get", "/search-by-image"), ("post", "/api/search")):
        response = getattr(hostile_client, method)(path)
        record(f"{method.upper()} {path}", "wrong method", response)
        assert response.status_code == 405


# =============================================================================================
# 3. Security
# =============================================================================================


def _manage(tmp_path: Path, *args: str, **env_overrides: str) -> subprocess.CompletedProcess:
    """``manage.py <args>`` with production settings (GALLERY_ENV=production), as a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DEBUG"}}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "GALLERY_ENV": "production",
            "ALLOWED_HOSTS": "example.com",
            "REDIS_URL": settings.REDIS_URL,
            "DATABASE_URL": os.environ.get("DATABASE_URL") or f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
            "GALLERY_VAR_DIR": str(tmp_path / "var"),
            "STATIC_ROOT": str(tmp_path / "static"),
        }
    )
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )


def test_the_deployment_checks_pass_with_production_settings(tmp_path: Path):
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!@#$%^&*(-_=+)"
    # One key starting with "$" every time: such a key is the key, not the name of another variable.
    for secret in ("$" + "".join(secrets.choice(alphabet) for _ in range(50)), secrets.token_urlsafe(50)):
        result = _manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", SECRET_KEY=secret)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path):
    result = _manage(tmp_path, "check")  # SECRET_KEY removed from the environment
    assert result.returncode != 0
    assert "SECRET_KEY must be set when GALLERY_ENV=production" in result.stderr


def test_production_refuses_to_start_without_allowed_hosts(tmp_path: Path):
    result = _manage(tmp_path, "check", SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="")
    assert result.returncode != 0
    assert "ALLOWED_HOSTS must be set" in result.stderr


@pytest.fixture
def csrf_client(db) -> Client:
    return Client(enforce_csrf_checks=True, raise_request_exception=False)


def test_photo_search_form_without_a_csrf_token_is_403(csrf_client, catalog, nothing_stored):
    response = photo_page(csrf_client, jpeg_bytes())
    record("POST /search-by-image (CSRF enforced)", "no CSRF token", response)
    assert response.status_code == 403
    # The control: with the page's token the same request gets through (and is judged on its image).
    csrf_client.get("/")
    token = csrf_client.cookies["csrftoken"].value
    response = csrf_client.post(
        "/search-by-image", {"image": SimpleUploadedFile("t.jpg", TEXT), "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 400
    nothing_stored()


def test_admin_login_without_a_csrf_token_is_403(csrf_client):
    _staff_user()
    response = csrf_client.post("/admin/login/", {"username": "admin", "password": "pw-admin-123"})
    record("POST /admin/login/ (CSRF enforced)", "no CSRF token", response)
    assert response.status_code == 403
    csrf_client.get("/admin/login/")
    token = csrf_client.cookies["csrftoken"].value
    response = csrf_client.post(
        "/admin/login/", {"username": "admin", "password": "pw-admin-123", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302


@pytest.mark.parametrize("path", [ADMIN_ADD, BULK, "/admin/gallery/product/"], ids=["add", "bulk", "action"])
def test_admin_forms_without_a_csrf_token_are_403_and_store_nothing(csrf_client, nothing_stored, path: str):
    csrf_client.force_login(_staff_user())
    data = {
        ADMIN_ADD: {"id": 880040, "name": "x", "image_upload": SimpleUploadedFile("a.jpg", jpeg_bytes())},
        BULK: {"archive": SimpleUploadedFile("c.zip", make_zip([("styles.csv", styles_csv(880041))]))},
        "/admin/gallery/product/": {"action": "retry_embedding", "_selected_action": ["1"]},
    }[path]
    response = csrf_client.post(path, data)
    record(f"POST {path} (CSRF enforced, staff)", "no CSRF token", response)
    assert response.status_code == 403
    nothing_stored()


def test_the_photo_api_needs_no_csrf_token_and_ignores_the_session(
    csrf_client, catalog, settings, redis_db, monkeypatch
):
    """The API is csrf-exempt because it never looks at cookies: an admin's session changes nothing."""
    anonymous = photo_api(csrf_client, jpeg_bytes(), k="5", REMOTE_ADDR="10.7.0.1")
    assert anonymous.status_code == 200
    assert "Cookie" not in anonymous.get("Vary", "")

    csrf_client.force_login(_staff_user())
    as_admin = photo_api(csrf_client, jpeg_bytes(), k="5", REMOTE_ADDR="10.7.0.2")
    assert as_admin.status_code == 200
    assert as_admin.json() == anonymous.json()
    # The session was never read (no Vary: Cookie) nor written (no Set-Cookie).
    assert "Cookie" not in as_admin.get("Vary", "")
    assert not as_admin.cookies

    # And no exemption from the limit: the admin is limited like anyone.
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 1
    _fixed_rate_window(monkeypatch)
    assert photo_api(csrf_client, jpeg_bytes(), REMOTE_ADDR="10.7.0.3").status_code == 200
    limited = photo_api(csrf_client, jpeg_bytes(), REMOTE_ADDR="10.7.0.3")
    record("POST /api/search-by-image (logged-in admin session)", "2nd photo search with limit 1/min", limited)
    assert limited.status_code == 429


@pytest.mark.parametrize(
    "path", ["/admin/", "/admin/gallery/product/", ADMIN_ADD, BULK, "/admin/gallery/product/101/change/"]
)
def test_admin_pages_send_anonymous_visitors_to_the_login(hostile_client, catalog, path: str):
    response = hostile_client.get(path)
    record(f"GET {path} (anonymous)", "no login", response)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("path", ["/admin/gallery/product/", ADMIN_ADD, BULK])
def test_admin_pages_refuse_a_logged_in_non_staff_user(hostile_client, db, path: str):
    hostile_client.force_login(_staff_user(superuser=False, staff=False, username="shopper"))
    response = hostile_client.get(path)
    record(f"GET {path} (logged-in non-staff)", "non-staff session", response)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_a_non_staff_user_cannot_add_or_bulk_upload(hostile_client, db, nothing_stored):
    hostile_client.force_login(_staff_user(superuser=False, staff=False, username="shopper"))
    add = admin_add(hostile_client, 880050, jpeg_bytes())
    bulk = bulk_upload(
        hostile_client, make_zip([("styles.csv", styles_csv(880051)), ("images/880051.jpg", jpeg_bytes())])
    )
    record("POST admin add (logged-in non-staff)", "valid product + image", add)
    record("POST admin bulk upload (logged-in non-staff)", "valid zip", bulk)
    assert add.status_code == 302 and add["Location"].startswith("/admin/login/")
    assert bulk.status_code == 302 and bulk["Location"].startswith("/admin/login/")
    nothing_stored()


def test_staff_without_the_add_permission_cannot_add_or_bulk_upload(hostile_client, db, nothing_stored):
    user = _staff_user(superuser=False, staff=True, username="viewer")
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    hostile_client.force_login(user)
    assert hostile_client.get("/admin/gallery/product/").status_code == 200
    add = admin_add(hostile_client, 880052, jpeg_bytes())
    bulk = bulk_upload(
        hostile_client, make_zip([("styles.csv", styles_csv(880053)), ("images/880053.jpg", jpeg_bytes())])
    )
    record("POST admin add (staff, view permission only)", "valid product + image", add)
    record("POST admin bulk upload (staff, view permission only)", "valid zip", bulk)
    assert add.status_code == 403
    assert bulk.status_code == 403
    nothing_stored()


def _fixed_rate_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """One fixed instant, 50 s before the minute turns: every request counts in the same window on any machine."""
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: 1_699_999_990.0))


def test_photo_search_is_rate_limited_per_client_through_the_shared_cache(
    hostile_client, catalog, settings, redis_db, monkeypatch
):
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 3
    _fixed_rate_window(monkeypatch)
    client_ip = "10.1.2.3"
    statuses = [photo_api(hostile_client, jpeg_bytes(), k="3", REMOTE_ADDR=client_ip).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    fourth = photo_api(hostile_client, jpeg_bytes(), REMOTE_ADDR=client_ip)
    record("POST /api/search-by-image", "4th photo search in a minute (limit 3)", fourth)
    assert fourth.status_code == 429
    assert fourth["Content-Type"] == "application/json"
    assert "Too many photo searches" in fourth.json()["error"]
    retry_after = int(fourth["Retry-After"])
    assert retry_after == 51  # the seconds left in the window, plus one
    assert str(retry_after) in fourth.json()["error"]

    # The page shares the count; X-Forwarded-For from the client is not trusted.
    page = photo_page(hostile_client, jpeg_bytes(), REMOTE_ADDR=client_ip, HTTP_X_FORWARDED_FOR="10.9.9.9")
    record("POST /search-by-image", "5th photo search in a minute (limit 3), spoofed X-Forwarded-For", page)
    assert page.status_code == 429
    assert page["Retry-After"].isdigit()
    assert "Too many photo searches" in message_of(page)

    # The count lives in Redis, shared by every web process.
    assert any(b"ratelimit:photo:10.1.2.3" in key for key in redis_db.keys("*"))
    other = photo_api(hostile_client, jpeg_bytes(), REMOTE_ADDR="10.1.2.4")
    assert other.status_code == 200


# =============================================================================================
# 4. Faults
# =============================================================================================

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


def test_with_redis_down_search_and_similar_keep_working(hostile_client, catalog, redis_down, settings):
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 1  # the limit fails open rather than refusing everyone
    with connection_attempts(DEAD_REDIS_PORT) as attempts:
        checks = [
            ("GET /", hostile_client.get("/", {"q": "red"})),
            ("GET /api/search", hostile_client.get("/api/search", {"q": "red", "gender": "Men"})),
            ("GET /similar/<id>/", hostile_client.get(f"/similar/{catalog[0]}/", {"trail": "p102,n103"})),
            ("GET /api/similar/<id>", hostile_client.get(f"/api/similar/{catalog[0]}", {"colour": "Red"})),
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


@pytest.fixture
def big_catalog(catalog, monkeypatch, settings) -> list[int]:
    """The catalog, too large for the exact fallback; a rebuild already requested (no worker runs here)."""
    from django.core.cache import cache

    monkeypatch.setattr(selectors, "EXACT_FALLBACK_MAX", 5)
    cache.set(tasks.BUILD_REQUESTED, "requested by the test", 60)
    return catalog


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


def test_a_build_left_half_written_by_a_killed_process_is_ignored(hostile_client, big_catalog):
    """What SIGKILL leaves: a .tmp- build folder with a partial file. Readers never look at it."""
    pid = big_catalog[0]
    before = _served_ids(hostile_client, pid)
    partial = _index_dir() / index_module.BUILDS_DIR / ".tmp-20990101T000000000000-dead00"
    partial.mkdir()
    (partial / index_module.INDEX_FILE).write_bytes(os.urandom(5000))
    runtime.reset()
    assert _served_ids(hostile_client, pid) == before
