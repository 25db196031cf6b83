"""Reads about vectors: a product's vector, nearest neighbours, index status. Reads never write.

Products are known by id only. A filter reaches this module as the sorted
array of product ids that pass it (the shop resolves its own filters); which
way a filtered query is answered is chosen by the filter's measured size, as
Lucene's filtered kNN does: a selective filter is searched exactly over its
own vectors (a few thousand rows of the memory-mapped build), a broad one
through Annoy with an over-fetch sized by the filter's share of the catalog,
and exactly whenever the over-fetch would not fill the grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connections, router

from config.timing import stage
from recommender import runtime
from recommender.delivery import delivery_report, delivery_state_read
from recommender.errors import NotEmbeddedYet, SimilarityUnavailable
from recommender.index import IndexCorrupt, IndexMeta, LoadedIndex
from recommender.models import Embedding, EmbeddingState, EmbedStatus
from recommender.state import states_count, states_done_since

logger = logging.getLogger(__name__)

# Without a published index, vectors are searched exactly from the database up
# to this many; beyond it, similarity waits for the first build.
EXACT_FALLBACK_MAX = 5000
# A filter is searched exactly when its vectors hold at most this many floats
# (16M floats = 64 MB: ~12,500 products at 1280-d, ~62,000 at 256-d): a matrix
# product over them costs less than an over-fetching Annoy query does. At 44k
# products x 1280-d, colour=Black (9,700 products, 22%) scores exactly in 9-12 ms;
# through Annoy it took 8-24 ms, plus an exact pass whenever the over-fetch fell short.
EXACT_FILTER_MAX_FLOATS = 16_000_000
# Vectors stored since the build that each process remembers by embedding id (at most ~50 MB at 1280-d);
# beyond it they are read from the database on every query, as they were before any memory.
FRESH_MEMORY_MAX = 10_000
# The embedding rate /api/status reports is measured over this window.
RATE_WINDOW_S = 300
# Annoy over-fetch for a broad filter: this many times the hits the filter's
# share of the catalog should leave, plus a margin; and Annoy searches this
# many times its default nodes for it (recall@25 of the filtered result >= 0.99
# with 40 trees in tests/test_filtered_similarity.py).
FILTER_OVERFETCH = 2.0
FILTER_SEARCH_K_FACTOR = 2
# A filter passing at least this share of the build (products taken off sale, nothing else) is searched as
# no filter, over-fetched by the share it leaves out: the wider search a narrow filter needs cost a click
# 2.5 ms more at 44k with one product off sale. A grid it leaves short is still searched exactly.
WIDE_FILTER_SHARE = 0.9


@dataclass(frozen=True)
class Neighbour:
    product_id: int
    score: float


def not_embedded_reason(product_id: int) -> NotEmbeddedYet:
    """The refusal for a product that has no vector yet: its image failed, or is still being analysed."""
    status = EmbeddingState.objects.filter(product_id=product_id).values_list("status", flat=True).first()
    if status == EmbedStatus.FAILED:
        return NotEmbeddedYet("This product's image could not be analysed, so there are no similar products for it.")
    return NotEmbeddedYet("This product's image is still being analysed; similar products appear in a few seconds.")


class IndexOfAnotherSpace(IndexCorrupt):
    """The published build holds another space's vectors (``meta`` says which): none for this space yet."""

    def __init__(self, meta: IndexMeta, space: str) -> None:
        super().__init__(f"index {meta.version} holds {meta.space} vectors; the space is {space}")
        self.meta = meta


