"""Reads of the catalog: text search, the starting grid, filter choices."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count

from gallery.cards import Card, card_shown, cards_get, catalog_version, remembered
from gallery.filters import FILTER_FIELDS, ProductFilters, text_clean
from gallery.models import Product
from gallery.search import MAX_WORDS, SearchResult, catalog_search, query_tokens
from recommender import api
from recommender.api import SimilarityUnavailable

_clean = text_clean


def query_normalise(query: str) -> str:
    """The query as searched: control characters dropped, capped, whitespace folded."""
    return " ".join(_clean(query)[: settings.SEARCH_QUERY_MAX_CHARS].split())


def query_words(query: str) -> list[str]:
    """The folded words of a query as search reads them (``T-shirt`` gives ``tshirt``), at most ``MAX_WORDS``."""
    return query_tokens(query_normalise(query))[:MAX_WORDS]


def product_search(*, query: str, k: int = 25, filters: ProductFilters | None = None) -> SearchResult:
    """The ``k`` products that best match ``query``, best first, with what the page and the API say of them.

    Matching, corrections and ranking are ``gallery.search``'s (plurals, typos, stop words, column
    values, partial matches when no product holds every word). A query without words gives the
    starting grid. Reads only.
    """
    query = query_normalise(query)
    if not query_words(query):
        return SearchResult(query=query, products=starting_grid(k=k, filters=filters))
    return catalog_search(query=query, k=k, filters=filters)


def starting_grid(*, k: int = 25, filters: ProductFilters | None = None) -> list[Card]:
    """A varied first grid: a typical product of each of the most common article types, then the rest by id.

    Typical is the product that looks most like its type as a whole (the engine's ``typical_products``),
    so a shopper who wants something of a kind the grid does not show clicks the nearest kind's typical
    look, not its oddest. The ids are worked out once per catalog version and published build in each
    process; the products are read fresh, as cards, with the filters checked again on them.
    """
    ids = starting_grid_ids(k=k, filters=filters)
    by_id = cards_get(ids, filters=filters)
    return [by_id[i] for i in ids if i in by_id and card_shown(by_id[i])]


def starting_grid_ids(*, k: int = 25, filters: ProductFilters | None = None) -> list[int]:
    """The ids of ``starting_grid``, remembered per catalog version and build (deleted products may be among them)."""
    qs = Product.objects.filter(active=True)
    if filters:
        qs = qs.filter(filters.q())

    def compute() -> list[int]:
        types = list(
            qs.values("article_type")
            .annotate(n=Count("id"))
            .order_by("-n", "article_type")
            .values_list("article_type", flat=True)[:k]
        )
        members: dict[str, list[int]] = {kind: [] for kind in types}
        for kind, pid in qs.filter(article_type__in=types).order_by("id").values_list("article_type", "id"):
            members[kind].append(pid)
        groups = [members[kind] for kind in types]
        try:
            typical = api.typical_products(groups=groups)
        except SimilarityUnavailable:
            typical = [None] * len(groups)
        # Without a build (a new catalog, a build under repair), a type's first product stands for it.
        ids = [pick if pick is not None else group[0] for pick, group in zip(typical, groups, strict=True)]
        if len(ids) < k:
            ids += list(qs.exclude(id__in=ids).order_by("id").values_list("id", flat=True)[: k - len(ids)])
        return ids

    key = ("starting-grid", k, filters.values if filters else (), api.published_version())
    return remembered(key, compute)


def filter_choices_key() -> str:
    """The shared cache's key of the filter menus of the catalog's current version."""
    return "gallery:filter-choices:" + hashlib.blake2b(str(catalog_version()).encode(), digest_size=12).hexdigest()


def filter_choices() -> dict[str, list[str]]:
    """Values the filter menus offer, most common first.

    Remembered per catalog version in each process (a page asks nothing of Redis for them), and worked out once
    per version for all of them through the shared cache.
    """

    def compute() -> dict[str, list[str]]:
        return {
            name: [
                row[field]
                for row in Product.objects.filter(active=True)
                .exclude(**{field: ""})
                .values(field)
                .annotate(n=Count("id"))
                .order_by("-n", field)[:60]
            ]
            for name, field in FILTER_FIELDS.items()
        }

    def shared() -> dict[str, list[str]]:
        return cache.get_or_set(filter_choices_key(), compute, timeout=3600)

    return remembered(("filter-choices",), shared)
