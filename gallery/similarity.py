"""The similar-products grid: a refinement trail in, catalog products with scores out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gallery.models import Product
from gallery.selectors import ProductFilters
from gallery.trail import Trail
from recommender.selectors import NotEmbeddedYet, query_vector, similar_products


@dataclass(frozen=True)
class GridItem:
    product: Product
    score: float | None
    url: str | None = None


@dataclass(frozen=True)
class SimilarGrid:
    items: list[GridItem]
    trail_products: dict[int, Product] = field(default_factory=dict)
    notice: str = ""


def similar_grid(
    *,
    anchor: Product,
    trail: Trail,
    k: int,
    filters: ProductFilters | None = None,
    link: Callable[[int, Trail], str] | None = None,
) -> SimilarGrid:
    """The ``k`` products that look most like the trail: ``anchor`` and the pinned steps, away from disliked ones.

    Products on the trail never appear in the grid. When the anchor has no
    vector yet the grid is empty and ``notice`` says why. Raises
    SimilarityUnavailable when the index cannot answer.
    """
    liked = [step.product_id for step in trail.steps if step.pinned and step.product_id != anchor.id] + [anchor.id]
    trail_products = Product.objects.in_bulk(trail.product_ids)
    try:
        vector = query_vector(liked_ids=liked, disliked_ids=trail.disliked_ids)
    except NotEmbeddedYet as exc:
        return SimilarGrid(items=[], trail_products=trail_products, notice=str(exc))
    neighbours = similar_products(
        vector=vector, k=k, exclude_ids=frozenset(trail.product_ids), filters=filters.q() if filters else None
    )
    products = Product.objects.in_bulk([n.product_id for n in neighbours])
    items = [
        GridItem(products[n.product_id], n.score, link(n.product_id, trail.then(n.product_id)) if link else None)
        for n in neighbours
        if n.product_id in products
    ]
    return SimilarGrid(items=items, trail_products=trail_products)
