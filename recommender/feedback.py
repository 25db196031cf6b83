"""Refinement feedback: a trail's vectors in; what to ask the index, and the grid in display order.

Pure numpy, no Django: ``recommender.refine`` fetches the vectors of the trail's products (and of the products
the shopper was shown and passed over), calls these functions, and maps positions back to products. Serving a
click is two thin steps:

1. :func:`query_vectors` gives the unit vector(s) to search the index with (one per liked step for the
   ``best`` combination, one otherwise); the index is asked for an over-fetched candidate set
   (the strategy's ``overfetch`` times the grid) without the trail's products;
2. :func:`grid_rank` scores those candidates (:func:`candidate_scores`: image and colour descriptors blended
   per step, see :mod:`recommender.colour`; products the shopper passed over demoted), picks the grid (with
   maximal marginal relevance where the strategy asks, :func:`diversify`) and returns it in display order
   with the score each tile shows.

The rule the gallery promises (docs/quality.md, "Coherence"): the grid after a click looks like the clicked
product first. Novelty (not showing again what the shopper passed over), variety and the trail's history
reorder within what looks alike; they never replace it. :data:`SERVED` holds the strategies the site can
serve; the lab compares more (``lab/strategies.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from recommender.colour import ASPECT_COLOUR_WEIGHTS, DEFAULT_COLOUR_WEIGHT, Aspect

# Candidates fetched per grid tile before re-ranking (a strategy's default ``overfetch``): enough for the colour
# blend, the demotion of what was seen and the diversity pass to find what the image vector alone ranks a little
# lower. The served strategy takes 6 after words or a photo and 8 from the starting grid, where fewer cost it
# convergence (docs/quality.md, "The cost of a click").
OVERFETCH = 8
# A step asking for the same colour or the same shape reorders the grid within this many grid's worth of the
# candidates the default blend ranks first: colour decides among what looks alike, never over it.
ASPECT_SHORTLIST = 2
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
    The push is linear in the skipped vectors: their mean weighted by :func:`skipped_weights`, given as one
    row of age 0, pushes exactly as they do (how ``recommender.refine`` passes them). ``image_spread`` is how
    many times wider image cosines spread in the vectors' space than in the raw encoder's (a projection's
    measured ``image_spread``, 1.0 for raw vectors): the colour weights and the seen penalty, chosen on raw
    cosines, are converted by it (:func:`colour_weight_in_space`, ``_score_scale``).
    """

    vectors: np.ndarray
    marks: tuple[str, ...]
    aspects: tuple[str, ...] = ()
    colours: np.ndarray | None = None
    skipped: np.ndarray | None = None
    skipped_age: np.ndarray | None = None
    image_spread: float = 1.0

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
        if not self.image_spread > 0:
            raise ValueError("image_spread must be positive")

    @cached_property  # read a dozen times per grid; the trail never changes
    def liked(self) -> np.ndarray:
        """Positions of the steps not marked "not like this", oldest first."""
        return np.flatnonzero([mark != DISLIKED for mark in self.marks])

    @cached_property
    def disliked(self) -> np.ndarray:
        return np.flatnonzero([mark == DISLIKED for mark in self.marks])

    def aspect(self, step: int) -> Aspect:
        return Aspect(self.aspects[step]) if self.aspects else Aspect.DEFAULT


