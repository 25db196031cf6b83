"""Refinement feedback: a trail's vectors in; what to ask the index, how to rank its answers, and a varied grid.

Pure numpy, no Django: the selectors fetch the stored vectors of the trail's products (and of the products
the shopper was shown and passed over), call these functions, and map positions back to products. Serving a
click is three thin steps:

1. :func:`query_vectors` gives the unit vector(s) to search the index with (one per liked step for the
   ``best`` combination, one otherwise);
2. the index is asked for an over-fetched candidate set (:data:`OVERFETCH` times the grid), minus the trail's
   products and, where :attr:`Strategy.hide_skipped`, the products already shown and passed over;
3. :func:`grid_rank` scores those candidates (:func:`candidate_scores`, image and colour descriptors blended per
   step, see :mod:`recommender.colour`) and picks the grid with maximal marginal relevance (:func:`diversify`).

Every strategy is a :class:`Strategy` value; :data:`STRATEGIES` holds the candidates the simulated-shopper
benchmark (``bench/shopper_bench.py``) measured and :data:`SHIPPED` the one it chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recommender.colour import ASPECT_COLOUR_WEIGHTS, DEFAULT_COLOUR_WEIGHT, Aspect

# Candidates fetched per grid tile before re-ranking: enough for the colour blend and the diversity pass
# to find what the image vector alone ranks a little lower.
OVERFETCH = 8
# Colour cosine between two clicks below which they say nothing about colour (see Strategy.colour_agreement).
COLOUR_AGREEMENT_FLOOR = 0.5
# Subtracted from a sunk candidate's score: more than any two scores differ (weighted cosines, pushes included).
SUNK = 8.0
PINNED = "p"
DISLIKED = "n"


@dataclass(frozen=True)
class TrailVectors:
    """One refinement trail as vectors, oldest step first (the trail's own order).

    ``vectors`` (n, d) are the steps' stored unit image vectors and ``marks`` their marks ("", "p" pinned,
    "n" not like this); ``aspects`` their :class:`~recommender.colour.Aspect` codes ("" for none). ``skipped``
    (s, d) are products shown in the grids the shopper clicked from and did not click, ``skipped_age`` (s,)
    how many clicks ago each was shown (0: in the grid the newest step was clicked from). ``colours`` are the
    steps' colour descriptors, or None where the space has none (skipped products push by image alone).
    """

    vectors: np.ndarray
    marks: tuple[str, ...]
    aspects: tuple[str, ...] = ()
    colours: np.ndarray | None = None
    skipped: np.ndarray | None = None
    skipped_age: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.vectors)
        if len(self.marks) != n:
            raise ValueError(f"{n} step vectors but {len(self.marks)} marks")
        if self.aspects and len(self.aspects) != n:
            raise ValueError(f"{n} step vectors but {len(self.aspects)} aspects")
        if self.colours is not None and len(self.colours) != n:
            raise ValueError(f"{n} step vectors but {len(self.colours)} colour descriptors")
        if not any(mark != DISLIKED for mark in self.marks):
            raise ValueError("a trail needs at least one step not marked 'not like this'")
        skipped = 0 if self.skipped is None else len(self.skipped)
        if self.skipped_age is not None and len(self.skipped_age) != skipped:
            raise ValueError("skipped_age needs one age per skipped product")

    @property
    def liked(self) -> np.ndarray:
        """Positions of the steps not marked "not like this", oldest first."""
        return np.flatnonzero([mark != DISLIKED for mark in self.marks])

    @property
    def disliked(self) -> np.ndarray:
        return np.flatnonzero([mark == DISLIKED for mark in self.marks])

    def aspect(self, step: int) -> Aspect:
        return Aspect(self.aspects[step]) if self.aspects else Aspect.DEFAULT


@dataclass(frozen=True)
class Strategy:
    """How a trail becomes a grid. Every field is a measured choice; see the benchmark's tables.

    - ``liked``: "newest" pulls towards the newest liked step only (single-click neighbours); "anchor"
      towards it and the pinned steps, equally (the gallery's original trail); "recency" towards every
      liked step, each ``decay`` times the weight of the next newer one, pinned steps at the newest's weight.
    - ``combine``: "mean" scores a candidate by the weighted sum of its step scores (Rocchio); "best" by its
      best liked step, unless a disliked step is closer (Qdrant's ``best_score``).
    - ``dislike_weight``: how hard the "not like this" steps push the whole query away. ``sink_disliked``:
      candidates nearer a "not like this" step than to every liked step drop below all the others
      (best_score's rule for dislikes, on any ``combine``).
    - ``skipped_weight``, ``skipped_decay``: how hard products shown and passed over push away (Rocchio's
      weak negatives), recent grids the most. ``hide_skipped``: never show them again.
    - ``context``: rank first by how many (liked, disliked) pairs a candidate sides with the liked member of
      (Qdrant's discovery search), then by the score.
    - ``colour_weight``: the colour share of a step without an aspect (None: the image vector only);
      ``colour_agreement``: scale it by how far the step's colour agrees with the liked step before it;
      ``aspect_weights``: colour shares overriding recommender.colour's per aspect code.
    - ``diversity``: the MMR strength of :func:`diversify`; ``diversity_colour``: the colour share of the
      similarity MMR spreads the grid by (None: ``colour_weight``).
    """

    name: str
    liked: str = "recency"
    decay: float = 0.5
    combine: str = "mean"
    dislike_weight: float = 0.5
    sink_disliked: bool = False
    skipped_weight: float = 0.0
    skipped_decay: float = 0.5
    hide_skipped: bool = False
    context: bool = False
    colour_weight: float | None = DEFAULT_COLOUR_WEIGHT
    diversity: float = 0.0
    diversity_colour: float | None = None
    colour_agreement: bool = False
    aspect_weights: dict[str, float] | None = field(default=None, compare=False)
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.liked not in {"anchor", "recency", "newest"}:
            raise ValueError(f"liked must be anchor, recency or newest, not {self.liked!r}")
        if self.combine not in {"mean", "best"}:
            raise ValueError(f"combine must be mean or best, not {self.combine!r}")
        if not 0.0 <= self.decay <= 1.0 or not 0.0 <= self.skipped_decay <= 1.0:
            raise ValueError("decays must be between 0 and 1")
        if not 0.0 <= self.diversity < 1.0:
            raise ValueError("diversity must be at least 0 and below 1")


def liked_weights(trail: TrailVectors, strategy: Strategy) -> np.ndarray:
    """Weight of each liked step (aligned with ``trail.liked``), summing to 1."""
    liked = trail.liked
    n = len(liked)
    pinned = np.array([trail.marks[i] == PINNED for i in liked], dtype=bool)
    if strategy.liked == "newest":
        weights = np.zeros(n)
        weights[-1] = 1.0
    elif strategy.liked == "anchor":
        # The original trail: the newest liked step and every pinned one, equally; plain older clicks not at all.
        weights = pinned.astype(np.float64)
        weights[-1] = 1.0
    else:
        # The newest click pulls hardest: a plain mean lets early, exploratory clicks dilute the latest one.
        weights = strategy.decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
        weights[pinned] = 1.0
    return weights / weights.sum()


def _skipped_weights(trail: TrailVectors, strategy: Strategy) -> np.ndarray:
    if trail.skipped is None or not len(trail.skipped) or strategy.skipped_weight <= 0:
        return np.zeros(0)
    age = np.zeros(len(trail.skipped)) if trail.skipped_age is None else np.asarray(trail.skipped_age, float)
    weights = strategy.skipped_decay**age
    return weights / weights.sum()


def _step_colour_weight(trail: TrailVectors, step: int, strategy: Strategy) -> float:
    if trail.colours is None:
        return 0.0
    aspect = trail.aspect(step)
    if aspect is not Aspect.DEFAULT:
        overrides = strategy.aspect_weights or {}
        return overrides.get(aspect.value, ASPECT_COLOUR_WEIGHTS[aspect])
    weight = strategy.colour_weight or 0.0
    if strategy.colour_agreement and weight:
        # Without an aspect, colour counts as far as the shopper's clicks agree on it: two blue clicks in a row
        # say "blue"; a first click, or a click in another colour than the one before, says nothing about colour.
        liked = [int(i) for i in trail.liked if i < step]
        if not liked:
            return 0.0
        agreement = float(np.asarray(trail.colours[step]) @ np.asarray(trail.colours[liked[-1]]))
        weight *= min(1.0, max(0.0, (agreement - COLOUR_AGREEMENT_FLOOR) / (1.0 - COLOUR_AGREEMENT_FLOOR)))
    return weight


def _unit(vector: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 1e-6 else np.asarray(fallback, dtype=np.float32)


def query_vectors(*, trail: TrailVectors, strategy: Strategy) -> np.ndarray:
    """The unit vectors (q, d) to fetch candidates with: one per liked step for "best", otherwise one.

    The single vector is the image part of the "mean" score, so the index ranks by what the re-rank
    scores: the weighted liked steps (each by its image share), minus the disliked and skipped pushes.
    """
    vectors = np.asarray(trail.vectors, dtype=np.float32)
    liked = trail.liked
    newest = vectors[liked[-1]]
    if strategy.combine == "best":
        return np.stack([_unit(vectors[i], newest) for i in liked])
    weights = liked_weights(trail, strategy)
    shares = np.array([1.0 - max(_step_colour_weight(trail, i, strategy), 0.0) for i in liked])
    query = (weights * shares) @ vectors[liked]
    if len(trail.disliked) and strategy.dislike_weight:
        query = query - strategy.dislike_weight * vectors[trail.disliked].mean(axis=0)
    skipped = _skipped_weights(trail, strategy)
    if len(skipped):
        query = query - strategy.skipped_weight * (skipped @ np.asarray(trail.skipped, dtype=np.float32))
    return _unit(query, newest)[None, :]


def _step_scores(
    trail: TrailVectors,
    strategy: Strategy,
    steps: np.ndarray,
    candidates: np.ndarray,
    candidate_colours: np.ndarray | None,
) -> np.ndarray:
    """(len(steps), N) blended scores of each candidate against each of the given steps."""
    image = np.asarray(trail.vectors, dtype=np.float32)[steps] @ candidates.T
    if trail.colours is None or candidate_colours is None:
        return image
    colour_scores = np.asarray(trail.colours, dtype=np.float32)[steps] @ candidate_colours.T
    unknown = ~np.asarray(candidate_colours).any(axis=1)
    if unknown.any():
        # A candidate without a stored descriptor (embedded before colours were kept) is scored by its image
        # alone, as if its colour agreed as well as its look: neither favoured nor sunk.
        colour_scores[:, unknown] = image[:, unknown]
    weights = np.array([_step_colour_weight(trail, int(i), strategy) for i in steps], dtype=np.float32)[:, None]
    return (1.0 - np.maximum(weights, 0.0)) * image + weights * colour_scores


def candidate_scores(
    *,
    trail: TrailVectors,
    strategy: Strategy,
    candidates: np.ndarray,
    candidate_colours: np.ndarray | None = None,
) -> np.ndarray:
    """A score per candidate (N,), higher first; ``candidates`` (N, d) are their image vectors.

    ``candidate_colours`` (N, c) adds the colour blend of each step's aspect (needs ``trail.colours``).
    Discovery (``strategy.context``) adds an integer rank per candidate, so sides taken outrank scores.
    """
    candidates = np.asarray(candidates, dtype=np.float32)
    if candidates.ndim != 2 or candidates.shape[1] != np.asarray(trail.vectors).shape[1]:
        raise ValueError(f"candidates must be (N, {np.asarray(trail.vectors).shape[1]}), got {candidates.shape}")
    if not len(candidates):
        return np.zeros(0, dtype=np.float32)
    liked, disliked = trail.liked, trail.disliked
    liked_scores = _step_scores(trail, strategy, liked, candidates, candidate_colours)
    disliked_scores = _step_scores(trail, strategy, disliked, candidates, candidate_colours) if len(disliked) else None
    if strategy.combine == "best":
        positive = liked_scores.max(axis=0)
        if disliked_scores is None:
            scores = positive
        else:
            negative = disliked_scores.max(axis=0)
            # Qdrant's best_score: closer to a disliked step than to any liked one sinks below every other.
            scores = np.where(positive > negative, positive, -(negative**2))
    else:
        scores = liked_weights(trail, strategy) @ liked_scores
        if disliked_scores is not None and strategy.dislike_weight:
            scores = scores - strategy.dislike_weight * disliked_scores.mean(axis=0)
    skipped = _skipped_weights(trail, strategy)
    if len(skipped):
        # Linear in the skipped vectors: push from their weighted mean, one (d,) vector, not an (s, N) matrix.
        pushed = skipped @ np.asarray(trail.skipped, dtype=np.float32)
        scores = scores - strategy.skipped_weight * (candidates @ pushed)
    if strategy.context and disliked_scores is not None:
        scores = scores + _context_rank(trail, liked_scores, disliked_scores)
    if strategy.sink_disliked and disliked_scores is not None and strategy.combine != "best":
        # best_score's rule for dislikes on top of any liked-side score: a candidate nearer a "not like this"
        # step than to every liked step goes below all the others; the rest keep their order.
        negative = disliked_scores.max(axis=0)
        scores = np.where(liked_scores.max(axis=0) > negative, scores, scores - SUNK - negative**2)
    return np.asarray(scores, dtype=np.float32)


def likeness(
    *,
    trail: TrailVectors,
    strategy: Strategy,
    candidates: np.ndarray,
    candidate_colours: np.ndarray | None = None,
) -> np.ndarray:
    """How alike each candidate (N,) is to the trail's liked steps: their weighted blended cosines.

    What a grid shows as a product's score and orders itself by: a similarity in [-1, 1], without the
    ranking's pushes away from skipped and disliked products (those chose which products are shown).
    """
    candidates = np.asarray(candidates, dtype=np.float32)
    if not len(candidates):
        return np.zeros(0, dtype=np.float32)
    scores = _step_scores(trail, strategy, trail.liked, candidates, candidate_colours)
    return np.asarray(liked_weights(trail, strategy) @ scores, dtype=np.float32)


def sunk(
    *,
    trail: TrailVectors,
    strategy: Strategy,
    candidates: np.ndarray,
    candidate_colours: np.ndarray | None = None,
) -> np.ndarray:
    """Mask (N,): the candidates the ranking sinks, nearer a "not like this" step than every liked step."""
    candidates = np.asarray(candidates, dtype=np.float32)
    if not len(trail.disliked) or not (strategy.sink_disliked or strategy.combine == "best") or not len(candidates):
        return np.zeros(len(candidates), dtype=bool)
    liked = _step_scores(trail, strategy, trail.liked, candidates, candidate_colours).max(axis=0)
    disliked = _step_scores(trail, strategy, trail.disliked, candidates, candidate_colours).max(axis=0)
    return disliked >= liked


def _context_rank(trail: TrailVectors, liked_scores: np.ndarray, disliked_scores: np.ndarray) -> np.ndarray:
    """Per candidate, pairs won minus pairs lost; each disliked step pairs with the liked step before it.

    Scores are cosines within [-2, 2] of each other, so ranks 2 apart (one pair flipped) always dominate:
    discovery's "inside the liked side of every pair first", with the blended score ordering each rank.
    """
    liked = list(trail.liked)
    rank = np.zeros(liked_scores.shape[1])
    for row, step in enumerate(trail.disliked):
        before = [i for i, position in enumerate(liked) if position < step]
        partner = before[-1] if before else len(liked) - 1
        rank += np.where(liked_scores[partner] > disliked_scores[row], 1.0, -1.0)
    return 4.0 * rank


def diversify(
    *,
    scores: np.ndarray,
    vectors: np.ndarray,
    k: int,
    strength: float,
    colours: np.ndarray | None = None,
    colour_weight: float = DEFAULT_COLOUR_WEIGHT,
) -> np.ndarray:
    """Positions of ``k`` candidates chosen by maximal marginal relevance, in the order chosen.

    Each pick maximises (1 - strength) * score - strength * (its highest similarity to a tile already
    picked), similarity being the image cosine blended with the colour cosine when ``colours`` is given.
    Strength 0 is the plain top-k by score; larger values trade relevance for tiles unlike each other, so a
    grid is not 25 near-copies. O(k * N * d): one similarity row per pick, never the (N, N) matrix.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if strength <= 0.0 or k == 1:
        return np.argsort(-scores, kind="stable")[:k]
    vectors = np.asarray(vectors, dtype=np.float32)
    colours = None if colours is None else np.asarray(colours, dtype=np.float32)
    chosen = np.zeros(k, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    closest = np.zeros(n)  # the first pick is the best score alone
    for pick in range(k):
        gain = (1.0 - strength) * scores - strength * closest
        gain[taken] = -np.inf
        best = int(np.argmax(gain))
        chosen[pick] = best
        taken[best] = True
        similarity = vectors @ vectors[best]
        if colours is not None:
            similarity = (1.0 - colour_weight) * similarity + colour_weight * (colours @ colours[best])
        closest = similarity if pick == 0 else np.maximum(closest, similarity)
    return chosen


def grid_rank(
    *,
    trail: TrailVectors,
    strategy: Strategy,
    candidates: np.ndarray,
    k: int,
    candidate_colours: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, scores) of the ``k`` candidates to show, in grid order: scored, then diversified."""
    scores = candidate_scores(
        trail=trail, strategy=strategy, candidates=candidates, candidate_colours=candidate_colours
    )
    use_colours = candidate_colours if trail.colours is not None else None
    similarity_colour = strategy.colour_weight if strategy.diversity_colour is None else strategy.diversity_colour
    positions = diversify(
        scores=scores,
        vectors=candidates,
        k=k,
        strength=strategy.diversity,
        colours=use_colours,
        colour_weight=similarity_colour or 0.0,
    )
    return positions, scores[positions]


# The candidates the simulated-shopper benchmark measured (docs/quality.md, "Refinement: simulated shoppers").
# Colour and diversity are off in all but the last two, so each row shows one idea alone.
NEIGHBOURS = Strategy(
    name="neighbours", liked="newest", dislike_weight=0.0, colour_weight=None, notes="the clicked product's neighbours"
)
TRAIL = Strategy(
    name="trail", liked="anchor", colour_weight=None, notes="normalise(mean(anchor + pinned) - 0.5 mean(not like this))"
)
RECENCY = Strategy(name="recency", colour_weight=None, notes="every click, each half the weight of the next")
HIDE_SKIPPED = Strategy(
    name="hide-skipped", liked="newest", colour_weight=None, hide_skipped=True, notes="neighbours, never re-shown"
)
ROCCHIO = Strategy(
    name="rocchio", colour_weight=None, skipped_weight=1.0, notes="recency minus the shown-and-skipped, recent first"
)
ROCCHIO_HIDE = Strategy(
    name="rocchio+hide", colour_weight=None, skipped_weight=1.0, hide_skipped=True, notes="rocchio, never re-shown"
)
BEST_SCORE = Strategy(
    name="best-score", combine="best", colour_weight=None, hide_skipped=True, notes="Qdrant best_score, never re-shown"
)
DISCOVERY = Strategy(
    name="discovery",
    context=True,
    colour_weight=None,
    skipped_weight=1.0,
    hide_skipped=True,
    diversity=0.5,
    notes="rocchio+hide+MMR, ranked by (liked, not like this) context pairs first",
)
NEIGHBOURS_VARIED = Strategy(
    name="neighbours+colour+mmr",
    liked="newest",
    dislike_weight=0.0,
    colour_weight=DEFAULT_COLOUR_WEIGHT,
    diversity=0.5,
    notes="the clicked product's neighbours, colour blend, MMR",
)
REFINE = Strategy(
    name="refine",
    skipped_weight=1.0,
    hide_skipped=True,
    dislike_weight=0.0,
    sink_disliked=True,
    colour_weight=DEFAULT_COLOUR_WEIGHT,
    diversity=0.5,
    notes="recency + skipped as weak negatives + never re-shown + colour blend + MMR 0.5; not-like-this sinks",
)

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (NEIGHBOURS, TRAIL, RECENCY, HIDE_SKIPPED, ROCCHIO, ROCCHIO_HIDE, BEST_SCORE, DISCOVERY,
              NEIGHBOURS_VARIED, REFINE)
}  # fmt: skip
# What the gallery should serve: it beat the neighbours and the original trail on both catalogs (see the docs).
SHIPPED = REFINE
# The MMR strength SHIPPED uses, for a setting that overrides it.
DEFAULT_DIVERSITY = REFINE.diversity


def strategy_named(name: str, candidates: Sequence[Strategy] = ()) -> Strategy:
    """The strategy called ``name`` among ``candidates`` (default: STRATEGIES); raises KeyError."""
    pool = {s.name: s for s in candidates} if candidates else STRATEGIES
    return pool[name]
