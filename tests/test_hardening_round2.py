"""Issue 15: proxies and rate limits, the cache serializer, long ids on trails, JSON errors, HEAD, production settings.

Requests go through the Django test client with the real middleware and
views, photo searches through the real encoder and index, the cache through
the real Redis. Production settings are loaded in a fresh process, as a
server would load them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError
from django.db.backends.utils import CursorWrapper
from django.test import Client, RequestFactory
from django.urls import path

from gallery import ratelimit
from gallery import trail as trail_module
from gallery.catalog import MAX_ID as IMPORT_MAX_ID
from gallery.services import catalog_import
from gallery.trail import Trail, TrailError
from recommender import runtime, services
from tests.conftest import ROOT, demo_rows_store, jpeg_bytes
from tests.test_catalog_import import write_catalog

LONG_ID = 1_000_000_000_000_001  # 16 digits: importable, and once refused by the trail parser
LARGEST_ID = 2**53 - 1  # the largest id catalog import accepts
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "gallery.env.example"


# --- Fixtures: a few embedded products, the encoder loaded once ----------------------------------------

PRODUCTS = {
    11: ("Men Red Tshirts", (200, 30, 30), "box"),
    12: ("Men Blue Tshirts", (30, 60, 200), "box"),
    13: ("Women Green Caps", (30, 160, 40), "disc"),
    14: ("Women Red Caps", (210, 40, 30), "disc"),
    LONG_ID: ("Men Black Tshirts", (20, 20, 20), "box"),
    LARGEST_ID: ("Women Yellow Caps", (230, 200, 20), "disc"),
}


@pytest.fixture(scope="session")
def round2_encoder():
    from recommender.encoders import encoder_load

    return encoder_load(name="efficientnet-lite0")


@pytest.fixture(scope="session")
def round2_vectors(round2_encoder) -> dict[int, np.ndarray]:
    from recommender.pipeline import ImageItem, embed_stream

    items = [
        ImageItem(key=pid, source=jpeg_bytes(colour=rgb, shape=shape)) for pid, (_, rgb, shape) in PRODUCTS.items()
    ]
    return {r.item.key: r.vector for batch in embed_stream(items, encoder=round2_encoder) for r in batch}


@pytest.fixture
def shop(db, monkeypatch, round2_encoder, round2_vectors) -> list[int]:
    """The products above, stored with their vectors and indexed; photo searches use the loaded encoder."""
    monkeypatch.setattr(runtime, "encoder", lambda: round2_encoder)
    rows = [
        SimpleNamespace(
            id=pid,
            fields={
                "name": name,
                "gender": name.split()[0],
                "master_category": "Apparel",
                "sub_category": "Topwear",
                "article_type": name.split()[-1],
                "base_colour": name.split()[1],
                "season": "Summer",
                "year": 2012,
                "usage": "Casual",
            },
        )
        for pid, (name, _, _) in PRODUCTS.items()
    ]
    ids = demo_rows_store(rows, round2_vectors)
    assert services.index_rebuild() is not None
    return ids


@pytest.fixture
def server_errors_client(client) -> Client:
    """The test client answering a view's crash with the 500 a shopper gets, instead of re-raising it."""
    client.raise_request_exception = False
    return client


@pytest.fixture
def one_window(monkeypatch) -> None:
    """Every request counts in the same rate-limit minute, whenever the test runs."""
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: 1_699_999_990.0))


def photo_search(client: Client, **environ: str):
    upload = SimpleUploadedFile("photo.jpg", jpeg_bytes(colour=(205, 35, 30)), content_type="image/jpeg")
    return client.post("/api/search-by-image", {"image": upload, "k": "3"}, **environ)


# =============================================================================================
# Rate limits behind proxies
# =============================================================================================


def test_behind_a_trusted_proxy_one_shopper_over_the_limit_leaves_the_others_served(
    client, shop, settings, one_window, redis_db
):
    """With every request arriving from the front server (127.0.0.1), each shopper still has a limit of their own."""
    settings.TRUSTED_PROXY_COUNT = 1
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 2
    via_proxy = {"REMOTE_ADDR": "127.0.0.1"}
    first = [photo_search(client, **via_proxy, HTTP_X_FORWARDED_FOR="198.51.100.7").status_code for _ in range(3)]
    assert first == [200, 200, 429]

    other = photo_search(client, **via_proxy, HTTP_X_FORWARDED_FOR="198.51.100.8")
    assert other.status_code == 200, other.json()
    assert any(b"ratelimit:photo:198.51.100.7:" in key for key in redis_db.keys("*"))
    assert not any(b"ratelimit:photo:127.0.0.1:" in key for key in redis_db.keys("*"))


