"""Security: CSRF, permissions, rate limits behind proxies, what the cache stores, escaping, and the
production settings that refuse to start.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import secrets
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory
from PIL import Image

from gallery import ratelimit
from gallery.models import Product
from gallery.selectors import filter_choices_key
from recommender import runtime
from recommender.models import EmbeddingState, EmbedStatus
from tests.support import ROOT
from tests.support.answers import message_of, record
from tests.support.catalog_files import make_zip, styles_csv
from tests.support.clients import (
    ADMIN_ADD,
    BULK,
    admin_add,
    bulk_upload,
    photo_api,
    photo_page,
    staff_user,
)
from tests.support.images import TEXT, jpeg_bytes

# --- Escaping and media paths --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_reflected_input_is_escaped_and_pages_carry_the_security_headers(hostile_client, embedded_catalog):
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    for path, params in (
        ("/", {"q": payload}),
        (f"/similar/{embedded_catalog[0]}/", {"trail": payload}),
        (f"/similar/{embedded_catalog[0]}/", {"q": payload, "colour": payload}),
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


@pytest.mark.usefixtures("own_cache_and_encoder")
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


# --- Deployment checks ---------------------------------------------------------------------------------------------


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


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_the_deployment_checks_pass_with_production_settings(tmp_path: Path):
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!@#$%^&*(-_=+)"
    # One key starting with "$" every time: such a key is the key, not the name of another variable.
    for secret in ("$" + "".join(secrets.choice(alphabet) for _ in range(50)), secrets.token_urlsafe(50)):
        result = _manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", SECRET_KEY=secret)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no issues" in result.stdout


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path):
    result = _manage(tmp_path, "check")  # SECRET_KEY removed from the environment
    assert result.returncode != 0
    assert "SECRET_KEY must be set when GALLERY_ENV=production" in result.stderr


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_production_refuses_to_start_without_allowed_hosts(tmp_path: Path):
    result = _manage(tmp_path, "check", SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="")
    assert result.returncode != 0
    assert "ALLOWED_HOSTS must be set" in result.stderr


# --- CSRF ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def csrf_client(db) -> Client:
    return Client(enforce_csrf_checks=True, raise_request_exception=False)


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_photo_search_form_without_a_csrf_token_is_403(csrf_client, embedded_catalog, nothing_stored):
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


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_admin_login_without_a_csrf_token_is_403(csrf_client):
    staff_user()
    response = csrf_client.post("/admin/login/", {"username": "admin", "password": "pw-admin-123"})
    record("POST /admin/login/ (CSRF enforced)", "no CSRF token", response)
    assert response.status_code == 403
    csrf_client.get("/admin/login/")
    token = csrf_client.cookies["csrftoken"].value
    response = csrf_client.post(
        "/admin/login/", {"username": "admin", "password": "pw-admin-123", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize("path", [ADMIN_ADD, BULK, "/admin/gallery/product/"], ids=["add", "bulk", "action"])
def test_admin_forms_without_a_csrf_token_are_403_and_store_nothing(csrf_client, nothing_stored, path: str):
    csrf_client.force_login(staff_user())
    data = {
        ADMIN_ADD: {"id": 880040, "name": "x", "image_upload": SimpleUploadedFile("a.jpg", jpeg_bytes())},
        BULK: {"archive": SimpleUploadedFile("c.zip", make_zip([("styles.csv", styles_csv(880041))]))},
        "/admin/gallery/product/": {"action": "retry_embedding", "_selected_action": ["1"]},
    }[path]
    response = csrf_client.post(path, data)
    record(f"POST {path} (CSRF enforced, staff)", "no CSRF token", response)
    assert response.status_code == 403
    nothing_stored()


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_the_photo_api_needs_no_csrf_token_and_ignores_the_session(
    csrf_client, embedded_catalog, settings, redis_db, monkeypatch
):
    """The API is csrf-exempt because it never looks at cookies: an admin's session changes nothing."""
    anonymous = photo_api(csrf_client, jpeg_bytes(), k="5", REMOTE_ADDR="10.7.0.1")
    assert anonymous.status_code == 200
    assert "Cookie" not in anonymous.get("Vary", "")

    csrf_client.force_login(staff_user())
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


