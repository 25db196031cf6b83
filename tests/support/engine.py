"""The vector engine's rows for tests: embedding states, stored vectors, clustered vectors."""

from __future__ import annotations

import numpy as np

from recommender import runtime
from recommender.models import EmbeddingState, EmbedStatus


def embed_status(product_id: int) -> str | None:
    """A product's embedding state as the vector engine holds it (None: the engine was never told of an image)."""
    return EmbeddingState.objects.filter(product_id=product_id).values_list("status", flat=True).first()


def engine_knows(product_id: int, *, image_version: int = 1, image_name: str = "") -> None:
    """Tell the vector engine that ``product_id`` has image ``image_version`` (as the shop does on a new image)."""
    from recommender.api import ImageRef, embedding_request

    embedding_request(
        images=[ImageRef(product_id, image_name or f"products/{product_id}-{image_version}.jpg", image_version)]
    )


def demo_rows_store(
    rows: list,
    demo_vectors: dict[int, np.ndarray],
    colours: dict[int, np.ndarray] | None = None,
    **product_fields: object,
) -> list[int]:
    """Store demo catalog rows as done products with their vectors in the active space; returns their ids.

    With ``colours`` their colour descriptors are stored too, as the embedding pipeline stores them.
    """
    from gallery.models import Product
    from recommender.colour import COLOUR_SPACE
    from recommender.models import Embedding

    space = runtime.active_space()
    Product.objects.bulk_create(
        [
            Product(
                id=row.id,
                image_version=1,
                **{key: value.format(id=row.id) for key, value in product_fields.items()},
                **row.fields,
            )
            for row in rows
        ]
    )
    EmbeddingState.objects.bulk_create(
        [
            EmbeddingState(product_id=row.id, image_name=f"demo/{row.id}.jpg", image_version=1, status=EmbedStatus.DONE)
            for row in rows
        ]
    )
    Embedding.objects.bulk_create(
        [
            Embedding(
                product_id=row.id,
                space=space,
                dim=len(demo_vectors[row.id]),
                vector=demo_vectors[row.id].astype("<f4").tobytes(),
                image_version=1,
            )
            for row in rows
        ]
    )
    if colours:
        Embedding.objects.bulk_create(
            Embedding(
                product_id=row.id,
                space=COLOUR_SPACE,
                dim=len(colours[row.id]),
                vector=colours[row.id].astype("<f4").tobytes(),
                image_version=1,
            )
            for row in rows
            if row.id in colours
        )
    return [row.id for row in rows]


def embedded(product_id: int) -> bool:
    return EmbeddingState.objects.filter(product_id=product_id, status=EmbedStatus.DONE).exists()


def clustered(n: int, dim: int, *, clusters: int = 100, noise: float = 0.8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
