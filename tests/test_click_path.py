"""The lean click path gives exactly what the plain one gave: cards, API URLs, grid markup, exact scores, validity.

Each fast path here replaced a slower way of computing the same thing (ORM rows, per-URL
``build_absolute_uri``, a template loop, one large copy of a filter's vectors, an ORM ``IN``); each
test computes both and compares them, over the odd inputs the fast path must hand back to the slow one.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from django.template import engines
from django.template.loader import get_template
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from gallery.cards import Card, cards_get
from gallery.filters import ProductFilters
from gallery.links import JsonUrls
from gallery.models import Product
from gallery.similarity import GridItem
from gallery.views import _product_json
from recommender import selectors
from recommender.index import LoadedIndex, index_build, published_version
from recommender.models import Embedding

# templates/gallery/_grid.html as it was, a node per value: the reference the tiles must equal.
GRID_TEMPLATE_LOOP = """{% if items %}
<ol class="grid" aria-label="Products">
  {% for item in items %}
  <li class="card">
    <a href="{{ item.url }}" hx-get="{{ item.url }}" hx-target="#results" hx-select="#results" hx-swap="outerHTML" hx-push-url="true"
       {% if item.score is not None %}title="{{ item.product.name }} · similarity {{ item.score|floatformat:3 }}"{% else %}title="{{ item.product.name }}"{% endif %}>
      {% if item.product.thumbnail_url %}
      <img src="{{ item.product.thumbnail_url }}" alt="{{ item.product.name }}" loading="lazy" decoding="async" width="160" height="213">
      {% else %}<span class="noimage">no image</span>{% endif %}
      <span class="name">{{ item.product.name }}</span>
      {% if item.score is not None %}<span class="score" data-score="{{ item.score|floatformat:4 }}">{{ item.score|floatformat:2 }}</span>{% endif %}
    </a>{% if item.view_url %}
    <p class="view"><a href="{{ item.view_url }}" rel="nofollow">View product</a></p>{% endif %}
  </li>
  {% endfor %}