# --- Admin permissions ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize(
    "path", ["/admin/", "/admin/gallery/product/", ADMIN_ADD, BULK, "/admin/gallery/product/101/change/"]
)
def test_admin_pages_send_anonymous_visitors_to_the_login(hostile_client, embedded_catalog, path: str):
    response = hostile_client.get(path)
    record(f"GET {path} (anonymous)", "no login", response)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize("path", ["/admin/gallery/product/", ADMIN_ADD, BULK])
def test_admin_pages_refuse_a_logged_in_non_staff_user(hostile_client, db, path: str):
    hostile_client.force_login(staff_user(superuser=False, staff=False, username="shopper"))
    response = hostile_client.get(path)
    record(f"GET {path} (logged-in non-staff)", "non-staff session", response)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_a_non_staff_user_cannot_add_or_bulk_upload(hostile_client, db, nothing_stored):
    hostile_client.force_login(staff_user(superuser=False, staff=False, username="shopper"))
    add = admin_add(hostile_client, 880050, jpeg_bytes())
    bulk = bulk_upload(
        hostile_client, make_zip([("styles.csv", styles_csv(880051)), ("images/880051.jpg", jpeg_bytes())])
    )
    record("POST admin add (logged-in non-staff)", "valid product + image", add)
    record("POST admin bulk upload (logged-in non-staff)", "valid zip", bulk)
    assert add.status_code == 302 and add["Location"].startswith("/admin/login/")
    assert bulk.status_code == 302 and bulk["Location"].startswith("/admin/login/")
    nothing_stored()


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_staff_without_the_add_permission_cannot_add_or_bulk_upload(hostile_client, db, nothing_stored):
    user = staff_user(superuser=False, staff=True, username="viewer")
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


# --- The photo-search rate limit -----------------------------------------------------------------------------------


def _fixed_rate_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """One fixed instant, 50 s before the minute turns: every request counts in the same window on any machine."""
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: 1_699_999_990.0))


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_photo_search_is_rate_limited_per_client_through_the_shared_cache(
    hostile_client, embedded_catalog, settings, redis_db, monkeypatch
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


ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "gallery.env.example"


@pytest.fixture
def one_window(monkeypatch) -> None:
    """Every request counts in the same rate-limit minute, whenever the test runs."""
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: 1_699_999_990.0))


def photo_search(client: Client, **environ: str):
    upload = SimpleUploadedFile("photo.jpg", jpeg_bytes(colour=(205, 35, 30)), content_type="image/jpeg")
    return client.post("/api/search-by-image", {"image": upload, "k": "3"}, **environ)


# --- Rate limits behind proxies ------------------------------------------------------------------------------------


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


# --- The cache holds JSON: bytes written to Redis cannot run code --------------------------------------------------


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_planted_in_redis_runs_no_code_and_the_pages_still_answer(
    hostile_client, shop, tmp_path: Path, redis_db
):
    """Whoever can write to Redis must not run code in the web processes that read the filter menus from it."""
    marker = tmp_path / "code-ran"
    redis_db.set(cache.make_key(filter_choices_key()), pickle.dumps(_RunsCodeWhenUnpickled(marker)))

    page = hostile_client.get("/")
    api = hostile_client.get("/api/search", {"q": "red"})

    assert not marker.exists(), "unpickling a value from Redis ran code"
    assert page.status_code == 200
    assert 'value="Women"' in page.content.decode(), "the filter menus were not computed afresh"
    assert api.status_code == 200
    assert {r["id"] for r in api.json()["results"]} == {11, 14}


def test_what_the_cache_stores_in_redis_is_plain_json(client, shop, redis_db):
    assert client.get("/").status_code == 200
    raw = redis_db.get(cache.make_key(filter_choices_key()))
    assert raw is not None, "the filter menus were not cached"
    menus = json.loads(raw)
    assert "Women" in menus["gender"]
    assert cache.get(filter_choices_key()) == menus


# --- Production settings, loaded as a server loads them ------------------------------------------------------------

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


# --- Production refuses DEBUG --------------------------------------------------------------------------------------

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


# --- What pages show, and who may retry embeddings -----------------------------------------------------------------


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
