"""Refinement strategies, the diversity pass and the simulated shopper that measures them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lab import shopper, strategies
from recommender import colour, feedback
from recommender.feedback import Strategy, TrailVectors


def _unit(*rows: list[float]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ranked(trail: TrailVectors, strategy: Strategy, candidates: np.ndarray, **kw) -> list[int]:
    scores = feedback.candidate_scores(trail=trail, strategy=strategy, candidates=candidates, **kw)
    return np.argsort(-scores, kind="stable").tolist()


E = np.eye(4, dtype=np.float32)  # four orthogonal "looks"


def test_neighbours_asks_for_the_newest_click_only():
    trail = TrailVectors(vectors=E[[0, 1]], marks=("", ""))
    np.testing.assert_allclose(feedback.query_vectors(trail=trail, strategy=feedback.NEIGHBOURS)[0], E[1])


def test_original_trail_matches_the_galleries_formula():
    # normalise(mean(anchor + pinned) - 0.5 * mean(disliked)), plain older clicks left out.
    trail = TrailVectors(vectors=E, marks=("p", "", "n", ""))
    expected = (E[0] + E[3]) / 2 - 0.5 * E[2]
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(feedback.query_vectors(trail=trail, strategy=strategies.TRAIL)[0], expected, atol=1e-6)


def test_recency_weights_pull_hardest_towards_the_newest_click():
    trail = TrailVectors(vectors=E[:3], marks=("", "", ""))
    weights = feedback.liked_weights(trail, Strategy(name="r", decay=0.5))
    np.testing.assert_allclose(weights, np.array([1, 2, 4]) / 7)
    pinned = TrailVectors(vectors=E[:3], marks=("p", "", ""))
    weights = feedback.liked_weights(pinned, Strategy(name="r", decay=0.5))
    assert weights[0] == weights[2] > weights[1]  # a pinned step keeps the newest step's pull
    assert abs(weights.sum() - 1.0) < 1e-9


def test_skipped_products_push_the_grid_away_as_weak_negatives():
    trail = TrailVectors(
        vectors=_unit([1, 0, 0, 0]), marks=("",), skipped=_unit([1, 1, 0, 0]), skipped_age=np.array([0])
    )
    candidates = _unit([1, 0.9, 0, 0], [1, 0, 1.2, 0])
    plain = Strategy(name="plain", colour_weight=None)
    rocchio = Strategy(name="rocchio", colour_weight=None, skipped_weight=0.5)
    assert _ranked(trail, plain, candidates) == [0, 1]  # the skipped look wins without the push
    assert _ranked(trail, rocchio, candidates) == [1, 0]


def test_the_skipped_products_weighted_mean_as_one_row_pushes_exactly_as_they_do():
    """What recommender.refine relies on to read the passed-over vectors once: the push is linear in them."""
    rng = np.random.default_rng(3)
    skipped = _unit(*rng.normal(size=(9, 4)).tolist())
    ages = np.array([0, 0, 0, 1, 1, 2, 2, 3, 5])
    trail = TrailVectors(
        vectors=_unit([1, 0.2, 0, 0], [0.3, 1, 0, 0]), marks=("", ""), skipped=skipped, skipped_age=ages
    )
    candidates = _unit(*rng.normal(size=(40, 4)).tolist())
    seen = rng.integers(-1, 3, size=40)
    for strategy in (feedback.COHERENT, strategies.STRATEGIES["rocchio-0.15"]):
        mean = feedback.skipped_weights(ages, strategy) @ skipped
        folded = replace(trail, skipped=mean[None, :], skipped_age=np.zeros(1, dtype=np.int64))
        np.testing.assert_allclose(
            feedback.query_vectors(trail=folded, strategy=strategy),
            feedback.query_vectors(trail=trail, strategy=strategy),
            atol=1e-6,
        )
        picked = [feedback.grid_rank(trail=t, strategy=strategy, candidates=candidates, k=10, candidate_seen=seen)
                  for t in (trail, folded)]  # fmt: skip
        assert picked[0][0].tolist() == picked[1][0].tolist()
        np.testing.assert_allclose(picked[0][1], picked[1][1], atol=1e-6)
    assert feedback.skipped_weights(np.array([0, 1, 2]), replace(feedback.COHERENT, skipped_decay=0.0)).tolist() == [
        1.0,
        0.0,
        0.0,
    ]  # decay 0: the grid clicked from alone


def test_best_score_keeps_an_old_like_of_another_kind_alive():
    # Liked a shirt (E0) then a shoe (E1): averaging finds neither well, best_score finds both.
    trail = TrailVectors(vectors=E[[0, 1]], marks=("", ""))
    candidates = _unit([1, 0, 0, 0.1], [0, 1, 0, 0.1], [1, 1, 0, 0], [0, 0, 1, 0])
    best = Strategy(name="best", combine="best", colour_weight=None)
    scores = feedback.candidate_scores(trail=trail, strategy=best, candidates=candidates)
    assert scores[0] > scores[2] and scores[1] > scores[2]
    assert len(feedback.query_vectors(trail=trail, strategy=best)) == 2  # one index query per liked step


def test_best_score_sinks_what_is_nearer_a_disliked_step_than_any_liked():
    trail = TrailVectors(vectors=E[[0, 2]], marks=("", "n"))
    candidates = _unit([1, 0, 0.2, 0], [0.3, 0, 1, 0])
    scores = feedback.candidate_scores(
        trail=trail, strategy=Strategy(name="best", combine="best", colour_weight=None), candidates=candidates
    )
    assert scores[0] > 0 > scores[1]


def test_shipped_strategy_sinks_only_what_is_nearer_a_not_like_this_step():
    # Liked E0, then "not like this" on a product between E0 and E2: a near-copy of it sinks to the bottom,
    # while the rest keep the order the liked step gives them (no push of the whole query away).
    trail = TrailVectors(vectors=_unit([1, 0, 0, 0], [0.5, 0, 1, 0]), marks=("", "n"))
    candidates = _unit([0.45, 0, 1, 0], [1, 0.2, 0, 0], [0.6, 0.6, 0.5, 0], [1, 0, 0.3, 0])
    strategy = feedback.SHIPPED
    ranked = _ranked(trail, strategy, candidates)
    assert ranked[-1] == 0
    liked_only = TrailVectors(vectors=trail.vectors[:1], marks=("",))
    assert [i for i in _ranked(liked_only, strategy, candidates) if i != 0] == ranked[:-1]


def test_context_pairs_rank_the_liked_side_of_every_pair_first():
    # Pair (E0 liked, E1 not like this): a weaker candidate on E0's side beats a stronger one on E1's side.
    trail = TrailVectors(vectors=_unit([1, 0, 0, 0], [0, 1, 0, 0], [0.2, 0.6, 1, 0]), marks=("", "n", ""))
    candidates = _unit([0.5, 0.4, 1, 0], [0.1, 0.6, 1, 0])
    context = Strategy(name="context", context=True, colour_weight=None, dislike_weight=0.0)
    plain = Strategy(name="plain", colour_weight=None, dislike_weight=0.0, decay=0.0)
    assert _ranked(trail, plain, candidates) == [1, 0]
    assert _ranked(trail, context, candidates) == [0, 1]


def test_colour_aspect_of_a_step_decides_between_shape_and_colour():
    step = _unit([1, 0, 0, 0])
    step_colour = _unit([0, 0, 1])
    candidates = _unit([0.95, 0.3, 0, 0], [0.7, 0.7, 0, 0])  # the first keeps the shape
    candidate_colours = _unit([1, 0, 0], [0, 0.2, 1])  # the second keeps the colour
    strategy = Strategy(name="aspects")

    def ranked(aspect: str) -> list[int]:
        trail = TrailVectors(vectors=step, marks=("",), aspects=(aspect,), colours=step_colour)
        return _ranked(trail, strategy, candidates, candidate_colours=candidate_colours)

    assert ranked(colour.Aspect.SAME_COLOUR) == [1, 0]
    assert ranked(colour.Aspect.ANY_COLOUR) == [0, 1]
    assert ranked(colour.Aspect.SAME_SHAPE) == [0, 1]


def test_colour_weights_count_as_much_beside_a_space_whose_image_cosines_spread_wider():
    # The blend's colour coefficient over its image one scales with the spread; raw vectors are unchanged.
    for weight in (0.1, 0.35, -0.1, 0.0):
        assert feedback.colour_weight_in_space(weight, 1.0) == weight
    wide = feedback.colour_weight_in_space(0.1, 2.0)
    assert wide / (1 - wide) == pytest.approx(2 * 0.1 / 0.9)
    assert feedback.colour_weight_in_space(-0.1, 2.0) == pytest.approx(-0.2)
    assert feedback.colour_weight_in_space(0.0, 2.0) == 0.0

    # In a space of wider cosines the same image gap counts for less against the same colour gap.
    step, step_colour = _unit([1, 0, 0, 0]), _unit([0, 0, 1])
    candidates = _unit([0.96, 0.28, 0, 0], [0.93, 0.37, 0, 0])  # the first a little nearer in look ...
    candidate_colours = _unit([0.6, 0, 1], [0, 0, 1])  # ... the second in colour
    strategy = Strategy(name="blend", colour_weight=0.1)

    def ranked(image_spread: float) -> list[int]:
        trail = TrailVectors(vectors=step, marks=("",), colours=step_colour, image_spread=image_spread)
        return _ranked(trail, strategy, candidates, candidate_colours=candidate_colours)

    assert ranked(1.0) == [0, 1]
    assert ranked(3.0) == [1, 0]
    with pytest.raises(ValueError, match="image_spread"):
        TrailVectors(vectors=step, marks=("",), image_spread=0.0)


def test_what_was_seen_yields_by_as_much_likeness_in_a_space_whose_cosines_spread_wider():
    # A seen candidate 0.07 more alike than a new one: it keeps its place against a 0.05 penalty on raw
    # vectors; where cosines spread twice as wide, the same likeness is 0.14 apart and the penalty 0.1.
    step = _unit([1, 0, 0, 0])
    strategy = Strategy(name="seen", colour_weight=None, seen_penalty=0.05, seen_grids=1)
    seen = np.array([0, -1])  # the first was in the grid clicked from

    def ranked(image_spread: float, gap: float) -> list[int]:
        candidates = _unit([0.9, np.sqrt(1 - 0.81), 0, 0], [0.9 - gap, np.sqrt(1 - (0.9 - gap) ** 2), 0, 0])
        trail = TrailVectors(vectors=step, marks=("",), image_spread=image_spread)
        return _ranked(trail, strategy, candidates, candidate_seen=seen)

    assert ranked(1.0, 0.07) == [0, 1]
    assert ranked(2.0, 0.14) == [0, 1]  # the same two products, their gap twice as wide
    assert ranked(2.0, 0.07) == [1, 0]  # a gap that is 0.035 of raw cosine yields
    assert ranked(1.0, 0.035) == [1, 0]


def test_diversify_at_strength_zero_is_the_plain_top_k():
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    chosen = feedback.diversify(scores=scores, vectors=np.eye(4), k=3, strength=0.0)
    assert chosen.tolist() == [1, 3, 2]


def test_diversify_does_not_fill_the_grid_with_near_copies():
    # Five near-copies of one look score best; two other looks score a little lower.
    copies = np.repeat(E[:1], 5, axis=0) + np.float32(1e-3) * E[[1, 2, 3, 1, 2]]
    vectors = np.concatenate([copies / np.linalg.norm(copies, axis=1, keepdims=True), E[[1, 2]]])
    scores = np.array([0.90, 0.90, 0.89, 0.89, 0.88, 0.80, 0.79])
    plain = feedback.diversify(scores=scores, vectors=vectors, k=3, strength=0.0)
    varied = feedback.diversify(scores=scores, vectors=vectors, k=3, strength=0.5)
    assert plain.tolist() == [0, 1, 2]
    assert varied.tolist() == [0, 5, 6]  # the best match first, then the other looks, not the copies


def test_diversify_is_bounded_by_the_candidates():
    assert feedback.diversify(scores=np.array([0.2, 0.1]), vectors=np.eye(2), k=25, strength=0.3).tolist() == [0, 1]
    assert feedback.diversify(scores=np.zeros(0), vectors=np.zeros((0, 2)), k=25, strength=0.3).tolist() == []


def _mmr_by_definition(scores, vectors, colours, k, strength, colour_weight):
    """MMR written as its definition reads: every pick maximises (1 - s) score - s max(similarity to the picks)."""
    similarity = (1 - colour_weight) * (vectors @ vectors.T) + colour_weight * (colours @ colours.T)
    chosen: list[int] = []
    for _ in range(min(k, len(scores))):
        gains = [
            -np.inf if j in chosen else (1 - strength) * scores[j] - strength * max((similarity[j, c] for c in chosen),
                                                                                    default=0.0)
            for j in range(len(scores))
        ]  # fmt: skip
        chosen.append(int(np.argmax(gains)))
    return chosen


@pytest.mark.parametrize("strength,colour_weight", [(0.2, 0.1), (0.35, 0.1), (0.5, 0.0), (0.9, 0.65)])
def test_diversify_picks_what_the_definition_of_mmr_picks(strength, colour_weight):
    rng = np.random.default_rng(7)
    for _ in range(20):
        vectors = _unit(*rng.normal(size=(60, 12)).tolist())
        colours = _unit(*rng.random(size=(60, 6)).tolist())
        scores = rng.random(60)
        got = feedback.diversify(scores=scores, vectors=vectors, k=25, strength=strength, colours=colours,
                                 colour_weight=colour_weight)  # fmt: skip
        assert got.tolist() == _mmr_by_definition(scores, vectors, colours, 25, strength, colour_weight)


def test_grid_rank_returns_k_distinct_candidates_in_grid_order():
    rng = np.random.default_rng(4)
    candidates = rng.normal(size=(200, 16)).astype(np.float32)
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    trail = TrailVectors(vectors=candidates[:3], marks=("", "p", ""))
    for strategy in (*strategies.STRATEGIES.values(), *feedback.SERVED.values()):
        positions, scores = feedback.grid_rank(trail=trail, strategy=strategy, candidates=candidates[3:], k=25)
        assert len(positions) == 25 == len(set(positions.tolist()))
        assert np.isfinite(scores).all()
        ranking = feedback.candidate_scores(trail=trail, strategy=strategy, candidates=candidates[3:])
        assert (np.diff(ranking[positions]) <= 0).all(), f"{strategy.name}: not shown in ranking order"


def test_grid_rank_varies_the_grid_by_the_sketches_it_is_given():
    rng = np.random.default_rng(5)
    candidates = _unit(*rng.normal(size=(120, 16)).tolist())
    sketches = _unit(*rng.normal(size=(120, 4)).tolist())  # another likeness of tiles to each other
    trail = TrailVectors(vectors=candidates[:1], marks=("",))
    strategy = replace(feedback.COHERENT, colour_weight=None, diversity=0.5)
    rank = feedback.candidate_scores(trail=trail, strategy=strategy, candidates=candidates[1:])
    for given in (None, sketches[1:]):
        positions, _ = feedback.grid_rank(
            trail=trail, strategy=strategy, candidates=candidates[1:], k=25, candidate_sketches=given
        )
        picked = feedback.diversify(scores=rank, vectors=candidates[1:] if given is None else given, k=25, strength=0.5)
        assert sorted(positions.tolist()) == sorted(picked.tolist())
    by_vectors = feedback.grid_rank(trail=trail, strategy=strategy, candidates=candidates[1:], k=25)[0]
    assert set(by_vectors.tolist()) != set(positions.tolist())


def test_trail_vectors_refuse_inconsistent_input():
    with pytest.raises(ValueError, match="marks"):
        TrailVectors(vectors=E[:2], marks=("",))
    with pytest.raises(ValueError, match="not like this"):
        TrailVectors(vectors=E[:1], marks=("n",))
    with pytest.raises(ValueError, match="aspects"):
        TrailVectors(vectors=E[:2], marks=("", ""), aspects=("c",))
    with pytest.raises(ValueError, match="liked"):
        Strategy(name="bad", liked="oldest")
    with pytest.raises(ValueError, match="diversity"):
        Strategy(name="bad", diversity=1.0)


# --- The simulated shopper ---------------------------------------------------------------------------------------


def _toy_catalog() -> shopper.ShopperCatalog:
    """Four types x four colours x three products; vectors see the type strongly and the colour weakly."""
    rng = np.random.default_rng(0)
    types, colours = ["Shirts", "Jeans", "Watches", "Heels"], ["Red", "Blue", "Green", "Black"]
    rows = [(t, c) for t in types for c in colours for _ in range(3)]
    type_axis = {t: np.eye(8)[i] for i, t in enumerate(types)}
    colour_axis = {c: np.eye(8)[4 + i] for i, c in enumerate(colours)}
    vectors = np.stack([type_axis[t] + 0.3 * colour_axis[c] + 0.05 * rng.normal(size=8) for t, c in rows])
    colour_vectors = np.stack([np.eye(4)[colours.index(c)] + 0.05 * rng.random(4) for _, c in rows])
    n = len(rows)
    return shopper.ShopperCatalog(
        name="toy",
        ids=np.arange(1000, 1000 + n),
        names=tuple(f"Brand {c} {t}" for t, c in rows),
        article_types=np.array([t for t, _ in rows]),
        sub_categories=np.array(["Sub"] * n),
        master_categories=np.array(["Master"] * n),
        colours=np.array([c for _, c in rows]),
        patterns=np.array(["Solid"] * n),
        vectors=(vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32),
        colour_vectors=(colour_vectors / np.linalg.norm(colour_vectors, axis=1, keepdims=True)).astype(np.float32),
    )


def test_judge_prefers_the_right_type_then_the_nearer_colour():
    cat = _toy_catalog()
    judge = shopper.Judge.of(cat)
    target = 0  # a red shirt
    red_jeans = int(np.flatnonzero((cat.article_types == "Jeans") & (cat.colours == "Red"))[0])
    blue_shirt = int(np.flatnonzero((cat.article_types == "Shirts") & (cat.colours == "Blue"))[0])
    other_red_shirt = 1
    d = judge.distance(target, np.array([red_jeans, blue_shirt, other_red_shirt]))
    assert d[2] == 0.0 and d[1] < d[0]
    assert judge.equal(target, np.array([other_red_shirt, blue_shirt])).tolist() == [True, False]


def test_a_shopper_who_is_shown_the_target_at_once_needs_no_click():
    cat = _toy_catalog()
    engine = shopper.Engine(catalog=cat, k=len(cat))
    found = shopper.shopper_run(
        engine=engine, judge=shopper.Judge.of(cat), target=5, strategy=feedback.NEIGHBOURS, behaviour=shopper.CLICKS
    )
    assert found == 0


def test_shoppers_find_targets_in_a_few_clicks_and_hiding_skipped_never_shows_a_tile_twice():
    cat = _toy_catalog()
    judge = shopper.Judge.of(cat)
    engine = shopper.Engine(catalog=cat, k=4, overfetch=4)
    hide = Strategy(name="hide", seen_penalty=feedback.HIDDEN, seen_grids=strategies.ALL_GRIDS)
    curve = shopper.simulate(
        engine=engine, judge=judge, targets=np.arange(len(cat)), strategy=hide, behaviour=shopper.CLICKS, rounds=4
    )
    assert len(curve) == 5 and curve == sorted(curve)
    assert curve[-1] >= 0.9
    # Follow one shopper's grids by hand: hidden, no product comes back once passed over.
    steps: list = []
    grid = engine.start(shopper.CLICKS, 0)
    seen: set[int] = set()
    skipped: dict[int, int] = {}
    for _ in range(3):
        assert not (set(grid.tolist()) & seen)
        seen |= set(grid.tolist())
        pick = int(grid[np.argmin(judge.distance(0, grid))])
        skipped.update({int(r): 0 for r in grid if r != pick})
        steps.append(shopper._Step(pick))
        grid = engine.grid(steps=steps, skipped=skipped, strategy=hide)


def test_text_search_start_ranks_whole_words_then_shorter_names():
    cat = _toy_catalog()
    rows = shopper.text_search(cat, "jeans", k=25)
    assert len(rows) == 12 and (cat.article_types[rows] == "Jeans").all()
    assert shopper.query_word("Levis Women Navy Blue Skinny Fit Jeans, Regular Fit") == "jeans"
    assert shopper.pattern_from_name("Turtle Check Men Navy Blue Shirt") == "Checked"
    assert shopper.pattern_from_name("Reid & Taylor Men Stripes Navy Blue Tie") == "Striped"
    assert shopper.pattern_from_name("Nike Men Black T-shirt") == "Solid"


def test_the_score_shown_is_the_likeness_to_the_liked_steps_without_pushes():
    skipped = _unit([0, 1, 1, 0])
    trail = TrailVectors(vectors=E[[0, 1]], marks=("", ""), skipped=skipped, skipped_age=np.array([0]))
    candidates = _unit([1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0])
    pushed = Strategy(name="pushed", colour_weight=None, skipped_weight=1.0)
    positions, shown = feedback.grid_rank(trail=trail, strategy=pushed, candidates=candidates, k=3)
    weights = feedback.liked_weights(trail, pushed)  # the newer click weighs twice the older
    likeness = np.array([weights[0], weights[1], weights[1] / np.sqrt(2)])
    np.testing.assert_allclose(shown, likeness[positions], atol=1e-6)
    ranked = feedback.candidate_scores(trail=trail, strategy=pushed, candidates=candidates)
    # The ranking pushes away from the skipped product (what looks like it most); the shown score does not.
    assert ranked[0] == pytest.approx(likeness[0]) and (ranked[1:] < likeness[1:] - 0.3).all()
    assert positions.tolist() == [0, 1, 2]


@pytest.mark.parametrize("strategy", [feedback.NEIGHBOURS, feedback.COHERENT, strategies.TRAIL, strategies.BEST_SCORE])
def test_what_is_nearer_a_not_like_this_step_than_every_liked_one_is_shown_last(strategy: Strategy):
    trail = TrailVectors(vectors=E[[0, 1]], marks=("n", ""))
    candidates = _unit([1, 0.2, 0, 0], [0.2, 1, 0, 0], [0, 0, 1, 0], [0.1, 0.9, 0, 0.3])
    positions, _ = feedback.grid_rank(trail=trail, strategy=strategy, candidates=candidates, k=4)
    assert set(positions[-2:].tolist()) == {0, 2}  # nearer the disliked E0, or as near (0 = 0): sunk
    assert set(positions[:2].tolist()) == {1, 3}


def test_a_product_the_grid_clicked_from_showed_yields_only_to_new_ones_about_as_alike():
    trail = TrailVectors(vectors=E[:1], marks=("",))
    demote = Strategy(name="demote", colour_weight=None, seen_penalty=0.05, seen_grids=1)
    # Cosines to the click: 0.99 (seen), 0.97 (new), 0.80 (new): the seen one drops below the new near-equal
    # one but stays above the clearly less alike one.
    candidates = _unit([0.99, np.sqrt(1 - 0.99**2), 0, 0], [0.97, 0, np.sqrt(1 - 0.97**2), 0], [0.8, 0, 0, 0.6])
    seen = np.array([0, -1, -1])
    positions, shown = feedback.grid_rank(trail=trail, strategy=demote, candidates=candidates, candidate_seen=seen, k=3)
    assert positions.tolist() == [1, 0, 2]
    np.testing.assert_allclose(shown, [0.97, 0.99, 0.8], atol=1e-5)  # the likeness, not the demoted score
    older = np.array([1, -1, -1])  # shown two grids ago, not in the grid clicked from
    assert feedback.grid_rank(trail=trail, strategy=demote, candidates=candidates, candidate_seen=older, k=3)[
        0
    ].tolist() == [0, 1, 2]
    every = Strategy(name="every grid", colour_weight=None, seen_penalty=0.05, seen_grids=8)
    assert feedback.grid_rank(trail=trail, strategy=every, candidates=candidates, candidate_seen=older, k=3)[
        0
    ].tolist() == [1, 0, 2]


def test_exploring_uses_the_explore_strength_and_candidates_and_nothing_else():
    strategy = replace(feedback.COHERENT, explore_diversity=0.45, explore_overfetch=9)
    # The deeper pool comes from a search as deep as every trail's: the served strategy's own, or its overfetch.
    searched = feedback.COHERENT.searched_per_tile
    assert strategy.exploring() == replace(strategy, diversity=0.45, overfetch=9, search_overfetch=searched)
    assert strategy.exploring().searched_per_tile == strategy.searched_per_tile
    unsized = replace(strategy, search_overfetch=None)
    assert unsized.exploring().searched_per_tile == unsized.overfetch
    plain = replace(strategy, explore_diversity=None, explore_overfetch=None)
    assert plain.exploring() is plain
    same = replace(plain, explore_overfetch=plain.overfetch)
    assert same.exploring() == same
    with pytest.raises(ValueError, match="explore_diversity"):
        replace(strategy, explore_diversity=1.0)
    with pytest.raises(ValueError, match="explore_overfetch"):
        replace(strategy, explore_overfetch=0)
    with pytest.raises(ValueError, match="search_overfetch"):
        replace(strategy, search_overfetch=0)
