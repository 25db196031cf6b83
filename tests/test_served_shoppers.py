"""What a shopper sees after a click, through the served site: coherence, aspects and convergence.

``bench/served_shoppers.py`` measures these at catalog scale on real art, the demo and drawn real rows
(docs/quality.md). Here its own walks run on the test demo catalog (300 products) through the Django test
client, on both databases: the served strategy keeps the clicked product's kind as plain neighbours do,
where last round's strategy did not; each aspect moves the grid the way it says; shoppers who want one
product find it at least as often as with single clicks.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.query_bench import float16_order
from bench.realscale import _grids_alike
from bench.served_shoppers import (
    SEED,
    Catalog,
    LookJudge,
    ServedSite,
    catalog_of,
    coherence_paths,
    coherence_walk,
    converge,
    projection_serve,
    served,
)
from lab import shopper, strategies
from recommender import colour, feedback

PATHS = 40
SHOPPERS = 40


@pytest.fixture
def catalog(demo_catalog_db, demo_dir: Path, demo_vectors: dict, demo_colours: dict, tmp_path: Path) -> Catalog:
    """The stored demo catalog as the bench reads it: labels from styles.csv, the fixture's vectors."""
    ids = [int(row["id"]) for row in shopper.catalog_rows(demo_dir)]
    assert sorted(ids) == sorted(demo_catalog_db)
    np.save(tmp_path / "vectors-fixture.npy", np.stack([demo_vectors[i] for i in ids]))
    np.save(tmp_path / f"colours-{colour.COLOUR_DIM}.npy", np.stack([demo_colours[i] for i in ids]))

    def not_embedded(paths: object) -> np.ndarray:
        raise AssertionError("the fixture's vectors are cached: nothing is embedded here")

    cat = shopper.catalog_load(demo_dir, name="demo 300", embed=not_embedded, encoder_key="fixture", cache=tmp_path)
    return catalog_of(cat, demo_dir, name="demo 300", cache=tmp_path)


def _walks(client, catalog: Catalog, *ranked: feedback.Strategy) -> dict:
    site = ServedSite(client=client, catalog=catalog)
    paths = coherence_paths(catalog, count=PATHS, seed=SEED)
    out = {}
    for strategy in ranked:
        with served(strategy):
            before = site.requests
            out[strategy.name] = coherence_walk(site, paths)
            assert site.requests > before + PATHS  # the grids came from the site, not from memory
    return out


def _mean(values: list[float]) -> float:
    assert len(values) >= 10, "too few grids to compare"
    return float(np.mean(values))


def test_after_a_text_search_a_click_keeps_the_clicked_kind_as_plain_neighbours_do(client, catalog):
    walks = _walks(client, catalog, feedback.NEIGHBOURS, feedback.COHERENT, strategies.REFINE_HIDE)
    plain, served_now, last_round = (walks[name] for name in ("neighbours", "coherent", "refine-hide"))
    for kind in ("text", "clicks 2-3", "clicks 2-3, any tile"):
        assert _mean(served_now[kind].type_share) >= 0.8 * _mean(plain[kind].type_share), kind
        assert np.mean(served_now[kind].few) <= np.mean(plain[kind].few) + 0.10, kind
    # Any tile of the type is clicked, not always the first: some walks differ.
    assert served_now["clicks 2-3, any tile"].cosine != served_now["clicks 2-3"].cosine
    # Last round's strategy hid what the text search showed and pushed the query off the click: this fails it.
    assert _mean(last_round["text"].type_share) < 0.5 * _mean(plain["text"].type_share)


def test_each_aspect_moves_the_grid_the_way_it_says(client, catalog):
    grids = _walks(client, catalog, feedback.COHERENT)["coherent"]
    default, same_colour, any_colour, same_shape = (
        grids[f"aspect: {name}"] for name in ("default", "same colour", "any colour", "same shape")
    )
    assert _mean(same_colour.colour_share) > _mean(default.colour_share) + 0.1
    assert _mean(same_shape.colour_share) < _mean(default.colour_share)
    assert _mean(any_colour.colour_share) < _mean(default.colour_share)
    for asked in (same_colour, same_shape, any_colour):
        assert _mean(asked.type_share) >= 0.8 * _mean(default.type_share)


