"""The shared grid cache and the cards each process holds never answer with what the database no longer holds.

A trail's grid is kept (per process and in Redis) under a key of everything that decides it; each web
process holds the cards it has shown and drops those saved or deleted since. After every kind of change
(an upload, an edit, a deletion, taking a product off sale, a rebuild) the cached answer must equal what the
site computes with nothing cached.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.core.cache import cache
from django.utils import timezone

from gallery import cards
from gallery.filters import ProductFilters
from gallery.models import Product, ProductDeletion
from gallery.services import product_availability_set, products_delete
from recommender import refine, runtime, selectors, services
from tests.support.engine import engine_knows


def _grid(client, product_id: int, params: dict) -> list[tuple[int, float, str]]:
    response = client.get(f"/api/similar/{product_id}", params)
    assert response.status_code == 200, response.content
    return [(r["id"], r["score"], r["name"]) for r in response.json()["results"]]


def _uncached(client, settings, product_id: int, params: dict) -> list[tuple[int, float, str]]:
    """The grid with nothing remembered anywhere: no grid cache, no earlier grids, no held cards."""
    ttl = settings.GRID_CACHE_TTL_S
    settings.GRID_CACHE_TTL_S = 0
    cache.clear()
    refine.forget()
    cards.forget()
    try:
        return _grid(client, product_id, params)
    finally:
        settings.GRID_CACHE_TTL_S = ttl
        cache.clear()
        refine.forget()
        cards.forget()


@pytest.fixture
def ranked(monkeypatch) -> list[int]:
    """Counts the engine's nearest-neighbour searches (each ranking makes at least one)."""
    calls: list[int] = []
    real = selectors.similar_products
    monkeypatch.setattr(selectors, "similar_products", lambda **kwargs: calls.append(1) or real(**kwargs))
    return calls


@pytest.mark.parametrize("start", [{}, {"q": "shirt"}, {"colour": "Blue"}])
def test_a_grid_is_ranked_once_then_answered_from_the_cache_by_every_process(client, demo_catalog_db, ranked, start):
    steps = demo_catalog_db[10:40:10]
    params = {"trail": ",".join(map(str, steps)), **start}
    first = _grid(client, steps[-1], params)
    assert ranked
    ranked.clear()
    assert _grid(client, steps[-1], params) == first
    refine.forget()  # another web process: only the shared cache knows the grid
    cards.forget()
    assert _grid(client, steps[-1], params) == first
    assert not ranked
    # Another trail, k or filter is another grid.
    _grid(client, steps[-1], {**params, "k": 10})
    assert ranked


def _new_arrival(pid: int, like: int, demo_vectors: dict[int, np.ndarray]) -> None:
    """A product uploaded after the build, looking exactly like ``like``: its vector is stored since the build."""
    source = Product.objects.get(id=like)
    Product.objects.create(
        id=pid,
        name="New arrival",
        gender=source.gender,
        master_category=source.master_category,
        sub_category=source.sub_category,
        article_type=source.article_type,
        base_colour=source.base_colour,
        image_version=1,
    )
    engine_knows(pid)
    space = runtime.active_space()
    services.embedding_store(product_id=pid, image_version=1, space=space, vector=demo_vectors[like])


def test_after_every_change_the_cached_grid_equals_the_uncached_one(client, settings, demo_catalog_db, demo_vectors):
    steps = demo_catalog_db[20:50:10]
    anchor = steps[-1]
    params = {"trail": ",".join(map(str, steps)), "q": "casual"}
    before = _grid(client, anchor, params)
    assert before == _uncached(client, settings, anchor, params)
    _grid(client, anchor, params)  # cached again

    # An upload: the new product looks like the anchor, so it leads the grid.
    _new_arrival(90_001, anchor, demo_vectors)
    after_upload = _grid(client, anchor, params)
    assert after_upload[0][0] == 90_001
    assert after_upload == _uncached(client, settings, anchor, params)

    # An edit of a shown product: a new name shows at once.
    shown = after_upload[3][0]
    product = Product.objects.get(id=shown)
    product.name = "Renamed since"
    product.save()
    after_edit = _grid(client, anchor, params)
    assert (shown, "Renamed since") in [(pid, name) for pid, _, name in after_edit]
    assert after_edit == _uncached(client, settings, anchor, params)

    # An edit out of the filter: a colour filter no longer passes it.
    filtered = {**params, "colour": Product.objects.get(id=shown).base_colour}
    _grid(client, anchor, filtered)
    Product.objects.filter(id=shown).update(base_colour="Mauve", updated_at=timezone.now())
    assert shown not in [pid for pid, _, _ in _grid(client, anchor, filtered)]
    assert _grid(client, anchor, filtered) == _uncached(client, settings, anchor, filtered)

    # A deletion: gone, and the grid is still full (the next product takes its place).
    gone = after_edit[1][0]
    products_delete(product_ids=[gone])
    after_delete = _grid(client, anchor, params)
    assert gone not in [pid for pid, _, _ in after_delete] and len(after_delete) == len(before)
    assert after_delete == _uncached(client, settings, anchor, params)

    # Off sale.
    hidden = after_delete[2][0]
    product_availability_set(product_ids=[hidden], active=False)
    after_off = _grid(client, anchor, params)
    assert hidden not in [pid for pid, _, _ in after_off]
    assert after_off == _uncached(client, settings, anchor, params)

    # A rebuild (the new arrival moves into the build).
    services.index_rebuild()
    assert _grid(client, anchor, params) == _uncached(client, settings, anchor, params)