def published_index(space: str | None = None) -> LoadedIndex | None:
    """The build published for ``space`` (the active space by default), as this process has it mapped.

    The one reader of the published build, with one error policy: None when nothing is published;
    IndexCorrupt when the build cannot be served: its files fail their checks or cannot be read, or
    (``IndexOfAnotherSpace``) it holds another space's vectors, as vectors of two encoders are never
    compared. Each caller says what that means to it (a query: ``searchable_index``; a status: damaged,
    or built for another space); none repairs it here, as a read never writes: the sweep
    (``recommender.tasks.index_repair_if_needed``) rebuilds it.
    """
    space = space or runtime.active_space()
    try:
        loaded = runtime.index_reader(space).current()
    except OSError as exc:
        raise IndexCorrupt(f"the published index cannot be read: {exc}") from exc
    if loaded is not None and loaded.meta.space != space:
        raise IndexOfAnotherSpace(loaded.meta, space)
    return loaded


def searchable_index(space: str) -> LoadedIndex | None:
    """The published build queries search (``published_index``); None when there is none to search.

    Another space's build counts as none. A damaged build counts as none while the catalog is small enough
    to search exactly (EXACT_FALLBACK_MAX vectors); beyond it, raises SimilarityUnavailable until the sweep
    has rebuilt it.
    """
    try:
        return published_index(space)
    except IndexOfAnotherSpace as exc:
        logger.warning("Index %s holds %s vectors; active space is %s", exc.meta.version, exc.meta.space, space)
        return None
    except IndexCorrupt as exc:
        logger.error("The published index cannot be served: %s", exc)
        if Embedding.objects.filter(space=space).count() <= EXACT_FALLBACK_MAX:
            return None
        raise SimilarityUnavailable(
            "Similar-product search is being repaired; please try again in a minute. Text search still works."
        ) from exc


def _passes(product_ids: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """Mask of ``product_ids`` found in the sorted ``allowed`` (all True without a filter)."""
    if allowed is None:
        return np.ones(len(product_ids), dtype=bool)
    if not len(allowed):
        return np.zeros(len(product_ids), dtype=bool)
    positions = np.searchsorted(allowed, product_ids).clip(max=len(allowed) - 1)
    return allowed[positions] == product_ids


# Ids per look-up of the candidates' current vectors: under every database's limit on query parameters.
_LOOKUP_CHUNK = 900


def _rows_of(*, fields: tuple[str, ...], space: str | Sequence[str], product_ids: list[int]) -> list[tuple]:
    """``fields`` of the stored vectors of ``space`` (one, or several) for ``product_ids``, with one plain statement
    per chunk.

    The same rows as ``Embedding.objects.filter(space__in=..., product_id__in=...).values_list(*fields)``:
    a grid's hundreds of candidates would spend more time in the ORM building the IN list than the
    database spends answering.
    """
    if not product_ids:
        return []
    spaces = [space] if isinstance(space, str) else list(space)
    meta = Embedding._meta
    connection = connections[router.db_for_read(Embedding)]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(meta.get_field(name).column) for name in fields)
    product, space_column = quote(meta.get_field("product").column), quote(meta.get_field("space").column)
    which = ", ".join(["%s"] * len(spaces))
    # Only the model's own table and column names are spliced in; every value is a parameter.
    head = f"SELECT {columns} FROM {quote(meta.db_table)} WHERE {space_column} IN ({which}) AND {product} IN "  # noqa: S608
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        for start in range(0, len(product_ids), _LOOKUP_CHUNK):
            part = [int(pid) for pid in product_ids[start : start + _LOOKUP_CHUNK]]
            cursor.execute(head + "(" + ", ".join(["%s"] * len(part)) + ")", [*spaces, *part])
            rows.extend(map(tuple, cursor.fetchall()))
    return rows


def _current_pairs(*, space: str, product_ids: list[int]) -> set[tuple[int, int]]:
    """(product id, embedding id) of the stored vectors of ``space`` for ``product_ids``."""
    return set(_rows_of(fields=("product", "id"), space=space, product_ids=product_ids))  # plain ints everywhere


