"""Serving a refinement trail: the grid after each click, ranked by the served strategy (``feedback.SERVED``).

Reads the database only. The trail is all the engine is told (its URL is the shopper's whole state),
so what the shopper was shown and passed over is worked out again from the trail itself: the page after
each earlier step showed the grid of the trail up to that step, and what it showed besides the next
click was passed over (a weak push away and a demotion below new products about as alike, measured in
docs/quality.md). Those prefix grids are remembered, per process and in the shared cache (derived data
that expires: losing it costs only recomputation), so a shopper's next click ranks one grid, not one per
step. A strategy that ignores what was shown (plain neighbours) ranks no prefix at all.

Whole grids are remembered the same way when the caller names the rest of what decides them (``context``:
the shop's catalog version, filters and the search the trail began from): the key holds that, the published
build, the vectors stored since it, the strategy, the allowed ids, ``k`` and the steps, so an upload, an
edit, a deletion or a rebuild is never answered from an older grid. A click looks the grid and its earlier
pages up in one call and writes what it ranked in one call.

A grid is two steps (see ``recommender.feedback``): the strategy's query vector asks the index for an
over-fetched candidate set (``selectors.similar_products``: fresh vectors included, deleted and
re-imaged products left out, filters exact); the candidates' image vectors and colour descriptors come
from the published build's memory maps (the database only for those it does not hold), and ``grid_rank``
scores them against every step (colour blended per step's aspect) and returns the grid in display order,
MMR comparing the candidates by the build's sketches (``LoadedIndex.sketches_of``) where it keeps them.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from threading import Lock

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured

from config.metrics import cache_lookup
from config.timing import stage
from recommender import runtime, selectors
from recommender.colour import COLOUR_SPACE, Aspect
from recommender.feedback import (
    DISLIKED,
    PINNED,
    SERVED,
    Strategy,
    TrailVectors,
    colour_counts,
    grid_rank,
    query_vectors,
    skipped_weights,
)
from recommender.index import LoadedIndex
from recommender.selectors import Neighbour

# Grids remembered in each process (whole grids' ids and scores, and what each earlier page of a trail showed:
# a few MB in all) ...
GRID_MEMORY = 4096
# ... and in the shared cache, so a shopper's next click is cheap on whichever web process it lands. A whole
# grid is kept GRID_CACHE_TTL_S (0: not at all), an earlier page's grid this long at least.
PREFIX_CACHE_TTL_S = 3600
_KEY_PREFIX = "recommender:grid:"


@dataclass(frozen=True)
class StepRef:
    """One trail step as the engine sees it: a product, its mark and its aspect (their link codes)."""

    product_id: int
    mark: str = ""  # "", PINNED ("p") or DISLIKED ("n")
    aspect: str = ""  # an Aspect value: "", "c" same colour, "a" any colour, "s" same shape

    def __post_init__(self) -> None:
        if self.mark not in ("", PINNED, DISLIKED):
            raise ValueError(f"unknown trail mark {self.mark!r}")
        Aspect(self.aspect)  # raises ValueError for an unknown code

    def __str__(self) -> str:
        return f"{self.mark}{self.product_id}{self.aspect}"


def strategy_served(name: str | None = None) -> Strategy:
    """The REFINE_STRATEGY setting's strategy (feedback.SERVED), at the REFINE_DIVERSITY setting's MMR strength.

    ``name`` picks another of SERVED (an experiment's arm). REFINE_DIVERSITY, when set, replaces the
    strategy's own strengths (for trails begun from a search and from the starting grid alike). Raises
    ImproperlyConfigured for an unknown name.
    """
    chosen = name or settings.REFINE_STRATEGY
    try:
        strategy = SERVED[chosen]
    except KeyError:
        raise ImproperlyConfigured(f"REFINE_STRATEGY must be one of {', '.join(SERVED)}, not {chosen!r}") from None
    strength = settings.REFINE_DIVERSITY
    if strength is not None and (float(strength), None) != (strategy.diversity, strategy.explore_diversity):
        strategy = replace(strategy, diversity=float(strength), explore_diversity=None)
    return strategy


def _uses_shown(strategy: Strategy) -> bool:
    """Whether the strategy's grid depends on what earlier grids showed (then the trail's prefixes are ranked)."""
    return bool(strategy.skipped_weight or (strategy.seen_penalty and strategy.seen_grids))


class _Memory:
    """A small thread-safe LRU of grids (prefix grids' ids; whole grids' ids and scores)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, tuple] = OrderedDict()
        self._lock = Lock()

    def get(self, key: str) -> tuple | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, value: tuple) -> tuple:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_remembered = _Memory(GRID_MEMORY)