def test_any_colour_ranks_as_if_no_product_had_a_colour(client, catalog):
    from gallery.trail import Trail

    site = ServedSite(client=client, catalog=catalog)
    click = int(np.flatnonzero(catalog.types == catalog.types[0])[0])
    trail = Trail().then(int(catalog.cat.ids[click]))
    with served(feedback.COHERENT):
        any_colour = site.similar(trail=trail.aspected(0, colour.Aspect.ANY_COLOUR.value), anchor=click, q="")
    with served(replace(feedback.COHERENT, colour_weight=None)):
        colourless = site.similar(trail=trail, anchor=click, q="")
    assert any_colour.tolist() == colourless.tolist()


def test_the_demo_walk_blue_shirt_shows_shirts_first(client, catalog):
    found = client.get("/api/search", {"q": "blue shirt"}).json()["results"]
    shirt = next(item["id"] for item in found if item["article_type"] == "Shirts")
    page = client.get(f"/similar/{shirt}/", {"q": "blue shirt"}).content.decode()
    tiles = [int(i) for i in re.findall(r'<li class="card">\s*<a href="/similar/(\d+)/', page)]
    assert len(tiles) == 25
    kinds = dict(zip(catalog.cat.ids.tolist(), catalog.types.tolist(), strict=True))
    assert [kinds[i] for i in tiles[:3]] == ["Shirts"] * 3, [kinds[i] for i in tiles[:10]]


def test_shoppers_find_their_target_at_least_as_often_as_with_single_clicks(client, catalog):
    site = ServedSite(client=client, catalog=catalog)
    judge = LookJudge.of(catalog)
    targets = np.random.default_rng(SEED).choice(len(catalog.cat), SHOPPERS, replace=False)
    found = {}
    for strategy in (feedback.NEIGHBOURS, feedback.COHERENT):
        with served(strategy):
            clicks = [converge(site, judge, int(t), start="grid") for t in targets]
        found[strategy.name] = sum(1 for c in clicks if c is not None)
    assert found["coherent"] >= found["neighbours"], found
    assert found["coherent"] >= 0.8 * SHOPPERS, found


def test_a_served_pca_head_answers_clicks_from_its_own_space_and_keeps_the_kind(client, catalog):
    from recommender import runtime
    from recommender.models import Embedding

    raw = _walks(client, catalog, feedback.NEIGHBOURS)["neighbours"]
    space = projection_serve(catalog, head="pca64")
    assert runtime.active_space() == space != runtime.space_encoder_id(space)
    assert set(Embedding.objects.filter(space=space).values_list("dim", flat=True)) == {64}
    assert Embedding.objects.filter(space=space).count() == len(catalog.cat)
    projected = _walks(client, catalog, feedback.NEIGHBOURS)["neighbours"]
    for kind in ("text", "clicks 2-3"):
        assert _mean(projected[kind].type_share) >= 0.8 * _mean(raw[kind].type_share), kind
    with pytest.raises(ValueError, match="unknown head"):
        projection_serve(catalog, head="whitened")


def test_float16_order_finds_a_near_tie_that_float16_turns_round():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    apart = float16_order(vectors, vectors, k=5, own=np.arange(200))["float16 rows, float32 product"]
    assert apart["same_order"] == apart["within_2k"] == apart["recall_mean"] == 1.0
    assert 0 < apart["score_diff_max"] < 1e-3 and apart["flipped_gap_max"] == 0.0

    # Two rows 1e-5 apart in cosine to the query, the closer one stored last: float16 cannot keep them apart.
    query = vectors[0]
    twin = vectors[1] - (vectors[1] @ query) * query
    twin /= np.linalg.norm(twin)
    near = np.stack(
        [0.9 * query + np.sqrt(1 - 0.81) * twin, (0.9 + 1e-5) * query + np.sqrt(1 - (0.9 + 1e-5) ** 2) * twin]
    )
    rounded = float16_order(np.vstack([vectors[1:], near]).astype(np.float32), query[None, :], k=2)[
        "float16 product (scores rounded to float16)"
    ]
    assert rounded["same_order"] == 0.0
    assert rounded["same_set"] == rounded["within_2k"] == 1.0
    assert 0 < rounded["flipped_gap_max"] < 1e-4


