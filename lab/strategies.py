"""The refinement strategies the lab compares beside what the site serves (``recommender.feedback.SERVED``).

Each is a :class:`recommender.feedback.Strategy` value; the benchmarks (``bench/served_shoppers.py``,
``bench/shopper_bench.py``) serve or simulate them on the same paths and docs/quality.md records what they
measured. Colour and variety are off in the first rows, so each shows one idea alone.
"""

from __future__ import annotations

from dataclasses import fields, replace

from recommender.colour import DEFAULT_COLOUR_WEIGHT
from recommender.feedback import COHERENT, HIDDEN, NEIGHBOURS, Strategy

# Every earlier grid of a trail (more than any shopper's clicks in the lab).
ALL_GRIDS = 100

TRAIL = Strategy(
    name="trail",
    liked="anchor",
    dislike_weight=0.5,
    colour_weight=None,
    notes="normalise(mean(anchor + pinned) - 0.5 mean(not like this)): the gallery's first rule",
)
RECENCY = Strategy(name="recency", colour_weight=None, notes="every click, each half the weight of the next")
HIDE_SKIPPED = Strategy(
    name="hide-skipped",
    liked="newest",
    colour_weight=None,
    seen_penalty=HIDDEN,
    seen_grids=ALL_GRIDS,
    first_grid=True,
    notes="neighbours, every earlier grid never re-shown",
)
ROCCHIO = Strategy(
    name="rocchio",
    colour_weight=None,
    skipped_weight=1.0,
    skipped_decay=0.5,
    first_grid=True,
    notes="recency minus the shown-and-skipped (weight 1), recent first",
)
ROCCHIO_CLASSIC = Strategy(
    name="rocchio-0.15",
    colour_weight=None,
    skipped_weight=0.15,
    notes="recency minus 0.15 x the grid clicked from (Rocchio's classic beta 0.75 / gamma 0.15)",
)
BEST_SCORE = Strategy(
    name="best-score",
    combine="best",
    colour_weight=None,
    seen_penalty=COHERENT.seen_penalty,
    notes="Qdrant best_score over the liked steps, the grid clicked from demoted",
)
DISCOVERY = Strategy(
    name="discovery",
    context=True,
    colour_weight=None,
    skipped_weight=0.15,
    seen_penalty=COHERENT.seen_penalty,
    notes="rocchio-0.15, demoted, ranked by (liked, not like this) context pairs first",
)
# Last round's served strategy: chosen by simulated shoppers on drawn catalogs only.
REFINE_HIDE = Strategy(
    name="refine-hide",
    skipped_weight=1.0,
    skipped_decay=0.5,
    seen_penalty=HIDDEN,
    seen_grids=ALL_GRIDS,
    first_grid=True,
    colour_weight=0.2,
    diversity=0.5,
    notes="last round's: recency, every passed-over product pushed (1.0) and hidden, colour 0.2, MMR 0.5",
)
NEIGHBOURS_COLOUR = replace(
    NEIGHBOURS, name="neighbours+colour", colour_weight=DEFAULT_COLOUR_WEIGHT, notes="neighbours, the colour blend"
)
COHERENT_HIDE = replace(
    COHERENT, name="coherent+hide", seen_penalty=HIDDEN, notes="coherent, what was passed over hidden, not demoted"
)
COHERENT_FIRST = replace(
    COHERENT, name="coherent+first-grid", first_grid=True, notes="coherent, the text search's grid counted as seen"
)
COHERENT_UNPUSHED = replace(
    COHERENT, name="coherent-push", skipped_weight=0.0, notes="coherent without the push from what was passed over"
)
COHERENT_ONE_MMR = replace(
    COHERENT,
    name="coherent-one-mmr",
    overfetch=8,
    explore_diversity=None,
    explore_overfetch=None,
    notes="coherent with its MMR (0.2) of 8 grids' candidates from the starting grid too: no exploring strength",
)
COHERENT_PLAIN = replace(
    COHERENT,
    name="coherent-mmr",
    diversity=0.0,
    explore_diversity=None,
    explore_overfetch=None,
    notes="coherent without MMR: the 25 best by score",
)

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (NEIGHBOURS, NEIGHBOURS_COLOUR, TRAIL, RECENCY, HIDE_SKIPPED, ROCCHIO, ROCCHIO_CLASSIC, BEST_SCORE,
              DISCOVERY, REFINE_HIDE, COHERENT, COHERENT_HIDE, COHERENT_FIRST, COHERENT_UNPUSHED, COHERENT_PLAIN,
              COHERENT_ONE_MMR)
}  # fmt: skip


def strategy_named(spec: str) -> Strategy:
    """A lab strategy by name, optionally with fields replaced: ``coherent:seen_penalty=0.02:diversity=0.2``.

    Raises KeyError naming the known strategies, ValueError for an unknown field or a bad value.
    """
    name, *changes = spec.strip().split(":")
    try:
        strategy = STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    if not changes:
        return strategy
    kinds = {f.name: f.type for f in fields(Strategy)}
    values: dict[str, object] = {}
    for change in changes:
        key, _, text = change.partition("=")
        if key not in kinds or key in {"name", "notes"}:
            raise ValueError(f"{key!r} is not a strategy field one can set here")
        kind = kinds[key]
        if text == "None":
            values[key] = None
        elif "bool" in kind:
            values[key] = text.lower() in {"1", "true", "yes"}
        elif "int" in kind:
            values[key] = int(text)
        elif "float" in kind:
            values[key] = float(text)
        else:
            values[key] = text
    return replace(strategy, name=spec.strip(), **values)