def test_behind_a_trusted_proxy_what_the_client_writes_into_x_forwarded_for_is_ignored(
    client, shop, settings, one_window
):
    """The proxy appends the address it saw; a client rotating the entries before it stays one client."""
    settings.TRUSTED_PROXY_COUNT = 1
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 2
    statuses = [
        photo_search(client, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR=f"10.0.0.{i}, 198.51.100.7").status_code
        for i in range(3)
    ]
    assert statuses == [200, 200, 429]


def test_without_a_trusted_proxy_x_forwarded_for_cannot_dodge_the_limit(client, shop, settings, one_window):
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 2
    statuses = [
        photo_search(client, REMOTE_ADDR="198.51.100.9", HTTP_X_FORWARDED_FOR=f"10.0.0.{i}").status_code
        for i in range(3)
    ]
    assert statuses == [200, 200, 429]


def _request(remote: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


@pytest.mark.parametrize(
    "count, proxies, remote, forwarded, client",
    [
        # No proxy declared: the peer, whatever the header says.
        (0, [], "198.51.100.9", "203.0.113.1", "198.51.100.9"),
        # One proxy: the last entry, the one it appended.
        (1, [], "127.0.0.1", "203.0.113.1", "203.0.113.1"),
        (1, [], "127.0.0.1", "6.6.6.6, 203.0.113.1", "203.0.113.1"),
        (1, [], "127.0.0.1", " 6.6.6.6 ,203.0.113.1 ", "203.0.113.1"),
        # Two proxies (a CDN, then nginx): the second entry from the right.
        (2, [], "127.0.0.1", "6.6.6.6, 203.0.113.1, 192.0.2.10", "203.0.113.1"),
        # Fewer entries than proxies: the request skipped a proxy; only the peer is known.
        (2, [], "198.51.100.9", "6.6.6.6", "198.51.100.9"),
        (1, [], "127.0.0.1", None, "127.0.0.1"),
        # A garbled entry where the proxy's should be: the peer.
        (1, [], "127.0.0.1", "not-an-address", "127.0.0.1"),
        (1, [], "127.0.0.1", "[2001:db8::7]", "2001:db8::/64"),
        # Proxies by address: walk right to left past them.
        (0, ["10.0.0.0/8"], "10.0.0.2", "6.6.6.6, 203.0.113.1, 10.0.0.5", "203.0.113.1"),
        (0, ["10.0.0.0/8", "127.0.0.1"], "127.0.0.1", "203.0.113.1", "203.0.113.1"),
        # A peer that is not one of them sent the header itself: ignored.
        (0, ["10.0.0.0/8"], "198.51.100.9", "203.0.113.1", "198.51.100.9"),
        # IPv6 clients count per /64; IPv4-mapped addresses as IPv4.
        (0, [], "2001:db8:1:2::1", None, "2001:db8:1:2::/64"),
        (0, [], "::ffff:198.51.100.9", None, "198.51.100.9"),
        (0, [], "", None, "unknown"),
    ],
)
def test_the_rate_limit_bucket_is_the_client_the_trusted_proxies_vouch_for(
    settings, count, proxies, remote, forwarded, client
):
    import ipaddress

    settings.TRUSTED_PROXY_COUNT = count
    settings.TRUSTED_PROXIES = [ipaddress.ip_network(p) for p in proxies]
    assert ratelimit.client_key(_request(remote, forwarded)) == client


def test_ipv6_clients_share_one_limit_per_64_network(client, shop, settings, one_window):
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 2
    statuses = [photo_search(client, REMOTE_ADDR=f"2001:db8:5:6::{i:x}").status_code for i in range(1, 4)]
    assert statuses == [200, 200, 429]
    assert photo_search(client, REMOTE_ADDR="2001:db8:5:7::1").status_code == 200


# =============================================================================================
# The cache holds JSON: bytes written to Redis cannot run code
# =============================================================================================


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_planted_in_redis_runs_no_code_and_the_pages_still_answer(
    server_errors_client, shop, tmp_path: Path, redis_db
):
    """Whoever can write to Redis must not run code in the web processes that read the filter menus from it."""
    marker = tmp_path / "code-ran"
    redis_db.set(cache.make_key("gallery:filter-choices"), pickle.dumps(_RunsCodeWhenUnpickled(marker)))

    page = server_errors_client.get("/")
    api = server_errors_client.get("/api/search", {"q": "red"})

    assert not marker.exists(), "unpickling a value from Redis ran code"
    assert page.status_code == 200
    assert 'value="Women"' in page.content.decode(), "the filter menus were not computed afresh"
    assert api.status_code == 200
    assert {r["id"] for r in api.json()["results"]} == {11, 14}


def test_what_the_cache_stores_in_redis_is_plain_json(client, shop, redis_db):
    assert client.get("/").status_code == 200
    raw = redis_db.get(cache.make_key("gallery:filter-choices"))
    assert raw is not None, "the filter menus were not cached"
    menus = json.loads(raw)
    assert "Women" in menus["gender"]
    assert cache.get("gallery:filter-choices") == menus


# =============================================================================================
# Every importable id can be on a trail
# =============================================================================================


def test_the_trail_accepts_every_id_catalog_import_accepts():
    assert getattr(trail_module, "MAX_ID", None) == IMPORT_MAX_ID
    assert Trail.parse(f"{LONG_ID},p{LARGEST_ID},n12").product_ids == [LONG_ID, LARGEST_ID, 12]
    with pytest.raises(TrailError, match="below 9007199254740992"):
        Trail.parse(str(IMPORT_MAX_ID))
    with pytest.raises(TrailError, match="not a trail step"):
        Trail.parse("1" * 17)


def test_old_trail_links_still_open():
    trail = Trail.parse("9613,p27647,n56199,3305")
    assert str(trail) == "9613,p27647,n56199,3305"
    marks = [(step.product_id, step.mark) for step in trail.steps]
    assert marks == [(9613, ""), (27647, "p"), (56199, "n"), (3305, "")]
    assert trail.anchor.product_id == 3305


def test_a_product_imported_with_a_16_digit_id_can_be_clicked_onto_a_trail(client, db, tmp_path: Path, shop):
    write_catalog(
        tmp_path / "c",
        [f"{LARGEST_ID - 1},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Imported Tshirt"],
        {LARGEST_ID - 1: jpeg_bytes()},
    )
    summary = catalog_import(directory=tmp_path / "c", enqueue=False, workers=1)
    assert summary.created == 1, summary.lines()

    api = client.get("/api/similar/11", {"trail": f"{LONG_ID},p{LARGEST_ID},{LARGEST_ID - 1}"})
    assert api.status_code == 200, api.json()
    body = api.json()
    assert body["trail"] == f"{LONG_ID},p{LARGEST_ID},{LARGEST_ID - 1},11"
    found = [r["id"] for r in body["results"]]
    assert LONG_ID not in found and LARGEST_ID not in found, "a product on the trail came back as a result"

    page = client.get(f"/similar/{LONG_ID}/", {"trail": f"12,p{LARGEST_ID}"})
    assert page.status_code == 200
    assert f"p{LARGEST_ID}" in page.content.decode()


def test_an_id_beyond_what_import_accepts_is_a_400_saying_so(client, shop):
    response = client.get("/api/similar/11", {"trail": str(2**53)})
    assert response.status_code == 400
    assert "below 9007199254740992" in response.json()["error"]


# =============================================================================================
# Every failure under /api/ is JSON
# =============================================================================================


@contextmanager
def database_down() -> Iterator[None]:
    """Every SQL statement in the block fails as it does when the database server is gone."""

    def refuse(self, sql, params=None):
        raise OperationalError("connection to server at 127.0.0.1 failed: password=hunter2 refused")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CursorWrapper, "execute", refuse)
        yield