</ol>
{% endif %}
"""  # noqa: E501

ODD_NAMES = ["Plain Shirt", 'Tom & Jerry "Kids" <Tee>', "L'Oréal Café Kurta", "  spaced  ", "{{ not a tag }}"]
ODD_IMAGES = [
    "products/ab/0123abcd.jpg",
    "products/a b/é ü.jpg",
    "products/../escape.jpg",
    "products/./x.jpg",
    "products//double.jpg",
    "products/q?x=1#frag.jpg",
    "http:/weird.jpg",
    ".hidden/x.jpg",
    "",
]


def _product(pid: int, **fields: object) -> Product:
    defaults = {
        "name": f"Product {pid}",
        "gender": "Women" if pid % 2 else "Men",
        "master_category": "Apparel",
        "sub_category": "Topwear",
        "article_type": "Tshirts",
        "base_colour": "Black" if pid % 3 else "Red",
        "season": "Summer",
        "year": 2012 if pid % 5 else None,
        "usage": "Casual",
        "image_version": 1,
    }
    defaults.update(fields)
    return Product(id=pid, **defaults)


def _card_from_model(product: Product) -> Card:
    """A card as the ORM and the storage give it, field by field: what cards_get must equal."""
    return Card(
        id=product.id,
        name=product.name,
        image_url=product.image.url if product.image else None,
        thumbnail_url=product.thumbnail.url if product.thumbnail else None,
        gender=product.gender,
        master_category=product.master_category,
        sub_category=product.sub_category,
        article_type=product.article_type,
        base_colour=product.base_colour,
        season=product.season,
        year=product.year,
        usage=product.usage,
    )


@pytest.fixture
def odd_catalog(db) -> list[int]:
    """1,200 products (more ids than one statement takes), with odd names and stored image names."""
    products = [
        _product(
            pid,
            name=ODD_NAMES[pid % len(ODD_NAMES)] + f" {pid}",
            image=ODD_IMAGES[pid % len(ODD_IMAGES)],
            thumbnail=ODD_IMAGES[(pid + 3) % len(ODD_IMAGES)].replace("products/", "thumbs/"),
        )
        for pid in range(1, 1201)
    ]
    Product.objects.bulk_create(products, batch_size=500)
    return [p.id for p in products]


@pytest.mark.parametrize("media_url", ["/media/", "https://cdn.example.com/shop/media/", "/media/?v=2/"])
def test_cards_equal_what_the_orm_and_the_storage_give(odd_catalog, settings, media_url):
    settings.MEDIA_URL = media_url
    asked = [*reversed(odd_catalog), 999_999, 0, -4, 2**70, odd_catalog[0]]
    cards = cards_get(asked)
    expected = {p.id: _card_from_model(p) for p in Product.objects.filter(id__in=odd_catalog).order_by("id")}
    assert cards == expected
    assert list(cards) == sorted(expected)  # ordered by id, as the ORM read them

    filters = ProductFilters.from_mapping({"gender": "Women", "colour": "Black"})
    filtered = cards_get(asked, filters=filters)
    assert filtered == {
        p.id: _card_from_model(p) for p in Product.objects.filter(filters.q(), id__in=odd_catalog).order_by("id")
    }
    assert filtered and len(filtered) < len(cards)


def test_a_card_is_read_fresh_after_an_edit_a_new_image_and_a_deletion(odd_catalog):
    pid = odd_catalog[10]
    before = cards_get([pid])[pid]
    product = Product.objects.get(id=pid)
    product.name = "Renamed"
    product.base_colour = "Mauve"
    product.image = "products/cd/new-image.jpg"
    product.save()
    after = cards_get([pid], filters=ProductFilters.from_mapping({"colour": "Mauve"}))[pid]
    assert (after.name, after.base_colour) == ("Renamed", "Mauve")
    assert after.image_url.endswith("/products/cd/new-image.jpg") and after.image_url != before.image_url
    assert pid not in cards_get([pid], filters=ProductFilters.from_mapping({"colour": "Black"}))
    Product.objects.filter(id=pid).delete()
    assert cards_get([pid]) == {}


@pytest.mark.parametrize(
    ("host", "secure"), [("testserver", False), ("shop.example.com:8443", True), ("127.0.0.1:8000", False)]
)
def test_api_urls_equal_build_absolute_uri(host, secure, settings):
    settings.ALLOWED_HOSTS = ["*"]
    request = RequestFactory().get("/api/similar/1", HTTP_HOST=host, secure=secure)
    urls = JsonUrls(request)
    for location in [
        "/media/products/ab/0123abcd.jpg",
        "/media/products/a%20b/%C3%A9.jpg",
        "/media/products/é ü.jpg",
        "/media/../escape.jpg",
        "/media/./x.jpg",
        "/media/x/..",
        "//cdn.example.com/media/x.jpg",
        "https://cdn.example.com/media/x.jpg?sig=a&b=c",
        "/media/x.jpg?v=2",
        "media/relative.jpg",
        "/",
    ]:
        assert urls.absolute(location) == request.build_absolute_uri(location), location
    for pid in (1, 42, 2**53):
        assert urls.page(pid) == request.build_absolute_uri(reverse("gallery:similar", args=[pid]))


def test_product_json_equals_the_plain_build(odd_catalog):
    request = RequestFactory().get("/api/search", HTTP_HOST="testserver")
    cards = cards_get(odd_catalog[:40])
    for card in cards.values():
        assert _product_json(request, card, 0.5) == {
            "id": card.id,
            "name": card.name,
            "image_url": request.build_absolute_uri(card.image_url) if card.image_url else None,
            "thumbnail_url": request.build_absolute_uri(card.thumbnail_url) if card.thumbnail_url else None,
            "gender": card.gender,
            "master_category": card.master_category,
            "sub_category": card.sub_category,
            "article_type": card.article_type,
            "base_colour": card.base_colour,
            "season": card.season,
            "year": card.year,
            "usage": card.usage,
            "active": card.active,
            "stock": card.stock,
            "url": request.build_absolute_uri(reverse("gallery:similar", args=[card.id])),
            "view_url": request.build_absolute_uri(reverse("gallery:view-product", args=[card.id])),
            "score": 0.5,
        }


def test_grid_tiles_equal_the_template_loop(odd_catalog):
    cards = list(cards_get(odd_catalog[:60]).values())
    scores = [
        None,
        0.81234,
        0.8125,
        0.99995,
        -0.123456,
        1.0,
        0.0,
        0.5,
        1e-7,
        -0.001,
        -0.00005,
        0.125,
        0.0005,
        -0.99995,
        -1.0,
    ]
    urls = [None, "/similar/3/", "/similar/4/?trail=1,p2,n3&q=striped+shirt", '/similar/5/?q="<x>"']
    items = [
        GridItem(card, scores[i % len(scores)], urls[i % len(urls)])
        for i, card in enumerate(cards)
        if not (i % 7 == 0 and card.thumbnail_url is None)
    ]
    reference = engines["django"].from_string(GRID_TEMPLATE_LOOP)
    served = get_template("gallery/_grid.html")
    for grid in (items, items[:1], [], [GridItem(cards[0], None, None)]):
        assert served.render({"items": grid}) == reference.render({"items": grid})


def test_pages_show_the_same_grid_markup(client, odd_catalog):
    page = client.get("/", {"q": "kids tee"})
    assert page.status_code == 200
    found = page.context["items"]
    assert found
    expected = engines["django"].from_string(GRID_TEMPLATE_LOOP).render({"items": found})
    assert expected.strip() in page.content.decode()


@pytest.fixture
def built(tmp_path: Path) -> LoadedIndex:
    rng = np.random.default_rng(5)
    n, dim = 3000, 48
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    directory = tmp_path / "built"
    index_build(
        directory=directory,
        vectors=vectors,
        product_ids=np.arange(10, 10 + n),
        embedding_ids=np.arange(1, n + 1),
        space="test-space",
        n_trees=8,
        search_k=-1,
        watermark=n,
    )
    return LoadedIndex(directory, published_version(directory))


def test_exact_scores_from_the_memory_map_equal_the_matrix_product(built, monkeypatch):
    from recommender import index

    rng = np.random.default_rng(9)
    query = built.vectors_of(np.array([7]))[0]
    cases = {
        "scattered": np.sort(rng.choice(built.meta.count, 1700, replace=False)),
        "unsorted": rng.choice(built.meta.count, 500, replace=False),
        "every item": np.arange(built.meta.count),
        "a run": np.arange(100, 900),
        "one": np.array([42]),
        "none": np.zeros(0, dtype=np.int64),
    }
    monkeypatch.setattr(index, "SCORE_CHUNK_BYTES", 64 * 4 * built.meta.dim)  # many chunks, a short last one
    for name, items in cases.items():
        got = built.scores_of(items, query)
        want = built.vectors_of(items) @ query
        assert got.dtype == np.float32 and got.shape == (len(items),), name
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, err_msg=name)


def test_index_query_as_arrays_equals_the_hits(built):
    query = built.vectors_of(np.array([3]))[0]
    hits = built.query(query, n=120, search_k=4000)
    items, scores = built.query_items(query, n=120, search_k=4000)
    assert [(h.product_id, h.embedding_id, h.score) for h in hits] == list(
        zip(built.product_ids[items].tolist(), built.embedding_ids[items].tolist(), scores.tolist(), strict=True)
    )


def test_the_validity_look_up_equals_the_orm_one(odd_catalog):
    space = "efficientnet-lite0-imagenet"
    vector = np.ones(4, dtype="<f4").tobytes()
    Embedding.objects.bulk_create(
        [Embedding(product_id=pid, space=space, dim=4, vector=vector, image_version=1) for pid in odd_catalog],
        batch_size=500,
    )
    Embedding.objects.bulk_create(
        [Embedding(product_id=pid, space="other-space", dim=4, vector=vector, image_version=1) for pid in odd_catalog]
    )
    # A re-imaged product's vector is replaced (a new row); a deleted product's is gone.
    Embedding.objects.filter(product_id=5, space=space).delete()
    Embedding.objects.create(product_id=5, space=space, dim=4, vector=vector, image_version=2)
    Product.objects.filter(id=6).delete()
    asked = [*odd_catalog, 5_000_000]
    got = selectors._current_pairs(space=space, product_ids=asked)
    assert got == set(Embedding.objects.filter(space=space, product_id__in=asked).values_list("product_id", "id"))
    assert len(got) == len(odd_catalog) - 1 and selectors._current_pairs(space=space, product_ids=[]) == set()


def test_only_the_candidates_the_grid_needs_are_checked_and_the_result_is_the_same(odd_catalog, monkeypatch):
    space = "efficientnet-lite0-imagenet"
    vector = np.ones(4, dtype="<f4").tobytes()
    rows = Embedding.objects.bulk_create(
        [Embedding(product_id=pid, space=space, dim=4, vector=vector, image_version=1) for pid in odd_catalog],
        batch_size=500,
    )
    eids = {row.product_id: row.id for row in Embedding.objects.filter(space=space)}
    assert len(rows) == len(eids)
    # Candidates best first, as the index gives them: ties in runs of three; every 7th product deleted,
    # every 5th re-imaged (its index vector is the old one).
    deleted = set(odd_catalog[::7])
    Product.objects.filter(id__in=deleted).delete()
    for pid in (pid for pid in odd_catalog[::5] if pid not in deleted):
        Embedding.objects.filter(product_id=pid, space=space).delete()
        Embedding.objects.create(product_id=pid, space=space, dim=4, vector=vector, image_version=2)
    # Ids fall within each run of ties: the grid's tie-break (by id) wants the last of a run checked too.
    candidates = [(pid, eids[pid], 1.0 - (i // 3) * 0.001) for i, pid in enumerate(reversed(odd_catalog))]
    everything = selectors._current_pairs(space=space, product_ids=odd_catalog)
    all_current = [row for row in candidates if (row[0], row[1]) in everything]
    asked: list[int] = []
    checked = selectors._current_pairs
    monkeypatch.setattr(selectors, "_current_pairs", lambda **kw: asked.extend(kw["product_ids"]) or checked(**kw))

    def top(rows, k):
        return sorted(rows, key=lambda row: (-row[2], row[0]))[:k]

    for margin, k in itertools.product((16, 0), (1, 2, 25, 200, 1000, 1200)):
        monkeypatch.setattr(selectors, "_CURRENT_MARGIN", margin)
        asked.clear()
        found = selectors._still_current(space=space, candidates=candidates, k=k)
        assert top(found, k) == top(all_current, k)
        assert found == all_current[: len(found)]
        if k <= 200:
            assert len(asked) <= 2 * k + 3 * 16  # not the 1,200
    assert selectors._still_current(space=space, candidates=candidates, k=0) == []
    # With one request's record of what is current, a second search over the same candidates asks nothing again
    # and answers alike; a deleted product is recorded as having no vector.
    current: dict[int, int | None] = {}
    asked.clear()
    first = selectors._still_current(space=space, candidates=candidates, k=200, current=current)
    once = list(asked)
    assert selectors._still_current(space=space, candidates=candidates, k=200, current=current) == first
    assert asked == once and len(set(once)) == len(once)
    assert first == selectors._still_current(space=space, candidates=candidates, k=200)
    assert all(current[pid] is None for pid in deleted if pid in current) and any(p in current for p in deleted)


def test_stored_vectors_equal_the_orm_rows(odd_catalog, django_assert_num_queries):
    vectors = {pid: np.full(4, pid, dtype="<f4").tobytes() for pid in odd_catalog}
    for space in ("efficientnet-lite0-imagenet", "colour-lab294"):
        Embedding.objects.bulk_create(
            [Embedding(product_id=p, space=space, dim=4, vector=v, image_version=1) for p, v in vectors.items()],
            batch_size=500,
        )
    Embedding.objects.filter(product_id=7, space="colour-lab294").delete()
    wanted = {"efficientnet-lite0-imagenet": [*odd_catalog[:950], 5_000_000], "colour-lab294": [7, 8, 9], "x": []}
    got = selectors.stored_vectors(wanted)
    expected = [
        (pid, space, bytes(vector))
        for space, ids in wanted.items()
        for pid, vector in Embedding.objects.filter(space=space, product_id__in=ids).values_list("product_id", "vector")
    ]
    assert sorted(got) == sorted(expected) and len(got) == 952
    assert all(isinstance(vector, bytes) and vector == vectors[pid] for pid, _, vector in got)
    # A trail's vectors and colours (the same products in both spaces): one statement, the same rows.
    steps = [9, 7, 8, 5_000_000]
    with django_assert_num_queries(1):
        both = selectors.stored_vectors({"efficientnet-lite0-imagenet": steps, "colour-lab294": steps[::-1]})
    assert sorted(both) == sorted(
        (pid, space, bytes(vector))
        for pid, space, vector in Embedding.objects.filter(product_id__in=steps).values_list(
            "product_id", "space", "vector"
        )
    )
    assert len(both) == 5  # product 7 has no colour


# templates/gallery/_filters.html's options as they were, a node per value.
OPTIONS_TEMPLATE_LOOP = (
    "{% for value, selected in options %}"
    '<option value="{{ value }}"{% if selected %} selected{% endif %}>{{ value }}</option>{% endfor %}'
)


def test_filter_options_equal_the_template_loop():
    from gallery.templatetags.gallery_grid import filter_options

    options = [("Black", False), ('Navy "Blue"', True), ("<b>&amp;</b>", False), ("Café au lait", False), ("", True)]
    reference = engines["django"].from_string(OPTIONS_TEMPLATE_LOOP)
    for shown in (options, options[:1], []):
        assert filter_options(shown) == reference.render({"options": shown})


@pytest.mark.parametrize("prefix", ["/", "/shop/", "/a b/"])
def test_similar_path_equals_reverse(prefix):
    from django.urls import set_script_prefix

    from gallery.links import similar_path

    set_script_prefix(prefix)
    try:
        for pid in (1, 42, 918273645, 2**63 - 1):
            assert similar_path(pid) == reverse("gallery:similar", args=[pid])
    finally:
        set_script_prefix("/")


def test_a_web_process_reuses_freed_memory_rather_than_faulting_it_in_again():
    """config.wsgi's malloc setting: a request's megabyte arrays, freed and made again, cost no new pages."""
    import subprocess
    import sys

    script = (
        "import resource, sys\n"
        "from config.malloc import keep_freed_memory\n"
        "if sys.argv[1] == 'keep' and not keep_freed_memory(): print(-1); raise SystemExit\n"
        "import numpy as np\n"
        "a = np.ones((256, 1280), np.float32) * 2; del a\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(50):\n"
        "    a = np.ones((256, 1280), np.float32); b = a * 2; del a, b\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    root = Path(__file__).resolve().parent.parent

    def faults(mode: str) -> int:
        command = [sys.executable, "-c", script, mode]
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True)
        return int(done.stdout.strip())

    kept = faults("keep")
    if kept < 0:
        pytest.skip("this C library has no mallopt: freed memory goes back as it always did")
    # 100 arrays of 1.3 MB are about 33,000 pages when each comes fresh from the kernel.
    assert faults("default") > 10_000
    assert kept < 1_000


SPACE = "efficientnet-lite0-imagenet"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x)).astype(np.float32)


@pytest.fixture
def indexed_catalog(db) -> dict[int, np.ndarray]:
    """400 products with vectors and a published index (every vector older than the build's margin)."""
    from datetime import timedelta

    from django.utils import timezone

    from recommender import services
    from recommender.models import EmbeddingState, EmbedStatus

    rng = np.random.default_rng(21)
    vectors = {pid: _unit(rng.standard_normal(32)) for pid in range(1, 401)}
    Product.objects.bulk_create([_product(pid) for pid in vectors])
    EmbeddingState.objects.bulk_create(
        [
            EmbeddingState(product_id=pid, image_name=f"p/{pid}.jpg", image_version=1, status=EmbedStatus.DONE)
            for pid in vectors
        ]
    )
    Embedding.objects.bulk_create(
        [
            Embedding(product_id=pid, space=SPACE, dim=32, vector=v.tobytes(), image_version=1)
            for pid, v in vectors.items()
        ]
    )
    Embedding.objects.update(created_at=timezone.now() - timedelta(hours=1))
    services.index_rebuild(n_trees=10)
    return vectors


def test_vectors_stored_since_the_build_are_remembered_and_never_served_stale(client, indexed_catalog):
    """The memory of vectors stored since the build: new, re-imaged, edited, deleted products are served as they are."""
    from recommender import runtime, services
    from recommender.selectors import similar_products
    from tests.support.engine import engine_knows

    anchor, other = indexed_catalog[1], indexed_catalog[2]
    loaded = runtime.index_reader().current()

    # New after the build: found at once, and its vector is remembered by its embedding id (501 stays
    # throughout, so there is always a fresh vector to read beside 500's).
    for pid, vector in ((500, anchor), (501, _unit(anchor + other))):
        _product(pid, name="New arrival").save()
        engine_knows(pid)
        services.embedding_store(product_id=pid, image_version=1, space=SPACE, vector=vector)
    first = similar_products(vector=anchor, k=5, exclude_ids=frozenset({1}))
    assert first[0].product_id == 500 and first[0].score == pytest.approx(1.0)
    assert sorted(pid for pid, _ in loaded.fresh_memory().values()) == [500, 501]
    assert client.get("/api/similar/1").json()["results"][0]["id"] == 500

    # Re-imaged: the old vector is never served again, the new one at once (a new row, read and remembered).
    engine_knows(500, image_version=2)
    assert 500 not in [n.product_id for n in similar_products(vector=anchor, k=400)]
    services.embedding_store(product_id=500, image_version=2, space=SPACE, vector=other)
    scores = {n.product_id: n.score for n in similar_products(vector=anchor, k=400)}
    assert scores[500] == pytest.approx(float(anchor @ other), abs=1e-6)
    assert client.get("/api/similar/1").json()["results"][0]["id"] != 500
    assert client.get("/api/similar/2").json()["results"][0]["id"] == 500
    assert sorted(pid for pid, _ in loaded.fresh_memory().values()) == [500, 500, 501]  # the old row's is unused

    # Edited (a new name, the same image; every write of a product writes updated_at): the grid shows the
    # product as it is now.
    Product.objects.filter(id=500).update(name="Renamed arrival", updated_at=timezone.now())
    assert client.get("/api/similar/2").json()["results"][0]["name"] == "Renamed arrival"

    # Deleted: gone from every result, although its vector is still in this process's memory.
    Product.objects.filter(id=500).delete()
    assert 500 not in [n.product_id for n in similar_products(vector=other, k=400)]
    assert 500 not in [r["id"] for r in client.get("/api/similar/2", {"k": 100}).json()["results"]]
    assert loaded.fresh_memory()  # remembered, and still never served: the rows are asked for on every query


def test_remembered_fresh_vectors_give_the_same_results_as_reading_them(indexed_catalog, monkeypatch):
    from recommender import services
    from recommender.selectors import similar_products
    from tests.support.engine import engine_knows

    rng = np.random.default_rng(4)
    for pid in range(600, 640):
        _product(pid).save()
        engine_knows(pid)
        services.embedding_store(product_id=pid, image_version=1, space=SPACE, vector=_unit(rng.standard_normal(32)))
    queries = [indexed_catalog[pid] for pid in (3, 50, 77, 200)]
    remembered = [similar_products(vector=q, k=30) for q in queries]
    monkeypatch.setattr(selectors, "FRESH_MEMORY_MAX", 0)  # nothing more remembered...
    from recommender import runtime

    runtime.index_reader().current().fresh_memory().clear()  # ...and nothing left: every vector read
    assert [similar_products(vector=q, k=30) for q in queries] == remembered
    assert any(n.product_id >= 600 for grid in remembered for n in grid)


def test_the_builds_watermark_passes_rows_of_other_spaces_stored_after_its_own(demo_catalog_db):
    """Colour descriptors stored after the vectors (a backfill) are not read again on every click."""
    from recommender import runtime
    from recommender.colour import COLOUR_SPACE

    loaded = runtime.index_reader().current()
    newest_colour = Embedding.objects.filter(space=COLOUR_SPACE).order_by("-id").values_list("id", flat=True)[0]
    assert newest_colour > Embedding.objects.filter(space=runtime.active_space()).order_by("-id")[0].id
    assert loaded.meta.watermark >= newest_colour
    assert selectors._rows_newer(space=runtime.active_space(), watermark=loaded.meta.watermark) == []
