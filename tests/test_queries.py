"""Queries and requests: hostile parameters, trails, ids, methods and addresses answer 4xx, never 500.

Through the Django test client and, for what gunicorn itself answers, the Procfile's live server.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver

from gallery import trail as trail_module
from gallery.catalog import MAX_ID as IMPORT_MAX_ID
from gallery.models import Product
from gallery.services import catalog_import
from gallery.trail import Trail, TrailError
from tests.support import ROOT
from tests.support.answers import message_of, record
from tests.support.catalog_files import write_catalog
from tests.support.images import jpeg_bytes
from tests.support.processes import (
    free_port,
    process_group_stop,
    subprocess_env,
    wait_for,
)
from tests.support.shop import LARGEST_ID, LONG_ID

# --- Hostile parameters, trails and ids ----------------------------------------------------------------------------


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


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize(("label", "params", "expected"), HOSTILE_QUERIES, ids=[c[0] for c in HOSTILE_QUERIES])
def test_hostile_query_parameters_never_cause_a_500(hostile_client, embedded_catalog, label, params, expected):
    for path, where, api in _endpoints(embedded_catalog[0]):
        response = hostile_client.get(path, params)
        record(where, label, response)
        _check(response, expected=expected, api=api)


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize(("label", "query", "expected"), RAW_QUERIES, ids=[c[0] for c in RAW_QUERIES])
def test_raw_query_strings_never_cause_a_500(hostile_client, embedded_catalog, label, query, expected):
    for path, where, api in _endpoints(embedded_catalog[0]):
        response = hostile_client.get(path, QUERY_STRING=query)
        record(where, label, response)
        _check(response, expected=expected, api=api)


@pytest.mark.usefixtures("own_cache_and_encoder")
@pytest.mark.parametrize(("label", "trail", "expected"), TRAIL_CASES, ids=[c[0] for c in TRAIL_CASES])
def test_hostile_trails_never_cause_a_500(hostile_client, embedded_catalog, label, trail, expected):
    for path, where, api in _endpoints(embedded_catalog[0])[2:]:
        response = hostile_client.get(path, {"trail": trail})
        record(where, label, response)
        _check(response, expected=expected, api=api)


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_a_long_query_is_capped_not_refused(hostile_client, embedded_catalog, settings):
    body = hostile_client.get("/api/search", {"q": LONG}).json()
    assert len(body["query"]) <= settings.SEARCH_QUERY_MAX_CHARS
    assert body["query"].startswith("blue blue")


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_sql_and_wildcards_are_searched_literally(hostile_client, embedded_catalog):
    # The quote and the operators are just characters: the query is the words "red", "or", "1"; it finds what
    # "red" finds (a partial match, said so), never the whole catalog.
    injected = hostile_client.get("/api/search", {"q": "red' OR '1'='1", "k": 100}).json()
    plain = hostile_client.get("/api/search", {"q": "red", "k": 100}).json()
    assert [r["id"] for r in injected["results"]] == [r["id"] for r in plain["results"]]
    assert 0 < len(plain["results"]) < len(embedded_catalog)
    # "_" holds no word: it is the empty query (the starting grid), not a LIKE wildcard.
    assert (
        hostile_client.get("/api/search", {"q": "_"}).json()["results"]
        == (hostile_client.get("/api/search", {"q": ""}).json()["results"])
    )
    assert hostile_client.get("/api/search", {"colour": "%"}).json()["results"] == []
    assert Product.objects.count() == len(embedded_catalog)


@pytest.mark.usefixtures("own_cache_and_encoder")
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
def test_out_of_range_product_ids_are_404_not_500(hostile_client, embedded_catalog, label, path, expected):
    response = hostile_client.get(path, {"trail": "101"})
    record(f"GET {path[:40]}", label, response)
    assert response.status_code == expected, message_of(response)
    if path.startswith("/api/similar/") and path.split("/")[-1].isdigit():
        assert "No product has id" in response.json()["error"]


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_too_many_query_parameters_are_a_400_not_a_500(hostile_client, embedded_catalog):
    # Short names: the address stays under REQUEST_URI_MAX_CHARS, so the field count is what is judged.
    query = "&".join(f"{i:x}" for i in range(1500))
    for path, where, _ in _endpoints(embedded_catalog[0]):
        response = hostile_client.get(path, QUERY_STRING=query)
        record(where, "1500 query parameters", response)
        assert response.status_code == 400


@pytest.mark.usefixtures("own_cache_and_encoder")
def test_wrong_methods_are_405(hostile_client, embedded_catalog):
    for method, path in (("get", "/api/search-by-image"), ("get", "/search-by-image"), ("post", "/api/search")):
        response = getattr(hostile_client, method)(path)
        record(f"{method.upper()} {path}", "wrong method", response)
        assert response.status_code == 405


# --- Every importable id can be on a trail -------------------------------------------------------------------------


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


# --- Wrong methods, bodies and paths under the API -----------------------------------------------------------------


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


# --- HEAD is answered wherever GET is ------------------------------------------------------------------------------


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


# --- Wrong methods and over-long addresses, with CSRF checks enforced ----------------------------------------------


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