@pytest.mark.parametrize("path", ["/api/search?q=red", "/api/similar/11", "/api/status"])
def test_with_the_database_down_the_api_answers_a_json_500_that_leaks_nothing(server_errors_client, shop, path: str):
    with database_down():
        response = server_errors_client.get(path)
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


def test_an_unexpected_exception_in_an_api_view_is_a_json_500(server_errors_client, db, broken_api_view):
    response = server_errors_client.get("/api/broken")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "The server failed to answer; try again later."}
    assert b"INDEX_DIR" not in response.content
    page = server_errors_client.get("/broken")
    assert page.status_code == 500
    assert page["Content-Type"].startswith("text/html")


def test_pages_outside_the_api_keep_the_html_500(server_errors_client, shop):
    with database_down():
        response = server_errors_client.get("/")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
    assert b"hunter2" not in response.content


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("post", "/api/search", "GET, HEAD"),
        ("put", "/api/similar/11", "GET, HEAD"),
        ("delete", "/api/status", "GET, HEAD"),
        ("get", "/api/search-by-image", "POST"),
        ("post", "/api/openapi.json", "GET, HEAD"),
    ],
)
def test_a_wrong_method_under_the_api_is_a_json_405_naming_the_allowed_ones(
    client, shop, method: str, path: str, allowed: str
):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert response["Allow"] == allowed
    assert response.json()["error"] == f"{method.upper()} is not allowed here; use {allowed}."
    # The security headers of the original answer survive the rewrite.
    assert response["X-Content-Type-Options"] == "nosniff"