def forget() -> None:
    """Drop the grids this process remembers (tests that rebuild a catalog under the same ids)."""
    _remembered.clear()


class _Rows:
    """Rows (vectors or colour descriptors) by product id, kept as the blocks they were read in.

    ``matrix`` gathers each block's rows with one sorted look-up and one fancy index: stacking or looking up
    hundreds of single rows in Python costs more than the scoring they feed; the rows just read for the same
    ids in the same order (a rank's candidates) are the newest block itself. A product added again later (its
    fresh vector) is read from the later block.
    """

    def __init__(self) -> None:
        # (block, its ids in its rows' order, those ids sorted, their rows)
        self._blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._block_of: dict[int, int] = {}

    def add(self, product_ids: Sequence[int], block: np.ndarray) -> None:
        if not len(product_ids):
            return
        ids = np.asarray(product_ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        self._block_of.update(dict.fromkeys(ids.tolist(), len(self._blocks)))
        block.flags.writeable = False  # matrix() may hand the block itself out
        self._blocks.append((block, ids, ids[order], order))

    def __contains__(self, product_id: int) -> bool:
        return product_id in self._block_of

    def held(self, product_ids: Iterable[int], *, held: bool = True) -> list[int]:
        """Those of ``product_ids`` held here (with ``held`` False: those not), in order: one look-up each, not
        a method call each (a rank asks this of hundreds)."""
        block_of = self._block_of
        return [pid for pid in product_ids if (pid in block_of) is held]

    def width(self, product_id: int) -> int:
        return self._blocks[self._block_of[product_id]][0].shape[1]

    def matrix(self, product_ids: Sequence[int], *, width: int | None = None) -> np.ndarray:
        """float32 rows of ``product_ids``, in order; with ``width``, zeros for ids missing or of another width."""
        width = width if width is not None else self.width(product_ids[0])
        ids = np.asarray(product_ids, dtype=np.int64)
        if self._blocks:
            newest, newest_ids = self._blocks[-1][:2]
            if newest.shape[1] == width and np.array_equal(newest_ids, ids):
                return newest  # just read for these ids, in this order (the candidates): no gather, no copy
        out = None
        for block, _, sorted_ids, rows in self._blocks:  # in the order added: a later block wins
            if block.shape[1] != width:
                continue
            at = np.searchsorted(sorted_ids, ids).clip(max=len(sorted_ids) - 1)
            hit = sorted_ids[at] == ids
            if out is None and hit.all():
                out = block[rows[at]].astype(np.float32, copy=False)  # one gather, no zeros to fill
            elif hit.any():
                if out is None:
                    out = np.zeros((len(ids), width), dtype=np.float32)
                out[hit] = block[rows[at[hit]]]
        return out if out is not None else np.zeros((len(ids), width), dtype=np.float32)


def _part(
    part: list[int], asked: list[int], ids: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, items) of those of ``part`` among ``ids`` (the build's of ``asked``, with their ``items``), in the
    order asked; None when none is there."""
    if part == asked:
        return (ids, items) if len(ids) else None
    mask = np.isin(ids, np.asarray(part, dtype=np.int64))
    return (ids[mask], items[mask]) if mask.any() else None


class _Vectors:
    """Image vectors, colour descriptors and sketches by product id, for one request.

    A vector stored since the build (a new or re-imaged product) comes from the database, every other one
    from the build's memory map: the build's copy of a re-imaged product is its old look.
    """

    def __init__(self, space: str, loaded: LoadedIndex | None) -> None:
        self.space = space
        self.loaded = loaded
        self.image_spread = runtime.image_spread(space)  # converts raw-tuned weights (feedback.TrailVectors)
        # Read once per request: the candidate search (selectors.similar_products) is given the same rows.
        with stage("vectors"):
            self.delta = selectors.delta_rows(space=space, loaded=loaded)
        self._newer = {pid: vector for pid, _, vector in self.delta}  # bytes: decoded only for the products asked
        self.vectors = _Rows()
        self.colours = _Rows()
        self.sketches = _Rows()
        # Which vector is each candidate's current one, as looked up in this request: a trail's searches (a cold
        # link ranks every earlier page again) ask the database once per product (selectors.similar_products).
        self.current: dict[int, int | None] = {}
        self._looked_up: set[int] = set()
        self._colours_looked_up: set[int] = set()

    def fetch(
        self, product_ids: Sequence[int], *, fresh: bool = False, colours: bool = True, sketches: bool = False
    ) -> None:
        """Look up what is not looked up yet: vectors, colours unless ``colours`` is False, and with ``sketches``
        the build's sketches (``sketch_matrix``; read with the rest, one look-up of the build's items).

        ``fresh`` reads the database for all of them (the trail's steps). A product first looked up without
        its colour (a passed-over one) still gets it when a later call asks for colours.
        """
        with stage("vectors"):
            self._fetch(product_ids, fresh=fresh, colours=colours, sketches=sketches)

    def _fetch(self, product_ids: Sequence[int], *, fresh: bool, colours: bool, sketches: bool) -> None:
        ids = dict.fromkeys(int(i) for i in product_ids)  # in the order asked: matrix() then takes the block whole
        wanted = [pid for pid in ids if pid not in self._looked_up]
        colour_wanted = [pid for pid in ids if pid not in self._colours_looked_up] if colours else []
        from_build = self.loaded is not None and not fresh
        sketching = sketches and from_build and self.loaded.sketch_dim
        sketch_wanted = self.sketches.held(ids, held=False) if sketching else []
        if not wanted and not colour_wanted and not sketch_wanted:
            return
        self._looked_up.update(wanted)
        self._colours_looked_up.update(colour_wanted)
        if from_build:
            self._from_build(wanted, colour_wanted, sketch_wanted)
        from_db = [] if from_build else wanted
        need_colour = self.colours.held(colour_wanted, held=False)
        if not from_db and not need_colour:
            return
        # One block per space and width: every block costs each later matrix() a look-up.
        blocks: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
        for pid, space, vector in selectors.stored_vectors({self.space: from_db, COLOUR_SPACE: need_colour}):
            blocks.setdefault((space, len(vector)), []).append((pid, vector))
        for (space, _), rows in blocks.items():
            vectors = selectors.vectors_decoded([vector for _, vector in rows])
            (self.colours if space == COLOUR_SPACE else self.vectors).add([pid for pid, _ in rows], vectors)

    def _from_build(self, wanted: list[int], colour_wanted: list[int], sketch_wanted: list[int]) -> None:
        """Vectors, colours and sketches of products from the build, its items looked up once for all three (a
        rank's candidates ask for the same ids of each). The build's copy of a product re-imaged since is its
        old look: its vector is decoded from the rows stored since, its sketch made from that, its colour read
        from the database (``_fetch``)."""
        asked = wanted
        for part in (colour_wanted, sketch_wanted):
            if part and part != asked:
                asked = list(dict.fromkeys(asked + part))
        newer, old, items = self._items(asked)
        if wanted:
            if newer and (fresh := [pid for pid in wanted if pid in self._newer]):
                self.vectors.add(fresh, self._decoded(fresh))
            if (built := _part(wanted, asked, old, items)) is not None:
                self.vectors.add(built[0], self.loaded.vectors_of(built[1]))
        if colour_wanted and (built := _part(colour_wanted, asked, old, items)) is not None:
            rows = self.loaded.colours_of(built[1])
            if rows is not None:
                known = rows.any(axis=1)  # a build's row of zeros: no descriptor when it was built
                self.colours.add(built[0][known], rows if known.all() else rows[known])
        if sketch_wanted:
            if newer and (fresh := [pid for pid in sketch_wanted if pid in self._newer]):
                self.sketches.add(fresh, self.loaded.sketch(self._decoded(fresh)))
            if (built := _part(sketch_wanted, asked, old, items)) is not None:
                self.sketches.add(built[0], self.loaded.sketches_of(built[1]))

    def _items(self, product_ids: Sequence[int]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(those of ``product_ids`` stored since the build, the build's ids among the rest, their items), in the
        order asked."""
        newer = [pid for pid in product_ids if pid in self._newer] if self._newer else []
        old = np.asarray([pid for pid in product_ids if pid not in self._newer] if newer else product_ids, np.int64)
        items = self.loaded.item_at(old)
        held = items >= 0
        return (newer, old, items) if held.all() else (newer, old[held], items[held])

    def _decoded(self, product_ids: list[int]) -> np.ndarray:
        """The vectors stored since the build of ``product_ids`` (their current looks)."""
        return selectors.vectors_decoded([self._newer[pid] for pid in product_ids])

    def rows_once(self, product_ids: Sequence[int]) -> tuple[list[int], np.ndarray]:
        """(the ids found, their vectors) of ``product_ids``, read for one use and not kept: the passed-over
        products the push averages (hundreds of rows, one copy instead of a kept block and a gather from it)."""
        if self.loaded is None:
            self.fetch(product_ids, colours=False)
            found = [pid for pid in product_ids if pid in self.vectors]
            return found, self.vectors.matrix(found) if found else np.zeros((0, 0), dtype=np.float32)
        with stage("vectors"):
            newer, old, items = self._items(product_ids)
            rows = self.loaded.vectors_of(items)
            if not newer:
                return old.tolist(), rows
            return [*newer, *old.tolist()], np.vstack([self._decoded(newer), rows])

    def matrix(self, product_ids: Sequence[int]) -> np.ndarray:
        return self.vectors.matrix(product_ids)

    def sketch_matrix(self, product_ids: Sequence[int]) -> np.ndarray | None:
        """The sketches of ``product_ids`` (fetched with ``sketches``), in order: the build's, and those stored
        since it sketched from their vectors; None without a build or where it keeps none (``LoadedIndex.sketch``)."""
        if self.loaded is None or not self.loaded.sketch_dim or not len(product_ids):
            return None
        return self.sketches.matrix(product_ids, width=self.loaded.sketch_dim)

    def colour_matrix(self, product_ids: Sequence[int]) -> np.ndarray | None:
        """Colour descriptors of ``product_ids`` (zeros where one is missing); None when none of them has one."""
        known = next((pid for pid in product_ids if pid in self.colours), None)
        if known is None:
            return None
        return self.colours.matrix(product_ids, width=self.colours.width(known))


# Digests of the arrays the shop passes as allowed ids (remembered per catalog version there, so the same
# array object on every click): hashing 44k ids costs half a millisecond, looking it up here nothing.
_array_digests: dict[int, tuple[weakref.ref, str]] = {}


def _digest(ids: np.ndarray | Sequence[int] | None) -> str:
    if ids is None:
        return "all"
    shared = isinstance(ids, np.ndarray) and not ids.flags.writeable  # read-only: it cannot change under its id
    known = _array_digests.get(id(ids)) if shared else None
    if known is not None and known[0]() is ids:
        return known[1]
    digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=12).hexdigest()
    if shared:
        if len(_array_digests) >= 64:
            _array_digests.clear()
        _array_digests[id(ids)] = (weakref.ref(ids), digest)
    return digest


def trail_grid(
    *,
    steps: Sequence[StepRef],
    k: int,
    allowed_ids: np.ndarray | None = None,
    shown_first: Callable[[], Sequence[int]] | None = None,
    strategy: str | None = None,
    searched: bool = True,
    context: str | None = None,
) -> list[Neighbour]:
    """The ``k`` products to show for a trail (oldest step first), in display order, none of the trail's.

    The shop calls it as ``recommender.api.trail_grid``. Ranked by the served strategy (REFINE_STRATEGY,
    recommender.feedback): the newest click pulls hardest, what looks like it comes first, products the
    trail's earlier grids showed and the shopper passed over yield to new ones about as alike, "not like this"
    sinks what is nearer it than every liked step, and each step's aspect sets how much its colour counts.
    ``strategy`` names one of SERVED (``api.strategies_served()``) in place of REFINE_STRATEGY (an experiment arm).

    ``shown_first`` gives the grid the first step was clicked from (the starting grid or a text search),
    where the shop knows it; it is called only when the served strategy counts that grid (``first_grid``).
    ``searched`` is False for a trail begun on the starting grid (the shopper named no kind of product, by
    words or a photo): the strategy ranks it as exploring (``Strategy.exploring``), its grids spanning more
    of what looks alike.

    ``context`` is the rest of what decides the grid, in the caller's words (the catalog's version, the
    search ``shown_first`` answers): given, the grid is kept per process and in the shared cache
    (GRID_CACHE_TTL_S) under a key of it, the steps, ``k``, the strategy, ``allowed_ids``, the published
    build and the vectors stored since it; the same key is answered from there. None: always ranked.
    Raises NotEmbeddedYet when no liked step has a vector, SimilarityUnavailable when no index can answer.
    """
    if not any(step.mark != DISLIKED for step in steps):
        raise ValueError("a trail needs at least one step not marked 'not like this'")
    space = runtime.active_space()
    loaded = selectors.searchable_index(space)
    store = _Vectors(space, loaded)
    served = strategy_served(strategy) if searched else strategy_served(strategy).exploring()
    # Everything but the steps that decides a grid, and so what each earlier page showed. With the caller's
    # context it also names the first grid (the search the trail began from, in that catalog's version).
    base = _grid_base(store, strategy=served, allowed=allowed_ids, context=context or "")
    remembered = _Remembered()
    key = None
    if context is not None and settings.GRID_CACHE_TTL_S:
        key = _key(base, f"grid {k}", steps)
        # The earlier pages' grids are asked for in the same call: a click the cache cannot answer needs them.
        earlier = [_key(base, "shown", prefix) for prefix in _prefixes(steps)[:-1]] if _uses_shown(served) else []
        with stage("cache"):
            remembered.lookup([key, *earlier])
        found = remembered.found.get(key)
        if found is not None:
            return [Neighbour(product_id=int(pid), score=float(score)) for pid, score in found]
    grid = _trail_ranked(
        steps, k=k, allowed_ids=allowed_ids, shown_first=shown_first, strategy=served, store=store,
        shown_key=lambda prefix, first: _key(base if context is not None else f"{base}|{_digest(first)}", "shown",
                                             prefix),
        remembered=remembered,
    )  # fmt: skip
    if key is not None:
        remembered.add(key, tuple((n.product_id, n.score) for n in grid))
    with stage("cache"):
        remembered.store()
    return grid


def _grid_base(store: _Vectors, *, strategy: Strategy, allowed: np.ndarray | None, context: str) -> str:
    """What decides a trail's grids besides its steps: the space, the published build, the vectors stored
    since it, the strategy, the allowed ids and the caller's ``context``."""
    version = store.loaded.meta.version if store.loaded is not None else "no-index"
    fresh = np.asarray([(pid, eid) for pid, eid, _ in store.delta], dtype=np.int64)
    return "|".join(
        [
            store.space,
            version,
            hashlib.blake2b(fresh.tobytes(), digest_size=12).hexdigest(),
            _strategy_key(strategy),
            str(settings.GRID_SIZE),
            _digest(allowed),
            context,
        ]
    )


def _key(base: str, kind: str, steps: Sequence[StepRef]) -> str:
    return hashlib.blake2b(f"{base}|{kind}|{','.join(map(str, steps))}".encode(), digest_size=16).hexdigest()


def _prefixes(steps: Sequence[StepRef]) -> list[tuple[StepRef, ...]]:
    """The trail as each page showed it: its own step last, liked (whatever mark it carries now), then the
    whole trail."""
    return [(*steps[:end], step if step.mark != DISLIKED else replace(step, mark="")) for end, step in enumerate(steps)]


class _Remembered:
    """The grids one request looks up and remembers: in this process first, then in the shared cache, in one
    call each way (an outage of the cache costs a request two connection attempts, not one per grid).

    Values are tuples: a whole grid's (product id, score) pairs, an earlier page's product ids.
    """

    def __init__(self) -> None:
        self.found: dict[str, tuple] = {}
        self.asked: set[str] = set()
        self.new: dict[str, tuple] = {}

    def lookup(self, keys: list[str]) -> None:
        wanted = []
        for key in keys:
            if key in self.asked:
                continue
            self.asked.add(key)
            value = _remembered.get(key)
            cache_lookup(cache="grids-process", hit=value is not None)
            if value is None:
                wanted.append(key)
            else:
                self.found[key] = value
        if not wanted:
            return
        # With Redis down this is a miss (IGNORE_EXCEPTIONS; gallery.cache.FailFastPool): the grids are ranked.
        shared = cache.get_many([_KEY_PREFIX + key for key in wanted])
        for key in wanted:
            value = shared.get(_KEY_PREFIX + key)
            cache_lookup(cache="grids-shared", hit=isinstance(value, list))
            if isinstance(value, list):
                self.found[key] = _remembered.put(key, tuple(tuple(v) if isinstance(v, list) else v for v in value))

    def add(self, key: str, value: tuple) -> None:
        self.found[key] = self.new[key] = value

    def store(self) -> None:
        for key, value in self.new.items():
            _remembered.put(key, value)
        if not self.new:
            return
        # With Redis down the write is dropped (IGNORE_EXCEPTIONS): the grids stay in this process only.
        cache.set_many({_KEY_PREFIX + key: list(value) for key, value in self.new.items()}, _shared_ttl())


def _shared_ttl() -> int:
    return max(settings.GRID_CACHE_TTL_S, PREFIX_CACHE_TTL_S)


def _trail_ranked(
    steps: Sequence[StepRef],
    *,
    k: int,
    allowed_ids: np.ndarray | None,
    shown_first: Callable[[], Sequence[int]] | None,
    strategy: Strategy,
    store: _Vectors,
    shown_key: Callable[[tuple[StepRef, ...], Sequence[int]], str],
    remembered: _Remembered,
) -> list[Neighbour]:
    """``trail_grid``'s ranking: the earlier pages' grids (remembered, else ranked and remembered), then its own.

    ``shown_key(prefix, first grid)`` keys what the page of ``prefix`` showed.
    """
    store.fetch([step.product_id for step in steps], fresh=True,
                colours=colour_counts(strategy, [step.aspect for step in steps]))  # fmt: skip
    usable = [step for step in steps if step.product_id in store.vectors]
    if not any(step.mark != DISLIKED for step in usable):
        newest = next(step for step in reversed(steps) if step.mark != DISLIKED)
        raise selectors.not_embedded_reason(newest.product_id)

    if not _uses_shown(strategy):
        return _rank(usable, [], (), store=store, k=k, allowed=allowed_ids, strategy=strategy)
    first = tuple(shown_first()) if strategy.first_grid and shown_first is not None else ()
    # The page after each earlier click showed a grid of GRID_SIZE: that prefix, ranked the same way, is what
    # the shopper saw there.
    prefixes = _prefixes(usable)
    keys = [shown_key(prefix, first) for prefix in prefixes]
    remembered.lookup(keys[:-1])
    shown: list[tuple[int, ...]] = []
    for prefix, key in zip(prefixes[:-1], keys[:-1], strict=True):
        if key not in remembered.found:
            grid = _rank(prefix, shown, first, store=store, k=settings.GRID_SIZE, allowed=allowed_ids,
                         strategy=strategy)  # fmt: skip
            remembered.add(key, tuple(n.product_id for n in grid))
        shown.append(remembered.found[key])
    grid = _rank(usable, shown, first, store=store, k=k, allowed=allowed_ids, strategy=strategy)
    if k == settings.GRID_SIZE and prefixes[-1] == tuple(usable):
        # This page's grid is the next click's earlier grid: remembered now, that click ranks only its own.
        remembered.add(keys[-1], tuple(n.product_id for n in grid))
    return grid


@functools.cache  # a handful of strategies per process; asdict and a digest on every click were waste
def _strategy_key(strategy: Strategy) -> str:
    """A stable digest of everything in ``strategy`` that decides a grid (its notes aside)."""
    fields = sorted((name, value) for name, value in asdict(strategy).items() if name != "notes")
    return hashlib.blake2b(repr(fields).encode(), digest_size=8).hexdigest()


class _Passed:
    """What a trail's earlier grids showed and the shopper passed over: ``ids`` (sorted) and ``age``, how many clicks
    ago each was last shown (0: the grid the newest step was clicked from). As arrays: a trail's nine earlier grids
    hold 225 products, looked up for each of 200 candidates."""

    def __init__(self, earlier: Sequence[Sequence[int]], on_trail: set[int]) -> None:
        """``earlier``: the grids shown, the newest first."""
        sizes = [len(grid) for grid in earlier]
        ids = np.fromiter(itertools.chain.from_iterable(earlier), dtype=np.int64, count=sum(sizes))
        ids, first = np.unique(ids, return_index=True)  # the first showing found is the newest
        age = np.repeat(np.arange(len(earlier), dtype=np.int64), sizes)[first]
        passed = ~np.isin(ids, np.fromiter(on_trail, dtype=np.int64, count=len(on_trail)))
        self.ids, self.age = ids[passed], age[passed]

    def age_of(self, product_ids: Sequence[int], *, within: int | None = None) -> np.ndarray:
        """Each product's age (-1: not passed over, or, with ``within``, last shown that many clicks ago or more)."""
        ids = np.asarray(product_ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.searchsorted(self.ids, ids).clip(max=len(self.ids) - 1)
        hit = self.ids[at] == ids
        if within is not None:
            hit &= self.age[at] < within
        return np.where(hit, self.age[at], -1)


def _rank(
    steps: Sequence[StepRef],
    shown: Sequence[tuple[int, ...]],
    shown_first: Sequence[int],
    *,
    store: _Vectors,
    k: int,
    allowed: np.ndarray | None,
    strategy: Strategy,
) -> list[Neighbour]:
    """The grid for ``steps`` after the grids ``shown`` (oldest first; the newest was clicked from)."""
    on_trail = {step.product_id for step in steps}
    earlier = [*reversed(shown), tuple(shown_first)] if strategy.first_grid else list(reversed(shown))
    passed = _Passed(earlier, on_trail)
    # Only the passed-over products the strategy pushes from are read (decay 0: the grid clicked from), and
    # handed over as their weighted mean: the push is linear in them (feedback.TrailVectors).
    pushing = passed.ids[passed.age == 0] if not strategy.skipped_decay else passed.ids
    pushed = None
    if strategy.skipped_weight and len(pushing):
        found, rows = store.rows_once(pushing.tolist())
        weights = skipped_weights(passed.age_of(found), strategy)
        pushed = (weights @ rows)[None, :] if len(weights) else None
    ids = [step.product_id for step in steps]
    trail = TrailVectors(
        vectors=store.matrix(ids),
        marks=tuple(step.mark for step in steps),
        aspects=tuple(step.aspect for step in steps),
        # Read only where colour enters the scores: plain neighbours' default steps never read a descriptor.
        colours=store.colour_matrix(ids) if colour_counts(strategy, [step.aspect for step in steps]) else None,
        skipped=pushed,
        skipped_age=None if pushed is None else np.zeros(1, dtype=np.int64),
        image_spread=store.image_spread,
    )
    hidden = frozenset(passed.ids[passed.age < strategy.seen_grids].tolist()) if strategy.hides_seen else frozenset()
    pool: dict[int, None] = {}
    for query in query_vectors(trail=trail, strategy=strategy):
        for n in selectors.similar_products(
            vector=query, k=strategy.overfetch * k, depth=strategy.searched_per_tile * k,
            exclude_ids=frozenset(on_trail) | hidden, allowed_ids=allowed, fresh=store.delta, current=store.current,
        ):  # fmt: skip
            pool.setdefault(n.product_id)
    if len(pool) < k and hidden:
        # Everything left was shown before (a narrow filter, a long trail): show it again rather than fewer.
        for query in query_vectors(trail=trail, strategy=strategy):
            for n in selectors.similar_products(
                vector=query,
                k=k,
                exclude_ids=frozenset(on_trail),
                allowed_ids=allowed,
                fresh=store.delta,
                current=store.current,
            ):
                pool.setdefault(n.product_id)
    candidates = list(pool)
    if not candidates:
        return []
    store.fetch(candidates, colours=trail.colours is not None, sketches=bool(strategy.diversity))
    candidates = store.vectors.held(candidates)
    with stage("rank"):
        positions, scores = grid_rank(
            trail=trail,
            strategy=strategy,
            candidates=store.matrix(candidates),
            candidate_colours=store.colour_matrix(candidates) if trail.colours is not None else None,
            candidate_seen=passed.age_of(candidates, within=strategy.seen_grids),
            candidate_sketches=store.sketch_matrix(candidates) if strategy.diversity else None,
            k=k,
        )
    return [Neighbour(product_id=candidates[p], score=float(s)) for p, s in zip(positions, scores, strict=True)]
