"""The simulated shoppers (lab/shopper.py) through the served site: GET /api/similar with the page's trails.

bench/served_shoppers.py measures this at catalog scale; here 25 shoppers on the test demo catalog check
that what the benchmark found still holds where the site serves it: the shipped strategy finds at least
as many targets within 8 clicks as the gallery's original trail, and it does not show again what the
shopper was shown and passed over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.served_shoppers import ServedSite, served_shopper_run, strategy_serve
from bench.shopper_bench import target_halves
from lab import shopper
from recommender import colour

SHOPPERS = 25


def _shopper_catalog(demo_dir: Path, vectors: dict, colours: dict, cache: Path) -> shopper.ShopperCatalog:
    """The stored demo catalog as the lab's shoppers read it: labels from styles.csv, the fixture's vectors."""
    ids = [int(row["id"]) for row in shopper.catalog_rows(demo_dir)]
    np.save(cache / "vectors-fixture.npy", np.stack([vectors[i] for i in ids]))
    np.save(cache / f"colours-{colour.COLOUR_DIM}.npy", np.stack([colours[i] for i in ids]))

    def not_embedded(paths: object) -> np.ndarray:
        raise AssertionError("the fixture's vectors are cached: nothing is embedded here")

    return shopper.catalog_load(demo_dir, name="demo 300", embed=not_embedded, encoder_key="fixture", cache=cache)


def test_refine_finds_at_least_as_many_targets_as_the_trail_through_the_api(
    client, settings, demo_catalog_db, demo_dir, demo_vectors, demo_colours, tmp_path
):
    # Set through the fixture first, so that strategy_serve's changes are undone after the test.
    settings.REFINE_STRATEGY = "refine"
    cat = _shopper_catalog(demo_dir, demo_vectors, demo_colours, tmp_path)
    assert sorted(cat.ids.tolist()) == sorted(demo_catalog_db)
    judge = shopper.Judge.of(cat)
    _, report = target_halves(cat)
    targets = report[:SHOPPERS]
    assert len(targets) == SHOPPERS

    found: dict[str, list[int | None]] = {}
    for name in ("trail", "refine"):
        strategy_serve(name)
        site = ServedSite(client=client, catalog=cat)
        found[name] = [
            served_shopper_run(site=site, judge=judge, target=int(t), behaviour=shopper.CLICKS) for t in targets
        ]
        assert site.requests > SHOPPERS  # the grids came from the site, not from memory
    within = {name: sum(f is not None for f in runs) for name, runs in found.items()}
    assert within["refine"] >= within["trail"], (within, found)
    assert within["refine"] >= SHOPPERS * 0.8, found


def test_refine_does_not_show_again_what_the_shopper_passed_over(client, settings, demo_catalog_db):
    settings.REFINE_STRATEGY = "refine"
    first = demo_catalog_db[0]

    def grid(product_id: int, trail: str = "") -> list[int]:
        response = client.get(f"/api/similar/{product_id}", {"trail": trail} if trail else {})
        assert response.status_code == 200, response.content
        return [item["id"] for item in response.json()["results"]]

    overlap = {}
    for name in ("trail", "refine"):
        strategy_serve(name)
        shown = grid(first)
        clicked = shown[0]
        again = grid(clicked, f"{first},{clicked}")
        assert len(again) == 25 and first not in again and clicked not in again
        overlap[name] = len(set(shown) & set(again))
    # The click's neighbours are mostly the grid it was clicked from; refine shows 25 others instead.
    assert overlap["trail"] >= 5, overlap
    assert overlap["refine"] == 0, overlap
