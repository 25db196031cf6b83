import pytest
from django.shortcuts import render
from django.utils.cache import patch_vary_headers

from gallery import views
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, COUNT_SWAPS, browser_catalog, by_htmx  # noqa: F401
from tests.test_browser import test_a_shoppers_visit_in_a_real_browser as test_fixed_visit  # noqa: F401

FIX = True


def fixed(request, template, context, status=200):
    htmx = request.htmx
    if htmx and not htmx.boosted and not htmx.history_restore_request:
        template = "gallery/_results.html"
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


@pytest.fixture(autouse=True)
def _fix(monkeypatch, request):
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setattr(views, "_render", fixed)


def _history_miss(live_server, browser_catalog):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        ctx = b.new_context()
        ctx.add_init_script(COUNT_SWAPS)
        page = ctx.new_page()
        page.goto(live_server.url + "/?q=Sweatshirt")
        page.evaluate("htmx.config.historyCacheSize = 0")
        by_htmx(page, lambda: page.locator("#results ol.grid .card > a").first.click())
        by_htmx(page, lambda: page.locator("#results ol.grid .card > a").first.click())
        u = page.url
        page.evaluate("sessionStorage.clear()")
        page.on("request", lambda r: print("REQ", r.url, r.headers.get("hx-request"), r.headers.get("hx-history-restore-request")))
        page.evaluate("document.addEventListener('htmx:historyCacheMiss', () => console.log('MISS')); document.addEventListener('htmx:historyRestore', (e) => console.log('RESTORE', JSON.stringify(e.detail.cacheMiss)))")
        page.on("console", lambda m: print("CONSOLE", m.text))
        page.go_back()
        page.wait_for_timeout(1500)
        print("\nURL", repr(page.evaluate("document.body.innerHTML.slice(0, 300)")), page.title(), page.evaluate("sessionStorage.length"), u, "->", page.url, "header:", page.locator("header.top").count(), "#results:", page.locator("#results").count(), "cards", page.locator(".card").count())
        # reload then back (cross-document)
        page.goto(live_server.url + "/?q=Sweatshirt")
        by_htmx(page, lambda: page.locator("#results ol.grid .card > a").first.click())
        page.reload()
        page.go_back()
        page.wait_for_timeout(1000)
        print("reload+back", page.url, "header:", page.locator("header.top").count(), "cards", page.locator(".card").count())
        page.go_forward()
        page.wait_for_timeout(1000)
        print("forward", page.url, "header:", page.locator("header.top").count(), "cards", page.locator(".card").count())
        b.close()


@pytest.mark.slow
def test_miss_nofix(live_server, browser_catalog):
    _history_miss(live_server, browser_catalog)


def test_miss_fix(live_server, browser_catalog):
    _history_miss(live_server, browser_catalog)
