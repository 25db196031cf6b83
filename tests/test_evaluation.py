"""The quality harness: metrics on hand-made cases, the seeded split, distortions, and end-to-end runs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from PIL import Image

from gallery.catalog import styles_read
from lab import evaluation as ev
from lab.demo import demo_catalog_write
from recommender.projection import Projection
from tests.support.engine import demo_rows_store

# --- Metrics ------------------------------------------------------------------------------------------------


def test_precision_at_k_is_the_share_of_relevant_results():
    relevant = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)
    assert ev.precision_at_k(relevant) == pytest.approx((2 / 4 + 0 + 1) / 3)
    assert ev.precision_at_k(relevant[:, :1]) == pytest.approx(2 / 3)


def test_average_precision_at_k_by_hand():
    relevant = np.array(
        [
            [1, 0, 1, 0],  # hits at ranks 1 and 3 of 3 existing: (1/1 + 2/3) / 3
            [0, 1, 0, 0],  # the only relevant item at rank 2: (1/2) / 1
            [1, 1, 1, 1],  # 4 hits, 9 exist: capped at K, so (1+1+1+1) / 4
            [0, 0, 0, 0],  # 2 exist, none found
            [0, 0, 0, 0],  # nothing relevant exists: not counted in the mean
        ],
        dtype=bool,
    )
    n_relevant = np.array([3, 1, 9, 2, 0])
    ap = ev.average_precision_at_k(relevant, n_relevant)
    np.testing.assert_allclose(ap[:4], [(1 + 2 / 3) / 3, 0.5, 1.0, 0.0])
    assert np.isnan(ap[4])
    assert ev.mean_average_precision_at_k(relevant, n_relevant) == pytest.approx(np.mean(ap[:4]))
    # A ranking that puts the same hits earlier scores higher.
    assert ev.average_precision_at_k(np.array([[1, 1, 0, 0]], bool), np.array([3]))[0] > ap[0]


def test_recall_at_k_finds_each_query_its_own_product():
    retrieved = np.array([[5, 3, 9], [1, 2, 3], [7, 8, 9], [4, 4, 4]])
    targets = np.array([3, 4, 7, 4])
    assert ev.recall_at_k(retrieved, targets, k=1) == pytest.approx(2 / 4)
    assert ev.recall_at_k(retrieved, targets, k=2) == pytest.approx(3 / 4)
    assert ev.recall_at_k(retrieved, targets) == pytest.approx(3 / 4)
    assert ev.recall_at_k(np.zeros((0, 3), int), np.zeros(0, int)) == 0.0


def test_top_k_ranks_by_cosine_with_ties_by_position():
    items = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(ev.top_k(queries, items, k=3), [[0, 2, 3], [1, 3, 0]])
    assert ev.top_k(queries, items, k=10).shape == (2, 4)


def test_chance_and_ceiling_of_precision():
    labels = np.array(["a", "a", "a", "b", "a", "b"])
    split = ev.Split(index=np.array([0, 1, 2, 3]), query=np.array([4, 5]))
    assert ev.chance_precision(labels, split) == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert ev.ceiling_precision(labels, split, k=2) == pytest.approx((2 / 2 + 1 / 2) / 2)


# --- Split and distortions ----------------------------------------------------------------------------------


def test_the_split_is_stratified_seeded_and_independent_of_row_order():
    rng = np.random.default_rng(0)
    ids = rng.choice(np.arange(1000, 90000), 500, replace=False)
    strata = np.array([f"type{i % 7}" for i in range(495)] + ["lonely"] + ["pair"] * 2 + ["trio"] * 2)
    split = ev.split_stratified(ids=ids, strata=strata)

    assert sorted([*split.index, *split.query]) == list(range(500))
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        held = np.isin(members, split.query).sum()
        if len(members) == 1:
            assert held == 0  # a product alone in its type has nothing to be found by
        else:
            assert 1 <= held <= len(members) - 1
            assert abs(held - 0.2 * len(members)) <= 1
    again = ev.split_stratified(ids=ids, strata=strata)
    np.testing.assert_array_equal(again.query, split.query)
    order = rng.permutation(500)
    shuffled = ev.split_stratified(ids=ids[order], strata=strata[order])
    assert set(ids[order][shuffled.query]) == set(ids[split.query])
    other = ev.split_stratified(ids=ids, strata=strata, seed=ev.SPLIT_SEED + 1)
    assert set(other.query) != set(split.query)
    with pytest.raises(ValueError):
        ev.split_stratified(ids=ids, strata=strata, query_fraction=1.0)


def test_distortion_is_seeded_and_changes_the_photo(make_jpeg):
    image = Image.open(io.BytesIO(make_jpeg(size=(300, 400))))
    first = ev.distort_photo(image, rng=ev.distortion_rng(seed=1, product_id=42, copy=0))
    again = ev.distort_photo(image, rng=ev.distortion_rng(seed=1, product_id=42, copy=0))
    other = ev.distort_photo(image, rng=ev.distortion_rng(seed=1, product_id=42, copy=1))
    assert first == again and first != other
    out = Image.open(io.BytesIO(first))
    assert out.format == "JPEG" and out.mode == "RGB"
    assert out.size != image.size
    # Quality ~60 re-compression: far smaller than the same pixels at high quality.
    high = io.BytesIO()
    out.save(high, format="JPEG", quality=95)
    assert len(first) < len(high.getvalue())


# --- End to end ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    from recommender.encoders import encoder_load

    return encoder_load(name="efficientnet-lite0", device="cpu")


def demo_slice(demo_dir: Path, demo_vectors: dict[int, np.ndarray], n: int) -> tuple[ev.LabelledCatalog, np.ndarray]:
    catalog = ev.catalog_read(demo_dir)
    rows = np.arange(min(n, len(catalog)))
    catalog = catalog.subset(rows)
    return catalog, np.stack([demo_vectors[int(i)] for i in catalog.ids])


def test_the_harness_runs_end_to_end_on_a_demo_slice(demo_dir, demo_vectors, encoder):
    catalog, vectors = demo_slice(demo_dir, demo_vectors, 160)
    data = ev.eval_set_from_vectors(
        catalog=catalog, vectors=vectors, encoder=encoder, train_copies=1, train_sample=24, recall_sample=12
    )
    assert len(data.distorted) == 12 and set(data.distorted_of) <= set(data.split.query)
    assert len(data.train_augmented) == 24 and set(data.train_augmented_of) <= set(data.split.index)

    spaces, projections = ev.standard_spaces(data, dim=32, epochs=3)
    assert list(spaces) == ["raw", "pca32-whiten", "pca32", "head32"]
    assert all(p.encoder_id == encoder.id for p in projections.values())
    results = ev.evaluate_spaces(spaces, data=data, k=10)

    raw = results[0]
    context = ev.eval_context(data, k=10)
    assert raw.dim == 1280 and all(r.dim == 32 for r in results[1:])
    for result in results:
        assert set(result.metrics) == {
            "p@10 type",
            "map@10 type",
            "p@10 colour",
            "map@10 colour",
            "p@10 type+colour",
            "map@10 type+colour",
            "copy r@1",
            "copy r@10",
        }
        assert all(0.0 <= value <= 1.0 for value in result.metrics.values())
        assert result.index_bytes > 0 and result.query_ms_median > 0 and result.annoy_recall > 0.9
    assert raw.metrics["p@10 type"] > 4 * context["chance"]["type"]
    assert raw.metrics["copy r@10"] >= 0.5
    # Fewer dimensions: a smaller Annoy file.
    assert all(r.index_bytes < raw.index_bytes for r in results[1:])
    table = ev.results_table(results)
    assert "head32" in table and "copy r@1" in table
    document = json.loads(json.dumps(ev.results_json(results, context=context)))
    assert document["context"]["query_products"] == len(data.split.query)
    assert [s["name"] for s in document["spaces"]] == list(spaces)


def test_a_distorted_copy_is_found_among_the_catalog(demo_dir, demo_vectors, encoder):
    catalog, vectors = demo_slice(demo_dir, demo_vectors, 300)
    rows = np.arange(0, 300, 30)
    copies, of = ev.embed_distorted(
        encoder=encoder, sources=[catalog.images[i] for i in rows], keys=catalog.ids[rows].tolist(), seed=1
    )
    np.testing.assert_array_equal(of, np.arange(len(rows)))
    found = ev.top_k(copies, vectors, k=10)
    assert ev.recall_at_k(found, rows, k=10) >= 0.7
    again, _ = ev.embed_distorted(
        encoder=encoder, sources=[catalog.images[i] for i in rows[:2]], keys=catalog.ids[rows[:2]].tolist(), seed=1
    )
    np.testing.assert_allclose(again, copies[:2], atol=1e-5)


def test_evaluate_similarity_command_on_a_small_catalog(tmp_path: Path):
    demo_catalog_write(out_dir=tmp_path / "cat", count=40, seed=3)
    out = io.StringIO()
    call_command(
        "evaluate_similarity",
        catalog=tmp_path / "cat",
        json=tmp_path / "r.json",
        dim=16,
        epochs=2,
        train_copies=1,
        train_sample=8,
        recall_sample=4,
        verbosity=0,
        stdout=out,
    )
    text = out.getvalue()
    assert "head16" in text and "pca16-whiten" in text and "ceiling" in text
    document = json.loads((tmp_path / "r.json").read_text())
    assert [s["name"] for s in document["spaces"]] == ["raw", "pca16-whiten", "pca16", "head16"]
    assert document["context"]["products"] == 40 and document["context"]["distorted_queries"] == 4


def test_train_embedding_head_saves_a_versioned_head(db, settings, tmp_path, demo_dir, demo_vectors):
    from recommender import runtime

    rows = [row for row in styles_read(demo_dir / "styles.csv") if hasattr(row, "fields")][:80]
    (settings.MEDIA_ROOT / "products").mkdir(parents=True)
    for row in rows:
        shutil.copy(demo_dir / "images" / f"{row.id}.jpg", settings.MEDIA_ROOT / "products" / f"{row.id}.jpg")
    demo_rows_store(rows, demo_vectors, image="products/{id}.jpg")
    space = runtime.active_space()
    out = io.StringIO()
    call_command(
        "train_embedding_head",
        dim=16,
        epochs=2,
        augment=6,
        copies=1,
        recall_sample=4,
        out=tmp_path / "heads",
        verbosity=0,
        stdout=out,
    )
    text = out.getvalue()
    saved = list((tmp_path / "heads").glob("head-head-16-*.npz"))
    assert len(saved) == 1
    head = Projection.load(saved[0])
    assert f"version {head.version}" in text and f"space   {space}+{head.version}" in text
    assert head.encoder_id == space and head.params["augmented"] == 6
    assert set(head.metrics["heldout"]) == {"raw", "projection"}
    assert "copy r@1" in head.metrics["heldout"]["projection"]

    call_command("train_embedding_head", kind="pca", dim=16, recall_sample=2, verbosity=0, stdout=io.StringIO())
    assert len(list(runtime.heads_dir().glob("head-pca-16-*.npz"))) == 1