def test_two_runs_are_compared_path_by_path_and_unpaired_runs_are_refused():
    from bench.served_paired import NotPaired, compare, paired_difference

    # The second run finds one more target of 20 than the first, and agrees on every other shopper.
    first = [1, None, 2, 5, None] * 4
    second = [1, 3, 2, 5, None] + [1, None, 2, 5, None] * 3
    text = {"type_share": [0.5] * 10, "few": [True] * 10, "colour_share": [0.2] * 10, "cosine": [0.7] * 10}
    raised = {**text, "type_share": [0.5] * 9 + [0.9]}

    def run(head: str, clicks: list, grid: dict) -> dict:
        name = "art (1,020)" + (f", {head}" if head else "")
        measured = {"coherence": {"coherent": {"text": grid}}, "convergence": {"coherent/grid": clicks}}
        return {"head": head, "catalogs": {name: measured}}

    table, rows = compare(run("", first, text), run("pca256", second, raised), resamples=2000)
    by_measure = {row["measure"]: row for row in rows}
    found = by_measure["found ≤ 3, from the home page's grid"]
    assert (found["first"], found["second"], found["difference"]) == (0.4, 0.45, pytest.approx(0.05))
    assert found["low"] <= 0.0 <= found["high"]  # one shopper of 20: not a difference the data can tell
    share = by_measure["type share, text"]
    assert share["difference"] == pytest.approx(0.04) and share["low"] >= 0.0
    assert by_measure["found ≤ 8, from the home page's grid"]["difference"] == pytest.approx(0.05)
    assert all(row["catalog"] == "art (1,020)" for row in rows) and "pca256 − raw" in table.text()
    # An interval narrows when every path moves alike: the same +0.05 on each of 40 paths is certain.
    assert paired_difference([0.5] * 40, [0.55] * 40)[1:] == (pytest.approx(0.05), pytest.approx(0.05))
    # Runs over other paths (another count) are refused rather than paired wrongly.
    with pytest.raises(NotPaired, match="not the same paths"):
        compare(run("", first, text), run("pca256", second[:-1], text))
    # Two strategies of one run, named: the second against the first, on the same paths.
    both = run("", first, text)
    measured = both["catalogs"]["art (1,020)"]
    measured["coherence"]["coherent:overfetch=6"] = {"text": raised}
    measured["convergence"]["coherent:overfetch=6/grid"] = second
    _, named = compare(both, both, resamples=2000, strategies=("coherent", "coherent:overfetch=6"))
    by_measure = {row["measure"]: row for row in named}
    assert by_measure["found ≤ 3, from the home page's grid"]["difference"] == pytest.approx(0.05)
    assert by_measure["type share, text"]["difference"] == pytest.approx(0.04)
    assert {row["strategy"] for row in named} == {"coherent → coherent:overfetch=6"}


def test_the_click_cost_bench_counts_grids_alike_only_while_the_walks_are():
    # Two walks from each start: the first equal to the end, the second parting at its second grid, after which
    # the other strategy clicked something else, so its later grids are not compared.
    served = {"home grid": [[[1, 2], [3, 4], [5, 6]], [[1, 2], [3, 4], [5, 6]]], "search": [[[7, 8]]]}
    other = {"home grid": [[[1, 2], [3, 4], [5, 6]], [[1, 2], [4, 3], [5, 6]]], "search": [[[8, 7]]]}
    assert _grids_alike(served, other) == {
        ("home grid", True): (2, 2),
        ("home grid", False): (2, 3),
        ("search", True): (0, 1),
    }
