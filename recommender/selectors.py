"""Reads about vectors: a product's vector, nearest neighbours, index status."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from django.db.models import Count, Q

from gallery.models import EmbedStatus, Product
from recommender import runtime
from recommender.index import IndexCorrupt, LoadedIndex
from recommender.models import Embedding

logger = logging.getLogger(__name__)

# Without a published index, vectors are searched exactly from the database up
# to this many; beyond it, similarity waits for the first build.
EXACT_FALLBACK_MAX = 5000


class SimilarityUnavailable(Exception):
    """Similar-product search cannot answer now (no usable index); says why."""


class NotEmbeddedYet(Exception):
    """The product's image has not been embedded (yet, or ever); says which."""


@dataclass(frozen=True)
class Neighbour:
    product_id: int
    score: float


def product_vector(*, product_id: int) -> np.ndarray:
    """The stored vector of a product in the active space; raises NotEmbeddedYet."""
    space = runtime.active_space()
    row = Embedding.objects.filter(product_id=product_id, space=space).values_list("vector", flat=True).first()
    if row is None:
        status = Product.objects.filter(id=product_id).values_list("embed_status", flat=True).first()
        if status == EmbedStatus.FAILED:
            raise NotEmbeddedYet("This product's image could not be analysed, so there are no similar products for it.")
        raise NotEmbeddedYet("This product's image is still being analysed; similar products appear in a few seconds.")
    return np.frombuffer(row, dtype="<f4")


def _published(space: str) -> LoadedIndex | None:
    try:
        loaded = runtime.index_reader().current()
    except IndexCorrupt as exc:
        logger.error("The published index cannot be served: %s", exc)
        from recommender.tasks import index_rebuild_request

        index_rebuild_request(reason="published index unusable")
        raise SimilarityUnavailable(
            "Similar-product search is being repaired; please try again in a minute. Text search still works."
        ) from exc
    if loaded is not None and loaded.meta.space != space:
        # Vectors of two encoders are not comparable: never query across spaces.
        logger.warning("Index %s holds %s vectors; active space is %s", loaded.meta.version, loaded.meta.space, space)
        from recommender.tasks import index_rebuild_request

        index_rebuild_request(reason=f"index built for {loaded.meta.space}, active space is {space}")
        return None
    return loaded


def _exact(vector: np.ndarray, rows: list[tuple[int, int, bytes]]) -> list[tuple[int, int, float]]:
    if not rows:
        return []
    matrix = np.frombuffer(b"".join(v for _, _, v in rows), dtype="<f4").reshape(len(rows), -1)
    scores = (matrix @ vector).tolist()
    return [(pid, eid, score) for (pid, eid, _), score in zip(rows, scores, strict=True)]


def delta_rows(*, allowed: Q, loaded: LoadedIndex | None) -> list[tuple[int, int, bytes]]:
    """(product id, embedding id, vector) of every allowed vector the published index does not hold.

    Only ids are read for the rows newer than the build's watermark; vectors
    are loaded for those the index lacks (normally a handful).
    """
    if loaded is None:
        return list(Embedding.objects.filter(allowed).values_list("product_id", "id", "vector"))
    newer = np.fromiter(
        Embedding.objects.filter(allowed, id__gt=loaded.meta.watermark).values_list("id", flat=True), dtype=np.int64
    )
    outside = newer[~loaded.holds(newer)]
    if not len(outside):
        return []
    return list(Embedding.objects.filter(id__in=outside.tolist()).values_list("product_id", "id", "vector"))


