"""The API description matches what the views really answer: real responses validated against it."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import get_resolver

from gallery.models import Product
from recommender import runtime
from tests.support.api import openapi_check
from tests.support.images import jpeg_bytes


@pytest.fixture
def spec(client) -> dict:
    return client.get("/api/openapi.json").json()


def test_every_api_endpoint_is_described(spec):
    routes = {str(p.pattern) for p in get_resolver().url_patterns for p in getattr(p, "url_patterns", [p])}
    api = {r.replace("<int:product_id>", "{id}") for r in routes if r.startswith("api/") and "openapi" not in r}
    assert {"/" + r for r in api} == set(spec["paths"])


@pytest.mark.django_db
def test_real_answers_match_the_description(client, spec, demo_catalog_db, redis_db, settings):
    anchor = demo_catalog_db[0]
    Product.objects.create(id=424242, name="Just added")
    photo = jpeg_bytes()
    cases = [
        ("/api/search", "get", client.get("/api/search", {"q": "shirt", "colour": "Blue", "k": 5})),
        ("/api/search", "get", client.get("/api/search", {"k": 0})),
        (
            "/api/similar/{id}",
            "get",
            client.get(f"/api/similar/{anchor}", {"trail": f"p{demo_catalog_db[1]},{anchor}"}),
        ),
        ("/api/similar/{id}", "get", client.get(f"/api/similar/{anchor}", {"trail": "x"})),
        ("/api/similar/{id}", "get", client.get("/api/similar/999999999")),
        ("/api/similar/{id}", "get", client.get("/api/similar/424242")),
        (
            "/api/search-by-image",
            "post",
            client.post("/api/search-by-image", {"image": SimpleUploadedFile("a.jpg", photo)}),
        ),
        (
            "/api/search-by-image",
            "post",
            client.post("/api/search-by-image", {"image": SimpleUploadedFile("a.jpg", b"no")}),
        ),
        ("/api/status", "get", client.get("/api/status")),
    ]
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 1
    image = {"image": SimpleUploadedFile("a.jpg", photo)}
    cases.append(("/api/search-by-image", "post", client.post("/api/search-by-image", image)))
    # No usable index and too many vectors to search exactly: 503 with Retry-After.
    (runtime.index_dir(runtime.active_space()) / "CURRENT").unlink()
    runtime.reset()
    settings.PHOTO_SEARCH_RATE_PER_MINUTE = 0
    from recommender import selectors

    limit, selectors.EXACT_FALLBACK_MAX = selectors.EXACT_FALLBACK_MAX, 10
    try:
        cases.append(("/api/similar/{id}", "get", client.get(f"/api/similar/{anchor}")))
    finally:
        selectors.EXACT_FALLBACK_MAX = limit

    seen = set()
    for template, method, response in cases:
        openapi_check(spec, template, method, response)
        seen.add((template, response.status_code))
        if response.status_code in (429, 503):
            assert int(response["Retry-After"]) > 0
    assert {
        ("/api/search", 200),
        ("/api/search", 400),
        ("/api/similar/{id}", 200),
        ("/api/similar/{id}", 400),
        ("/api/similar/{id}", 404),
        ("/api/similar/{id}", 409),
        ("/api/similar/{id}", 503),
        ("/api/search-by-image", 200),
        ("/api/search-by-image", 400),
        ("/api/search-by-image", 429),
        ("/api/status", 200),
    } <= seen