def stored_vectors(wanted: dict[str, list[int]]) -> list[tuple[int, str, bytes]]:
    """(product id, space, vector) of the stored vectors of each space for its product ids.

    The rows of ``Embedding.objects.filter(space=s, product_id__in=ids)`` for every (s, ids), read with
    plain statements: a trail's steps and the colours its candidates lack, on every click. Spaces asked for the
    same products (a trail's vectors and colours) are read in one statement.
    """
    by_products: dict[tuple[int, ...], list[str]] = {}
    for space, product_ids in wanted.items():
        if product_ids:
            by_products.setdefault(tuple(sorted(set(product_ids))), []).append(space)
    return [
        (pid, space, bytes(vector))
        for product_ids, spaces in by_products.items()
        for pid, space, vector in _rows_of(
            fields=("product", "space", "vector"), space=spaces, product_ids=list(product_ids)
        )  # fmt: skip
    ]


def _rows_newer(*, space: str, watermark: int) -> list[tuple[int, int]]:
    """(embedding id, product id) of the stored vectors of ``space`` newer than ``watermark``, by id.

    The rows of ``Embedding.objects.filter(space=..., id__gt=...)``, read with one plain statement:
    asked on every query, and hundreds of rows once a build is a few hundred uploads old.
    """
    meta = Embedding._meta
    connection = connections[router.db_for_read(Embedding)]
    quote = connection.ops.quote_name
    key, product, table = quote(meta.pk.column), quote(meta.get_field("product").column), quote(meta.db_table)
    where = f"{quote(meta.get_field('space').column)} = %s AND {key} > %s"
    with connection.cursor() as cursor:
        # Only the model's own table and column names are spliced in; every value is a parameter.
        cursor.execute(f"SELECT {key}, {product} FROM {table} WHERE {where} ORDER BY {key}", [space, int(watermark)])  # noqa: S608
        return [tuple(row) for row in cursor.fetchall()]


def delta_rows(*, space: str, loaded: LoadedIndex | None) -> list[tuple[int, int, bytes]]:
    """(product id, embedding id, vector) of every vector of ``space`` the published index does not hold.

    Only ids are read for the rows newer than the build's watermark, on every
    call; vectors are loaded for those the index lacks (normally a handful) and
    remembered per process by embedding id (``LoadedIndex.fresh_memory``: a row
    is never rewritten), so the hundreds stored since a build are not read again
    on every click. A deleted or re-imaged product's row is gone from the ids,
    so its vector is never served.
    """
    rows = Embedding.objects.filter(space=space)
    if loaded is None:
        return list(rows.values_list("product_id", "id", "vector"))
    newer = _rows_newer(space=space, watermark=loaded.meta.watermark)
    ids = np.fromiter((eid for eid, _ in newer), dtype=np.int64, count=len(newer))
    outside = [row for row, held in zip(newer, loaded.holds(ids).tolist(), strict=True) if not held]
    if not outside:
        return []
    memory = loaded.fresh_memory()
    missing = [eid for eid, pid in outside if memory.get(eid, (None,))[0] != pid]
    read: dict[int, tuple[int, bytes]] = {}
    if missing:
        for pid, eid, vector in Embedding.objects.filter(id__in=missing).values_list("product_id", "id", "vector"):
            read[eid] = (pid, bytes(vector))
        if len(memory) + len(read) <= FRESH_MEMORY_MAX:
            memory.update(read)
    found = []
    for eid, pid in sorted(outside):
        known = read.get(eid) or memory.get(eid)
        if known is not None and known[0] == pid:
            found.append((pid, eid, known[1]))
    return found


def vectors_decoded(vectors: Sequence[bytes]) -> np.ndarray:
    """Stored vectors of one width (little-endian float32 bytes, as ``Embedding.vector``) as one (n, d) matrix."""
    return np.frombuffer(b"".join(vectors), dtype="<f4").reshape(len(vectors), -1)


def _exact(vector: np.ndarray, rows: list[tuple[int, int, bytes]]) -> list[tuple[int, int, float]]:
    if not rows:
        return []
    matrix = vectors_decoded([v for _, _, v in rows])
    scores = (matrix @ vector).tolist()
    return [(pid, eid, score) for (pid, eid, _), score in zip(rows, scores, strict=True)]


