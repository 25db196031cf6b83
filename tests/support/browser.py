"""Headless Chromium for the browser tests, and waiting for a page's scripts."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots of each step
SLICE = 120  # products imported from the demo catalog, with their images
QUERY = "Sweatshirt"  # an article type of the slice: its products are named "... Sweatshirt"
TIMEOUT_MS = 15_000

# Counts htmx swaps: an action done by htmx raises the count, a full page load resets it.
COUNT_SWAPS = "window.__swaps = 0; document.addEventListener('htmx:afterSettle', () => window.__swaps++);"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's (scripts/browser-deps.sh installs it)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """Headless Chromium for one block of a browser test, closed when the block ends; skips without it.

    A context manager, not a fixture: Playwright's sync API runs an event loop while it is open, and
    Django's ORM refuses to run inside one, so a test writes its rows before the block and reads them after.
    """
    from playwright.sync_api import sync_playwright  # imported lazily: only the browser tests need it

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/browser-deps.sh to install Debian's chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def page_ready(page: object, *, timeout_ms: float = 15_000) -> None:
    """Wait until the page's deferred scripts have run and htmx is there: a URL that changed says only that a
    navigation committed, not that the new document has run its scripts."""
    page.wait_for_load_state("load", timeout=timeout_ms)
    page.wait_for_function("() => typeof window.htmx === 'object'", timeout=timeout_ms)


def ids_in(page, selector: str, attribute: str = "href") -> list[int]:
    values = page.locator(selector).evaluate_all(f"els => els.map(e => e.getAttribute('{attribute}'))")
    return [int(re.search(r"(\d+)", value).group(1)) for value in values]


def grid_ids(page) -> list[int]:
    return ids_in(page, "#results ol.grid .card > a")


def by_htmx(page, action: Callable[[], object]) -> None:
    """Do ``action`` and wait until htmx has swapped the results in (in the same page: no reload)."""
    before = page.evaluate("window.__swaps")
    assert before is not None, "htmx counter missing: the page was not loaded with the init script"
    action()
    page.wait_for_function("n => window.__swaps > n", arg=before, timeout=TIMEOUT_MS)
