"""Hardening, round 3: stored images are pixels only, bad photos are refused before the encoder loads,
production refuses DEBUG, and the API answers wrong methods and over-long addresses in JSON on a live server.

Uploads go through the real admin and catalog import, and stored files are read back byte by byte. The
photo refusals run in a fresh process, so that what it imported is what one request imported. The live
server is gunicorn started from the Procfile's own command line.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import secrets
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from PIL import Image, ImageCms, PngImagePlugin

from gallery.models import Product
from gallery.services import catalog_import
from recommender.preprocess import ImageRejected as PreprocessRejected
from recommender.preprocess import image_check, image_load, image_prepare
from tests.conftest import ROOT, admin_product_form, jpeg_bytes, process_group_stop, subprocess_env, wait_for
from tests.test_security import production
from tests.test_worker import free_port

# =============================================================================================
# 5. Stored images are pixels only
# =============================================================================================

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


@pytest.fixture
def superuser_client(db) -> Client:
    from django.contrib.auth.models import User

    client = Client(raise_request_exception=False)
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw-admin-123"))
    return client


def admin_add(client: Client, product_id: int, data: bytes, *, name: str = "photo.jpg", content_type="image/jpeg"):
    form = admin_product_form(product_id, data, filename=name, content_type=content_type)
    return client.post("/admin/gallery/product/add/", form)


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


# =============================================================================================
# 6. Photo searches are refused before the encoder loads
# =============================================================================================


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0"))
        + _png_chunk(b"IEND", b"")
    )


REFUSED_PHOTOS = {
    "40000x40000 PNG": (png_claiming(40_000, 40_000), "The image is too large"),
    "8000x6000 PNG (over IMAGE_MAX_PIXELS, under Pillow's bomb limit)": (
        png_claiming(8000, 6000),
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
        image_check(png_claiming(40_000, 40_000))
    # A header that passes over data that cannot decode: the check passes, the decode refuses.
    whole = jpeg_bytes(size=(240, 320))
    truncated = whole[: len(whole) // 2]
    assert image_check(truncated) == ("JPEG", 240, 320)
    with pytest.raises(PreprocessRejected, match="truncated or corrupt"):
        image_load(truncated)


# =============================================================================================
# 7. Production refuses DEBUG; the API's wrong methods and long addresses in JSON, live
# =============================================================================================

_SETTINGS_PROBE = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"


def load_settings(tmp_path: Path, **env_overrides: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh process, as a server would, with production defaults around overrides."""
    return production(tmp_path, probe=_SETTINGS_PROBE, **env_overrides)


@pytest.mark.parametrize("value", ["1", "true", "on", "yes"])
def test_production_refuses_to_start_with_debug_on(tmp_path: Path, value: str):
    result = load_settings(tmp_path, DEBUG=value)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DEBUG must be off when GALLERY_ENV=production" in result.stderr


def test_production_starts_with_debug_off_and_local_may_debug(tmp_path: Path):
    off = load_settings(tmp_path, DEBUG="0")
    assert off.returncode == 0, off.stderr[-2000:]
    assert off.stdout.strip() == "False"
    local = load_settings(tmp_path, GALLERY_ENV="local", DEBUG="1")
    assert local.returncode == 0, local.stderr[-2000:]
    assert local.stdout.strip() == "True"


@pytest.mark.parametrize("value", ["0", "8191", "100000"])
def test_a_request_uri_limit_gunicorn_would_beat_is_refused(tmp_path: Path, value: str):
    result = load_settings(tmp_path, REQUEST_URI_MAX_CHARS=value)
    assert result.returncode != 0
    assert "REQUEST_URI_MAX_CHARS must be from 1 to 8100" in result.stderr


WRONG_METHODS = [
    ("post", "/api/search", "GET, HEAD"),
    ("put", "/api/search", "GET, HEAD"),
    ("patch", "/api/similar/11", "GET, HEAD"),
    ("delete", "/api/similar/11", "GET, HEAD"),
    ("post", "/api/status", "GET, HEAD"),
    ("delete", "/api/openapi.json", "GET, HEAD"),
    ("get", "/api/search-by-image", "POST"),
]


def _assert_json_405(status: int, headers: dict[str, str], body: bytes, method: str, allowed: str) -> None:
    assert status == 405, body[:300]
    assert headers["content-type"] == "application/json"
    assert headers["allow"] == allowed
    assert json.loads(body)["error"] == f"{method.upper()} is not allowed here; use {allowed}."


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS)
def test_wrong_methods_under_the_api_are_json_405_with_csrf_checks_enforced(db, method, path, allowed):
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    response = getattr(client, method)(path)
    headers = {key.lower(): value for key, value in response.headers.items()}
    _assert_json_405(response.status_code, headers, response.content, method, allowed)


def test_csrf_still_guards_the_pages_and_forms(db):
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    assert client.post("/search-by-image").status_code == 403
    assert client.post("/admin/login/", {"username": "a", "password": "b"}).status_code == 403