def _index_candidates(
    loaded: LoadedIndex, vector: np.ndarray, *, want: int, allowed: np.ndarray | None, sized_for: int | None = None
) -> list[tuple[int, int, float]]:
    """(product id, embedding id, score) of the index's items nearest ``vector`` that pass ``allowed``, best first.

    At least ``want`` when the filter holds that many (fewer only when it does not). An approximate search
    returns about twice what it is sized for (its margin for recall): ``sized_for`` (at most ``want``) sizes it
    for fewer, the margin holding the rest (an exact one returns ``want`` either way).
    """
    count = loaded.meta.count
    share = 1.0 if allowed is None else min(1.0, len(allowed) / max(1, count))
    sized = want if sized_for is None else min(sized_for, want)
    if allowed is not None and share < WIDE_FILTER_SHARE:
        if len(allowed) * loaded.meta.dim <= EXACT_FILTER_MAX_FLOATS or share * count <= want:
            return _index_exact(loaded, vector, items=loaded.items_of(allowed), want=want)
        n = min(count, max(math.ceil(sized / share * FILTER_OVERFETCH) + 50, math.ceil(want / share)))
        search_k = max(loaded.meta.search_k, loaded.meta.n_trees * n * FILTER_SEARCH_K_FACTOR)
    elif allowed is not None:
        n = min(count, math.ceil(max(sized * 2 + 10, want) / share))
        search_k = None
    else:
        n = min(count, max(sized * 2 + 10, want))
        search_k = None  # the build's own setting
    items, scores = loaded.query_items(vector, n=n, search_k=search_k)
    product_ids = loaded.product_ids[items]
    passing = _passes(product_ids, allowed)
    found = list(
        zip(
            product_ids[passing].tolist(),
            loaded.embedding_ids[items[passing]].tolist(),
            scores[passing].tolist(),
            strict=True,
        )
    )
    if len(found) < want and n < count:
        # The over-fetch did not fill the grid (the filter's items sit far from the query): search it exactly.
        items = loaded.items_of(allowed) if allowed is not None else np.arange(count)
        return _index_exact(loaded, vector, items=items, want=want)
    return found


def _index_exact(
    loaded: LoadedIndex, vector: np.ndarray, *, items: np.ndarray, want: int
) -> list[tuple[int, int, float]]:
    """Exact cosine over the given items of the build, best ``want`` first (ties by product id)."""
    if not len(items):
        return []
    scores = loaded.scores_of(items, vector)
    top = min(want, len(items))
    best = np.argpartition(-scores, top - 1)[:top] if top < len(items) else np.arange(len(items))
    chosen = items[best]
    ranked = sorted(
        zip(
            loaded.product_ids[chosen].tolist(),
            loaded.embedding_ids[chosen].tolist(),
            scores[best].tolist(),
            strict=True,
        ),
        key=lambda row: (-row[2], row[0]),
    )
    return ranked


# Candidates looked up beyond the ones still needed, so that a deleted or re-imaged one among the first
# rarely costs a second look-up.
_CURRENT_MARGIN = 16


def _still_current(
    *, space: str, candidates: list[tuple[int, int, float]], k: int, current: dict[int, int | None] | None = None
) -> list[tuple[int, int, float]]:
    """The ``candidates`` (best first) whose index vector is still their product's vector, in order.

    The index's vector is served only while it is still the product's: indexed look-ups drop deleted
    and re-imaged products. Only as many are looked up as the best ``k`` need: the first ``k`` that
    pass, and any scored the same as the ``k``-th (a tie the caller breaks by product id), so a grid
    of 200 candidates out of an over-fetch of 900 reads 200-odd rows, not 900. ``current`` (product id ->
    its current embedding id, None: none) holds what this request has looked up already; it is read first
    and added to.
    """
    if k <= 0:
        return []
    known: dict[int, int | None] = {} if current is None else current
    passed: list[tuple[int, int, float]] = []
    start = 0
    while start < len(candidates) and (len(passed) < k or candidates[start][2] >= passed[k - 1][2]):
        part = candidates[start : start + max(k - len(passed), 1) + _CURRENT_MARGIN]
        unknown = [pid for pid, _, _ in part if pid not in known]
        if unknown:
            found = dict(_current_pairs(space=space, product_ids=unknown))  # one vector per product and space
            known.update((pid, found.get(pid)) for pid in unknown)
        passed += [row for row in part if known[row[0]] == row[1]]
        start += len(part)
    return passed


