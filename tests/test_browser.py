"""The gallery in a real browser: headless Chromium against the live server, with real product images.

One scenario walks a shopper's visit (text search, clicks, "not like this", Back,
keyboard, photo search, filters) with JavaScript on, then the first steps again
with JavaScript off. Screenshots of each step go to tests/artifacts/ and the
README's screenshot to docs/screenshot.png.
"""

from __future__ import annotations

import collections
import contextlib
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.support.browser import (
    ARTIFACTS,
    COUNT_SWAPS,
    QUERY,
    TIMEOUT_MS,
    by_htmx,
    chromium,
    grid_ids,
    ids_in,
    page_ready,
)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
README_SCREENSHOT = ROOT / "docs" / "screenshot.png"


def trail_ids(page) -> list[int]:
    return ids_in(page, "#results nav.trail li.step", "data-product")


def trail_param(page) -> str:
    return parse_qs(urlparse(page.url).query).get("trail", [""])[0]


def shot(page, name: str) -> None:
    # caret="initial": hiding the caret leaves an empty style attribute on the inputs, which htmx's history
    # snapshot keeps and Back restores as inline style, refused by the Content-Security-Policy.
    page.screenshot(path=str(ARTIFACTS / name), full_page=True, caret="initial")


def share(ids: list[int], catalog: dict, field: str, value: object) -> float:
    return sum(catalog[i][field] == value for i in ids) / len(ids)


def likeness(ids: list[int], catalog: dict, product_id: int) -> float:
    """Mean cosine similarity of the products ``ids`` to ``product_id`` (vectors are unit length)."""
    return float(np.mean([catalog[i]["vector"] @ catalog[product_id]["vector"] for i in ids]))


def assert_images_show(page, selector: str = "#results ol.grid .card img", first: int = 4) -> None:
    """The first ``first`` images matching ``selector`` are served and decode (lazy ones below the fold may wait)."""
    images = "([sel, n]) => [...document.querySelectorAll(sel)].slice(0, n)"
    try:
        page.wait_for_function(
            f"args => {{ const imgs = ({images})(args); return imgs.length && imgs.every(i => i.naturalWidth); }}",
            arg=[selector, first],
            timeout=TIMEOUT_MS,
        )
    except PlaywrightTimeout:
        broken = page.evaluate(
            f"args => ({images})(args).filter(i => !i.naturalWidth).map(i => i.src)", [selector, first]
        )
        pytest.fail(f"images that do not show ({selector}): {[src[:80] for src in broken] or 'none found'}")


def assert_whole_page(page) -> None:
    """A whole, styled page: header, search box and results (not the results fragment alone)."""
    expect(page.locator("header.top #q"), "a whole page, not the results fragment alone").to_have_count(1)
    assert page.evaluate("getComputedStyle(document.querySelector('.top')).position") == "sticky", "CSS not applied"


def assert_words_in_names(page, query: str, catalog: dict) -> list[int]:
    ids = grid_ids(page)
    names = page.locator("#results ol.grid .card .name").all_inner_texts()
    words = query.lower().split()
    expected = sorted(i for i, p in catalog.items() if all(w in p["name"].lower() for w in words))
    assert names and all(all(w in name.lower() for w in words) for name in names), names
    assert sorted(ids) == expected if len(expected) <= 25 else len(ids) == 25
    assert [catalog[i]["name"] for i in ids] == names
    return ids


