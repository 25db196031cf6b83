"""A shopper's visit in a real browser is what the admin's dashboard then shows: search, click, view product."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from gallery import events, tasks
from tests.support.browser import ARTIFACTS, COUNT_SWAPS, QUERY, TIMEOUT_MS, by_htmx, chromium, grid_ids

pytestmark = pytest.mark.browser


def test_search_click_view_product_then_the_dashboard_shows_the_session(
    live_server,
    browser_catalog,
    settings,
    redis_db,
):
    events.client_reset()
    # The shop's product page: a page of this server, so the browser lands somewhere real (no network here).
    settings.PRODUCT_URL_TEMPLATE = "/api/products/{id}"
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    base = live_server.url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    js_errors: list[str] = []
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(COUNT_SWAPS)
        page = context.new_page()
        page.on("pageerror", lambda exc: js_errors.append(str(exc)))
        # A failed load shows as a console error too: those are recorded by URL, the favicon aside.
        page.on("console", lambda m: m.type == "error" and "Failed to load" not in m.text and js_errors.append(m.text))
        page.on(
            "response",
            lambda r: (
                r.status >= 400 and not r.url.endswith("/favicon.ico") and js_errors.append(f"{r.status} {r.url}")
            ),
        )

        page.goto(f"{base}/")
        page.fill("#q", QUERY)
        by_htmx(page, lambda: page.press("#q", "Enter"))
        searched = grid_ids(page)
        by_htmx(page, lambda: page.locator("#results ol.grid .card > a").nth(2).click())
        assert urlparse(page.url).path == f"/similar/{searched[2]}/"
        viewed = grid_ids(page)[0]
        page.locator("#results ol.grid .card .view a").first.click()
        page.wait_for_url(re.compile(rf"/api/products/{viewed}$"))
        session = next(c["value"] for c in context.cookies() if c["name"] == settings.EVENTS_COOKIE_NAME)

        # What the worker's scheduled flush does (in a thread: Playwright's event loop runs in this one).
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(lambda: tasks.events_flush.apply().get()).result() >= 6

        page.goto(f"{base}/admin/login/?next=/admin/gallery/shopperevent/dashboard/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "pw")
        page.locator("input[type=submit]").click()
        page.wait_for_url(re.compile(r"/admin/gallery/shopperevent/dashboard/$"))
        page.fill("input[name=session]", session)
        page.get_by_role("button", name="Show").click()
        page.wait_for_url(re.compile(rf"session={session}"))
        rows = page.locator("#session-events tr[data-kind]")
        expect(rows).to_have_count(6)
        kinds = rows.evaluate_all("rows => rows.map(r => r.dataset.kind)")
        assert kinds == ["grid", "search", "grid", "click", "grid", "convert"]  # the starting grid first
        cells = rows.nth(3).locator("td").all_inner_texts()
        assert cells[4:6] == [str(searched[2]), "3"]  # the product clicked, at place 3
        assert rows.last.locator("td").all_inner_texts()[4] == str(viewed)
        expect(page.locator("#totals td").first).to_have_text("1")
        # The charts drew, from the vendored library, under the Content-Security-Policy.
        page.wait_for_function("() => typeof Chart === 'function'")
        drawn = page.evaluate(
            "() => [...document.querySelectorAll('canvas[data-chart]')].filter(c => Chart.getChart(c)).length"
        )
        assert drawn == 4
        page.screenshot(path=str(ARTIFACTS / "20-dashboard.png"), full_page=True)
    assert not js_errors, js_errors