def test_a_malformed_content_length_under_the_api_is_a_json_400(db):
    from django.core.handlers.wsgi import WSGIHandler

    environ = RequestFactory().post("/api/search-by-image", data=b"--x\r\n", content_type="multipart/form-data").environ
    environ["CONTENT_LENGTH"] = "12 34"
    answer: dict[str, object] = {}

    def start_response(status, headers, exc_info=None):
        answer.update(status=status, headers=dict(headers))

    body = b"".join(WSGIHandler()(environ, start_response))
    assert str(answer["status"]).startswith("400")
    assert answer["headers"]["Content-Type"] == "application/json"
    assert "Content-Length" in json.loads(body)["error"]


def test_an_unknown_api_path_and_a_wrong_page_method_keep_their_answers(client, db):
    missing = client.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing["Content-Type"] == "application/json"
    page = client.post("/")
    assert page.status_code == 405  # outside /api/: Django's own answer, not JSON
    assert not page["Content-Type"].startswith("application/json")


# =============================================================================================
# HEAD is answered wherever GET is
# =============================================================================================


@pytest.mark.parametrize(
    "path",
    ["/healthz", "/readyz", "/", "/?q=red", "/api/status", "/api/search?q=red", "/api/similar/11", "/api/openapi.json"],
)
def test_head_is_answered_like_get_without_a_body(client, shop, path: str):
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == get.status_code == 200, (head.status_code, get.status_code)
    assert head.content == b""
    assert head["Content-Type"] == get["Content-Type"]


def test_head_on_a_similar_page(client, shop):
    head = client.head(f"/similar/{LONG_ID}/")
    assert head.status_code == 200
    assert head.content == b""


# =============================================================================================
# Production settings, loaded as a server loads them
# =============================================================================================

_PROBE = """
import json
import django
django.setup()
from django.conf import settings
from django.test import RequestFactory
spoofed = RequestFactory().get("/", HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="198.51.100.9")
print(json.dumps({
    "proxy_ssl_header": getattr(settings, "SECURE_PROXY_SSL_HEADER", None),
    "spoofed_https_is_secure": spoofed.is_secure(),
    "cache_serializer": settings.CACHES["default"]["OPTIONS"].get("SERIALIZER"),
}))
"""


def production(tmp_path: Path, *, probe: str = _PROBE, **env_overrides: str) -> subprocess.CompletedProcess:
    """Load the production settings in a fresh process and run ``probe`` there (default: a few effects as JSON)."""
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DEBUG"}}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "GALLERY_ENV": "production",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "example.com",
            "REDIS_URL": settings.REDIS_URL,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.sqlite3'}",
            "GALLERY_VAR_DIR": str(tmp_path / "var"),
            "STATIC_ROOT": str(tmp_path / "static"),
        }
    )
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _example_value(name: str) -> str:
    match = re.search(rf"^{name}=(.*)$", ENV_EXAMPLE.read_text(), re.M)
    assert match, f"{name} is not in {ENV_EXAMPLE}"
    return match.group(1).strip()


