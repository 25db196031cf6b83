"""Serving a projected space (trained head or PCA): re-projection, its own index, uploads and photos in it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from gallery.models import Product
from gallery.services import catalog_import
from lab.heads import fit_pca
from recommender import refine, runtime, selectors, services
from recommender.colour import COLOUR_SPACE
from recommender.models import Embedding
from recommender.projection import Projection
from tests.support.catalog_files import write_catalog
from tests.support.engine import embed_status
from tests.support.images import SHAPES, jpeg_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def pca_file(demo_catalog_db, demo_vectors, tmp_path) -> Path:
    raw = np.stack([demo_vectors[i] for i in demo_catalog_db])
    return fit_pca(raw, dim=64, whiten=False, encoder_id=runtime.active_space()).save(tmp_path / "trained")


def test_using_a_projection_reprojects_builds_its_index_and_switches(client, demo_catalog_db, pca_file):
    raw_space = runtime.active_space()
    out = io.StringIO()
    call_command("use_projection", str(pca_file), stdout=out)

    space = runtime.active_space()
    assert space.startswith(raw_space + "+pca64-")
    assert Embedding.objects.filter(space=space).count() == len(demo_catalog_db)
    assert Embedding.objects.filter(space=raw_space).count() == len(demo_catalog_db)  # raw kept
    meta = runtime.index_reader().current().meta
    assert (meta.space, meta.dim, meta.count) == (space, 64, len(demo_catalog_db))  # one space per index
    status = client.get("/api/status").json()
    assert status["encoder"]["projection"] == space.partition("+")[2]
    assert f"<strong>{space}</strong>" in client.get("/").content.decode()  # the footer names the served space
    results = client.get(f"/api/similar/{demo_catalog_db[0]}").json()["results"]
    assert len(results) == 25

    call_command("use_projection", "raw", stdout=out)
    assert runtime.active_space() == raw_space
    assert runtime.index_reader().current().meta.dim == 1280
    assert "as wide as raw ones" in out.getvalue()  # the measured spread the colour weights are converted by


def test_a_click_in_a_projected_space_ranks_with_its_measured_spread(client, demo_catalog_db, pca_file, monkeypatch):
    call_command("use_projection", str(pca_file), stdout=io.StringIO())
    spreads = []
    ranked = refine.grid_rank
    monkeypatch.setattr(refine, "grid_rank", lambda **kw: spreads.append(kw["trail"].image_spread) or ranked(**kw))
    trail = f"{demo_catalog_db[3]},{demo_catalog_db[0]}"
    assert client.get(f"/api/similar/{demo_catalog_db[0]}", {"trail": trail}).status_code == 200
    assert spreads and set(spreads) == {Projection.load(pca_file).image_spread} and spreads[0] > 1.0


def test_a_projection_fitted_before_its_spread_was_measured_serves_with_a_warning(client, demo_catalog_db, pca_file):
    measured = Projection.load(pca_file)
    mapping = {name: value for name, value in measured.arrays.items() if name != "spread"}
    old = Projection(kind=measured.kind, arrays=mapping, encoder_id=measured.encoder_id)
    out = io.StringIO()
    call_command("use_projection", str(old.save(pca_file.parent / "old")), stdout=out)
    assert "records no cosine spread" in out.getvalue()
    assert runtime.image_spread(runtime.active_space()) == 1.0 < measured.image_spread
    assert len(client.get(f"/api/similar/{demo_catalog_db[0]}").json()["results"]) == 25


def test_a_projected_space_picks_each_types_typical_product_by_its_raw_vectors(demo_catalog_db, demo_vectors, pca_file):
    # A projection centres the vectors: nearest its type's mean there is the type's most unusual look.
    call_command("use_projection", str(pca_file), stdout=io.StringIO())
    by_type: dict[str, list[int]] = {}
    for pid, kind in Product.objects.order_by("id").values_list("id", "article_type"):
        by_type.setdefault(kind, []).append(pid)
    groups = [ids for ids in by_type.values() if len(ids) >= 5]

    def nearest_mean(ids: list[int], vectors: np.ndarray) -> int:
        return ids[int(np.argmax(vectors @ vectors.mean(axis=0)))]

    raw_picks = [nearest_mean(ids, np.stack([demo_vectors[pid] for pid in ids])) for ids in groups]
    assert selectors.typical_products(groups=groups) == raw_picks
    loaded = selectors.searchable_index(runtime.active_space())
    items = [loaded.items_of(np.asarray(ids)) for ids in groups]
    projected_picks = [nearest_mean(loaded.product_ids[at].tolist(), loaded.vectors_of(at)) for at in items]
    assert projected_picks != raw_picks  # what the projected vectors alone would have picked


def test_a_projection_from_another_encoder_is_refused(demo_catalog_db, demo_vectors, tmp_path):
    raw = np.stack([demo_vectors[i] for i in demo_catalog_db])
    other = fit_pca(raw, dim=16, whiten=False, encoder_id="resnet50-imagenet1k-v2").save(tmp_path)
    with pytest.raises(CommandError, match="trained on resnet50"):
        call_command("use_projection", str(other), stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("use_projection", "head256-00000000", stdout=io.StringIO())


def test_uploads_and_photos_in_a_projected_space(client, tmp_path):
    ids = list(range(400, 420))
    lines = [f"{i},Men,Apparel,Topwear,Tshirts,C{i},Summer,2012,Casual,Tshirt {i}" for i in ids]
    images = {i: jpeg_bytes(colour=((i * 37) % 255, (i * 91) % 255, (i * 53) % 255), shape=SHAPES[i % 3]) for i in ids}
    write_catalog(tmp_path / "cat", lines, images)
    catalog_import(directory=tmp_path / "cat", enqueue=False, workers=1)
    services.products_embed(product_ids=list(Product.objects.values_list("id", flat=True)))
    raw = np.stack(
        [e.as_array() for e in Embedding.objects.filter(space=runtime.active_space()).order_by("product_id")]
    )
    path = fit_pca(raw, dim=8, whiten=False, encoder_id=runtime.active_space()).save(tmp_path / "p")
    call_command("use_projection", str(path), stdout=io.StringIO())
    space = runtime.active_space()

    # A new product is embedded into both the raw space and the projected one.
    write_catalog(tmp_path / "new", ["999,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,New"], {999: images[401]})
    catalog_import(directory=tmp_path / "new", enqueue=False, workers=1)
    services.products_embed(product_ids=[999])
    assert sorted(Embedding.objects.filter(product_id=999).values_list("space", flat=True)) == sorted(
        [runtime.space_encoder_id(space), space, COLOUR_SPACE]
    )
    assert Embedding.objects.get(product_id=999, space=space).dim == 8
    assert embed_status(999) == "done"

    # A photo is projected the same way before the search.
    response = client.post("/api/search-by-image?k=3", {"image": SimpleUploadedFile("p.jpg", images[405])})
    assert response.status_code == 200
    assert response.json()["results"][0]["id"] == 405