def test_a_shoppers_visit_in_a_real_browser(live_server, browser_catalog, demo_dir: Path, tmp_path: Path, capsys):
    catalog = browser_catalog
    base = live_server.url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("failure-*.png"):
        old.unlink()
    failed_responses: list[str] = []

    def record_failure(response) -> None:
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            failed_responses.append(f"{response.status} {response.url}")

    js_errors: list[str] = []

    with chromium() as browser:
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(TIMEOUT_MS)
            context.add_init_script(COUNT_SWAPS)
            page = context.new_page()
            page.on("response", record_failure)
            page.on("pageerror", lambda exc: js_errors.append(str(exc)))
            # Failed loads show as console errors too: they are checked above, without the favicon.
            page.on(
                "console", lambda m: m.type == "error" and "Failed to load" not in m.text and js_errors.append(m.text)
            )

            # 1. Text search: Enter in the search box; htmx swaps the results and pushes ?q=.
            page.goto(f"{base}/")
            page_ready(page, timeout_ms=TIMEOUT_MS)
            assert page.evaluate("typeof window.htmx") == "object", "htmx did not load"
            assert_whole_page(page)
            expect(page.locator("#results ol.grid .card")).to_have_count(25)
            assert_images_show(page)
            page.fill("#q", QUERY)
            by_htmx(page, lambda: page.press("#q", "Enter"))
            assert parse_qs(urlparse(page.url).query)["q"] == [QUERY]
            searched = assert_words_in_names(page, QUERY, catalog)
            assert_images_show(page)
            shot(page, "01-text-search.png")

            # 2. Click a product: its trail and up to 25 similar products, never itself; then a second click.
            first = searched[0]
            by_htmx(page, lambda: page.locator("#results ol.grid .card > a").first.click())
            assert urlparse(page.url).path == f"/similar/{first}/"
            assert trail_ids(page) == [first]
            expect(page.locator("#results .trail-query")).to_have_text(f"“{QUERY}”")
            grid_first = grid_ids(page)
            assert len(grid_first) == 25 == len(set(grid_first)) and first not in grid_first
            assert_images_show(page)
            shot(page, "02-click.png")

            second = grid_first[0]
            by_htmx(page, lambda: page.locator("#results ol.grid .card > a").first.click())
            assert urlparse(page.url).path == f"/similar/{second}/"
            assert trail_param(page) == f"{first},{second}"
            assert trail_ids(page) == [first, second]
            grid_before = grid_ids(page)
            assert len(grid_before) == 25 and not {first, second} & set(grid_before)
            shot(page, "03-second-click.png")

            # 3. "Not like this" on the first step (an htmx swap): the grid is pushed away from it.
            by_htmx(page, lambda: page.locator(f'#results li.step[data-product="{first}"] a.dislike').click())
            assert trail_param(page) == f"n{first},{second}"
            disliked = page.locator(f'#results li.step[data-product="{first}"]')
            expect(disliked).to_have_class(re.compile(r"\bdisliked\b"))
            expect(disliked.locator("a.dislike")).to_have_attribute("aria-pressed", "true")
            grid_after = grid_ids(page)
            assert len(grid_after) == 25 and first not in grid_after and second not in grid_after
            assert grid_after != grid_before
            # What changed: how much the grid still looks like the disliked product.
            kind, colour = catalog[first]["article_type"], catalog[first]["base_colour"]
            before = (likeness(grid_before, catalog, first), share(grid_before, catalog, "article_type", kind))
            after = (likeness(grid_after, catalog, first), share(grid_after, catalog, "article_type", kind))
            colours = (
                share(grid_before, catalog, "base_colour", colour),
                share(grid_after, catalog, "base_colour", colour),
            )
            top10 = (
                share(grid_before[:10], catalog, "base_colour", colour),
                share(grid_after[:10], catalog, "base_colour", colour),
            )
            with capsys.disabled():
                print(
                    f"\n'not like this' on step 1 {catalog[first]['name']!r} (at step 2 {catalog[second]['name']!r}): "
                    f"{len(set(grid_before) - set(grid_after))}/25 grid products replaced; "
                    f"mean cosine to it {before[0]:.3f} -> {after[0]:.3f}; "
                    f"share of its type {kind!r} {before[1]:.2f} -> {after[1]:.2f}; "
                    f"of its colour {colour!r} {colours[0]:.2f} -> {colours[1]:.2f} "
                    f"(in the top 10: {top10[0]:.2f} -> {top10[1]:.2f})"
                )
            assert after[0] < before[0]  # the grid moved away from the disliked product
            shot(page, "04-not-like-this.png")

            # 4. Back: the URL holds the state, the grid before "not like this" returns.
            page.go_back()
            expect(page).to_have_url(re.compile(rf"/similar/{second}/\?.*trail={first}%2C{second}(&|$)"))
            assert_whole_page(page)
            expect(page.locator(f'#results li.step[data-product="{first}"]')).not_to_have_class(
                re.compile(r"\bdisliked\b")
            )
            assert grid_ids(page) == grid_before
            shot(page, "05-back.png")

            # 5. Keyboard: Tab to a grid product, Enter: the grid refreshes around it.
            page.focus("#q")
            for _ in range(60):
                page.keyboard.press("Tab")
                if page.evaluate("document.activeElement.matches('#results .card > a')"):
                    break
            else:
                pytest.fail("Tab never reached a grid product")
            third = int(re.search(r"/similar/(\d+)/", page.evaluate("document.activeElement.href")).group(1))
            assert third == grid_before[0]
            # htmx keeps no snapshot of this page (as when its history cache is full): Back rebuilds it from the URL.
            page.evaluate("htmx.config.historyCacheSize = 0")
            by_htmx(page, lambda: page.keyboard.press("Enter"))
            assert urlparse(page.url).path == f"/similar/{third}/"
            assert trail_ids(page) == [first, second, third]
            expect(page.locator(f'#results li.step.current[data-product="{third}"]')).to_have_count(1)
            grid_third = grid_ids(page)
            assert len(grid_third) == 25 and not {first, second, third} & set(grid_third)
            shot(page, "06-keyboard.png")
            by_htmx(page, page.go_back)
            assert_whole_page(page)
            assert trail_ids(page) == [first, second] and grid_ids(page) == grid_before
            by_htmx(page, page.go_forward)
            assert_whole_page(page)
            assert trail_ids(page) == [first, second, third] and grid_ids(page) == grid_third

            # The README's screenshot: a 3-step trail with the first step pinned and the second disliked.
            by_htmx(page, lambda: page.locator(f'#results li.step[data-product="{first}"] a.pin').click())
            by_htmx(page, lambda: page.locator(f'#results li.step[data-product="{second}"] a.dislike').click())
            assert trail_param(page) == f"p{first},n{second},{third}"
            expect(page.locator(f'#results li.step.pinned[data-product="{first}"]')).to_have_count(1)
            expect(page.locator(f'#results li.step.disliked[data-product="{second}"]')).to_have_count(1)
            expect(page.locator("#results ol.grid .card")).to_have_count(25)
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # let every lazy thumbnail load
            assert_images_show(page, "#results img", first=1000)
            page.evaluate("window.scrollTo(0, 0)")
            README_SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(README_SCREENSHOT), full_page=True, caret="initial")

            # Removing a step: the trail and the grid forget it.
            by_htmx(page, lambda: page.locator(f'#results li.step[data-product="{second}"] a.remove').click())
            assert urlparse(page.url).path == f"/similar/{third}/" and trail_param(page) == f"p{first},{third}"
            assert trail_ids(page) == [first, third] and len(grid_ids(page)) == 25

            # Aspects: "same colour" on the current step keeps its colour, "same shape" shows its shape in others.
            def aspect(code: str):
                return page.locator(f'#results li.step[data-product="{third}"] a.aspect-{code}')

            colour = catalog[third]["base_colour"]
            usual = grid_ids(page)
            expect(aspect("c")).to_have_attribute("aria-pressed", "false")
            by_htmx(page, lambda: aspect("c").click())
            assert trail_param(page) == f"p{first},{third}c"
            expect(aspect("c")).to_have_attribute("aria-pressed", "true")
            same_colour = grid_ids(page)
            by_htmx(page, lambda: aspect("s").click())
            assert trail_param(page) == f"p{first},{third}s"
            expect(aspect("s")).to_have_attribute("aria-pressed", "true")
            expect(aspect("c")).to_have_attribute("aria-pressed", "false")
            same_shape = grid_ids(page)
            shares = [share(g, catalog, "base_colour", colour) for g in (same_colour, usual, same_shape)]
            # How alike the grid's colours are to the step's (cosine of the stored colour descriptors).
            hue = [float(np.mean([catalog[i]["colour"] @ catalog[third]["colour"] for i in g])) for g in
                   (same_colour, usual, same_shape)]  # fmt: skip
            with capsys.disabled():
                print(
                    f"\nshare of {colour!r} in the grid: same colour {shares[0]:.2f}, usual {shares[1]:.2f}, "
                    f"same shape {shares[2]:.2f}; colour likeness {hue[0]:.3f}, {hue[1]:.3f}, {hue[2]:.3f}"
                )
            assert len(same_colour) == len(same_shape) == 25 and same_colour != same_shape
            assert shares[0] >= shares[2] and hue[0] > hue[1] > hue[2]
            shot(page, "06b-aspects.png")
            # Back restores the same-colour grid from the URL; a click from it keeps the step's aspect on the trail.
            by_htmx(page, page.go_back)
            assert trail_param(page) == f"p{first},{third}c" and grid_ids(page) == same_colour
            by_htmx(page, lambda: page.locator("#results ol.grid .card > a").first.click())
            assert trail_param(page) == f"p{first},{third}c,{same_colour[0]}"

            # 6. Search by photo: a shopper's copy of a product photo finds that product first.
            photo_of = sorted(catalog)[17]
            original = Image.open(demo_dir / "images" / f"{photo_of}.jpg").convert("RGB")
            w, h = original.size
            photo = tmp_path / "shopper-photo.jpg"
            original.crop((8, 10, w - 6, h - 12)).resize((w // 2, h // 2)).save(photo, quality=70)
            page.goto(f"{base}/")
            by_htmx(page, lambda: page.set_input_files("#photo-input", str(photo)))
            expect(page.locator("#results .trail-photo")).to_contain_text("Your photo")
            assert_images_show(page, "#results .trail-photo img")  # the shopper's photo itself shows
            photo_grid = grid_ids(page)
            assert len(photo_grid) == 25 and photo_grid[0] == photo_of, (catalog[photo_of]["name"], photo_grid[:3])
            assert_images_show(page)
            shot(page, "07-photo.png")

            # 7. Filters: picking a colour on a similar page keeps only that colour; a type on the home page.
            page.goto(f"{base}/similar/{second}/")
            colours = collections.Counter(catalog[i]["base_colour"] for i in grid_ids(page))
            colour = next(c for c, _ in colours.most_common() if c != catalog[second]["base_colour"])
            by_htmx(page, lambda: page.select_option("select[name=colour]", colour))
            assert parse_qs(urlparse(page.url).query)["colour"] == [colour]
            filtered = grid_ids(page)
            expected = sum(p["base_colour"] == colour for i, p in catalog.items() if i != second)
            assert len(filtered) == min(25, expected) and all(catalog[i]["base_colour"] == colour for i in filtered)
            expect(page.locator("select[name=colour]")).to_have_value(colour)
            shot(page, "08-filter-colour.png")

            page.goto(f"{base}/")
            kind = catalog[first]["article_type"]
            by_htmx(page, lambda: page.select_option("select[name=type]", kind))
            typed = grid_ids(page)
            assert typed and all(catalog[i]["article_type"] == kind for i in typed)
            assert len(typed) == min(25, sum(p["article_type"] == kind for p in catalog.values()))
            shot(page, "09-filter-type.png")

            # 8. JavaScript off: the search form and the grid's links work as plain HTML.
            plain = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=False)
            plain.set_default_timeout(TIMEOUT_MS)
            nojs = plain.new_page()
            nojs.on("response", record_failure)
            nojs.goto(f"{base}/")
            nojs.fill("#q", QUERY)
            with nojs.expect_navigation():
                nojs.press("#q", "Enter")
            assert parse_qs(urlparse(nojs.url).query)["q"] == [QUERY]
            assert assert_words_in_names(nojs, QUERY, catalog) == searched
            shot(nojs, "10-nojs-search.png")
            with nojs.expect_navigation():
                nojs.locator("#results ol.grid .card > a").first.click()
            assert urlparse(nojs.url).path == f"/similar/{first}/" and trail_ids(nojs) == [first]
            assert grid_ids(nojs) == grid_first
            with nojs.expect_navigation():
                nojs.locator("#results ol.grid .card > a").first.click()
            assert urlparse(nojs.url).path == f"/similar/{second}/"
            assert trail_param(nojs) == f"{first},{second}" and trail_ids(nojs) == [first, second]
            assert grid_ids(nojs) == grid_before
            shot(nojs, "11-nojs-click.png")
            plain.close()
        except BaseException:  # pytest.fail() raises a BaseException
            for n, open_page in enumerate(p for c in browser.contexts for p in c.pages):
                with contextlib.suppress(Exception):
                    open_page.screenshot(path=str(ARTIFACTS / f"failure-{n}.png"), full_page=True)
            raise

    assert not failed_responses, failed_responses
    assert not js_errors, js_errors
