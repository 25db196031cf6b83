import pytest
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from PIL import Image

from gallery import views
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, COUNT_SWAPS, browser_catalog, by_htmx, grid_ids  # noqa: F401
from tests.test_browser import test_a_shoppers_visit_in_a_real_browser as test_fixed_visit  # noqa: F401


def fixed_render(request, template, context, status=200):
    if request.htmx and not request.htmx.boosted and not request.htmx.history_restore_request:
        template = "gallery/_results.html"
        context = {**context, "partial": True}
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


def fixed_photo_context(params):
    token = params.get("photo", "")
    return {"photo_src": "data:image/jpeg;base64," + token.replace("-", "+").replace("_", "/") if token else ""}


@pytest.fixture(autouse=True)
def _fix(monkeypatch, settings):
    monkeypatch.setattr(views, "_render", fixed_render)
    monkeypatch.setattr(views, "_photo_context", fixed_photo_context)
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": ["/tmp/bt/tpl", *settings.TEMPLATES[0]["DIRS"]]}]


def test_bugs_fixed(live_server, browser_catalog, demo_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    cat = browser_catalog
    pid = sorted(cat)[17]
    photo = tmp_path / "p.jpg"
    Image.open(demo_dir / "images" / f"{pid}.jpg").convert("RGB").save(photo, quality=70)
    bad = []
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        ctx = b.new_context()
        ctx.add_init_script(COUNT_SWAPS)
        page = ctx.new_page()
        page.on("response", lambda r: r.status >= 400 and bad.append(f"{r.status} {r.request.method} {r.url[:80]}"))
        page.goto(live_server.url + "/")
        by_htmx(page, lambda: page.set_input_files("#photo-input", str(photo)))
        assert page.evaluate("document.querySelector('#results .trail-photo img').naturalWidth") > 0
        assert page.title() == "Browse · Visual gallery"
        assert grid_ids(page)[0] == pid
        colour = "Black"
        by_htmx(page, lambda: page.select_option("select[name=colour]", colour))
        ids = grid_ids(page)
        print("\nphoto then colour:", len(ids), {cat[i]["base_colour"] for i in ids}, page.locator("#results .trail-photo").count())
        assert ids and all(cat[i]["base_colour"] == colour for i in ids)
        assert page.eval_on_selector("select[name=colour]", "e => e.value") == colour
        page.goto(live_server.url + "/")
        by_htmx(page, lambda: page.select_option("select[name=colour]", colour))
        by_htmx(page, lambda: page.set_input_files("#photo-input", str(photo)))
        ids = grid_ids(page)
        print("colour then photo:", len(ids), {cat[i]["base_colour"] for i in ids})
        assert ids and all(cat[i]["base_colour"] == colour for i in ids)
        by_htmx(page, lambda: page.select_option("select[name=colour]", ""))
        ids = grid_ids(page)
        print("colour cleared:", len(ids), ids[0] == pid)
        page.goto(live_server.url + "/?q=Sweatshirt")
        by_htmx(page, lambda: page.locator("#results ol.grid .card > a").first.click())
        print("title after htmx click:", page.title())
        assert page.title().startswith("Like ")
        page.evaluate("htmx.config.historyCacheSize = 0")
        by_htmx(page, lambda: page.locator("#results ol.grid .card > a").first.click())
        by_htmx(page, page.go_back)
        print("title after restore:", page.title(), page.locator("title").count())
        b.close()
    assert not bad, bad
