"""Refinement as served: the trail's ranking, passed-over products, aspects, variety, colour descriptors.

Against the demo catalog in the database (vectors and colour descriptors as the pipeline stores them) and
the real Django test client; the colour descriptor's storage runs the embedding code on real image files.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from django.core.cache import cache
from django.core.management import call_command

from gallery.models import Product
from gallery.trail import Trail, TrailError
from recommender import feedback, refine, runtime, selectors, services
from recommender.colour import COLOUR_DIM, COLOUR_SPACE, colour_descriptor
from recommender.index import IndexReader, LoadedIndex
from recommender.models import Embedding
from recommender.preprocess import image_prepare
from tests.support.engine import engine_knows

pytestmark = pytest.mark.django_db


def api_ids(client, product_id: int, **params: object) -> list[int]:
    response = client.get(f"/api/similar/{product_id}", params)
    assert response.status_code == 200, response.content
    return [r["id"] for r in response.json()["results"]]


def colours_of(ids: list[int]) -> list[str]:
    by_id = dict(Product.objects.filter(id__in=ids).values_list("id", "base_colour"))
    return [by_id[i] for i in ids]


# --- The trail's format ---------------------------------------------------------------------------


def test_trail_steps_carry_an_aspect_suffix_and_old_links_keep_their_meaning():
    trail = Trail.parse("12,p34c,n56,78s,90a")
    assert [(s.product_id, s.mark, s.aspect) for s in trail.steps] == [
        (12, "", ""),
        (34, "p", "c"),
        (56, "n", ""),
        (78, "", "s"),
        (90, "", "a"),
    ]
    assert str(trail) == "12,p34c,n56,78s,90a"
    assert str(Trail.parse("12,p34,n56")) == "12,p34,n56"  # a link from before aspects
    assert str(trail.aspected(0, "c")) == "12c,p34c,n56,78s,90a"
    assert str(trail.aspected(1, "c")) == "12,p34,n56,78s,90a"  # asking twice clears it
    for bad in ("12x", "c12", "12cc", "p12n"):
        with pytest.raises(TrailError, match="suffixed c, a or s"):
            Trail.parse(bad)


def test_an_unknown_aspect_is_a_400_with_the_reason(client, demo_catalog_db):
    product_id = demo_catalog_db[0]
    response = client.get(f"/api/similar/{product_id}", {"trail": f"{product_id}z"})
    assert response.status_code == 400
    assert "suffixed c, a or s" in response.json()["error"]
    page = client.get(f"/similar/{product_id}/", {"trail": f"{product_id}q"})
    assert page.status_code == 400 and b"suffixed c, a or s" in page.content


def test_old_trail_links_open_with_a_full_grid(client, demo_catalog_db):
    a, b, c = demo_catalog_db[3], demo_catalog_db[40], demo_catalog_db[90]
    response = client.get(f"/similar/{b}/", {"trail": f"{a},p{b},n{c}"})
    assert response.status_code == 200
    body = client.get(f"/api/similar/{b}", {"trail": f"p{a},{b},n{c}"}).json()
    assert body["trail"] == f"p{a},{b},n{c}"
    ids = [r["id"] for r in body["results"]]
    assert len(ids) == 25 and not {a, b, c} & set(ids)


# --- What was shown is not shown again --------------------------------------------------------------


def test_a_walk_shows_new_products_before_what_its_earlier_grids_showed(client, demo_catalog_db, settings):
    # Plain neighbours show much of the grid a click came from again; the served strategy brings new products
    # first and the passed-over ones only where they look clearly more like the click.
    start = demo_catalog_db[5]
    again = {}
    for name in ("neighbours", "coherent"):
        settings.REFINE_STRATEGY = name
        first = api_ids(client, start)
        clicked = first[3]
        second = api_ids(client, clicked, trail=f"{start},{clicked}")
        assert len(second) == 25 and start not in second and clicked not in second
        again[name] = len(set(second) & set(first))
    assert again["coherent"] < again["neighbours"], again


def test_the_page_and_the_api_rank_a_trail_the_same_way(client, demo_catalog_db):
    # Without q, both start from the home page's grid; with q, both from that text search.
    a = demo_catalog_db[3]
    b = api_ids(client, a)[2]
    for params in ({}, {"q": ""}, {"q": "shirt"}):
        page = client.get(f"/similar/{b}/", {"trail": f"{a},{b}", **params}).content.decode()
        grid = [int(i) for i in re.findall(r'<li class="card">\s*<a href="/similar/(\d+)/', page)]
        assert len(grid) == 25 and grid == api_ids(client, b, trail=f"{a},{b}", **params), params


def test_a_product_first_read_as_passed_over_keeps_its_colour_for_the_ranking(demo_catalog_db):
    space = runtime.active_space()
    store = refine._Vectors(space, runtime.index_reader().current())
    passed_over = demo_catalog_db[:5]
    store.fetch(passed_over, colours=False)  # read for the push from what the shopper passed over
    assert all(pid in store.vectors for pid in passed_over) and not any(pid in store.colours for pid in passed_over)
    store.fetch(passed_over)  # then among the candidates
    assert all(pid in store.colours for pid in passed_over)


def test_passed_over_products_come_back_when_nothing_else_is_left(client, demo_catalog_db):
    # A filter with few products: once they have all been shown, the grid shows them again rather than fewer.
    kind = Product.objects.values_list("article_type", flat=True).first()
    matching = list(Product.objects.filter(article_type=kind).values_list("id", flat=True))
    assert 3 <= len(matching) <= 40, len(matching)
    start, clicked = matching[0], matching[1]
    trail = f"{start},{clicked}"
    grid = api_ids(client, clicked, trail=trail, type=kind)
    assert len(grid) == min(25, len(matching) - 2)
    assert set(grid) <= set(matching) - {start, clicked}


def test_a_trails_earlier_grids_are_ranked_once(client, demo_catalog_db, monkeypatch, settings):
    settings.GRID_CACHE_TTL_S = 0  # whole grids not cached: each request ranks its own (tests/test_grid_cache.py)
    calls = []
    real = selectors.similar_products

    def counting(**kwargs):
        calls.append(kwargs["k"])
        return real(**kwargs)

    monkeypatch.setattr(selectors, "similar_products", counting)
    steps = demo_catalog_db[10:70:10]
    trail = ",".join(map(str, steps))
    api_ids(client, steps[-1], trail=trail)
    assert len(calls) == len(steps)  # each earlier step's grid, then this one
    calls.clear()
    api_ids(client, steps[-1], trail=trail)
    assert len(calls) == 1  # the earlier grids are remembered
    refine.forget()
    calls.clear()
    api_ids(client, steps[-1], trail=trail)
    assert len(calls) == 1  # ... in the shared cache too, for the next web process
    # A shopper's next click: the page they clicked from was this trail's grid, remembered when it was shown.
    grid = api_ids(client, steps[-1], trail=trail)
    calls.clear()
    api_ids(client, grid[0], trail=f"{trail},{grid[0]}")
    assert len(calls) == 1


def test_a_cold_link_asks_once_per_product_if_its_vector_is_current(client, demo_catalog_db, monkeypatch, settings):
    # Opened cold, a link ranks each earlier page again; their candidates overlap, and each product's current
    # vector is looked up once per request. The grid is the one the look-ups one search at a time give.
    settings.GRID_CACHE_TTL_S = 0
    asked: list[int] = []
    checked = selectors._current_pairs
    monkeypatch.setattr(selectors, "_current_pairs", lambda **kw: asked.extend(kw["product_ids"]) or checked(**kw))
    steps = demo_catalog_db[10:70:10]
    trail = ",".join(map(str, steps))
    refine.forget()
    cache.clear()
    grid = api_ids(client, steps[-1], trail=trail)
    assert asked and len(asked) == len(set(asked))
    real = selectors.similar_products
    monkeypatch.setattr(selectors, "similar_products", lambda **kw: real(**{**kw, "current": None}))
    refine.forget()
    cache.clear()  # the earlier pages' grids too: ranked again
    asked.clear()
    assert api_ids(client, steps[-1], trail=trail) == grid
    assert len(asked) > len(set(asked))  # without the record, the pages' overlapping candidates are asked again


def test_plain_neighbours_rank_no_earlier_grid(client, demo_catalog_db, monkeypatch, settings):
    settings.REFINE_STRATEGY = "neighbours"
    calls = []
    real = selectors.similar_products
    monkeypatch.setattr(selectors, "similar_products", lambda **kwargs: calls.append(1) or real(**kwargs))
    steps = demo_catalog_db[10:70:10]
    api_ids(client, steps[-1], trail=",".join(map(str, steps)))
    assert len(calls) == 1


def test_the_index_is_asked_for_the_strategys_candidates_per_tile(client, demo_catalog_db, monkeypatch):
    # (candidates asked for, how many the index search is sized for)
    asked: list[tuple[int, int | None]] = []
    real = selectors.similar_products
    monkeypatch.setattr(
        selectors, "similar_products", lambda **kwargs: asked.append((kwargs["k"], kwargs["depth"])) or real(**kwargs)
    )
    product = demo_catalog_db[12]
    served = feedback.COHERENT
    assert served.explore_overfetch is not None and served.explore_overfetch > served.overfetch
    assert served.searched_per_tile == served.overfetch  # a deeper exploring pool, from the same search
    for overfetch, explore, searched in ((served.overfetch, served.explore_overfetch, None), (3, 5, None), (3, 5, 4)):
        strategy = replace(served, overfetch=overfetch, explore_overfetch=explore, search_overfetch=searched)
        monkeypatch.setattr(refine, "strategy_served", lambda name=None, chosen=strategy: chosen)
        for query, per_tile in (("shirt", overfetch), ("", explore)):  # from words; from the home page's grid
            refine.forget()
            cache.clear()
            asked.clear()
            assert len(api_ids(client, product, trail=str(product), q=query)) == 25
            assert asked == [(per_tile * 25, (searched or overfetch) * 25)]


def test_colour_is_read_only_where_it_enters_the_scores(client, demo_catalog_db, monkeypatch, settings):
    # Plain neighbours rank by the image alone: their clicks read no colour descriptor (the build's or stored),
    # and their grid is the one the image vectors give. A step asking for the same colour, or the served
    # strategy's blend, reads them.
    read: list[str] = []
    built, stored = LoadedIndex.colours_of, selectors.stored_vectors
    monkeypatch.setattr(LoadedIndex, "colours_of", lambda self, items: read.append("build") or built(self, items))
    monkeypatch.setattr(
        selectors, "stored_vectors", lambda wanted: read.extend(s for s in wanted if wanted[s]) or stored(wanted)
    )
    a, b = demo_catalog_db[30], demo_catalog_db[31]
    settings.REFINE_STRATEGY = "neighbours"
    plain = api_ids(client, b, trail=f"{a},{b}")
    assert COLOUR_SPACE not in read and "build" not in read and len(plain) == 25
    api_ids(client, b, trail=f"{a},{b}c")
    assert "build" in read or COLOUR_SPACE in read
    read.clear()
    settings.REFINE_STRATEGY = "coherent"
    api_ids(client, b, trail=f"{a},{b}")
    assert "build" in read or COLOUR_SPACE in read


# --- "Not like this" and aspects ---------------------------------------------------------------------


def test_not_like_this_sinks_what_looks_more_like_it(client, demo_catalog_db, demo_vectors):
    Embedding.objects.filter(space=COLOUR_SPACE).delete()  # "looks like" by the image vectors alone, below
    services.index_rebuild()
    liked, disliked = demo_catalog_db[20], demo_catalog_db[21]
    ids = api_ids(client, liked, trail=f"n{disliked},{liked}")
    assert len(ids) == 25
    nearer = [demo_vectors[i] @ demo_vectors[disliked] > demo_vectors[i] @ demo_vectors[liked] for i in ids]
    # Whatever looks more like the disliked step than the liked one is sunk below everything else.
    assert nearer == sorted(nearer)


def test_same_colour_keeps_the_colour_and_same_shape_changes_it(client, demo_catalog_db):
    shares = {"c": [], "": [], "s": []}
    for product_id in demo_catalog_db[::15]:
        colour = Product.objects.get(id=product_id).base_colour
        for aspect in shares:
            ids = api_ids(client, product_id, trail=f"{product_id}{aspect}")
            shares[aspect].append(np.mean([c == colour for c in colours_of(ids)]))
    same, default, shape = (float(np.mean(shares[a])) for a in ("c", "", "s"))
    assert same > default > shape, (same, default, shape)


def test_the_page_offers_each_aspect_and_links_keep_them(client, demo_catalog_db):
    a, b = demo_catalog_db[1], demo_catalog_db[2]
    page = client.get(f"/similar/{b}/", {"trail": f"{a}c,{b}"}).content.decode().replace("&amp;", "&")
    # Each aspect link names its edit (act=a) for the shopper-events record.
    assert f'href="/similar/{b}/?trail={a}%2C{b}&act=a"' in page  # "same colour" on step a, pressed: clears it
    assert f'href="/similar/{b}/?trail={a}c%2C{b}s&act=a"' in page  # "same shape" on step b
    assert 'class="aspect aspect-c" ' in page and 'aria-pressed="true"' in page
    # The grid's links carry the aspect on: the next click keeps what the shopper asked of step a.
    assert f"trail={a}c%2C{b}%2C" in page


# --- Variety --------------------------------------------------------------------------------------


def test_a_grid_is_varied_by_the_diversity_setting(client, demo_catalog_db, demo_vectors, settings):
    def spread(ids: list[int]) -> float:
        matrix = np.stack([demo_vectors[i] for i in ids])
        similarity = matrix @ matrix.T
        return float(similarity[np.triu_indices(len(ids), 1)].mean())

    anchors = demo_catalog_db[::40]
    settings.REFINE_DIVERSITY = 0.0
    plain = [spread(api_ids(client, a)) for a in anchors]
    settings.REFINE_DIVERSITY = 0.5
    varied = [spread(api_ids(client, a)) for a in anchors]
    assert np.mean(varied) < np.mean(plain) - 0.01, (np.mean(varied), np.mean(plain))


def test_a_trail_begun_on_the_starting_grid_spans_more_than_one_begun_from_words(client, demo_catalog_db, demo_vectors):
    def spread(ids: list[int]) -> float:
        matrix = np.stack([demo_vectors[i] / np.linalg.norm(demo_vectors[i]) for i in ids])
        return float((matrix @ matrix.T)[np.triu_indices(len(ids), 1)].mean())

    served = refine.strategy_served()
    assert served.explore_diversity is not None and served.explore_diversity > served.diversity
    anchors = demo_catalog_db[::40]
    # Without q (the home page's grid) the shopper named no kind: the served strategy's exploring strength.
    home = [api_ids(client, a) for a in anchors]
    searched = [api_ids(client, a, q="shirt") for a in anchors]
    assert home != searched
    assert np.mean([spread(g) for g in home]) < np.mean([spread(g) for g in searched])
    for a, grid in zip(anchors, home, strict=True):
        engine = refine.trail_grid(steps=[refine.StepRef(a)], k=25, searched=False)
        assert grid == [n.product_id for n in engine]


def test_without_variety_a_first_click_is_its_nearest_by_the_blended_score(client, demo_catalog_db, settings):
    settings.REFINE_DIVERSITY = 0.0
    product_id = demo_catalog_db[7]  # a first click: nothing passed over yet, so nothing pushed or demoted
    scores = [r["score"] for r in client.get(f"/api/similar/{product_id}").json()["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 25


# --- Colour descriptors beside the vectors ----------------------------------------------------------


def stored_colour(product_id: int) -> np.ndarray | None:
    row = Embedding.objects.filter(product_id=product_id, space=COLOUR_SPACE).values_list("vector", flat=True).first()
    return None if row is None else np.frombuffer(row, dtype="<f4")


def test_embedding_stores_each_products_colour_and_the_index_holds_it(settings, demo_dir: Path, make_jpeg):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    ids = []
    for n, source in enumerate(sorted((demo_dir / "images").glob("*.jpg"))[:6]):
        product_id = 9000 + n
        name = default_storage.save(f"products/{product_id}.jpg", ContentFile(source.read_bytes()))
        Product.objects.create(id=product_id, name=f"Product {n}", image=name, image_version=1)
        engine_knows(product_id, image_name=name)
        ids.append((product_id, source))
    report = services.products_embed(product_ids=[pid for pid, _ in ids])
    assert report.embedded == 6
    for product_id, source in ids:
        colour = stored_colour(product_id)
        assert colour is not None and colour.shape == (COLOUR_DIM,)
        np.testing.assert_allclose(colour, colour_descriptor(image_prepare(source, size=224)), atol=1e-5)
    assert services.index_rebuild() is not None
    loaded = IndexReader(runtime.index_dir(runtime.active_space())).current()
    items = loaded.items_of(np.array([pid for pid, _ in ids]))
    built = loaded.colours_of(items)
    for product_id, row in zip(loaded.product_ids[items].tolist(), built, strict=True):
        np.testing.assert_allclose(row, stored_colour(product_id), atol=2e-3)  # half precision

    # A new image drops the old colour with the old vector: the product's old look is never blended in.
    engine_knows(ids[0][0], image_version=2, image_name=f"products/{ids[0][0]}.jpg")
    assert stored_colour(ids[0][0]) is None


def test_embed_catalog_adds_the_colours_of_products_embedded_before_them(settings, demo_dir: Path):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    source = sorted((demo_dir / "images").glob("*.jpg"))[0]
    name = default_storage.save("products/7001.jpg", ContentFile(source.read_bytes()))
    Product.objects.create(id=7001, name="Older product", image=name, image_version=1)
    engine_knows(7001, image_name=name)
    services.products_embed(product_ids=[7001])
    Embedding.objects.filter(space=COLOUR_SPACE).delete()  # as stored before colours were kept
    assert services.products_without_colour() == [7001]
    call_command("embed_catalog", verbosity=0)
    np.testing.assert_allclose(stored_colour(7001), colour_descriptor(image_prepare(source, size=224)), atol=1e-5)
    assert services.products_without_colour() == []


def test_a_catalog_without_colours_is_ranked_by_the_image_alone(client, demo_catalog_db):
    Embedding.objects.filter(space=COLOUR_SPACE).delete()
    services.index_rebuild()
    product_id = demo_catalog_db[12]
    same = api_ids(client, product_id, trail=f"{product_id}c")
    other = api_ids(client, product_id, trail=f"{product_id}s")
    assert len(same) == 25 and same == other  # no colour to keep or change: the aspects change nothing


def test_an_unknown_strategy_is_refused_by_the_system_check(settings):
    from django.core.management import CommandError

    settings.REFINE_STRATEGY = "best-guess"
    with pytest.raises(CommandError, match="REFINE_STRATEGY must be one of coherent, neighbours"):
        call_command("check")


def test_the_strategy_setting_serves_plain_neighbours(client, demo_catalog_db, demo_vectors, settings):
    # "neighbours": the clicked product's nearest by its image vector, whatever the trail before it.
    settings.REFINE_STRATEGY = "neighbours"
    a, b = demo_catalog_db[30], demo_catalog_db[31]
    ids = api_ids(client, b, trail=f"p{a},{b}")
    others = [i for i in demo_vectors if i not in {a, b}]
    exact = sorted(others, key=lambda i: -float(demo_vectors[i] @ demo_vectors[b]))[:25]
    assert len(set(ids) & set(exact)) >= 24


def test_rows_read_for_the_same_ids_in_the_same_order_are_the_block_itself_and_later_reads_win():
    rows = refine._Rows()
    first = np.arange(12, dtype=np.float32).reshape(3, 4)
    rows.add([5, 3, 9], first.copy())
    assert rows.matrix([5, 3, 9]) is rows._blocks[-1][0]  # no gather, no copy
    assert not rows.matrix([5, 3, 9]).flags.writeable  # handed out, never written through
    np.testing.assert_array_equal(rows.matrix([9, 5]), first[[2, 0]])
    fresh = np.full((1, 4), -1.0, dtype=np.float32)
    rows.add([3], fresh.copy())  # product 3's newer vector
    np.testing.assert_array_equal(rows.matrix([5, 3, 9]), np.stack([first[0], fresh[0], first[2]]))
    np.testing.assert_array_equal(rows.matrix([3, 7], width=4), np.stack([fresh[0], np.zeros(4)]))


def test_a_candidate_sets_vectors_colours_and_sketches_come_from_one_look_up_of_the_build(demo_catalog_db, monkeypatch):
    space = runtime.active_space()
    loaded = runtime.index_reader().current()
    looked_up: list[int] = []
    real = LoadedIndex.item_at
    monkeypatch.setattr(LoadedIndex, "item_at", lambda self, ids: looked_up.append(len(ids)) or real(self, ids))
    candidates = list(reversed(demo_catalog_db[20:60]))  # in the order a ranking asks for them
    store = refine._Vectors(space, loaded)
    store.fetch(candidates, sketches=True)
    assert looked_up == [len(candidates)]
    items = real(loaded, np.asarray(candidates))
    np.testing.assert_array_equal(store.matrix(candidates), loaded.vectors_of(items))
    np.testing.assert_array_equal(store.colour_matrix(candidates), loaded.colours_of(items))
    np.testing.assert_array_equal(store.sketch_matrix(candidates), loaded.sketches_of(items))
    # Asked again with some new ones, only the new ones are looked up.
    looked_up.clear()
    store.fetch([*candidates[:5], *demo_catalog_db[60:63]], sketches=True)
    assert looked_up == [3]
    np.testing.assert_array_equal(
        store.sketch_matrix(demo_catalog_db[58:63]),
        loaded.sketches_of(real(loaded, np.asarray(demo_catalog_db[58:63]))),
    )


def test_a_grids_variety_compares_the_builds_sketches_and_sketches_a_vector_stored_since(demo_catalog_db):
    space = runtime.active_space()
    loaded = runtime.index_reader().current()
    reimaged, other = demo_catalog_db[:2]
    # Product ``reimaged`` gets a new look after the build: the look of the catalog's last product.
    new_look = Embedding.objects.get(product_id=demo_catalog_db[-1], space=space)
    Embedding.objects.filter(product_id=reimaged, space=space).delete()
    Embedding.objects.create(product_id=reimaged, space=space, dim=new_look.dim, vector=new_look.vector,
                             image_version=2)  # fmt: skip
    store = refine._Vectors(space, loaded)
    store.fetch([reimaged, other], colours=False, sketches=True)
    sketches = store.sketch_matrix([reimaged, other])
    built = loaded.sketches_of(loaded.item_at(np.array([demo_catalog_db[-1], other])))
    assert built is not None and sketches.shape == built.shape  # the demo's vectors are wider than a sketch
    np.testing.assert_allclose(sketches, built, atol=2e-3)  # the new look's sketch, not the build's old one
    assert not np.allclose(sketches[0], loaded.sketches_of(loaded.item_at(np.array([reimaged])))[0], atol=1e-2)


def test_what_was_passed_over_is_aged_by_the_newest_grid_that_showed_it_and_leaves_the_trail_out():
    # Grids newest first: 5 shown in the grid clicked from and two clicks before counts from the newer; 7 and 1
    # are on the trail, so they were not passed over.
    passed = refine._Passed([(5, 7, 9), (3, 9, 1), (5, 2)], on_trail={7, 1})
    assert passed.ids.tolist() == [2, 3, 5, 9]
    assert passed.age.tolist() == [2, 1, 0, 0]
    assert passed.age_of([9, 4, 2, 7, 3]).tolist() == [0, -1, 2, -1, 1]
    assert passed.age_of([9, 4, 2, 7, 3], within=2).tolist() == [0, -1, -1, -1, 1]
    nothing = refine._Passed([], on_trail={7})
    assert len(nothing.ids) == 0 and nothing.age_of([7, 8]).tolist() == [-1, -1]
