"""Shopper experience: the editable trail, filters inside similarity search, search by photo, the API description."""

from __future__ import annotations

import collections
import io
import re
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from gallery.models import Product
from gallery.trail import MAX_STEPS, Trail, TrailError

# --- The trail as data ---------------------------------------------------------------------


def test_trail_parses_marks_and_round_trips():
    trail = Trail.parse("12, p34,n56 ,78")
    assert str(trail) == "12,p34,n56,78"
    assert [(step.product_id, step.mark) for step in trail.steps] == [(12, ""), (34, "p"), (56, "n"), (78, "")]
    assert [step.product_id for step in trail.steps if step.disliked] == [56]
    assert trail.anchor.product_id == 78


@pytest.mark.parametrize("text", ["12,abc", "x1", "p", "1,,n", "12;34", "-5", "p-3", "1" * 17])
def test_trail_refuses_garbage_with_a_reason(text: str):
    if text == "1,,n":
        with pytest.raises(TrailError):
            Trail.parse(text)
        return
    with pytest.raises(TrailError, match="not a trail step"):
        Trail.parse(text)


def test_trail_editing_operations():
    trail = Trail.parse("1,2,3")
    assert str(trail.then(2)) == "1,3,2"  # a repeated click moves the step to the end
    assert str(trail.without(1)) == "1,3"
    assert str(trail.marked(0, "n")) == "n1,2,3"
    assert str(trail.marked(0, "n").marked(0, "n")) == "1,2,3"  # toggles
    assert trail.marked(2, "n").anchor.product_id == 2  # a disliked newest step hands over the anchor


def test_trail_is_capped_keeping_marked_steps():
    trail = Trail.parse(",".join(["p1", "n2"] + [str(i) for i in range(3, 40)]))
    assert len(trail) == MAX_STEPS
    assert trail.steps[0].pinned and trail.steps[1].disliked
    assert trail.steps[-1].product_id == 39


# --- The trail through the pages and the API --------------------------------------------------


def grid_ids(html: str) -> list[int]:
    grid = html.split('<ol class="grid"')[1].split("</ol>")[0]
    return [int(i) for i in re.findall(r'href="/similar/(\d+)/', grid)]


def api_ids(client, product_id: int, **params) -> list[int]:
    response = client.get(f"/api/similar/{product_id}", params)
    assert response.status_code == 200, response.content
    return [r["id"] for r in response.json()["results"]]


def attrs(ids: list[int], field: str) -> collections.Counter:
    values = dict(Product.objects.filter(id__in=ids).values_list("id", field))
    return collections.Counter(values[i] for i in ids)


@pytest.mark.django_db
def test_not_like_this_sinks_what_looks_more_like_the_disliked_product(client, demo_catalog_db, demo_vectors):
    from recommender import services
    from recommender.colour import COLOUR_SPACE
    from recommender.models import Embedding

    Embedding.objects.filter(space=COLOUR_SPACE).delete()  # "looks like" by the image vectors alone, below
    services.index_rebuild()
    anchor = demo_catalog_db[11]
    before = api_ids(client, anchor)
    disliked = before[0]
    vectors = demo_vectors

    def nearer_disliked(ids: list[int]) -> int:
        return sum(vectors[i] @ vectors[disliked] > vectors[i] @ vectors[anchor] for i in ids)

    after = api_ids(client, anchor, trail=f"n{disliked},{anchor}")

    assert disliked not in after and len(after) == 25
    assert nearer_disliked(before) >= 1 and nearer_disliked(after) == 0


@pytest.mark.django_db
def test_pinned_steps_keep_pulling_the_grid(client, demo_catalog_db, demo_vectors):
    types = dict(Product.objects.values_list("id", "article_type"))
    anchor = demo_catalog_db[0]
    other = next(i for i in demo_catalog_db if types[i] != types[anchor])
    plain = api_ids(client, anchor, trail=f"{other},{anchor}")  # an older click: half the newest's weight
    pinned = api_ids(client, anchor, trail=f"p{other},{anchor}")  # pinned: as much as the newest

    def likeness(ids: list[int]) -> float:
        return float(np.mean([demo_vectors[i] @ demo_vectors[other] for i in ids]))

    assert likeness(pinned) > likeness(plain)
    assert other not in pinned and anchor not in pinned


@pytest.mark.django_db
def test_trail_controls_lead_to_edited_trails(client, demo_catalog_db):
    a, b, c = demo_catalog_db[1], demo_catalog_db[2], demo_catalog_db[3]
    html = client.get(f"/similar/{c}/", {"trail": f"{a},{b},{c}", "q": "shoes"}).content.decode()
    trail = html.split('<nav class="trail"')[1].split("</nav>")[0].replace("&amp;", "&")

    # Each edit's link names the edit (act=: p pin, n not like this, r remove) for the shopper-events record.
    assert f'href="/similar/{c}/?trail=n{a}%2C{b}%2C{c}&q=shoes&act=n"' in trail  # "not like this" on the first
    assert f'href="/similar/{c}/?trail={a}%2Cp{b}%2C{c}&q=shoes&act=p"' in trail  # pin the second
    assert f'href="/similar/{c}/?trail={a}%2C{c}&q=shoes&act=r"' in trail  # remove the second
    # Disliking the current step moves the anchor back to the newest liked step.
    assert f'href="/similar/{b}/?trail={a}%2C{b}%2Cn{c}&q=shoes&act=n"' in trail