def test_production_refuses_the_secret_key_of_the_example_env_file(tmp_path: Path):
    result = production(tmp_path, SECRET_KEY=_example_value("SECRET_KEY"))
    assert result.returncode != 0
    assert "SECRET_KEY is refused when GALLERY_ENV=production: it is the placeholder" in result.stderr
    assert "secrets.token_urlsafe(50)" in result.stderr  # says how to make a good one


@pytest.mark.parametrize(
    "key, reason",
    [
        ("build-only", "shorter than 50 characters"),
        ("a" * 60, "fewer than 5 different ones"),
        ("django-insecure-" + secrets.token_urlsafe(50), "development key"),
        ("CHANGEME" + secrets.token_urlsafe(50), "placeholder"),
    ],
    ids=["short", "one-character", "django-insecure", "changeme"],
)
def test_production_refuses_weak_secret_keys(tmp_path: Path, key: str, reason: str):
    result = production(tmp_path, SECRET_KEY=key)
    assert result.returncode != 0
    assert reason in result.stderr
    assert key not in result.stderr, "the refused key was echoed"


def test_production_starts_with_a_generated_secret_key_and_caches_as_json(tmp_path: Path):
    result = production(tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cache_serializer"] == "gallery.cache.JSONSerializer"


@pytest.mark.parametrize(
    "url, named",
    [
        ("http://:hunter2-s3cret@redis.internal:6379/0", "not a http:// one"),
        (":hunter2-s3cret@redis.internal:6379/0", "has no scheme"),
        ("redis.internal:6379?password=hunter2-s3cret", "has no scheme"),
        ("rediss//default:hunter2-s3cret@redis.internal", "has no scheme"),
    ],
)
def test_a_misconfigured_redis_url_is_refused_without_echoing_its_password(tmp_path: Path, url: str, named: str):
    result = production(tmp_path, REDIS_URL=url)
    assert result.returncode != 0
    assert "REDIS_URL must be a redis://, rediss:// or unix:// URL" in result.stderr
    assert named in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_x_forwarded_proto_is_ignored_where_clients_reach_gunicorn_directly(tmp_path: Path):
    """The compose file publishes gunicorn itself: a client's X-Forwarded-Proto must not make a request secure."""
    compose = (ROOT / "docker-compose.yml").read_text()
    default = re.search(r"TRUSTED_PROXY_COUNT: \$\{TRUSTED_PROXY_COUNT:-(\d+)\}", compose)
    assert default, "docker-compose.yml does not pass TRUSTED_PROXY_COUNT"
    assert '"8000:8000"' in compose  # gunicorn published directly

    result = production(tmp_path, TRUSTED_PROXY_COUNT=default.group(1))
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["proxy_ssl_header"] is None
    assert probe["spoofed_https_is_secure"] is False


def test_behind_the_shipped_front_server_x_forwarded_proto_is_trusted(tmp_path: Path):
    result = production(tmp_path, TRUSTED_PROXY_COUNT=_example_value("TRUSTED_PROXY_COUNT"))
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["proxy_ssl_header"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert probe["spoofed_https_is_secure"] is True
    conf = (ROOT / "deploy" / "nginx" / "gallery.conf").read_text()
    # The front server overwrites the header (a client's own value never passes) and appends the peer.
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in conf
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TRUSTED_PROXY_COUNT": "1", "TRUSTED_PROXIES": "10.0.0.0/8"}, "not both"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8,nginx.internal"}, "IP addresses or networks"),
        ({"TRUSTED_PROXY_COUNT": "-1"}, "0 or more"),
    ],
    ids=["both", "host-name", "negative"],
)
def test_a_bad_proxy_setting_refuses_to_start(tmp_path: Path, env: dict[str, str], message: str):
    result = production(tmp_path, **env)
    assert result.returncode != 0
    assert message in result.stderr


def test_the_compose_redis_needs_a_password_and_publishes_no_port():
    compose = (ROOT / "docker-compose.yml").read_text()
    redis_service = compose.split("\n  redis:\n", 1)[1]
    assert '--requirepass "${REDIS_PASSWORD:?' in redis_service
    assert "ports:" not in redis_service
    assert "REDIS_URL: redis://:${REDIS_PASSWORD:?" in compose
