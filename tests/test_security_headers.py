"""The production headers, and every page kind working in a real browser under the Content-Security-Policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from playwright.sync_api import expect

from gallery.models import ImportJob, ImportStatus
from tests.support.browser import COUNT_SWAPS, TIMEOUT_MS, by_htmx, chromium, grid_ids, page_ready
from tests.support.images import jpeg_bytes

# Every violation, reported by the page itself (the event) and by the browser (its console message).
RECORD_VIOLATIONS = """
document.addEventListener('securitypolicyviolation', (e) =>
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'} on ${location.pathname}`));
"""


def csp_directives(header: str) -> dict[str, list[str]]:
    return {part.split()[0]: part.split()[1:] for part in (p.strip() for p in header.split(";")) if part}


@pytest.mark.django_db
def test_pages_and_api_answers_carry_the_production_headers(client, settings):
    for path in ["/", "/api/status", "/admin/login/", "/no-such-page/"]:
        response = client.get(path)
        policy = csp_directives(response["Content-Security-Policy"])
        assert policy["script-src"] == ["'self'"], path  # no nonce unless a page used one
        assert policy["style-src"] == ["'self'"], path
        assert policy["default-src"] == ["'self'"] and policy["object-src"] == ["'none'"]
        assert policy["frame-ancestors"] == ["'none'"] and policy["form-action"] == ["'self'"]
        assert policy["base-uri"] == ["'self'"]
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"
        assert "camera=()" in response["Permissions-Policy"] and "geolocation=()" in response["Permissions-Policy"]
        # HSTS only in production (over HTTPS): SecurityMiddleware sends it on secure requests when set.
        assert "Strict-Transport-Security" not in response
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # A new client: the security middleware reads its settings when the handler is built.
    answer = Client().get("/", secure=True)
    assert answer["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_production_settings_turn_on_hsts_and_upgrade_insecure_requests(tmp_path: Path):
    """The settings module itself, loaded as production loads it, in a fresh interpreter."""
    import subprocess
    import sys

    from tests.support import ROOT

    code = (
        "import django; from django.conf import settings; django.setup(); "
        "d = settings.CONTENT_SECURITY_POLICY['DIRECTIVES']; "
        "print(settings.SECURE_HSTS_SECONDS, settings.SECURE_HSTS_INCLUDE_SUBDOMAINS, "
        "d.get('upgrade-insecure-requests'), settings.METRICS_ALLOWED_NETWORKS, d['img-src'])"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "GALLERY_ENV": "production",
        "SECRET_KEY": "k" * 20 + "0123456789abcdefghijklmnopqrstuvwxyz",
        "ALLOWED_HOSTS": "gallery.example.com",
        "REDIS_URL": "redis://127.0.0.1:6379/8",
        "GALLERY_VAR_DIR": str(tmp_path),
        "MEDIA_S3_BUCKET": "shop-media",
        "MEDIA_S3_CUSTOM_DOMAIN": "media.example.com",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    # Nobody may scrape /metrics in production until the operator says who; S3 images are allowed by the policy.
    assert out.strip() == "31536000 True True [] [\"'self'\", 'data:', 'https://media.example.com']"


@pytest.mark.browser
def test_every_page_kind_works_under_the_policy_with_no_violation(live_server, browser_catalog, tmp_path: Path):
    """Shop pages (home, search, similar, trail edits, photo search) and admin pages (login, lists, forms,
    bulk upload, an import's live page): the browser reports no violation, and htmx still swaps grids."""
    base = live_server.url
    User.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")
    job = ImportJob.objects.create(status=ImportStatus.RUNNING, original_name="catalog.zip", rows_total=100)
    product_id = next(iter(browser_catalog))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_bytes(colour=(30, 60, 200)))
    messages: list[str] = []
    page_errors: list[str] = []
    visited: list[str] = []

    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(COUNT_SWAPS + RECORD_VIOLATIONS)
        page = context.new_page()
        page.on("console", lambda m: m.type in {"error", "warning"} and messages.append(f"{page.url}: {m.text}"))
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))

        def visit(path: str) -> None:
            page.goto(base + path)
            page_ready(page, timeout_ms=TIMEOUT_MS)
            assert page.evaluate("typeof window.htmx") == "object", f"htmx did not load on {path}"
            visited.append(path)

        # The shop: home (starting grid), a text search, a click, trail edits, a photo search.
        visit("/")
        before = grid_ids(page)
        by_htmx(page, lambda: page.locator("#results ol.grid .card > a").nth(3).click())
        assert re.search(r"/similar/\d+/", page.url) and grid_ids(page) != before, "a click refreshes the grid"
        visit("/?q=Sweatshirt")
        assert grid_ids(page)
        visit(f"/similar/{product_id}/")
        by_htmx(page, lambda: page.locator("#results ol.grid .card > a").first.click())
        by_htmx(page, lambda: page.locator("#results nav.trail a.pin").first.click())
        by_htmx(page, lambda: page.locator("#results nav.trail a.dislike").first.click())
        by_htmx(page, lambda: page.locator("#results nav.trail a.remove").last.click())
        visit("/")
        by_htmx(page, lambda: page.set_input_files("#photo-input", str(photo)))
        expect(page.locator("#results ol.grid .card").first).to_be_visible()

        # The admin: login, lists, forms, the bulk upload, an import's page following the job live.
        page.goto(f"{base}/admin/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "pw-admin-123")
        page.click("input[type=submit]")
        expect(page).to_have_url(re.compile(r"/admin/$"))
        for path in [
            "/admin/",
            "/admin/gallery/product/",
            f"/admin/gallery/product/{product_id}/change/",
            "/admin/gallery/product/add/",
            "/admin/gallery/product/bulk-upload/",
            "/admin/gallery/importjob/",
            "/admin/auth/user/",
        ]:
            page.goto(base + path)
            page.wait_for_load_state("load")
            visited.append(path)
        expect(page.locator("#result_list")).to_be_visible()
        # The import's page polls its progress through htmx: a swap happens under the policy.
        visit(f"/admin/gallery/importjob/{job.id}/change/")
        page.wait_for_function("() => window.__swaps > 0", timeout=TIMEOUT_MS)
        # The product list's thumbnails keep their size without an inline style.
        page.goto(f"{base}/admin/gallery/product/")
        height = page.evaluate("() => document.querySelector('img.gallery-thumb')?.getBoundingClientRect().height")
        assert height in (None, 64), height

    violations = [m for m in messages if "Content Security Policy" in m or "CSP violation" in m]
    assert not violations, violations
    assert not page_errors, page_errors
    print(f"pages loaded under the policy: {len(visited)}: {visited}")
