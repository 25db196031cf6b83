"""Headless Chromium for the browser tests, and waiting for a page's scripts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

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