@dataclass(frozen=True)
class Strategy:
    """How a trail becomes a grid. Every field is a measured choice; see docs/quality.md.

    - ``liked``: "newest" pulls towards the newest liked step only (single-click neighbours); "anchor"
      towards it and the pinned steps, equally (the gallery's original trail); "recency" towards every
      liked step, each ``decay`` times the weight of the next newer one, pinned steps at the newest's weight.
    - ``combine``: "mean" scores a candidate by the weighted sum of its step scores (Rocchio); "best" by its
      best liked step (Qdrant's ``best_score``).
    - ``dislike_weight``: how hard the "not like this" steps push the whole query away. Whatever it is, a
      candidate nearer a "not like this" step than to every liked step sinks below all the others.
    - ``skipped_weight``, ``skipped_decay``: how hard products shown and passed over push away (Rocchio's
      gamma: a weak negative), the grid clicked from the most (decay 0: that grid alone).
    - ``seen_penalty``, ``seen_grids``: a product shown in one of the ``seen_grids`` newest earlier grids
      (1: the grid the shopper clicked from) loses ``seen_penalty`` from its score, so a new product about as
      alike comes first while one clearly more alike still shows. :data:`HIDDEN` (or more) hides them unless
      nothing else is left. In raw cosines: a projected space's wider scores scale it (``_score_scale``).
    - ``first_grid``: whether the grid the trail began from (a text search or the home page's starting grid)
      counts as seen and pushes too. A text search shows what matches the words, not what looks like the
      click: the products there that look most like it are what the shopper asked for by clicking.
    - ``context``: rank first by how many (liked, disliked) pairs a candidate sides with the liked member of
      (Qdrant's discovery search), then by the score.
    - ``colour_weight``: the colour share of a step without an aspect (None: the image vector only); a step
      with an aspect takes recommender.colour's share for it.
    - ``diversity``: the MMR strength of :func:`diversify` (0: the top k by score).
    - ``explore_diversity``: the MMR strength instead for a trail begun on the starting grid, where the
      shopper has not yet said (by words or a photo) what kind of product they want: its grids span more
      of what looks alike, so a shopper who clicked the nearest kind on show finds the way to theirs
      (None: ``diversity``).
    - ``overfetch``: candidates per grid tile the re-rank chooses from.
    - ``search_overfetch``: per grid tile, how many candidates the index search is sized for (None:
      ``overfetch``). The search returns about twice what it is sized for, best first: a deeper pool takes
      the rest from there, not from a deeper search (``selectors.similar_products``' ``depth``).
    - ``explore_overfetch``: ``overfetch`` instead for a trail begun on the starting grid, whose wider MMR
      picks from deeper in the candidates (None: ``overfetch``); the search stays as deep as every trail's.
    """

    name: str
    liked: str = "recency"
    decay: float = 0.5
    combine: str = "mean"
    dislike_weight: float = 0.0
    skipped_weight: float = 0.0
    skipped_decay: float = 0.0
    seen_penalty: float = 0.0
    seen_grids: int = 1
    first_grid: bool = False
    context: bool = False
    colour_weight: float | None = DEFAULT_COLOUR_WEIGHT
    diversity: float = 0.0
    explore_diversity: float | None = None
    overfetch: int = OVERFETCH
    search_overfetch: int | None = None
    explore_overfetch: int | None = None
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
        if self.explore_diversity is not None and not 0.0 <= self.explore_diversity < 1.0:
            raise ValueError("explore_diversity must be at least 0 and below 1")
        if self.seen_penalty < 0 or self.seen_grids < 0:
            raise ValueError("seen_penalty and seen_grids must not be negative")
        if any(n is not None and n < 1 for n in (self.overfetch, self.search_overfetch, self.explore_overfetch)):
            raise ValueError("overfetch, search_overfetch and explore_overfetch must be at least 1")

    def exploring(self) -> Strategy:
        """This strategy as it ranks a trail begun on the starting grid (``explore_diversity``'s MMR, from
        ``explore_overfetch``'s candidates of a search as deep as every trail's)."""
        overfetch = self.overfetch if self.explore_overfetch is None else self.explore_overfetch
        exploring = replace(
            self,
            diversity=self.diversity if self.explore_diversity is None else self.explore_diversity,
            overfetch=overfetch,
            search_overfetch=self.search_overfetch if overfetch == self.overfetch else self.searched_per_tile,
        )
        return self if exploring == self else exploring

    @property
    def searched_per_tile(self) -> int:
        """Per grid tile, how many candidates the index search is sized for."""
        return self.overfetch if self.search_overfetch is None else self.search_overfetch

    @property
    def hides_seen(self) -> bool:
        """Whether seen products are left out of the index search (shown again only when nothing else is left)."""
        return self.seen_penalty >= HIDDEN and self.seen_grids > 0


