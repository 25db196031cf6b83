"""The Annoy index wrapper: builds, atomic publishing, loading, recall against exact search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from annoy import AnnoyIndex

from recommender import index
from recommender.index import (
    BUILDS_DIR,
    INDEX_FILE,
    SKETCH_BASIS_FILE,
    SKETCH_DIM,
    SKETCH_FILE,
    IndexCorrupt,
    IndexReader,
    LoadedIndex,
    index_build,
    published_version,
)
from tests.support.engine import clustered


def build(directory: Path, vectors: np.ndarray, *, space: str = "test-space", n_trees: int = 10, **kw):
    n = len(vectors)
    return index_build(
        directory=directory,
        vectors=vectors,
        product_ids=np.arange(1000, 1000 + n),
        embedding_ids=np.arange(1, n + 1),
        space=space,
        n_trees=n_trees,
        search_k=kw.pop("search_k", -1),
        watermark=kw.pop("watermark", n),
        **kw,
    )


def test_build_publishes_a_versioned_build_with_metadata(tmp_path: Path):
    vectors = clustered(500, 64)
    meta = build(tmp_path, vectors)

    assert published_version(tmp_path) == meta.version
    on_disk = json.loads((tmp_path / BUILDS_DIR / meta.version / "meta.json").read_text())
    assert on_disk["space"] == "test-space"
    assert (on_disk["count"], on_disk["dim"], on_disk["n_trees"], on_disk["metric"]) == (500, 64, 10, "angular")
    assert on_disk["built_at"]
    loaded = LoadedIndex(tmp_path, meta.version)
    hits = loaded.query(vectors[7], n=5)
    # Items map back to product ids through the sidecar, never raw Annoy numbers.
    assert hits[0].product_id == 1007
    assert hits[0].embedding_id == 8
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("spread", [index.DENSE_IDS_MAX_SPREAD, 0], ids=["a table by id", "binary search"])
def test_item_at_keeps_the_order_asked_and_marks_unknown_ids(tmp_path: Path, monkeypatch, spread):
    # Ids 1000-1049 are dense enough for a table by product id; with no spread allowed they are searched.
    monkeypatch.setattr(index, "DENSE_IDS_MAX_SPREAD", spread)
    vectors = clustered(50, 8)
    loaded = LoadedIndex(tmp_path, build(tmp_path, vectors).version)
    assert (loaded._item_of_product is not None) == bool(spread)
    asked = np.array([1042, 7, 1003, 1049, 1000, 99_999, -3])
    items = loaded.item_at(asked)
    assert items.tolist() == [42, -1, 3, 49, 0, -1, -1] and items.dtype == np.int64
    assert loaded.product_ids[items[items >= 0]].tolist() == [1042, 1003, 1049, 1000]
    np.testing.assert_array_equal(loaded.vectors_of(items[items >= 0]), vectors[[42, 3, 49, 0]])
    assert loaded.items_of(asked).tolist() == [0, 3, 42, 49]  # the index's own order
    assert loaded.item_at(np.zeros(0, dtype=np.int64)).tolist() == []


def test_annoy_recall_at_25_on_20k_clustered_2048d_vectors(tmp_path: Path):
    vectors = clustered(20_000, 2048, clusters=200, noise=0.8, seed=1)
    meta = build(tmp_path, vectors, n_trees=10)
    loaded = LoadedIndex(tmp_path, meta.version)
    rng = np.random.default_rng(2)
    queries = rng.choice(len(vectors), 100, replace=False)

    recalls = []
    for q in queries:
        exact = set(np.argsort(-(vectors @ vectors[q]))[:25] + 1000)
        found = {h.product_id for h in loaded.query(vectors[q], n=25)}
        recalls.append(len(exact & found) / 25)

    assert np.mean(recalls) >= 0.95


def test_publishing_keeps_the_last_builds_and_readers_switch_on_next_query(tmp_path: Path):
    reader = IndexReader(tmp_path)
    assert reader.current() is None

    first = build(tmp_path, clustered(100, 16, seed=1), keep=2)
    held = reader.current()
    assert held.meta.version == first.version
    versions = [build(tmp_path, clustered(100 + i, 16, seed=i), keep=2).version for i in range(3)]

    assert reader.current().meta.version == versions[-1]
    remaining = sorted(p.name for p in (tmp_path / BUILDS_DIR).iterdir())
    assert remaining == sorted(versions)  # the newest plus two for rollback
    # A reader still holding a removed build keeps answering from its mmap.
    assert held.query(clustered(1, 16, seed=9)[0], n=3)


def test_a_failed_build_leaves_the_published_one_in_service(tmp_path: Path, monkeypatch):
    good = build(tmp_path, clustered(50, 8))

    class FullDisk(AnnoyIndex):
        def save(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("recommender.index.AnnoyIndex", FullDisk)
    with pytest.raises(OSError, match="No space"):
        build(tmp_path, clustered(60, 8))

    assert published_version(tmp_path) == good.version
    assert not [p for p in (tmp_path / BUILDS_DIR).iterdir() if p.name.startswith(".tmp")]
    assert IndexReader(tmp_path).current().meta.count == 50


def test_a_corrupt_or_missing_index_file_is_detected_not_served(tmp_path: Path):
    meta = build(tmp_path, clustered(200, 32))
    ann = tmp_path / BUILDS_DIR / meta.version / INDEX_FILE
    data = bytearray(ann.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ann.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="checksum"):
        IndexReader(tmp_path).current()

    ann.write_bytes(bytes(data[:100]))
    with pytest.raises(IndexCorrupt):
        IndexReader(tmp_path).current()

    ann.unlink()
    with pytest.raises(IndexCorrupt):
        IndexReader(tmp_path).current()


def test_a_build_of_wide_vectors_keeps_sketches_whose_cosines_follow_the_vectors(tmp_path: Path):
    vectors = clustered(3000, 2 * SKETCH_DIM, clusters=40, noise=0.6, seed=3)
    loaded = LoadedIndex(tmp_path, build(tmp_path, vectors).version)
    items = np.arange(0, 3000, 7)
    sketches = loaded.sketches_of(items)
    assert sketches.shape == (len(items), SKETCH_DIM) and sketches.dtype == np.float32
    assert loaded.sketch_dim == SKETCH_DIM
    norms = np.linalg.norm(sketches, axis=1)
    assert (norms <= 1.002).all() and norms.mean() > 0.8  # most of each unit vector, in half precision
    # A vector stored since the build is sketched as the build's own are.
    np.testing.assert_allclose(loaded.sketch(vectors[items]), sketches, atol=2e-3)
    # Cosines between sketches follow the vectors' own: close values, and each row's nearest by sketch nearly as
    # near as its nearest by vector.
    exact, approx = vectors[items] @ vectors[items].T, sketches @ sketches.T
    np.fill_diagonal(exact, -1.0)
    np.fill_diagonal(approx, -1.0)
    assert np.abs(exact - approx).mean() < 0.1
    rows = np.arange(len(items))
    assert exact[rows, approx.argmax(axis=1)].mean() > exact.max(axis=1).mean() - 0.05


@pytest.mark.parametrize("stored", [index.COLOUR_FILE_DTYPE, np.float16], ids=["stored wide", "an older build"])
def test_colour_descriptors_come_back_as_stored_in_half_precision(tmp_path: Path, monkeypatch, stored):
    # A build stores them widened (read as they are); one from before stored float16 (read through a table).
    monkeypatch.setattr(index, "COLOUR_FILE_DTYPE", stored)
    rng = np.random.default_rng(4)
    colours = rng.random((300, 294)).astype(np.float32) ** 4  # many near zero: half precision's subnormals
    colours[::7] = 0.0  # no descriptor stored
    colours[1, :3] = [np.inf, 65504.0, -1e-7]
    loaded = LoadedIndex(tmp_path, build(tmp_path, clustered(300, 16), colours=colours).version)
    assert loaded.colour_file_dtype == stored
    items = np.array([0, 1, 2, 7, 299, 150])
    found = loaded.colours_of(items)
    assert found.dtype == np.float32
    np.testing.assert_array_equal(found, colours[items].astype(np.float16).astype(np.float32))
    assert LoadedIndex(tmp_path, build(tmp_path, clustered(300, 16)).version).colour_file_dtype is None


def test_a_build_of_narrow_vectors_keeps_none_and_a_damaged_sketch_is_refused(tmp_path: Path):
    narrow = LoadedIndex(tmp_path / "narrow", build(tmp_path / "narrow", clustered(200, SKETCH_DIM)).version)
    assert narrow.sketches_of(np.arange(3)) is None and narrow.sketch(np.zeros((1, SKETCH_DIM))) is None
    assert narrow.sketch_dim == 0
    meta = build(tmp_path / "wide", clustered(200, 2 * SKETCH_DIM))
    folder = tmp_path / "wide" / BUILDS_DIR / meta.version
    for name in (SKETCH_FILE, SKETCH_BASIS_FILE):
        kept = (folder / name).read_bytes()
        (folder / name).write_bytes(kept[:-64])
        with pytest.raises(IndexCorrupt):
            IndexReader(tmp_path / "wide").current()
        (folder / name).unlink()
        with pytest.raises(IndexCorrupt, match="missing"):
            IndexReader(tmp_path / "wide").current()
        (folder / name).write_bytes(kept)
    assert IndexReader(tmp_path / "wide").current().sketches_of(np.arange(2)).shape == (2, SKETCH_DIM)


def test_build_refuses_mismatched_inputs(tmp_path: Path):
    with pytest.raises(ValueError, match="same length"):
        index_build(
            directory=tmp_path,
            vectors=clustered(10, 8),
            product_ids=np.arange(9),
            embedding_ids=np.arange(10),
            space="s",
            n_trees=2,
            search_k=-1,
            watermark=0,
        )
    with pytest.raises(ValueError, match="at least one"):
        build(tmp_path, np.zeros((0, 8), np.float32))
    assert published_version(tmp_path) is None


def test_query_with_the_wrong_dimension_is_refused(tmp_path: Path):
    meta = build(tmp_path, clustered(20, 8))
    with pytest.raises(ValueError, match="dimensions"):
        LoadedIndex(tmp_path, meta.version).query(np.ones(9, np.float32), n=3)
