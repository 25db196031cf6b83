from pathlib import Path

from PIL import Image

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, COUNT_SWAPS, browser_catalog, by_htmx, grid_ids  # noqa: F401


def test_bugs(live_server, browser_catalog, demo_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    cat = browser_catalog
    pid = sorted(cat)[17]
    photo = tmp_path / "p.jpg"
    Image.open(demo_dir / "images" / f"{pid}.jpg").convert("RGB").save(photo, quality=70)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        ctx = b.new_context()
        ctx.add_init_script(COUNT_SWAPS)
        page = ctx.new_page()
        page.on("response", lambda r: r.status >= 400 and print("HTTP", r.status, r.request.method, r.url))
        page.goto(live_server.url + "/")
        by_htmx(page, lambda: page.set_input_files("#photo-input", str(photo)))
        src = page.get_attribute("#results .trail-photo img", "src")
        print("\nphoto token has -/_:", "-" in src or "_" in src, "naturalWidth", page.evaluate("document.querySelector('#results .trail-photo img').naturalWidth"))
        print("title after photo:", page.title())
        # by_htmx(page, lambda: page.select_option("select[name=colour]", "Black"))
        print("after filter on photo page:", page.url, "cards", page.locator(".card").count(), page.locator("#results").inner_text()[:200])
        # bug 4: filter chosen via htmx, then photo
        page.goto(live_server.url + "/")
        by_htmx(page, lambda: page.select_option("select[name=colour]", "Black"))
        print("url", page.url)
        by_htmx(page, lambda: page.set_input_files("#photo-input", str(photo)))
        ids = grid_ids(page)
        print("photo after colour=Black filter:", [cat[i]["base_colour"] for i in ids][:10], "selected:", page.eval_on_selector("select[name=colour]", "e => e.value"))
        page.goto(live_server.url + "/?q=Sweatshirt")
        by_htmx(page, lambda: page.locator("#results ol.grid .card > a").first.click())
        print("title after htmx click:", page.title(), page.url)
        b.close()
