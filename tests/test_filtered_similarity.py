"""Filtered similarity equals exact filtered search at any selectivity; remembered cards and filters never go stale."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.cards import filter_ids
from gallery.filters import ProductFilters
from gallery.models import Product
from recommender import selectors, services
from recommender.index import LoadedIndex
from recommender.models import Embedding, EmbeddingState, EmbedStatus
from recommender.selectors import similar_products
from tests.support.engine import engine_knows

SPACE = "efficientnet-lite0-imagenet"
N = 6000
DIM = 48
COLOURS = ["Black", "White", "Blue", "Red", "Green", "Navy Blue", "Grey", "Pink"]
TYPES = ["Tshirts", "Shirts", "Jeans", "Watches", "Heels", "Kurtas"]
QUERIES = 12


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def clustered_catalog(db) -> dict[int, np.ndarray]:
    """N products in clusters (like a real catalog's look-alikes), with skewed colours and types, and an index."""
    rng = np.random.default_rng(3)
    centres = _unit(rng.standard_normal((40, DIM)))
    vectors = {}
    products, states, rows = [], [], []
    for pid in range(1, N + 1):
        vector = _unit(centres[rng.integers(40)] + 0.35 * rng.standard_normal(DIM))
        vectors[pid] = vector
        colour = COLOURS[min(int(rng.exponential(1.6)), len(COLOURS) - 1)]
        article = "Sarees" if pid % 97 == 0 else TYPES[pid % len(TYPES)]  # Sarees: rare, about 1%
        products.append(
            Product(
                id=pid,
                name=f"{colour} {article} {pid}",
                gender="Women" if pid % 3 else "Men",
                article_type=article,
                base_colour=colour,
                image_version=1,
            )
        )
        states.append(
            EmbeddingState(product_id=pid, image_name=f"p/{pid}.jpg", image_version=1, status=EmbedStatus.DONE)
        )
        rows.append(Embedding(product_id=pid, space=SPACE, dim=DIM, vector=vector.tobytes(), image_version=1))
    Product.objects.bulk_create(products, batch_size=2000)
    EmbeddingState.objects.bulk_create(states, batch_size=2000)
    Embedding.objects.bulk_create(rows, batch_size=2000)
    services.index_rebuild(n_trees=40)  # the INDEX_N_TREES default
    return vectors


FILTER_KINDS = {
    "common (gender)": {"gender": "Women"},
    "common (colour)": {"colour": "Black"},
    "rare (<= 1%)": {"type": "Sarees"},
    "combined": {"gender": "Men", "colour": "Blue", "type": "Shirts"},
    "nothing": {"colour": "Mauve"},
}


def _exact(vectors: dict[int, np.ndarray], query: np.ndarray, allowed: np.ndarray, k: int) -> list[int]:
    ids = [pid for pid in allowed.tolist() if pid in vectors]
    scores = np.array([vectors[pid] @ query for pid in ids])
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.mark.parametrize("broad_via_annoy", [False, True], ids=["as-configured", "annoy-for-broad-filters"])
@pytest.mark.parametrize("kind", list(FILTER_KINDS))
def test_filtered_results_equal_exact_filtered_search(clustered_catalog, kind, broad_via_annoy, monkeypatch):
    if broad_via_annoy:
        # Small exact budget: every filter above ~300 products goes through Annoy's over-fetch.
        monkeypatch.setattr(selectors, "EXACT_FILTER_MAX_FLOATS", 300 * DIM)
    allowed = filter_ids(ProductFilters.from_mapping(FILTER_KINDS[kind]))
    rng = np.random.default_rng(11)
    recalls = []
    for pid in rng.choice(N, QUERIES, replace=False) + 1:
        query = clustered_catalog[int(pid)]
        truth = _exact(clustered_catalog, query, allowed, 25)
        found = [n.product_id for n in similar_products(vector=query, k=25, allowed_ids=allowed)]
        assert set(found) <= set(allowed.tolist())
        assert len(found) == len(truth) == min(25, len(allowed))
        recalls.append(len(set(found) & set(truth)) / len(truth) if truth else 1.0)
    assert np.mean(recalls) >= 0.99, (kind, recalls)


@pytest.mark.parametrize("broad_via_annoy", [False, True], ids=["as-configured", "annoy-for-broad-filters"])
@pytest.mark.parametrize("kind", [*FILTER_KINDS, "none"])
def test_a_deep_pool_from_a_search_sized_for_fewer_is_still_the_exact_pool(
    clustered_catalog, kind, broad_via_annoy, monkeypatch
):
    # A re-rank's pool of 200 from a search sized for 150 (the exploring trail's: deeper than the grid, from the
    # same search as every other trail's): the index is searched for fewer, and the 200 are still the nearest.
    if broad_via_annoy:
        monkeypatch.setattr(selectors, "EXACT_FILTER_MAX_FLOATS", 300 * DIM)
    searched: list[int] = []
    query_items = LoadedIndex.query_items
    monkeypatch.setattr(
        LoadedIndex, "query_items", lambda self, vector, *, n, search_k=None: searched.append(n)
        or query_items(self, vector, n=n, search_k=search_k)
    )  # fmt: skip
    allowed = None if kind == "none" else filter_ids(ProductFilters.from_mapping(FILTER_KINDS[kind]))
    everything = np.arange(1, N + 1) if allowed is None else allowed
    rng = np.random.default_rng(12)
    recalls, sized, full = [], [], []
    for pid in rng.choice(N, QUERIES, replace=False) + 1:
        query = clustered_catalog[int(pid)]
        truth = _exact(clustered_catalog, query, everything, 200)
        searched.clear()
        pool = [n.product_id for n in similar_products(vector=query, k=200, depth=150, allowed_ids=allowed)]
        sized.append(sum(searched))
        searched.clear()
        deep = [n.product_id for n in similar_products(vector=query, k=200, allowed_ids=allowed)]
        full.append(sum(searched))
        assert len(pool) == len(truth) == len(deep) == min(200, len(everything))
        recalls.append(len(set(pool) & set(truth)) / len(truth) if truth else 1.0)
    assert np.mean(recalls) >= 0.99, (kind, recalls)
    if any(full):  # an approximate search: sized for 150 it asks the index for fewer
        assert sum(sized) < sum(full), (sized, full)


def test_a_filter_that_matches_nothing_reads_no_vectors(clustered_catalog, django_assert_max_num_queries):
    allowed = filter_ids(ProductFilters.from_mapping({"colour": "Mauve"}))
    assert len(allowed) == 0
    # The delta look-up and the (empty) validation: no walk over the index, no IN of every id.
    with django_assert_max_num_queries(2):
        assert similar_products(vector=clustered_catalog[1], k=25, allowed_ids=allowed) == []


def test_the_api_filters_inside_the_search_and_never_serves_a_stale_product(client, clustered_catalog):
    anchor = 5
    black = client.get(f"/api/similar/{anchor}", {"colour": "Black"}).json()["results"]
    assert len(black) == 25 and {r["base_colour"] for r in black} == {"Black"}

    # Edited to red: gone from the black grid at once, shown as red under a red filter.
    edited = Product.objects.get(id=black[0]["id"])
    edited.base_colour = "Red"
    edited.name = "Now a red one"
    edited.save()
    again = client.get(f"/api/similar/{anchor}", {"colour": "Black"}).json()["results"]
    assert edited.id not in [r["id"] for r in again]
    red = client.get(f"/api/similar/{anchor}", {"colour": "Red", "k": 100}).json()["results"]
    assert {"id": edited.id, "name": "Now a red one"}.items() <= next(r for r in red if r["id"] == edited.id).items()

    # Deleted: never served again, filtered or not.
    gone = again[0]["id"]
    Product.objects.filter(id=gone).delete()
    assert gone not in [r["id"] for r in client.get(f"/api/similar/{anchor}", {"colour": "Black"}).json()["results"]]
    assert gone not in [r["id"] for r in client.get(f"/api/similar/{anchor}", {"k": 100}).json()["results"]]

    # New, after the build: found under the filter it passes (the exact pass over fresh vectors).
    fresh = Product.objects.create(id=N + 1, name="Fresh black", base_colour="Black", image_version=1)
    engine_knows(fresh.id)
    services.embedding_store(product_id=fresh.id, image_version=1, space=SPACE, vector=clustered_catalog[anchor])
    newest = client.get(f"/api/similar/{anchor}", {"colour": "Black"}).json()["results"]
    assert newest[0]["id"] == fresh.id
