"""The grids shoppers browse: a refinement trail or a photo in, product cards with scores out.

The shop's side of the seam: it turns trails and filters into ids, asks the
vector engine (``recommender.api``) for neighbours, and dresses the ids as
cards. Refusals arrive typed (``recommender.errors``) and travel up to the views.
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.core.cache import cache
from PIL import Image

from config.metrics import cache_lookup
from gallery.cards import Card, card_shown, cards_get, catalog_version, grid_allowed_ids, remembered
from gallery.filters import ProductFilters
from gallery.selectors import product_search, query_normalise, query_words, starting_grid_ids
from gallery.trail import Step, Trail
from recommender import api


@dataclass(frozen=True)
class GridItem:
    product: Card
    score: float | None
    url: str | None = None
    view_url: str | None = None  # the "view product" link (gallery.views.view_product), counted as a conversion


@dataclass(frozen=True)
class SimilarGrid:
    items: list[GridItem]
    trail_products: dict[int, Card] = field(default_factory=dict)
    notice: str = ""


def _allowed(filters: ProductFilters | None) -> np.ndarray | None:
    """The ids the engine may return: the products on sale passing ``filters`` (None: every product)."""
    return grid_allowed_ids(filters)


def _grid(
    neighbours: list[api.Neighbour],
    filters: ProductFilters | None,
    link: Callable[[int], str | None],
    cards: dict[int, Card] | None = None,
) -> list[GridItem]:
    """The neighbours as grid items; one deleted, off sale or edited out of ``filters`` since found is left out."""
    cards = cards if cards is not None else cards_get([n.product_id for n in neighbours])
    return [
        GridItem(cards[n.product_id], n.score, link(n.product_id))
        for n in neighbours
        if n.product_id in cards and card_shown(cards[n.product_id], filters)
    ]


def _engine_steps(trail: Trail, anchor_id: int) -> list[api.StepRef]:
    """The trail as the engine ranks it, the page's product as its newest liked step.

    The page's product is the anchor whatever its mark; when a liked step comes after it (a hand-made
    link), it moves to the end, as a click on it would have put it.
    """
    steps = list(trail.steps)
    index = next((i for i, step in enumerate(steps) if step.product_id == anchor_id), None)
    anchor = Step(anchor_id) if index is None else steps.pop(index)
    anchor = Step(anchor_id, "" if anchor.disliked else anchor.mark, anchor.aspect)
    later_liked = index is not None and any(not step.disliked for step in steps[index:])
    steps.insert(len(steps) if index is None or later_liked else index, anchor)
    return [api.StepRef(step.product_id, step.mark, step.aspect) for step in steps]


def _began_on_starting_grid(start_query: str | None) -> bool:
    """Whether a trail began on the starting grid: a start query without words (None: a photo, not the grid)."""
    return start_query is not None and not query_words(query_normalise(start_query))


def _first_grid(start_query: str | None, filters: ProductFilters | None) -> list[int]:
    """The grid a trail's first click came from: the starting grid, a text search's, or unknown (None: a photo)."""
    if start_query is None:
        return []
    if _began_on_starting_grid(start_query):
        return starting_grid_ids(k=settings.GRID_SIZE, filters=filters)
    query = query_normalise(start_query)

    def search() -> list[int]:
        return [product.id for product in product_search(query=query, k=settings.GRID_SIZE, filters=filters)]

    # Every click of a trail begun from a text search names the same first grid: searched once per catalog version.
    return remembered(("first-grid", query, filters.values if filters else ()), search)


def similar_grid(
    *,
    anchor_id: int,
    trail: Trail,
    k: int,
    filters: ProductFilters | None = None,
    link: Callable[[int, Trail], str] | None = None,
    start_query: str | None = None,
    strategy: str | None = None,
) -> SimilarGrid:
    """The ``k`` products to show for the trail anchored at ``anchor_id``, in display order.

    Ranked by the vector engine's trail strategy (``api.trail_grid``): what looks like the newest click
    comes first, its earlier clicks and pinned steps pull too, "not like this" steps sink what looks more
    like them, each step's aspect (same colour, any colour, same shape) sets how much its colour counts,
    and what the trail's earlier grids showed and the shopper passed over yields to new products about as
    alike. ``start_query`` is the text search the trail started from ("": the starting grid; None: not
    known, a photo), for a strategy that counts that grid; a trail begun on the starting grid is ranked as
    exploring (its grids span more, ``api.trail_grid``'s ``searched``). Products on the trail never appear.
    When no liked product has a vector yet the grid is empty and ``notice`` says why. ``strategy`` names the
    served strategy to rank by (a ranking experiment's arm; None: REFINE_STRATEGY). Raises SimilarityUnavailable
    when the index cannot answer.
    """
    # The rest of what decides the grid, in the shop's words: the engine keys its grid cache by it.
    context = repr((str(catalog_version()), filters.values if filters else (), start_query))
    try:
        neighbours = api.trail_grid(
            steps=_engine_steps(trail, anchor_id),
            k=k,
            allowed_ids=_allowed(filters),
            shown_first=lambda: _first_grid(start_query, filters),
            strategy=strategy,
            searched=not _began_on_starting_grid(start_query),
            context=context,
        )
    except api.NotEmbeddedYet as exc:
        return SimilarGrid(items=[], trail_products=cards_get(trail.product_ids), notice=str(exc))
    # One query for the grid's cards and the trail's.
    cards = cards_get([*trail.product_ids, *(n.product_id for n in neighbours)])
    items = _grid(neighbours, filters, lambda pid: link(pid, trail.then(pid)) if link else None, cards)
    trail_products = {pid: cards[pid] for pid in trail.product_ids if pid in cards}
    return SimilarGrid(items=items, trail_products=trail_products)


# --- Search by photo ------------------------------------------------------------------

PHOTO_THUMB_SIDE = 64
PHOTO_THUMB_TTL_S = 3600
_PHOTO_KEY_PREFIX = "gallery:photo:"
_PHOTO_TOKEN_CHARS = 22  # secrets.token_urlsafe(16)


@dataclass(frozen=True)
class PhotoGrid:
    items: list[GridItem]
    # Names the photo's thumbnail, kept briefly in the cache, so the trail's head can show it.
    photo_token: str


def _photo_thumbnail(square: np.ndarray) -> bytes:
    thumb = Image.fromarray(square)
    thumb.thumbnail((PHOTO_THUMB_SIDE, PHOTO_THUMB_SIDE))
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=70)
    return out.getvalue()


def photo_token_valid(token: str) -> bool:
    """Whether ``token`` names a thumbnail this site keeps (made by a photo search in the last hour)."""
    return photo_thumbnail_get(token) is not None


def _token_well_formed(token: str) -> bool:
    return len(token) == _PHOTO_TOKEN_CHARS and all(ch.isalnum() or ch in "-_" for ch in token)


def photo_thumbnail_get(token: str) -> bytes | None:
    """The thumbnail a photo search made for ``token`` (None once expired or never made here)."""
    if not _token_well_formed(token):
        return None
    stored = cache.get(_PHOTO_KEY_PREFIX + token)  # None with Redis down (IGNORE_EXCEPTIONS)
    cache_lookup(cache="photo-thumbnails", hit=isinstance(stored, str))
    return base64.b64decode(stored) if isinstance(stored, str) else None


def photo_grid(
    *,
    data: bytes,
    k: int,
    filters: ProductFilters | None = None,
    link: Callable[[int, str], str] | None = None,
) -> PhotoGrid:
    """The ``k`` products that look most like the photo ``data``; it is embedded in memory and dropped.

    Side effect: a 64-px thumbnail of it is kept in the cache for an hour under
    a random token, which the page's links carry (the photo itself is never
    stored). ``link(product_id, token)`` gives each item's link. Raises ImageRejected,
    PhotoSearchBusy or SimilarityUnavailable.
    """
    photo = api.photo_vector(data=data)
    neighbours = api.nearest(vector=photo.vector, k=k, allowed_ids=_allowed(filters))
    token = secrets.token_urlsafe(16)
    # Stored as text: the cache's serializer is JSON (nothing in Redis is ever unpickled). With Redis down the
    # write is dropped (IGNORE_EXCEPTIONS): the results still show, only the trail's thumbnail is missing.
    thumbnail = base64.b64encode(_photo_thumbnail(photo.image)).decode()
    cache.set(_PHOTO_KEY_PREFIX + token, thumbnail, PHOTO_THUMB_TTL_S)
    return PhotoGrid(
        items=_grid(neighbours, filters, lambda pid: link(pid, token) if link else None), photo_token=token
    )
