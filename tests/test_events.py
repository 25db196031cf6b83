"""Shopper events: the anonymous session, what each page records, the Redis buffer, the batches, retention,
the "view product" conversion and its redirect, Redis faults, the CSV export and the dashboard."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from gallery import events, tasks
from gallery.models import Product, ShopperEvent
from gallery.services import product_availability_set
from tests.support import ROOT
from tests.support.processes import connection_attempts, subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

DEAD_REDIS_PORT = 1


@pytest.fixture(autouse=True)
def _fresh_events(redis_db):
    events.client_reset()
    yield
    events.client_reset()


def stored(**filters) -> list[ShopperEvent]:
    return list(ShopperEvent.objects.filter(**filters).order_by("at", "id"))


def flush() -> int:
    return tasks.events_flush.apply().get()


def test_a_visit_records_searches_grids_clicks_trail_edits_photos_and_a_conversion(
    client, demo_catalog_db, demo_dir, settings
):
    settings.PRODUCT_URL_TEMPLATE = "https://shop.example/p/{id}"
    page = client.get("/", {"q": "black heels"})
    assert page.status_code == 200
    session = page.cookies[settings.EVENTS_COOKIE_NAME]
    assert events.session_valid(session.value) and session["httponly"] and session["samesite"] == "Lax"
    items = page.context["items"]
    # Each tile's link names its place; each has a "view product" link through the gallery.
    assert items[2].url.endswith("at=3") and items[2].view_url == f"/p/{items[2].product.id}/go?at=3&g=search"

    clicked = client.get(items[2].url)
    assert clicked.status_code == 200 and settings.EVENTS_COOKIE_NAME not in clicked.cookies  # kept, not renewed
    pin = clicked.context["trail_steps"][0].pin_url
    assert client.get(pin).status_code == 200
    client.get("/", {"q": "zzqqxx"})  # finds nothing
    photo = (demo_dir / "images" / f"{demo_catalog_db[0]}.jpg").read_bytes()
    assert client.post("/search-by-image", {"image": SimpleUploadedFile("p.jpg", photo)}).status_code == 200
    view = client.get(clicked.context["items"][0].view_url)
    assert view.status_code == 302
    assert view["Location"] == f"https://shop.example/p/{clicked.context['items'][0].product.id}"

    # Nothing is in the database until the batch task runs; then every event is there, once.
    assert not ShopperEvent.objects.exists() and events.events_buffered() > 0
    assert flush() > 0
    assert flush() == 0 and events.events_buffered() == 0
    rows = stored(session=session.value)
    kinds = [row.kind for row in rows]
    assert kinds == ["search", "grid", "click", "grid", "trail", "grid", "search", "grid", "photo", "grid", "convert"]
    search, grid = rows[0], rows[1]
    assert (search.query, search.count, search.data["corrected"]) == ("black heels", len(items), False)
    assert grid.grid == "search" and grid.data["ids"] == [item.product.id for item in items]
    assert (rows[2].product_id, rows[2].position) == (items[2].product.id, 3)
    assert rows[3].grid == "similar" and rows[3].data["ids"] == [i.product.id for i in clicked.context["items"]]
    assert (rows[4].kind, rows[4].data["action"]) == ("trail", "pin")
    assert (rows[6].query, rows[6].count) == ("zzqqxx", 0)
    assert rows[9].grid == "photo" and rows[9].count == 25
    convert = rows[10]
    assert (convert.product_id, convert.position, convert.grid) == (
        clicked.context["items"][0].product.id,
        1,
        "similar",
    )
    assert all(row.arm == "" for row in rows)  # no experiment runs


def test_view_product_only_ever_redirects_to_the_template(client, db, settings):
    Product.objects.create(id=42, name="Red Scarf")
    settings.PRODUCT_URL_TEMPLATE = "https://shop.example/p/{id}?ref=gallery"
    for query in ["", "?next=https://evil.example/", "?url=//evil.example", "?at=1&g=https://evil.example"]:
        response = client.get(f"/p/42/go{query}")
        assert response.status_code == 302
        assert response["Location"] == "https://shop.example/p/42?ref=gallery"
    assert client.get("/p/43/go").status_code == 404
    assert client.get("/p/-1/go").status_code == 404
    assert client.get("/p/42%2F%2Fevil.example/go").status_code == 404
    # A product off sale still leads to its page (a stale grid's link).
    product_availability_set(product_ids=[42], active=False)
    assert client.get("/p/42/go")["Location"] == "https://shop.example/p/42?ref=gallery"
    # Unset: the admin's page for the product.
    settings.PRODUCT_URL_TEMPLATE = ""
    assert client.get("/p/42/go")["Location"] == "/admin/gallery/product/42/change/"


@pytest.mark.parametrize(
    "template", ["//evil.example/{id}", "javascript:alert({id})", "https://shop.example/p/", "https://x/{id}/{name}"]
)
def test_a_template_that_could_lead_elsewhere_stops_start_up(template):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=subprocess_env(PRODUCT_URL_TEMPLATE=template),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "PRODUCT_URL_TEMPLATE must be an http(s) URL" in result.stderr


def test_with_redis_down_pages_work_and_events_are_dropped_and_counted(client, demo_catalog_db, settings):
    good = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{DEAD_REDIS_PORT}/0"
    with connection_attempts(DEAD_REDIS_PORT) as attempts:
        responses = [
            client.get("/", {"q": "shirt"}),
            client.get(f"/similar/{demo_catalog_db[0]}/", {"at": "2"}),
            client.get(f"/api/similar/{demo_catalog_db[1]}"),
            client.get(f"/p/{demo_catalog_db[0]}/go"),
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 302]
    # One try, with a short timeout, then this process leaves Redis alone for a while: no page waits on it.
    assert len(attempts) == 1 and attempts[0] is not None and attempts[0] <= 1
    assert events.events_dropped() == 6  # search + grid, click + grid, grid, convert: counted here
    # Redis back: the next push also counts the dropped ones where every process and the dashboard see them.
    settings.REDIS_URL = good
    events._down_until = 0.0  # the back-off over (the count not yet shared is kept)
    assert client.get("/", {"q": "shirt"}).status_code == 200
    assert int(events._redis().get(events._key(events.DROPPED))) == 6
    assert events.events_dropped() == 6
    flush()
    assert ShopperEvent.objects.filter(kind="search").count() == 1


def test_a_flush_repeated_after_a_crash_stores_each_event_once(client, db, settings):
    Product.objects.create(id=1, name="Blue Shirt")
    client.get("/", {"q": "blue shirt"})
    raws = events._redis().lrange(events._key(events.BUFFER), 0, -1)
    assert len(raws) == 2
    # A flush that inserted the batch but died before trimming it: the same events are read again.
    ShopperEvent.objects.bulk_create([events._row(raw) for raw in raws])
    assert flush() == 2  # read and offered again ...
    assert ShopperEvent.objects.count() == 2  # ... but stored once
    # A malformed entry is skipped, not fatal.
    events._redis().rpush(events._key(events.BUFFER), b"{not json", json.dumps({"kind": "nonsense"}))
    flush()
    assert events.events_buffered() == 0 and ShopperEvent.objects.count() == 2


def test_events_older_than_the_retention_are_purged(db, settings):
    settings.EVENTS_RETENTION_DAYS = 30
    now = timezone.now()
    for i, age in enumerate([31, 29, 1]):
        ShopperEvent.objects.create(event_id=f"e{i}", at=now - timedelta(days=age), kind="search", query=f"q{age}")
    assert tasks.events_purge.apply().get() == 1
    assert sorted(ShopperEvent.objects.values_list("query", flat=True)) == ["q1", "q29"]
    assert tasks.events_purge.apply().get() == 0


def test_a_real_worker_with_beat_stores_the_events(client, db, start_worker):
    Product.objects.create(id=5, name="Green Cap")
    client.get("/", {"q": "green cap"})
    client.get("/p/5/go")
    start_worker(name="events", EVENTS_FLUSH_INTERVAL_S="1", beat=True)
    wait_for(lambda: ShopperEvent.objects.count() == 3, timeout=60, what="the scheduled flush")
    assert [e.kind for e in stored()] == ["search", "grid", "convert"]
    assert events.events_buffered() == 0


def test_events_off_records_nothing_and_sets_no_cookie(client, db, settings):
    settings.EVENTS_ENABLED = False
    Product.objects.create(id=1, name="Blue Shirt")
    response = client.get("/", {"q": "blue"})
    assert response.status_code == 200 and settings.EVENTS_COOKIE_NAME not in response.cookies
    assert events.events_buffered() == 0


def test_the_api_sets_no_cookie_but_counts_a_session_that_sends_one(db, settings):
    Product.objects.create(id=1, name="Blue Shirt")
    api = Client()
    response = api.get("/api/search", {"q": "blue"})
    assert settings.EVENTS_COOKIE_NAME not in response.cookies
    api.cookies[settings.EVENTS_COOKIE_NAME] = "A" * 22
    api.get("/api/search", {"q": "shirt"})
    api.cookies[settings.EVENTS_COOKIE_NAME] = "not a session id"
    api.get("/api/search", {"q": "blue shirt"})
    flush()
    sessions = dict(ShopperEvent.objects.filter(kind="search").values_list("query", "session"))
    assert sessions == {"blue": "", "shirt": "A" * 22, "blue shirt": ""}


def test_export_events_writes_csv(db, tmp_path):
    now = timezone.now()
    ShopperEvent.objects.create(event_id="a", at=now - timedelta(days=3), session="S" * 22, kind="search", query="x, y")
    ShopperEvent.objects.create(
        event_id="b", at=now, session="S" * 22, kind="grid", grid="search", count=2, data={"ids": [1, 2]}
    )
    out = io.StringIO()
    call_command("export_events", stdout=out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["kind"] for r in rows] == ["search", "grid"]
    assert rows[0]["query"] == "x, y" and json.loads(rows[1]["data"]) == {"ids": [1, 2]}
    target = tmp_path / "events.csv"
    call_command("export_events", "--days", "1", "--kind", "grid", "-o", str(target), stderr=io.StringIO())
    rows = list(csv.DictReader(target.open()))
    assert [(r["kind"], r["count"]) for r in rows] == [("grid", "2")]


def test_the_dashboard_shows_the_figures_and_one_sessions_events(client, db, settings):
    for pid, name in [(1, "Blue Shirt"), (2, "Red Shirt"), (3, "Green Shirt")]:
        Product.objects.create(id=pid, name=name)
    page = client.get("/", {"q": "shirt"})
    session = page.cookies[settings.EVENTS_COOKIE_NAME].value
    client.get(page.context["items"][1].url)
    client.get("/", {"q": "unicorn saddle"})
    client.get(page.context["items"][0].view_url)
    flush()

    User.objects.create_superuser("admin", "admin@example.com", "pw")
    staff = Client()
    staff.login(username="admin", password="pw")
    anonymous = Client().get("/admin/gallery/shopperevent/dashboard/")
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    response = staff.get("/admin/gallery/shopperevent/dashboard/", {"session": session})
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/vendor/chart.umd.min.js" in html and 'id="dashboard-data"' in html
    context = response.context
    assert context["totals"]["sessions"] == 1 and context["totals"]["convert"] == 1
    assert ("shirt", 1) in context["top_queries"] and context["zero_queries"] == [("unicorn saddle", 1)]
    assert context["positions"][1].clicks == 1 and context["positions"][1].grids >= 1
    assert context["before"] == [(1, 1)]  # one click before its product view
    assert [(n, c) for _, n, c, _ in context["conversions"]] == [(1, 1)]
    charts = context["charts"]
    assert charts["searches"]["values"] == [2] and charts["conversions"]["values"] == [100.0]
    assert [e.kind for e in context["session_events"]] == [
        "search",
        "grid",
        "click",
        "grid",
        "search",
        "grid",
        "convert",
    ]
    assert 'data-kind="convert"' in html