# A seen_penalty this large hides what was seen: more than any two scores differ.
HIDDEN = SUNK


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


def skipped_weights(ages: np.ndarray, strategy: Strategy) -> np.ndarray:
    """Each skipped product's share of the push (float32, summing to 1; empty when none pushes), by how many
    clicks ago it was shown: 1 for the grid clicked from, ``skipped_decay`` per click before."""
    age = np.asarray(ages, dtype=np.float64)
    weights = np.where(age == 0, 1.0, strategy.skipped_decay**age)  # decay 0: the grid clicked from alone
    total = weights.sum()
    return (weights / total).astype(np.float32) if total > 0 else np.zeros(0, dtype=np.float32)


def _pushed(trail: TrailVectors, strategy: Strategy) -> np.ndarray | None:
    """The (d,) weighted mean of the skipped products the strategy pushes from; None when it pushes from none.

    The push is linear in the skipped vectors, so this one vector stands for them all (never an (s, N) matrix).
    """
    if trail.skipped is None or not len(trail.skipped) or strategy.skipped_weight <= 0:
        return None
    ages = np.zeros(len(trail.skipped)) if trail.skipped_age is None else trail.skipped_age
    weights = skipped_weights(ages, strategy)
    # float32 throughout: float64 weights would promote the whole (s, d) matrix to a float64 copy.
    return weights @ np.asarray(trail.skipped, dtype=np.float32) if len(weights) else None


def _colour_weights(trail: TrailVectors, strategy: Strategy) -> np.ndarray:
    """Each step's colour share in the trail's space (its aspect's, or the strategy's), 0 without colours."""
    if trail.colours is None:
        return np.zeros(len(trail.vectors))
    by_code = {
        code: colour_weight_in_space(_aspect_colour_weight(Aspect(code), strategy), trail.image_spread)
        for code in set(trail.aspects or ("",))
    }
    return np.array([by_code[code] for code in trail.aspects] if trail.aspects else [by_code[""]] * len(trail.vectors))


def _aspect_colour_weight(aspect: Aspect, strategy: Strategy) -> float:
    """The colour share of a step with ``aspect`` under ``strategy``, in raw cosines."""
    return ASPECT_COLOUR_WEIGHTS[aspect] if aspect is not Aspect.DEFAULT else strategy.colour_weight or 0.0


def colour_counts(strategy: Strategy, aspects: Sequence[str]) -> bool:
    """Whether colour enters the scores of a trail whose steps carry ``aspects`` (their codes): when it does not
    (plain neighbours' default steps, *any colour*), nobody's colour descriptor need be read."""
    return any(_aspect_colour_weight(Aspect(aspect), strategy) != 0.0 for aspect in aspects)


def colour_weight_in_space(weight: float, image_spread: float) -> float:
    """A colour weight chosen on raw image cosines, for a space whose image cosines spread ``image_spread``
    times as wide: the blend's colour coefficient over its image one (``w / (1 - w)``, or ``w`` for a negative
    weight) times ``image_spread``, so colour counts as much beside the wider image scores. Unchanged at 1.0.
    """
    if image_spread == 1.0 or weight == 0.0:
        return weight
    ratio = weight / (1.0 - max(weight, 0.0)) * image_spread
    return ratio / (1.0 + ratio) if ratio > 0 else ratio