# Products read per group by typical_products: the most typical of a few hundred is typical of the whole kind.
TYPICAL_SAMPLE = 256


def typical_products(*, groups: list[list[int]]) -> list[int | None]:
    """Per group of product ids, the one whose vector is nearest the group's mean; None where the published
    build holds none of the group (or there is no build).

    Vectors are the build's (a product re-imaged since counts with its old look). In a projected space they
    are the raw encoder's stored vectors (the current look) of the products the build holds: a projection
    centres the vectors, so "nearest the mean" there picks the type's most unusual look, not its most typical
    one (docs/quality.md, "Serving space"). At most TYPICAL_SAMPLE ids of a group are read, spread evenly over
    it. Raises SimilarityUnavailable while a damaged build is being repaired.
    """
    space = runtime.active_space()
    loaded = searchable_index(space)
    held: list[tuple[list[int], np.ndarray]] = []  # per group, the build's products of its sampled ids and items
    for group in groups:
        ids = np.asarray(group, dtype=np.int64)
        if len(ids) > TYPICAL_SAMPLE:
            ids = ids[np.linspace(0, len(ids) - 1, TYPICAL_SAMPLE).astype(np.int64)]
        items = loaded.items_of(ids) if loaded is not None else np.zeros(0, dtype=np.int64)
        held.append((loaded.product_ids[items].tolist() if len(items) else [], items))
    raw_space = runtime.space_encoder_id(space)
    raw: dict[int, bytes] = {}
    if raw_space != space:  # one read of the raw vectors for every group
        wanted = sorted({pid for ids, _ in held for pid in ids})
        raw = {pid: vector for pid, _, vector in stored_vectors({raw_space: wanted})}
    picks: list[int | None] = []
    for ids, items in held:
        if raw_space != space:
            ids = [pid for pid in ids if pid in raw]
        if not ids:
            picks.append(None)
            continue
        vectors = loaded.vectors_of(items) if raw_space == space else vectors_decoded([raw[pid] for pid in ids])
        picks.append(int(ids[int(np.argmax(vectors @ vectors.mean(axis=0)))]))
    return picks


def similar_products(
    *,
    vector: np.ndarray,
    k: int = 25,
    exclude_ids: frozenset[int] = frozenset(),
    allowed_ids: np.ndarray | None = None,
    fresh: list[tuple[int, int, bytes]] | None = None,
    current: dict[int, int | None] | None = None,
    depth: int | None = None,
) -> list[Neighbour]:
    """The ``k`` products nearest to ``vector`` (cosine), best first, none of ``exclude_ids``.

    Searches the published Annoy index plus, exactly, every vector stored since
    it was built, and keeps only candidates whose stored vector is the one the
    index holds: products deleted or re-imaged never appear. ``allowed_ids`` (a
    sorted int64 array) restricts the result to those products; its results
    match an exact search over the allowed products' vectors. ``fresh`` is
    ``delta_rows`` read already in this request (a trail's several searches
    read it once), ``current`` this request's record of which vector is each
    product's (a trail's searches look each candidate up once; added to).
    ``depth`` sizes the index search for fewer than ``k`` (a re-rank's deep
    pool): the rest come from the margin that search returns anyway (about
    twice what it is sized for), and it is searched deeper only when that
    does not hold them.
    Raises SimilarityUnavailable when no index can answer.
    """
    with stage("index"):
        return _similar_products(vector=vector, k=k, exclude_ids=exclude_ids, allowed_ids=allowed_ids, fresh=fresh,
                                 current=current, depth=depth)  # fmt: skip


