"""Projections of raw encoder vectors: PCA, the triplet-trained head, versioned files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lab.heads import fit_pca, train_catalog_head, train_triplet_head
from recommender.projection import Projection, ProjectionCorrupt

ENCODER = "test-encoder"


def labelled(
    n: int = 240, dim: int = 64, *, types: int = 4, colours: int = 3, noise: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors = type centre + colour centre + noise, with their type and colour labels."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, types, n)
    c = rng.integers(0, colours, n)
    x = (
        rng.standard_normal((types, dim))[t]
        + 0.4 * rng.standard_normal((colours, dim))[c]
        + noise * rng.standard_normal((n, dim))
    )
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, np.array([f"t{i}" for i in t]), np.array([f"c{i}" for i in c])


def fine(types: np.ndarray, colours: np.ndarray) -> list[str]:
    return [f"{t}|{c}" for t, c in zip(types, colours, strict=True)]


def neighbour_agreement(z: np.ndarray, labels: np.ndarray, *, k: int = 5) -> float:
    scores = z @ z.T
    np.fill_diagonal(scores, -np.inf)
    nearest = np.argsort(-scores, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def test_training_loss_decreases_and_the_head_groups_its_classes():
    x, types, colours = labelled()
    labels = np.array(fine(types, colours))
    seen: list[tuple[int, float]] = []

    head, history = train_triplet_head(
        x,
        labels,
        out_dim=16,
        epochs=15,
        batch_size=32,
        lr=3e-3,
        seed=1,
        encoder_id=ENCODER,
        progress=lambda e, loss: seen.append((e, loss)),
    )

    assert len(history) == 15 and [e for e, _ in seen] == list(range(1, 16))
    assert history[-1] < 0.5 * history[0]
    assert np.mean(history[-3:]) < np.mean(history[:3])
    z = head.apply(x)
    assert z.shape == (len(x), 16) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert neighbour_agreement(z, labels) > neighbour_agreement(x, labels) + 0.1


def test_augmented_copies_are_extra_positives_and_both_minings_run():
    x, types, colours = labelled(n=120)
    rng = np.random.default_rng(3)
    of = rng.choice(len(x), 40, replace=False)
    copies = x[of] + 0.05 * rng.standard_normal((40, x.shape[1])).astype(np.float32)
    for mining in ("batch-hard", "semi-hard"):
        head, history = train_triplet_head(
            x, fine(types, colours), augmented=copies, augmented_of=of, out_dim=8, epochs=3, mining=mining
        )
        assert head.params["augmented"] == 40 and head.params["mining"] == mining
        assert all(np.isfinite(history))
    with pytest.raises(ValueError, match="augmented"):
        train_triplet_head(x, fine(types, colours), augmented=copies, augmented_of=of + len(x), out_dim=8, epochs=1)
    with pytest.raises(ValueError, match="mining"):
        train_triplet_head(x, fine(types, colours), mining="random", out_dim=8, epochs=1)
    with pytest.raises(ValueError, match="labels"):
        train_triplet_head(x, ["a"] * 3, out_dim=8, epochs=1)
    with pytest.raises(ValueError, match="out_dim"):
        train_triplet_head(x, fine(types, colours), epochs=1)


def test_unlabelled_rows_only_match_their_own_copies():
    x, _, _ = labelled(n=60)
    head, history = train_triplet_head(x, [""] * len(x), augmented=x.copy(), out_dim=8, epochs=2)
    assert head.out_dim == 8 and len(history) == 2


def test_training_is_deterministic_for_a_seed():
    x, types, colours = labelled(n=150)
    first, h1 = train_catalog_head(x, article_types=types, colours=colours, out_dim=16, epochs=3, seed=5)
    again, h2 = train_catalog_head(x, article_types=types, colours=colours, out_dim=16, epochs=3, seed=5)
    other, _ = train_catalog_head(x, article_types=types, colours=colours, out_dim=16, epochs=3, seed=6)

    assert h1 == h2
    assert first.version == again.version
    np.testing.assert_array_equal(first.apply(x), again.apply(x))
    assert other.version != first.version


def test_a_saved_head_reloads_to_identical_outputs(tmp_path: Path):
    x, types, colours = labelled(n=150)
    head, _ = train_triplet_head(x, fine(types, colours), hidden=32, out_dim=16, epochs=2, encoder_id=ENCODER)
    head = head.with_metrics({"p@10 type": 0.9})

    path = head.save(tmp_path)
    loaded = Projection.load(path)

    assert path.name == f"head-head-16-{head.version.rsplit('-', 1)[1]}.npz"
    assert loaded.version == head.version and loaded.version.startswith("head16-")
    assert loaded.space == f"{ENCODER}+{head.version}"
    assert (loaded.kind, loaded.in_dim, loaded.out_dim, loaded.encoder_id) == ("head", 64, 16, ENCODER)
    assert loaded.params == head.params and loaded.metrics == {"p@10 type": 0.9}
    assert loaded.created_at == head.created_at
    np.testing.assert_array_equal(loaded.apply(x), head.apply(x))
    # One raw vector (a shopper's photo) projects like the same row of a batch.
    np.testing.assert_allclose(loaded.apply(x[7]), head.apply(x)[7:8], atol=1e-6)


def test_pca_projection_shape_norms_and_reload(tmp_path: Path):
    x, _, _ = labelled(n=300)
    for whiten in (True, False):
        pca = fit_pca(x, dim=24, whiten=whiten, encoder_id=ENCODER)
        z = pca.apply(x)
        assert z.shape == (300, 24) and z.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
        assert pca.kind == "pca" and pca.params["whiten"] is whiten
        assert 0.0 < pca.params["explained_variance"] <= 1.0
        loaded = Projection.load(pca.save(tmp_path))
        np.testing.assert_array_equal(loaded.apply(x), z)
    assert fit_pca(x, dim=24, whiten=True).version != fit_pca(x, dim=24, whiten=False).version
    with pytest.raises(ValueError, match="dim"):
        fit_pca(x, dim=65)
    with pytest.raises(ValueError, match="dimensions"):
        fit_pca(x, dim=8).apply(np.ones((2, 10), np.float32))


def test_pca_to_more_dims_than_vectors_still_gives_an_orthonormal_projection():
    x, _, _ = labelled(n=10, dim=64)
    pca = fit_pca(x, dim=16, whiten=False)
    weight = pca.arrays["weight"]
    np.testing.assert_allclose(weight @ weight.T, np.eye(16), atol=1e-5)
    z = fit_pca(x, dim=16).apply(x)
    assert z.shape == (10, 16) and np.isfinite(z).all()
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)


def test_pca_without_whitening_keeps_neighbours():
    x, types, _ = labelled(n=300, dim=64)
    z = fit_pca(x, dim=48, whiten=False).apply(x)
    assert abs(neighbour_agreement(z, types) - neighbour_agreement(x, types)) < 0.05


def test_version_is_stable_for_the_same_content_and_changes_with_it(tmp_path: Path):
    x, _, _ = labelled(n=200)
    a = fit_pca(x, dim=16, encoder_id=ENCODER)
    b = fit_pca(x, dim=16, encoder_id=ENCODER)
    assert a.version == b.version and a.version.startswith("pca16-") and len(a.version) == len("pca16-") + 8
    # Metadata that does not change the mapping does not change the version.
    assert a.with_metrics({"x": 1}).version == a.version
    assert fit_pca(x[:150], dim=16, encoder_id=ENCODER).version != a.version
    assert fit_pca(x, dim=16, encoder_id="other-encoder").version != a.version
    assert fit_pca(x, dim=17, encoder_id=ENCODER).version != a.version
    # Saving twice writes the same name; the loaded copy keeps the version.
    assert a.save(tmp_path) == b.save(tmp_path)
    assert Projection.load(tmp_path / a.filename).version == a.version


def test_a_tampered_or_foreign_file_is_refused(tmp_path: Path):
    x, _, _ = labelled(n=100)
    path = fit_pca(x, dim=8, encoder_id=ENCODER).save(tmp_path)
    with np.load(path) as data:
        contents = {name: data[name] for name in data.files}
    contents["weight"] = contents["weight"] * 1.01
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **contents)
    with pytest.raises(ProjectionCorrupt, match="version"):
        Projection.load(tampered)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a projection")
    with pytest.raises(ProjectionCorrupt):
        Projection.load(junk)
    with pytest.raises(ValueError, match="encoder id"):
        _ = fit_pca(x, dim=8).space


def test_a_projection_measures_how_much_wider_its_cosines_spread_and_keeps_it_in_its_version(tmp_path: Path):
    # Clustered vectors all sharing one direction: raw cosines crowd near 1, centred PCA spreads them out.
    x, _, _ = labelled(n=400, dim=64, noise=0.6)
    shared = np.ones(64, np.float32) * 0.5
    x = x + shared
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    pca = fit_pca(x, dim=16, whiten=False, encoder_id=ENCODER)
    assert pca.image_spread > 1.5  # measured on the fitting vectors, part of the mapping
    mapping = {name: value for name, value in pca.arrays.items() if name != "spread"}
    unmeasured = Projection(kind="pca", arrays=mapping, encoder_id=ENCODER)
    assert unmeasured.image_spread == 1.0 and unmeasured.version != pca.version
    assert unmeasured.with_spread(x).version == pca.version
    loaded = Projection.load(pca.save(tmp_path))
    assert loaded.image_spread == pytest.approx(pca.image_spread) and loaded.version == pca.version

    # A rotation keeps every cosine: its spread is 1.
    rotation = np.linalg.qr(np.random.default_rng(3).standard_normal((64, 64)))[0].astype(np.float32)
    turned = Projection(kind="pca", arrays={"mean": np.zeros(64, np.float32), "weight": rotation}).with_spread(x)
    assert turned.image_spread == pytest.approx(1.0, abs=1e-3)

    for spread in (np.array([-1.0]), np.array([1.0, 2.0])):
        with pytest.raises(ValueError, match="spread"):
            Projection(kind="pca", arrays={"mean": np.zeros(64), "weight": rotation, "spread": spread})