def _score_scale(trail: TrailVectors, strategy: Strategy) -> float:
    """How many times wider blended scores spread in the trail's space than on raw vectors, for what is a
    difference of scores (the seen penalty): the image part spreads ``image_spread`` times as wide and the
    colour part's converted weight keeps it in proportion, so both scale by image_spread / (1 - w + w *
    image_spread), w the strategy's colour weight. 1.0 for raw vectors."""
    spread = trail.image_spread
    if spread == 1.0:
        return 1.0
    weight = max(strategy.colour_weight or 0.0, 0.0) if trail.colours is not None else 0.0
    return spread / (1.0 - weight + weight * spread)


def _image_share(trail: TrailVectors, strategy: Strategy, colour_weights: np.ndarray) -> float:
    """How much of the liked steps' pull is the image cosine (the rest is colour): pushes are scaled alike."""
    return float(liked_weights(trail, strategy) @ _image_shares(trail, colour_weights))


def _image_shares(trail: TrailVectors, colour_weights: np.ndarray) -> np.ndarray:
    """Each liked step's image share (1 less its colour weight, a negative one counting 0)."""
    return 1.0 - np.maximum(colour_weights[trail.liked], 0.0)


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
    colour_weights = _colour_weights(trail, strategy)
    query = (weights * _image_shares(trail, colour_weights)) @ vectors[liked]
    share = _image_share(trail, strategy, colour_weights)
    if len(trail.disliked) and strategy.dislike_weight:
        query = query - share * strategy.dislike_weight * vectors[trail.disliked].mean(axis=0)
    pushed = _pushed(trail, strategy)
    if pushed is not None:
        query = query - share * strategy.skipped_weight * pushed
    return _unit(query, newest)[None, :]


def _step_scores(
    trail: TrailVectors, colour_weights: np.ndarray, image: np.ndarray, candidate_colours: np.ndarray | None
) -> np.ndarray:
    """(steps, N) blended scores of each candidate against every step, from their (steps, N) image scores and
    the steps' ``colour_weights``."""
    if trail.colours is None or candidate_colours is None:
        return image
    candidate_colours = np.asarray(candidate_colours, dtype=np.float32)
    colour_scores = (candidate_colours @ np.asarray(trail.colours, dtype=np.float32).T).T
    unknown = ~candidate_colours.any(axis=1)
    if unknown.any():
        # A candidate without a stored descriptor (embedded before colours were kept) is scored by its image
        # alone, as if its colour agreed as well as its look: neither favoured nor sunk.
        colour_scores[:, unknown] = image[:, unknown]
    weights = colour_weights.astype(np.float32)
    return (1.0 - np.maximum(weights, 0.0))[:, None] * image + weights[:, None] * colour_scores


@dataclass(frozen=True)
class _Scored:
    """A candidate set scored against a trail: the ranking score, the likeness shown, and what sinks."""

    rank: np.ndarray
    likeness: np.ndarray
    sunk: np.ndarray