def _similar_products(
    *,
    vector: np.ndarray,
    k: int,
    exclude_ids: frozenset[int],
    allowed_ids: np.ndarray | None,
    fresh: list[tuple[int, int, bytes]] | None,
    current: dict[int, int | None] | None = None,
    depth: int | None = None,
) -> list[Neighbour]:
    space = runtime.active_space()
    vector = np.asarray(vector, dtype=np.float32)
    allowed = None if allowed_ids is None else np.asarray(allowed_ids, dtype=np.int64)
    loaded = searchable_index(space)
    if loaded is None and Embedding.objects.filter(space=space).count() > EXACT_FALLBACK_MAX:
        raise SimilarityUnavailable("The similarity index is being built; please try again in a minute.")

    best: dict[int, float] = {}
    fresh = delta_rows(space=space, loaded=loaded) if fresh is None else fresh
    fresh_products = {pid for pid, _, _ in fresh}
    passing = _passes(np.fromiter((pid for pid, _, _ in fresh), dtype=np.int64, count=len(fresh)), allowed)
    for (product_id, _, score), ok in zip(_exact(vector, fresh), passing, strict=True):
        if ok and product_id not in exclude_ids:
            best[product_id] = score

    if loaded is not None:
        want = k + len(exclude_ids) + 10
        sized_for = None if depth is None else depth + len(exclude_ids) + 10
        while True:
            found = _index_candidates(loaded, vector, want=want, allowed=allowed, sized_for=sized_for)
            candidates = [row for row in found if row[0] not in exclude_ids and row[0] not in fresh_products]
            for pid, _, score in _still_current(space=space, candidates=candidates, k=k, current=current):
                best.setdefault(pid, score)
            if len(best) >= k or len(found) < want or want >= loaded.meta.count:
                break
            want, sized_for = min(loaded.meta.count, want * 4), None
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
    return [Neighbour(product_id=pid, score=score) for pid, score in ranked[:k]]


def index_delivery(*, space: str) -> dict[str, object] | None:
    """This node's copy of the store's published build (``recommender.delivery``); None without a store."""
    store = runtime.index_store()
    if store is None:
        return None
    state = delivery_state_read(runtime.index_dir(space), store=store.kind)
    return delivery_report(state, interval_s=settings.INDEX_FETCH_INTERVAL_S)


def index_status() -> dict[str, object]:
    """What /api/status reports about the encoder, the index and the embedding queue."""
    choice = runtime.encoder_choice()
    space = runtime.active_space()
    index: dict[str, object] | None = None
    try:
        loaded = published_index(space)
        meta = loaded.meta if loaded is not None else None
    except IndexOfAnotherSpace as exc:
        meta = exc.meta
    except IndexCorrupt:
        meta = None
        # The reason (with file paths) goes to the log, not to clients.
        logger.exception("The published index cannot be read")
        index = {"error": "The published index is damaged; it is being rebuilt."}
    if meta is not None:
        index = {
            "version": meta.version,
            "space": meta.space,
            "count": meta.count,
            "dim": meta.dim,
            "n_trees": meta.n_trees,
            "built_at": meta.built_at,
            "build_seconds": meta.build_seconds,
            "matches_active_space": meta.space == space,
        }
    products = states_count()
    return {
        "encoder": {
            "space": space,
            "name": runtime.SPACE_ENCODERS[runtime.space_encoder_id(space)],
            "projection": space.partition("+")[2] or None,
            "note": choice.note if runtime.space_encoder_id(space) == choice.space else None,
        },
        "index": index,
        "delivery": index_delivery(space=space),
        "products": {"total": sum(products.values()), **products},
        "awaiting_embedding": products["pending"] + products["processing"],
        "embedding_per_second": round(states_done_since(seconds=RATE_WINDOW_S) / RATE_WINDOW_S, 3),
    }