def test_an_orm_deletion_moves_the_catalog_version_and_drops_the_held_card(db, django_assert_num_queries):
    Product.objects.bulk_create([Product(id=pid, name=f"P{pid}") for pid in (1, 2, 3)])
    with cards.catalog_version_held():
        assert set(cards.cards_get([1, 2, 3])) == {1, 2, 3}
    version = cards.catalog_version()
    Product.objects.filter(id=2).delete()  # not through the service: numbered all the same
    assert list(ProductDeletion.objects.values_list("product_id", flat=True)) == [2]
    assert cards.catalog_version() != version
    assert set(cards.cards_get([1, 2, 3])) == {1, 3}
    products_delete(product_ids=[3])
    assert set(cards.cards_get([1, 2, 3])) == {1}


def test_held_cards_cost_no_query_and_only_changed_ones_are_read_again(db, django_assert_num_queries):
    Product.objects.bulk_create([Product(id=pid, name=f"P{pid}") for pid in range(1, 31)])
    with cards.catalog_version_held():
        with django_assert_num_queries(2):  # the version, then every card (the first use)
            cards.cards_get(range(1, 31))
        with django_assert_num_queries(0):
            assert cards.cards_get(range(1, 31))[7].name == "P7"
    product = Product.objects.get(id=7)
    product.name = "Seven"
    product.save()
    with cards.catalog_version_held():
        # The version; what changed since the held one; the one changed card.
        with django_assert_num_queries(3) as queries:
            held = cards.cards_get(range(1, 31))
    assert held[7].name == "Seven" and held[8].name == "P8"
    # What changed is asked unordered: ordered by id (the model's ordering), SQLite walks every product in id
    # order instead of the few saved since, through the updated_at index (211 ms at 1M products).
    changed = next(q["sql"] for q in queries.captured_queries if "updated_at" in q["sql"] and "UNION" not in q["sql"])
    assert "ORDER BY" not in changed.upper(), changed


def test_a_save_committed_after_a_newer_one_still_moves_the_version(db):
    """Two saves at once: the later-committed one carries the older ``updated_at``; the max alone misses it."""
    now = timezone.now()
    Product.objects.bulk_create([Product(id=1, name="One"), Product(id=2, name="Two")])
    Product.objects.filter(id=1).update(updated_at=now)
    Product.objects.filter(id=2).update(updated_at=now - timedelta(seconds=30))
    cards.cards_get([1, 2])
    version = cards.catalog_version()
    Product.objects.filter(id=2).update(name="Two, edited", updated_at=now - timedelta(seconds=5))
    assert cards.catalog_version() != version
    assert cards.cards_get([2])[2].name == "Two, edited"


def test_a_restored_older_catalog_drops_every_held_card(db):
    Product.objects.bulk_create([Product(id=pid, name=f"P{pid}") for pid in (1, 2)])
    products_delete(product_ids=[2])
    cards.cards_get([1])
    ProductDeletion.objects.all().delete()  # the deletions' numbers went back: a backup restored
    Product.objects.filter(id=1).update(name="Restored")
    assert cards.cards_get([1])[1].name == "Restored"


def test_a_catalog_beyond_what_a_process_holds_is_read_as_shown(db, monkeypatch, django_assert_num_queries):
    monkeypatch.setattr(cards, "CARDS_HELD_MAX", 5)
    Product.objects.bulk_create([Product(id=pid, name=f"P{pid}") for pid in range(1, 11)])
    with cards.catalog_version_held():
        with django_assert_num_queries(3):  # the version, the first rows (too many), the cards
            assert set(cards.cards_get([2, 3])) == {2, 3}
        with django_assert_num_queries(0):
            assert set(cards.cards_get([2, 3])) == {2, 3}
        with django_assert_num_queries(1):
            assert set(cards.cards_get([4])) == {4}


def _filter_read_whole(filters) -> list[int]:
    return list(Product.objects.filter(filters.q(), active=True).order_by("id").values_list("id", flat=True))