def _score(
    trail: TrailVectors,
    strategy: Strategy,
    candidates: np.ndarray,
    candidate_colours: np.ndarray | None,
    candidate_seen: np.ndarray | None,
) -> _Scored:
    candidates = np.asarray(candidates, dtype=np.float32)
    vectors = np.asarray(trail.vectors, dtype=np.float32)
    if candidates.ndim != 2 or candidates.shape[1] != vectors.shape[1]:
        raise ValueError(f"candidates must be (N, {vectors.shape[1]}), got {candidates.shape}")
    n = len(candidates)
    liked, disliked = trail.liked, trail.disliked
    pushed = _pushed(trail, strategy)
    queries = vectors if pushed is None else np.vstack([vectors, pushed[None, :]])
    # Every step and the push in one pass over the candidates (the pass is what scoring costs, not the sums).
    image = (candidates @ queries.T).T
    colour_weights = _colour_weights(trail, strategy)
    blended = _step_scores(trail, colour_weights, image[: len(vectors)], candidate_colours)
    liked_scores = blended[liked]
    weights = liked_weights(trail, strategy)
    likeness = weights @ liked_scores
    rank = liked_scores.max(axis=0) if strategy.combine == "best" else likeness.copy()
    share = _image_share(trail, strategy, colour_weights)
    sunk = np.zeros(n, dtype=bool)
    if len(disliked):
        disliked_scores = blended[disliked]
        if strategy.dislike_weight and strategy.combine == "mean":
            rank = rank - share * strategy.dislike_weight * disliked_scores.mean(axis=0)
        if strategy.context:
            rank = rank + _context_rank(trail, liked_scores, disliked_scores)
        # The one rule for "not like this": nearer a disliked step than to every liked step sinks below the rest.
        sunk = disliked_scores.max(axis=0) >= liked_scores.max(axis=0)
    if pushed is not None:
        rank = rank - share * strategy.skipped_weight * image[-1]
    if candidate_seen is not None and strategy.seen_penalty and strategy.seen_grids:
        seen = np.asarray(candidate_seen)
        penalty = strategy.seen_penalty * _score_scale(trail, strategy)
        rank = rank - penalty * ((seen >= 0) & (seen < strategy.seen_grids))
    rank = np.where(sunk, rank - SUNK, rank)
    return _Scored(rank=rank.astype(np.float32), likeness=likeness.astype(np.float32), sunk=sunk)


def candidate_scores(
    *,
    trail: TrailVectors,
    strategy: Strategy,
    candidates: np.ndarray,
    candidate_colours: np.ndarray | None = None,
    candidate_seen: np.ndarray | None = None,
) -> np.ndarray:
    """The ranking score per candidate (N,), higher first; ``candidates`` (N, d) are their image vectors.

    ``candidate_colours`` (N, c) adds the colour blend of each step's aspect (needs ``trail.colours``);
    ``candidate_seen`` (N,) gives, per candidate, how many clicks ago a grid showed it (-1: never), for the
    strategy's demotion. Sunk candidates (nearer a "not like this" step than every liked one) score below
    every other; discovery (``strategy.context``) adds an integer rank per candidate, so sides taken
    outrank scores.
    """
    if not len(candidates):
        return np.zeros(0, dtype=np.float32)
    return _score(trail, strategy, candidates, candidate_colours, candidate_seen).rank


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
    rows = np.asarray(vectors, dtype=np.float32)
    # The picked row is weighted by ``strength`` (and per part, below): its product is the pick's penalty itself.
    weights: np.ndarray | float = np.float32(strength)
    if colours is not None and colour_weight > 0:
        # The blend is one inner product over [image | colour] rows, the picked row weighted per part: one pass
        # over the candidates per pick, not two.
        width = rows.shape[1]
        rows = np.hstack([rows, np.asarray(colours, dtype=np.float32)])
        weights = np.full(rows.shape[1], colour_weight * strength, dtype=np.float32)
        weights[:width] = (1.0 - colour_weight) * strength
    chosen = np.zeros(k, dtype=np.int64)
    kept = (1.0 - strength) * scores
    gain = kept.copy()  # the first pick is the best score alone
    penalty = np.full(n, -np.inf)  # strength x each candidate's highest similarity to a pick so far
    for pick in range(k):
        best = int(gain.argmax())
        chosen[pick] = best
        if pick == k - 1:
            break  # the last pick's similarities would rank nothing
        kept[best] = -np.inf  # never picked again
        np.maximum(penalty, rows @ (rows[best] * weights), out=penalty)
        np.subtract(kept, penalty, out=gain)
    return chosen