@pytest.mark.django_db
def test_filters_apply_inside_the_similarity_search_and_still_fill_the_grid(client, demo_catalog_db):
    counts = collections.Counter(Product.objects.values_list("base_colour", flat=True))
    colour = next(c for c, n in counts.most_common() if 26 <= n <= 60)  # rare enough to need over-fetching
    anchor = next(i for i in demo_catalog_db if Product.objects.get(id=i).base_colour != colour)

    ids = api_ids(client, anchor, colour=colour)

    assert len(ids) == 25
    assert set(attrs(ids, "base_colour")) == {colour}
    page = client.get(f"/similar/{anchor}/", {"colour": colour}).content.decode()
    assert len(grid_ids(page)) == 25
    assert f'<option value="{colour}" selected>' in page


@pytest.mark.django_db
def test_htmx_requests_get_only_the_results_fragment(client, demo_catalog_db):
    page = client.get(f"/similar/{demo_catalog_db[0]}/", headers={"HX-Request": "true"})
    html = page.content.decode()
    assert html.lstrip().startswith("<title>")  # htmx updates the page title from it
    assert '<section id="results"' in html
    assert "<html" not in html and "<header" not in html
    assert "HX-Request" in page["Vary"]  # Back/Forward never get the fragment from the cache


# --- Search by photo --------------------------------------------------------------------------


def demo_photo(demo_dir: Path, product_id: int, *, fmt: str = "JPEG") -> bytes:
    img = Image.open(demo_dir / "images" / f"{product_id}.jpg").convert("RGB")
    out = io.BytesIO()
    img.resize((img.width // 2, img.height // 2)).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.django_db
def test_photo_api_finds_the_photographed_product_first(client, demo_catalog_db, demo_dir, settings, tmp_path):
    product_id = demo_catalog_db[30]
    files_before = sorted(Path(settings.MEDIA_ROOT).rglob("*")) if Path(settings.MEDIA_ROOT).exists() else []

    response = client.post(
        "/api/search-by-image?k=5", {"image": SimpleUploadedFile("x.png", demo_photo(demo_dir, product_id, fmt="PNG"))}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["query"] == "image"
    assert [r["id"] for r in body["results"]][0] == product_id
    assert len(body["results"]) == 5
    assert Product.objects.count() == len(demo_catalog_db)  # nothing added to the catalog
    files_after = sorted(Path(settings.MEDIA_ROOT).rglob("*")) if Path(settings.MEDIA_ROOT).exists() else []
    assert files_after == files_before  # and nothing written


@pytest.mark.django_db
def test_photo_page_shows_the_photo_as_the_start_of_the_trail(client, demo_catalog_db, demo_dir):
    product_id = demo_catalog_db[31]
    page = client.post("/search-by-image", {"image": SimpleUploadedFile("p.jpg", demo_photo(demo_dir, product_id))})

    html = page.content.decode()
    assert page.status_code == 200
    assert "Your photo" in html and re.search(r'src="/photo/[A-Za-z0-9_-]{22}\.jpg"', html)
    ids = grid_ids(html)
    assert ids[0] == product_id and len(ids) == 25
    # Clicking on carries the photo along, so it stays visible on the next page.
    href = re.search(rf'href="(/similar/{ids[1]}/\?[^"]+)"', html).group(1).replace("&amp;", "&")
    assert "photo=" in href
    assert "Your photo" in client.get(href).content.decode()


@pytest.mark.django_db
def test_photo_search_refuses_bad_uploads_clearly(client, demo_catalog_db):
    response = client.post("/api/search-by-image", {"image": SimpleUploadedFile("a.jpg", b"GIF89a not really")})
    assert response.status_code == 400
    assert "JPEG, PNG, WebP or GIF" in response.json()["error"]

    response = client.post("/api/search-by-image", {})
    assert response.status_code == 400
    assert "Choose a photo" in response.json()["error"]

    page = client.post("/search-by-image", {"image": SimpleUploadedFile("e.jpg", b"")})
    assert page.status_code == 400
    assert "empty" in page.content.decode()


@pytest.mark.django_db
def test_photo_filters_apply(client, demo_catalog_db, demo_dir):
    product_id = demo_catalog_db[32]
    gender = "Women"
    response = client.post(
        f"/api/search-by-image?gender={gender}",
        {"image": SimpleUploadedFile("p.jpg", demo_photo(demo_dir, product_id))},
    )
    ids = [r["id"] for r in response.json()["results"]]
    assert ids and set(attrs(ids, "gender")) == {gender}


def test_openapi_description_lists_every_endpoint(client):
    spec = client.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert {"/api/search", "/api/similar/{id}", "/api/search-by-image", "/api/status"} <= spec["paths"].keys()
    trail = next(p for p in spec["paths"]["/api/similar/{id}"]["get"]["parameters"] if p["name"] == "trail")
    assert re.fullmatch(trail["schema"]["pattern"], "12,p34,n56")


def test_vectors_are_unit_length_for_the_trail_formula(demo_vectors):
    norms = np.linalg.norm(np.stack(list(demo_vectors.values())), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)


def test_api_errors_are_json_even_for_unknown_routes(client):
    response = client.get("/api/similar/abc")
    assert response.status_code == 404
    assert response.json() == {"error": "No such endpoint or product."}
    assert client.get("/no-such-page").status_code == 404