def test_a_filters_ids_follow_every_change_from_the_products_changed_alone(db, django_assert_max_num_queries):
    """When the version moves, a filter's ids are the earlier version's brought up to date from the products
    saved or deleted since: equal to reading the filter whole, without reading it whole."""
    blue = ProductFilters.from_mapping({"colour": "Blue"})
    colours = ["Blue", "Red", "Blue", "Green", "Blue", "Red"]
    Product.objects.bulk_create([Product(id=pid, name=f"P{pid}", base_colour=c) for pid, c in enumerate(colours, 1)])
    assert cards.filter_ids(blue).tolist() == [1, 3, 5]

    def edit_colour(pid: int, colour: str) -> None:
        product = Product.objects.get(id=pid)
        product.base_colour = colour
        product.save()

    changes = [
        lambda: edit_colour(2, "Blue"),  # into the filter
        lambda: edit_colour(3, "Black"),  # out of it
        lambda: Product.objects.create(id=9, name="New", base_colour="Blue"),  # a new product
        lambda: Product.objects.create(id=7, name="Newer", base_colour="Red"),  # one the filter does not pass
        lambda: products_delete(product_ids=[5]),
        lambda: Product.objects.filter(id=9).delete(),  # not through the service
        lambda: product_availability_set(product_ids=[1], active=False),
        lambda: product_availability_set(product_ids=[1], active=True),
    ]
    for change in changes:
        change()
        # The version, what was saved (and deleted) since, the changed products.
        with cards.catalog_version_held(), django_assert_max_num_queries(4) as queries:
            updated = cards.filter_ids(blue).tolist()
        assert updated == _filter_read_whole(blue)
        read = next(q["sql"] for q in queries.captured_queries if "base_colour" in q["sql"])
        assert " IN (" in read, read  # the products changed since, not the whole filter
    assert cards.filter_ids(blue).tolist() == [1, 2]


def test_a_filter_is_read_whole_when_too_much_changed_or_the_catalog_went_back(db, monkeypatch):
    red = ProductFilters.from_mapping({"colour": "Red"})
    Product.objects.bulk_create([Product(id=pid, name=f"P{pid}", base_colour="Red") for pid in range(1, 6)])
    assert cards.filter_ids(red).tolist() == [1, 2, 3, 4, 5]
    monkeypatch.setattr(cards, "FILTER_DELTA_MAX", 2)
    for pid in (1, 2, 3):  # an import's worth of saves: more than FILTER_DELTA_MAX
        Product.objects.filter(id=pid).update(base_colour="Blue", updated_at=timezone.now())
    assert cards.filter_ids(red).tolist() == [4, 5] == _filter_read_whole(red)
    products_delete(product_ids=[4])
    assert cards.filter_ids(red).tolist() == [5]
    ProductDeletion.objects.all().delete()  # the deletions' numbers went back: a backup restored
    Product.objects.create(id=4, name="Restored", base_colour="Red")
    assert cards.filter_ids(red).tolist() == [4, 5] == _filter_read_whole(red)


def test_the_ids_on_sale_follow_the_catalog_like_a_filter_and_off_sale_is_one_look_up(
    db, django_assert_max_num_queries
):
    Product.objects.bulk_create([Product(id=pid, name=f"P{pid}") for pid in range(1, 7)])
    with cards.catalog_version_held(), django_assert_max_num_queries(2) as queries:
        assert cards.grid_allowed_ids() is None  # every product on sale: the engine's unfiltered path
    off_sale = next(q["sql"] for q in queries.captured_queries if "active" in q["sql"])
    # Compared with a parameter, so the index answers it: SQLite walks the whole index for "NOT active"
    # (28 ms at 1M products, on every move of the version).
    assert "NOT" not in off_sale.upper(), off_sale
    product_availability_set(product_ids=[2], active=False)
    assert cards.grid_allowed_ids().tolist() == [1, 3, 4, 5, 6]
    changes = [
        lambda: product_availability_set(product_ids=[5], active=False),
        lambda: Product.objects.create(id=8, name="New"),
        lambda: products_delete(product_ids=[1]),
        lambda: product_availability_set(product_ids=[2], active=True),
    ]
    for change in changes:
        change()
        # The version, whether any is off sale, what was saved (and deleted) since, the changed products.
        with cards.catalog_version_held(), django_assert_max_num_queries(5) as queries:
            allowed = cards.grid_allowed_ids().tolist()
        assert allowed == list(Product.objects.filter(active=True).order_by("id").values_list("id", flat=True))
        assert all(
            " IN (" in q["sql"]
            for q in queries.captured_queries
            if '"active"' in q["sql"] and "LIMIT" not in q["sql"].upper()
        )
    assert allowed == [2, 3, 4, 6, 8]