def grid_rank(
    *,
    trail: TrailVectors,
    strategy: Strategy,
    candidates: np.ndarray,
    k: int,
    candidate_colours: np.ndarray | None = None,
    candidate_seen: np.ndarray | None = None,
    candidate_sketches: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, scores) of the ``k`` candidates to show, in display order, each with the score it shows.

    The ranking score (:func:`candidate_scores`) picks the set, varied by MMR at ``strategy.diversity``; the
    set is shown in ranking order, sunk candidates last. A step asking for the same colour or the same shape
    picks among the :data:`ASPECT_SHORTLIST` x ``k`` candidates the default blend ranks first. The score shown
    is the candidate's likeness: its weighted blended similarity to the liked steps, without the ranking's
    pushes and demotions (those chose the order, they are not a similarity). ``candidate_sketches`` (N, s), when
    given, stand for the candidates' vectors in MMR's likeness of tiles to each other (the index build's
    sketches: a third of the arithmetic; the scores always read the vectors).
    """
    if not len(candidates) or k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    scored = _score(trail, strategy, candidates, candidate_colours, candidate_seen)
    vectors = np.asarray(candidates if candidate_sketches is None else candidate_sketches)
    colours = candidate_colours if trail.colours is not None else None
    eligible = None  # every candidate
    if _asks_colour(trail) and len(candidates) > ASPECT_SHORTLIST * k:
        plain = _score(replace(trail, aspects=()), strategy, candidates, candidate_colours, candidate_seen)
        eligible = np.sort(np.argsort(-plain.rank, kind="stable")[: ASPECT_SHORTLIST * k])
        vectors = vectors[eligible]
        colours = colours[eligible] if colours is not None else None
    picked = diversify(
        scores=scored.rank if eligible is None else scored.rank[eligible],
        vectors=vectors,
        k=k,
        strength=strategy.diversity,
        colours=colours,
        # Tiles count as alike the way the newest click asks: its aspect's colour share ("any colour": none).
        colour_weight=max(float(_colour_weights(trail, strategy)[trail.liked[-1]]), 0.0),
    )
    positions = picked if eligible is None else eligible[picked]
    positions = positions[np.argsort(-scored.rank[positions], kind="stable")]
    return positions, scored.likeness[positions]


def _asks_colour(trail: TrailVectors) -> bool:
    """Whether a liked step asks for the same colour or the same shape (then the shortlist applies)."""
    asking = {Aspect.SAME_COLOUR, Aspect.SAME_SHAPE}
    return trail.colours is not None and any(trail.aspect(int(i)) in asking for i in trail.liked)


# --- What the site can serve ------------------------------------------------------------------------------------

# The simplest alternative every measure is read beside: the clicked product's plain neighbours.
NEIGHBOURS = Strategy(
    name="neighbours", liked="newest", colour_weight=None, notes="the clicked product's neighbours (image vector)"
)
# Chosen by coherence and convergence together, through the served site, on real art, the demo and drawn real
# rows (docs/quality.md, "Refinement: coherence and convergence"): the newest click pulls hardest, each older
# one a quarter as hard; what the trail's earlier grids showed and the shopper passed over pushes the query
# away weakly (Rocchio's gamma, 0.3, each older grid half as hard) and yields to new products at most 0.05
# less alike; the colour counts 0.1; a light MMR (0.2) keeps 25 tiles from being near-copies, picking from 6
# grids' worth of candidates. A trail begun on the starting grid, where the shopper has not yet said what kind
# they want, takes a stronger MMR (0.35) from 8 grids' worth of the same search: its deep picks lead to the
# shopper's kind.
COHERENT = Strategy(
    name="coherent",
    liked="recency",
    decay=0.25,
    skipped_weight=0.3,
    skipped_decay=0.5,
    seen_penalty=0.05,
    seen_grids=8,
    colour_weight=DEFAULT_COLOUR_WEIGHT,
    diversity=0.2,
    overfetch=6,
    explore_diversity=0.35,
    explore_overfetch=8,
    notes="recency 0.25, what was passed over pushed (0.3) and demoted (0.05), colour 0.1, MMR 0.2 of 6 grids' "
    "candidates (0.35 of 8 from home)",
)
SERVED: dict[str, Strategy] = {s.name: s for s in (COHERENT, NEIGHBOURS)}
SHIPPED = COHERENT