def similar_products(
    *, vector: np.ndarray, k: int = 25, exclude_ids: frozenset[int] = frozenset(), filters: Q | None = None
) -> list[Neighbour]:
    """The ``k`` products nearest to ``vector`` (cosine), best first, none of ``exclude_ids``.

    Searches the published Annoy index plus, exactly, every vector stored since
    it was built, and keeps only candidates whose stored vector is the one the
    index holds: products deleted, re-imaged or filtered out never appear.
    ``filters`` is a Q over Product fields; the index is over-fetched until
    ``k`` pass it or the catalog is exhausted.
    """
    space = runtime.active_space()
    vector = np.asarray(vector, dtype=np.float32)
    allowed = Q(space=space) & (Q(product__in=Product.objects.filter(filters)) if filters else Q())
    loaded = _published(space)
    if loaded is None:
        total = Embedding.objects.filter(allowed).count()
        if total > EXACT_FALLBACK_MAX:
            from recommender.tasks import index_rebuild_request

            index_rebuild_request(reason="no index published")
            raise SimilarityUnavailable("The similarity index is being built; please try again in a minute.")

    delta = _exact(vector, delta_rows(allowed=allowed, loaded=loaded))
    best: dict[int, float] = {}
    for product_id, _, score in delta:
        if product_id not in exclude_ids:
            best[product_id] = score

    if loaded is not None:
        want = k + len(exclude_ids)
        n = want * (8 if filters else 2) + 10
        while True:
            hits = [
                h for h in loaded.query(vector, n=n) if h.product_id not in exclude_ids and h.product_id not in best
            ]
            current = set(
                Embedding.objects.filter(allowed, product_id__in=[h.product_id for h in hits]).values_list(
                    "product_id", "id"
                )
            )
            for hit in hits:
                # The index's vector is served only while it is still the product's vector.
                if (hit.product_id, hit.embedding_id) in current:
                    best.setdefault(hit.product_id, hit.score)
            if len(best) >= want or n >= loaded.meta.count:
                break
            n = min(loaded.meta.count, n * 4)
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
    return [Neighbour(product_id=pid, score=score) for pid, score in ranked[:k]]


def index_status() -> dict[str, object]:
    """What /api/status reports about the encoder, the index and the queue."""
    choice = runtime.encoder_choice()
    try:
        loaded = runtime.index_reader().current()
        index: dict[str, object] | None = None
        if loaded is not None:
            meta = loaded.meta
            index = {
                "version": meta.version,
                "space": meta.space,
                "count": meta.count,
                "dim": meta.dim,
                "n_trees": meta.n_trees,
                "built_at": meta.built_at,
                "build_seconds": meta.build_seconds,
                "matches_active_space": meta.space == runtime.active_space(),
            }
    except IndexCorrupt as exc:
        index = {"error": str(exc)}
    counts = {
        row["embed_status"]: row["n"]
        for row in Product.objects.values("embed_status").annotate(n=Count("id")).order_by()
    }
    products = {status.value: counts.get(status.value, 0) for status in EmbedStatus}
    space = runtime.active_space()
    return {
        "encoder": {
            "space": space,
            "name": runtime.SPACE_ENCODERS[runtime.space_encoder_id(space)],
            "projection": space.partition("+")[2] or None,
            "note": choice.note if runtime.space_encoder_id(space) == choice.space else None,
        },
        "index": index,
        "products": {"total": sum(products.values()), **products},
        "awaiting_embedding": products["pending"] + products["processing"],
    }


# How hard a "not like this" pushes the grid away, relative to the pull of the liked steps.
DISLIKE_WEIGHT = 0.5


def query_vector(*, liked_ids: list[int], disliked_ids: list[int] = ()) -> np.ndarray:
    """The unit vector a refinement trail asks for.

    q = normalise(mean(liked) - DISLIKE_WEIGHT * mean(disliked)), over the
    products' stored vectors. Raises NotEmbeddedYet when no liked product has
    a vector; disliked products without one are ignored.
    """
    space = runtime.active_space()
    rows = dict(
        Embedding.objects.filter(space=space, product_id__in=[*liked_ids, *disliked_ids]).values_list(
            "product_id", "vector"
        )
    )
    liked = [np.frombuffer(rows[i], dtype="<f4") for i in liked_ids if i in rows]
    if not liked:
        product_vector(product_id=liked_ids[-1])  # raises with the reason
    query = np.mean(liked, axis=0)
    disliked = [np.frombuffer(rows[i], dtype="<f4") for i in disliked_ids if i in rows]
    if disliked:
        query = query - DISLIKE_WEIGHT * np.mean(disliked, axis=0)
    norm = float(np.linalg.norm(query))
    return (query / norm).astype(np.float32) if norm > 1e-6 else np.asarray(liked[-1], dtype=np.float32)