def _api_views() -> list[tuple[str, object]]:
    found = []

    def walk(patterns, prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                route = prefix + str(entry.pattern)
                if route.lstrip("^").startswith("api/"):
                    found.append((route, entry.callback))

    walk(get_resolver().url_patterns, "")
    return found


def test_every_api_view_is_csrf_exempt_so_the_view_answers_for_its_methods():
    views = _api_views()
    assert len(views) >= 5, views
    not_exempt = [route for route, view in views if not getattr(view, "csrf_exempt", False)]
    assert not not_exempt, not_exempt


def test_an_over_long_address_is_a_414_json_under_the_api_and_plain_text_elsewhere(db):
    client = Client(raise_request_exception=False)
    limit = settings.REQUEST_URI_MAX_CHARS
    api = client.get("/api/search", {"q": "a" * limit})
    assert api.status_code == 414
    assert api["Content-Type"] == "application/json"
    assert api.json()["error"].startswith("The address is too long: ")
    assert f"the limit is {limit}" in api.json()["error"]
    page = client.get("/", {"q": "a" * limit})
    assert page.status_code == 414
    assert page["Content-Type"].startswith("text/plain")
    within = client.get("/api/search", {"q": "a" * (limit - 100)})
    assert within.status_code == 200


def test_the_api_description_names_the_414_of_every_endpoint(db):
    import jsonschema

    client = Client(raise_request_exception=False)
    spec = client.get("/api/openapi.json").json()
    long_query = {"q": "a" * settings.REQUEST_URI_MAX_CHARS}
    for template, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "414" in operation["responses"], f"{method.upper()} {template}"
            path = template.replace("{id}", "11")
            response = getattr(client, method)(path + "?" + "&".join(f"{k}={v}" for k, v in long_query.items()))
            assert response.status_code == 414
            schema = operation["responses"]["414"]["content"]["application/json"]["schema"]
            jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(response.json())


# --- The live server, as the Procfile runs it ------------------------------------------------------


def _procfile_web_command() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("the Procfile has no web process")


def _answers(port: int) -> bool:
    try:
        return _request(port, "GET", "/healthz")[0] == 200
    except OSError:
        return False


def _request(port: int, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        if method in {"POST", "PUT", "PATCH"}:
            connection.putheader("Content-Length", "0")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def procfile_web(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[int]:
    """gunicorn started from the Procfile's web command (one worker: the test's machine is small); its port."""
    port = free_port()
    log = tmp_path_factory.mktemp("web") / "gunicorn.log"
    bin_dir = str(Path(sys.executable).parent)
    env = subprocess_env(PORT=str(port), PATH=f"{bin_dir}:{os.environ.get('PATH', '')}", DEBUG="0")
    with django_db_blocker.unblock(), log.open("wb") as fh:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {_procfile_web_command()} --workers 1"],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: _answers(port) or process.poll() is not None, timeout=90, what="gunicorn to answer")
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        yield port
    finally:
        process_group_stop(process, timeout=30)


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS)
def test_on_the_live_server_wrong_methods_under_the_api_are_json_405(procfile_web: int, method, path, allowed):
    status, headers, body = _request(procfile_web, method.upper(), path)
    _assert_json_405(status, headers, body, method, allowed)


def test_on_the_live_server_csrf_still_guards_the_photo_form(procfile_web: int):
    status, _, _ = _request(procfile_web, "POST", "/search-by-image")
    assert status == 403


def test_on_the_live_server_an_over_long_address_is_a_json_414_under_the_api(procfile_web: int):
    limit = settings.REQUEST_URI_MAX_CHARS
    target = "/api/search?q=" + "a" * (limit + 50 - len("/api/search?q="))
    status, headers, body = _request(procfile_web, "GET", target)
    assert status == 414, body[:300]
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == f"The address is too long: {limit + 50} characters, the limit is {limit}."

    page_target = "/?q=" + "a" * (limit + 50)
    status, headers, body = _request(procfile_web, "GET", page_target)
    assert status == 414
    assert headers["content-type"].startswith("text/plain")


def test_on_the_live_server_addresses_gunicorns_default_refused_are_served(procfile_web: int):
    # gunicorn's default request-line limit is 4094 bytes; this one is longer, and under ours.
    target = "/api/search?q=" + "blue+" * 1000
    assert 4094 < len(target) < settings.REQUEST_URI_MAX_CHARS
    status, headers, body = _request(procfile_web, "GET", target)
    assert status == 200, body[:300]
    assert isinstance(json.loads(body)["results"], list)


def test_on_the_live_server_only_lines_beyond_gunicorns_ceiling_get_its_own_answer(procfile_web: int):
    """The one case left to gunicorn: a request line over 8190 bytes, which it refuses before Django sees it."""
    status, headers, _ = _request(procfile_web, "GET", "/api/search?q=" + "a" * 8200)
    assert status == 414
    assert not headers.get("content-type", "").startswith("application/json")


_GUNICORN_COMMANDS = {
    "Procfile": r"gunicorn config\.wsgi[^\n]*--limit-request-line (\d+)",
    "Dockerfile": r'"gunicorn", "config\.wsgi"[^\n]*"--limit-request-line", "(\d+)"',
    "docker-compose.yml": r"gunicorn config\.wsgi[^\n]*--limit-request-line (\d+)",
    "deploy/systemd/gallery-web.service": r"gunicorn config\.wsgi[^\n]*--limit-request-line (\d+)",
    "gallery/management/commands/serve.py": r'"--limit-request-line",\s*"(\d+)"',
}


@pytest.mark.parametrize("path", sorted(_GUNICORN_COMMANDS))
def test_every_shipped_gunicorn_command_lets_the_site_answer_long_addresses(path: str):
    text = (ROOT / path).read_text()
    assert text.count("gunicorn") and re.search(_GUNICORN_COMMANDS[path], text), f"{path}: no --limit-request-line"
    limits = {int(value) for value in re.findall(_GUNICORN_COMMANDS[path], text)}
    # The whole request line: the longest common method, the address, the protocol.
    assert all(limit >= settings.REQUEST_URI_MAX_CHARS + len("OPTIONS  HTTP/1.1") for limit in limits), limits
