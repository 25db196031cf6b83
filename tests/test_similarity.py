"""Click-to-refine similarity: served results, freshness, stale and deleted vectors, quality."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np
import pytest
from django.core.cache import cache

from gallery.models import Product
from recommender import runtime, selectors, services, tasks
from recommender.index import IndexReader, index_build
from recommender.models import Embedding, EmbeddingState
from recommender.preprocess import image_prepare
from recommender.selectors import SimilarityUnavailable, similar_products
from recommender.tasks import BUILD_REQUESTED
from tests.support.engine import engine_knows

pytestmark = pytest.mark.django_db


def exact_top(vectors: dict[int, np.ndarray], query: np.ndarray, k: int, exclude: set[int]) -> list[int]:
    ids = [i for i in vectors if i not in exclude]
    scores = np.stack([vectors[i] for i in ids]) @ query
    return [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]


def test_similar_api_returns_25_neighbours_best_first_without_the_query(client, demo_catalog_db, demo_vectors):
    product_id = demo_catalog_db[10]
    response = client.get(f"/api/similar/{product_id}")

    assert response.status_code == 200
    body = response.json()
    assert body["query"] == product_id
    results = body["results"]
    ids = [r["id"] for r in results]
    assert len(ids) == 25 == len(set(ids))
    assert product_id not in ids
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert {"id", "name", "score", "image_url"} <= results[0].keys()
    assert client.get(f"/api/similar/{product_id}", {"k": 7}).json()["results"].__len__() == 7


def test_served_results_agree_with_exact_cosine_search(demo_catalog_db, demo_vectors):
    recalls = []
    for product_id in demo_catalog_db[::7]:
        query = demo_vectors[product_id]
        served = [n.product_id for n in similar_products(vector=query, k=25, exclude_ids=frozenset({product_id}))]
        exact = exact_top(demo_vectors, query, 25, {product_id})
        recalls.append(len(set(served) & set(exact)) / 25)
    assert np.mean(recalls) >= 0.95


def test_a_products_own_photo_finds_it_first(demo_catalog_db, demo_dir: Path, make_jpeg):
    from PIL import Image

    product_id = demo_catalog_db[42]
    # The shopper's copy: re-compressed, slightly cropped and scaled.
    original = Image.open(demo_dir / "images" / f"{product_id}.jpg").convert("RGB")
    w, h = original.size
    copy = original.crop((8, 10, w - 6, h - 12)).resize((w // 2, h // 2))
    path = demo_dir.parent / "shopper.jpg"
    copy.save(path, quality=70)

    vector = runtime.encoder().embed_images([image_prepare(path)])[0]
    found = similar_products(vector=vector, k=5)

    assert found[0].product_id == product_id


def test_deleted_products_never_appear(demo_catalog_db, demo_vectors):
    product_id = demo_catalog_db[3]
    before = [
        n.product_id
        for n in similar_products(vector=demo_vectors[product_id], k=25, exclude_ids=frozenset({product_id}))
    ]
    Product.objects.filter(id__in=before[:5]).delete()

    after = [
        n.product_id
        for n in similar_products(vector=demo_vectors[product_id], k=25, exclude_ids=frozenset({product_id}))
    ]

    assert len(after) == 25
    assert not set(before[:5]) & set(after)


def test_vectors_stored_after_the_build_are_found_without_a_rebuild(demo_catalog_db, demo_vectors):
    source = demo_catalog_db[5]
    fresh = Product.objects.create(id=999_001, name="Fresh arrival", article_type="Tshirts", image_version=1)
    engine_knows(fresh.id)
    vector = demo_vectors[source] + 0.01 * np.random.default_rng(0).standard_normal(1280).astype(np.float32)
    services.embedding_store(
        product_id=fresh.id, image_version=1, space=runtime.active_space(), vector=vector / np.linalg.norm(vector)
    )

    found = [n.product_id for n in similar_products(vector=demo_vectors[source], k=3, exclude_ids=frozenset({source}))]

    assert found[0] == fresh.id
    assert IndexReader(runtime.index_reader().directory).current().meta.count == len(demo_catalog_db)


def test_the_exact_pass_reads_only_vectors_the_index_lacks(demo_catalog_db, demo_vectors):
    # Every vector was stored moments before the build: none of them is re-read per query.
    space = runtime.active_space()
    loaded = runtime.index_reader().current()
    assert selectors.delta_rows(space=space, loaded=loaded) == []

    fresh = Product.objects.create(id=999_002, name="Fresh", image_version=1)
    engine_knows(fresh.id)
    services.embedding_store(product_id=fresh.id, image_version=1, space=space, vector=demo_vectors[demo_catalog_db[0]])
    assert [row[0] for row in selectors.delta_rows(space=space, loaded=loaded)] == [fresh.id]


def test_a_replaced_vector_is_never_served_from_the_index(demo_catalog_db, demo_vectors):
    anchor, neighbour = demo_catalog_db[0], None
    neighbour = similar_products(vector=demo_vectors[anchor], k=1, exclude_ids=frozenset({anchor}))[0].product_id
    # The neighbour gets a new image whose vector points elsewhere (opposite the anchor).
    Product.objects.filter(id=neighbour).update(image_version=2)
    EmbeddingState.objects.filter(product_id=neighbour).update(image_version=2)
    services.embedding_store(
        product_id=neighbour, image_version=2, space=runtime.active_space(), vector=-demo_vectors[anchor]
    )

    found = {
        n.product_id: n.score
        for n in similar_products(vector=demo_vectors[anchor], k=25, exclude_ids=frozenset({anchor}))
    }

    assert neighbour not in found  # its old vector is still in the Annoy file, but no longer the product's


def test_a_vector_computed_from_an_old_image_is_not_stored(demo_catalog_db, demo_vectors):
    product_id = demo_catalog_db[1]
    Product.objects.filter(id=product_id).update(image_version=5)
    EmbeddingState.objects.filter(product_id=product_id).update(image_version=5)

    stored = services.embedding_store(
        product_id=product_id, image_version=4, space=runtime.active_space(), vector=demo_vectors[product_id]
    )

    assert stored is False
    assert Embedding.objects.get(product_id=product_id, space=runtime.active_space()).image_version == 1


def test_an_index_from_another_encoder_is_never_queried(demo_catalog_db, demo_vectors, settings, redis_db, caplog):
    rows = list(Embedding.objects.filter(space=runtime.active_space()).values_list("id", "product_id", "vector"))
    # Same dimension, other space: a naive reader would happily query it.
    index_build(
        directory=runtime.index_dir(runtime.active_space()),
        vectors=-np.stack([np.frombuffer(v, "<f4") for _, _, v in rows]),
        product_ids=np.array([p for _, p, _ in rows]),
        embedding_ids=np.array([i for i, _, _ in rows]),
        space="some-other-encoder",
        n_trees=5,
        search_k=-1,
        watermark=max(i for i, _, _ in rows),
    )
    runtime.reset()
    cache.delete(BUILD_REQUESTED)
    product_id = demo_catalog_db[20]

    with caplog.at_level(logging.WARNING):
        found = [
            n.product_id
            for n in similar_products(vector=demo_vectors[product_id], k=25, exclude_ids=frozenset({product_id}))
        ]

    assert found == exact_top(demo_vectors, demo_vectors[product_id], 25, {product_id})
    assert "some-other-encoder" in caplog.text
    assert not cache.get(BUILD_REQUESTED)  # a read never writes...
    tasks.index_repair_if_needed()
    assert cache.get(BUILD_REQUESTED)  # ...the periodic sweep asks for the rebuild

    # A catalog too large to search exactly answers 503 with a clear message instead.
    selectors_limit = selectors.EXACT_FALLBACK_MAX
    try:
        selectors.EXACT_FALLBACK_MAX = 10
        with pytest.raises(SimilarityUnavailable, match="being built"):
            similar_products(vector=demo_vectors[product_id], k=25)
    finally:
        selectors.EXACT_FALLBACK_MAX = selectors_limit


def test_similar_page_shows_the_trail_and_a_grid_of_25(client, demo_catalog_db):
    first, second = demo_catalog_db[2], demo_catalog_db[9]
    page = client.get(f"/similar/{second}/", {"trail": f"{first},{second}", "q": "shirt"})

    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="card"') == 25
    assert html.count('class="step') == 2
    assert "“shirt”" in html  # the text query stays visible
    assert f'href="/similar/{second}/' not in html.split('<ol class="grid"')[1]  # never itself


def test_every_click_leads_to_a_shareable_url_that_extends_the_trail(client, demo_catalog_db):
    first = demo_catalog_db[4]
    html = client.get(f"/similar/{first}/").content.decode()
    grid = html.split('<ol class="grid"')[1]
    href = grid.split('href="')[1].split('"')[0].replace("&amp;", "&")
    next_id = int(href.split("/similar/")[1].split("/")[0])
    assert f"trail={first}%2C{next_id}" in href

    page = client.get(href)
    assert page.status_code == 200
    steps = page.content.decode().split('<nav class="trail"')[1].split("</nav>")[0]
    assert f'data-product="{first}"' in steps and f'data-product="{next_id}"' in steps


def test_unknown_products_and_bad_trails_get_clear_4xx(client, demo_catalog_db):
    assert client.get("/similar/123456789/").status_code == 404
    assert client.get("/api/similar/123456789").json()["error"].startswith("No product")
    response = client.get(f"/api/similar/{demo_catalog_db[0]}", {"trail": "12,abc"})
    assert response.status_code == 400
    assert "trail" in response.json()["error"]


def test_a_product_not_yet_embedded_says_so(client, demo_catalog_db):
    Product.objects.create(id=777, name="Just added", image_version=1)
    page = client.get("/similar/777/")
    assert page.status_code == 200
    assert "still being analysed" in page.content.decode()
    api = client.get("/api/similar/777")
    assert api.status_code == 409
    assert "still being analysed" in api.json()["error"]


def test_status_reports_encoder_index_and_queue(client, demo_catalog_db):
    Product.objects.create(id=778, name="Waiting", image="products/x.jpg")
    engine_knows(778, image_name="products/x.jpg")
    body = client.get("/api/status").json()

    assert body["encoder"]["space"] == "efficientnet-lite0-imagenet"
    assert body["index"]["count"] == len(demo_catalog_db)
    assert body["index"]["n_trees"] >= 1 and body["index"]["built_at"]
    assert body["awaiting_embedding"] == 1


def test_visual_quality_on_the_demo_catalog(demo_dir, demo_vectors, capsys):
    """Of each product's 10 nearest, how many share its article type and its colour, against chance."""
    from gallery.catalog import styles_read

    rows = [r for r in styles_read(demo_dir / "styles.csv")]
    ids = [r.id for r in rows]
    matrix = np.stack([demo_vectors[i] for i in ids])
    types = np.array([r.fields["article_type"] for r in rows])
    colours = np.array([r.fields["base_colour"] for r in rows])
    scores = matrix @ matrix.T
    np.fill_diagonal(scores, -np.inf)
    nearest = np.argsort(-scores, axis=1)[:, :10]

    def chance(labels: np.ndarray) -> float:
        counts = collections.Counter(labels)
        return float(np.mean([(counts[x] - 1) / (len(labels) - 1) for x in labels]))

    type_share = float(np.mean(types[nearest] == types[:, None]))
    colour_share = float(np.mean(colours[nearest] == colours[:, None]))
    with capsys.disabled():
        print(
            f"\nquality@10 on {len(ids)} demo products: article type {type_share:.3f} (chance {chance(types):.3f}), "
            f"colour {colour_share:.3f} (chance {chance(colours):.3f})"
        )
    assert type_share >= 0.7 and type_share >= 8 * chance(types)
    assert colour_share >= 1.5 * chance(colours)


def test_the_scheduled_refresh_rebuilds_a_build_whose_watermark_lags(demo_catalog_db):
    from datetime import timedelta

    from django.utils import timezone

    from recommender import tasks

    # Built moments after the vectors were stored: every query must check their ids.
    Embedding.objects.update(created_at=timezone.now())
    services.index_rebuild()
    assert tasks.index_watermark_lags()
    Embedding.objects.update(created_at=timezone.now() - timedelta(hours=1))

    assert tasks.index_refresh().startswith("published")
    assert not tasks.index_watermark_lags()
    assert tasks.index_refresh() == "index is current"
