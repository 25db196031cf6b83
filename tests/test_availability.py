"""Taking products off sale and back: no grid of any kind shows them meanwhile, their vectors stay."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from gallery import cards, search
from gallery.catalog import COLUMNS
from gallery.models import Product
from gallery.services import catalog_import, product_availability_set
from recommender import runtime
from recommender.models import Embedding
from tests.support.catalog_files import job_id_of, run_job_inline
from tests.support.images import jpeg_bytes

pytestmark = pytest.mark.django_db


def _build() -> str:
    """The version of the index build serving similarity now."""
    return runtime.index_reader().current().meta.version


def _search_ids(client, query: str, **params: str) -> list[int]:
    response = client.get("/api/search", {"q": query, "k": 100, **params})
    assert response.status_code == 200, response.content
    return [r["id"] for r in response.json()["results"]]


def _similar_ids(client, product_id: int, **params: str) -> list[int]:
    response = client.get(f"/api/similar/{product_id}", {"k": 100, **params})
    assert response.status_code == 200, response.content
    return [r["id"] for r in response.json()["results"]]


def _page_ids(response) -> list[int]:
    assert response.status_code == 200, response.content[:500]
    return [item.product.id for item in response.context["items"]]


def _every_grid(client, product: Product, anchor: int, photo: bytes) -> dict[str, list[int]]:
    """The ids each kind of grid shows that could hold ``product`` (searched by its own name and values)."""
    word = product.name.split()[-1]
    return {
        "text search (API)": _search_ids(client, product.name),
        "text search (page)": _page_ids(client.get("/", {"q": product.name})),
        "filtered text search": _search_ids(client, word, type=product.article_type),
        "starting grid": _search_ids(client, ""),
        "starting grid, filtered": _search_ids(client, "", type=product.article_type),
        "similar (API)": _similar_ids(client, anchor),
        "similar (page)": _page_ids(client.get(f"/similar/{anchor}/")),
        "similar, filtered": _similar_ids(client, anchor, type=product.article_type),
        "similar, trail": _similar_ids(client, anchor, trail=f"p{anchor},{anchor}"),
        "photo": [
            r["id"]
            for r in client.post(
                "/api/search-by-image", {"image": SimpleUploadedFile("p.jpg", photo), "k": "100"}
            ).json()["results"]
        ],
        "photo, filtered": [
            r["id"]
            for r in client.post(
                "/api/search-by-image",
                {"image": SimpleUploadedFile("p.jpg", photo), "k": "100", "type": product.article_type},
            ).json()["results"]
        ],
    }


def test_a_product_off_sale_is_in_no_grid_and_back_on_sale_in_every_one(
    client, demo_catalog_db, demo_dir: Path, redis_db
):
    # The product the photo shows, and a neighbour to click from: both grids would show it.
    target = Product.objects.get(id=demo_catalog_db[5])
    photo = (demo_dir / "images" / f"{target.id}.jpg").read_bytes()
    anchor = next(
        pid
        for pid in _similar_ids(client, target.id)
        if target.id in _similar_ids(client, pid) and Product.objects.get(id=pid).article_type == target.article_type
    )
    before = _every_grid(client, target, anchor, photo)
    assert all(target.id in ids for ids in before.values()), {k: target.id in v for k, v in before.items()}
    vectors = Embedding.objects.filter(product_id=target.id).count()
    build = _build()

    # Taken off sale: no grid shows it, in this process's remembered grids and filters included
    # (no cache is cleared here: the catalog version moved).
    assert product_availability_set(product_ids=[target.id], active=False) == 1
    assert product_availability_set(product_ids=[target.id], active=False) == 0  # already off sale
    hidden = _every_grid(client, target, anchor, photo)
    assert not [kind for kind, ids in hidden.items() if target.id in ids], hidden
    assert all(len(hidden[k]) >= min(25, len(before[k]) - 1) for k in ("similar (API)", "photo")), "grids still fill"
    # Kept: its vectors, and the index build (nothing re-embedded or rebuilt).
    assert Embedding.objects.filter(product_id=target.id).count() == vectors
    assert _build() == build

    assert product_availability_set(product_ids=[target.id], active=True) == 1
    again = _every_grid(client, target, anchor, photo)
    assert all(target.id in ids for ids in again.values()), {k: target.id in v for k, v in again.items()}
    assert _build() == build


def test_a_trail_naming_a_product_off_sale_still_opens_with_a_notice(client, demo_catalog_db, redis_db):
    hidden, other = demo_catalog_db[10], demo_catalog_db[11]
    grid_before = _similar_ids(client, hidden)
    product_availability_set(product_ids=[hidden], active=False)

    page = client.get(f"/similar/{hidden}/")
    assert page.status_code == 200
    assert "no longer on sale" in page.context["notice"]
    shown = _page_ids(page)
    assert shown and hidden not in shown
    # The grid still comes from its vector: the products like it, as before it was hidden (the engine now
    # searches the ids on sale exactly, so the last places may differ from the approximate search's).
    assert shown[:10] == grid_before[:10]
    assert len(set(shown) & set(grid_before[:25])) >= 20
    # Earlier on a trail, it still pulls and is still never shown.
    trail = client.get(f"/similar/{other}/", {"trail": f"{hidden},{other}"})
    assert trail.status_code == 200 and hidden not in _page_ids(trail)
    assert any(step.product and step.product.id == hidden for step in trail.context["trail_steps"])
    # Its own record still answers.
    data = client.get(f"/api/products/{hidden}").json()
    assert (data["id"], data["active"]) == (hidden, False)


def test_text_search_never_shows_a_product_off_sale_even_before_its_index_is_rebuilt(client, db, redis_db):
    Product.objects.bulk_create([Product(id=i, name=f"Striped Linen Shirt {i}", article_type="Shirts") for i in (1, 2)])
    assert sorted(_search_ids(client, "striped linen")) == [1, 2]
    # A queryset update (writing updated_at, as every write of a product does): whether the text index is
    # rebuilt yet or not, the card check holds.
    Product.objects.filter(id=1).update(active=False, updated_at=timezone.now())
    assert _search_ids(client, "striped linen") == [2]
    search.search_index_reset()
    cards.forget()
    assert _search_ids(client, "striped linen") == [2]


def test_availability_moves_the_catalog_version():
    Product.objects.create(id=7, name="Red Scarf")
    version = cards.catalog_version()
    product_availability_set(product_ids=[7], active=False)
    assert cards.catalog_version() != version
    version = cards.catalog_version()
    product_availability_set(product_ids=[7], stock=3)
    assert cards.catalog_version() != version
    assert Product.objects.values_list("active", "stock").get(id=7) == (False, 3)
    with pytest.raises(ValueError, match="stock"):
        product_availability_set(product_ids=[7], stock=-1)
    assert Product.objects.values_list("active", "stock").get(id=7) == (False, 3)


def test_admin_takes_products_off_sale_and_back_in_one_action(staff, demo_catalog_db, redis_db):
    ids = demo_catalog_db[:3]
    response = staff.post("/admin/gallery/product/", {"action": "take_off_sale", "_selected_action": ids}, follow=True)
    assert response.status_code == 200
    assert "3 products taken off sale" in response.content.decode()
    assert not Product.objects.filter(id__in=ids, active=True).exists()
    assert not set(ids) & set(_search_ids(staff, ""))
    # The list shows the column and filters by it.
    page = staff.get("/admin/gallery/product/", {"active__exact": "0"})
    assert page.status_code == 200
    assert {row.id for row in page.context["cl"].result_list} == set(ids)
    assert "column-active" in page.content.decode()

    response = staff.post("/admin/gallery/product/", {"action": "put_on_sale", "_selected_action": ids}, follow=True)
    assert "3 products put on sale" in response.content.decode()
    assert Product.objects.filter(id__in=ids, active=True).count() == 3


def _styles(rows: list[str], extra: str = "") -> str:
    return "\n".join([",".join(COLUMNS) + extra, *rows]) + "\n"


def test_import_sets_availability_from_optional_columns_and_absent_columns_change_nothing(tmp_path, redis_db):
    directory = tmp_path / "catalog"
    (directory / "images").mkdir(parents=True)
    for pid in (601, 602, 603, 604):
        (directory / "images" / f"{pid}.jpg").write_bytes(jpeg_bytes(colour=(pid % 255, 40, 90)))
    base = "Men,Apparel,Topwear,Shirts,Blue,Fall,2012,Casual"
    (directory / "styles.csv").write_text(
        _styles(
            [
                f"601,{base},Shirt One,0,5",
                f"602,{base},Shirt Two,yes,",
                f"603,{base},Shirt Three,maybe,1",
                f"604,{base},Shirt Four,1,-2",
            ],
            extra=",active,stock",
        )
    )
    summary = catalog_import(directory=directory, enqueue=False, workers=1)
    assert (summary.created, summary.skipped) == (2, 2)
    reasons = {r.line: r.reason for r in summary.reasons}
    assert "active 'maybe' is not one of 1, 0, true, false, yes, no" in reasons[4]
    assert "stock '-2' is not a whole number" in reasons[5]
    assert Product.objects.values_list("id", "active", "stock").order_by("id")[::1] == [
        (601, False, 5),
        (602, True, None),
    ]

    # The same file without the columns: availability and stock stay as they are.
    (directory / "styles.csv").write_text(_styles([f"601,{base},Shirt One Renamed", f"602,{base},Shirt Two"]))
    summary = catalog_import(directory=directory, enqueue=False, workers=1)
    assert (summary.updated, summary.unchanged, summary.skipped) == (1, 1, 0)
    assert Product.objects.values_list("id", "name", "active", "stock").order_by("id")[::1] == [
        (601, "Shirt One Renamed", False, 5),
        (602, "Shirt Two", True, None),
    ]
    # Back on sale by the column, with blank stock leaving the count.
    (directory / "styles.csv").write_text(_styles([f"601,{base},Shirt One Renamed,true,"], extra=",active,stock"))
    catalog_import(directory=directory, enqueue=False, workers=1)
    assert Product.objects.values_list("active", "stock").get(id=601) == (True, 5)


def test_bulk_zip_carries_availability_columns(staff, settings, tmp_path, monkeypatch, redis_db):
    settings.IMPORT_JOBS_DIR = tmp_path / "imports"
    monkeypatch.setattr("gallery.tasks.import_job_enqueue", lambda *, job_id: True)
    monkeypatch.setattr("recommender.tasks.embed_enqueue", lambda *, product_ids: 0)
    out = io.BytesIO()
    base = "Women,Footwear,Shoes,Heels,Red,Fall,2013,Formal"
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(
            "styles.csv", _styles([f"701,{base},Red Heels,0,2", f"702,{base},Blue Heels,no,x"], ",active,stock")
        )
        archive.writestr("images/701.jpg", jpeg_bytes())
        archive.writestr("images/702.jpg", jpeg_bytes())
    response = staff.post(
        "/admin/gallery/product/bulk-upload/", {"archive": SimpleUploadedFile("c.zip", out.getvalue())}
    )
    job = run_job_inline(job_id_of(response))
    assert (job.created, job.skipped) == (1, 1)
    assert "stock 'x' is not a whole number" in job.reasons[0]["reason"]
    assert Product.objects.values_list("active", "stock").get(id=701) == (False, 2)


def test_product_json_shows_availability(client, db, redis_db):
    Product.objects.create(id=9, name="Green Cap", stock=4)
    data = client.get("/api/products/9").json()
    assert (data["active"], data["stock"], data["view_url"]) == (True, 4, "http://testserver/p/9/go")
    assert client.get("/api/products/10").status_code == 404


def test_staff_set_availability_through_the_api_and_no_one_else_can(staff, db, redis_db):
    Product.objects.create(id=11, name="Grey Scarf")
    url = "/api/products/11/availability"
    # Anyone without a staff session: refused, nothing changed.
    anonymous = Client()
    response = anonymous.post(url, '{"active": false}', content_type="application/json")
    assert response.status_code == 403 and "staff" in response.json()["error"]
    # A staff session without the CSRF token (a forged cross-site post): refused as JSON.
    forged = Client(enforce_csrf_checks=True)
    forged.force_login(User.objects.get(username="admin"))
    response = forged.post(url, '{"active": false}', content_type="application/json")
    assert response.status_code == 403 and "error" in response.json()
    assert Product.objects.get(id=11).active

    response = staff.post(url, '{"active": false, "stock": 0}', content_type="application/json")
    assert response.status_code == 200
    assert (response.json()["active"], response.json()["stock"]) == (False, 0)
    assert 11 not in _search_ids(staff, "grey scarf")
    assert staff.post(url, '{"active": true}', content_type="application/json").json()["active"] is True
    assert 11 in _search_ids(staff, "grey scarf")
    assert Product.objects.get(id=11).stock == 0  # absent from the body: unchanged

    for body, message in [
        ("not json", "JSON object"),
        ("{}", "JSON object"),
        ('{"active": "no"}', "true or false"),
        ('{"stock": -1}', "whole number"),
        ('{"stock": 1.5}', "whole number"),
        ('{"price": 3}', "JSON object"),
    ]:
        response = staff.post(url, body, content_type="application/json")
        assert response.status_code == 400 and message in response.json()["error"], body
    assert (
        staff.post("/api/products/12/availability", '{"active": false}', content_type="application/json").status_code
        == 404
    )
    assert staff.get(url).status_code == 405
    assert Product.objects.values_list("active", "stock").get(id=11) == (True, 0)
