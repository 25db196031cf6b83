"""Reads of the catalog: text search, the starting grid, filter choices."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from django.conf import settings
from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector
from django.core.cache import cache
from django.db import connection
from django.db.models import Case, Count, IntegerField, Min, Q, QuerySet, Value, When
from django.db.models.functions import Length

from gallery.models import Product

MAX_WORDS = 8
# Filter name (as in URLs and the API) -> Product field.
FILTER_FIELDS = {
    "gender": "gender",
    "category": "master_category",
    "type": "article_type",
    "colour": "base_colour",
}


@dataclass(frozen=True)
class ProductFilters:
    """Exact-match filters a shopper picked; empty values mean no filter."""

    values: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> ProductFilters:
        picked = []
        for name in FILTER_FIELDS:
            value = _clean(str(data.get(name) or ""))[:64].strip()
            if value:
                picked.append((name, value))
        return cls(tuple(picked))

    def q(self, prefix: str = "") -> Q:
        return Q(**{f"{prefix}{FILTER_FIELDS[name]}": value for name, value in self.values})

    def __bool__(self) -> bool:
        return bool(self.values)

    def as_dict(self) -> dict[str, str]:
        return dict(self.values)


def _clean(text: str) -> str:
    # Control characters (NUL included) never reach the database.
    return "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch in " \t")


def query_normalise(query: str) -> str:
    """The query as searched: control characters dropped, capped, whitespace folded."""
    return " ".join(_clean(query)[: settings.SEARCH_QUERY_MAX_CHARS].split())


def query_words(query: str) -> list[str]:
    """Lower-cased words of a query (letters and digits; ``T-shirt`` gives ``t``, ``shirt``)."""
    return [w for w in re.findall(r"\w+", query_normalise(query).lower())][:MAX_WORDS]


def product_search(*, query: str, k: int = 25, filters: ProductFilters | None = None) -> list[Product]:
    """Products whose name contains every word of ``query``, best first.

    Ranking: names holding more of the words as whole words first, then shorter
    names, then id. PostgreSQL ranks with its full-text search; SQLite with word
    boundaries. An empty query gives the starting grid.
    """
    words = query_words(query)
    if not words:
        return starting_grid(k=k, filters=filters)
    qs = Product.objects.all()
    if filters:
        qs = qs.filter(filters.q())
    for word in words:
        qs = qs.filter(name__icontains=word)
    return list(_ranked(qs, words)[:k])


def _ranked(qs: QuerySet[Product], words: list[str]) -> QuerySet[Product]:
    if connection.vendor == "postgresql":
        vector = SearchVector("name", config="simple")
        query = SearchQuery(" ".join(words), config="simple", search_type="plain")
        return qs.annotate(rank=SearchRank(vector, query), name_length=Length("name")).order_by(
            "-rank", "name_length", "id"
        )
    whole_words = sum(
        (
            Case(
                When(name__iregex=rf"\b{re.escape(word)}\b", then=Value(1)),
                default=Value(0),
                output_field=IntegerField(),
            )
            for word in words
        ),
        start=Value(0),
    )
    return qs.annotate(rank=whole_words, name_length=Length("name")).order_by("-rank", "name_length", "id")


def starting_grid(*, k: int = 25, filters: ProductFilters | None = None) -> list[Product]:
    """A varied first grid: the first product of each of the most common article types, then the rest by id."""
    qs = Product.objects.all()
    if filters:
        qs = qs.filter(filters.q())
    firsts = (
        qs.values("article_type")
        .annotate(first=Min("id"), n=Count("id"))
        .order_by("-n", "article_type")
        .values_list("first", flat=True)[:k]
    )
    ids = list(firsts)
    if len(ids) < k:
        ids += list(qs.exclude(id__in=ids).order_by("id").values_list("id", flat=True)[: k - len(ids)])
    by_id = qs.in_bulk(ids)
    return [by_id[i] for i in ids if i in by_id]


def filter_choices() -> dict[str, list[str]]:
    """Values the filter menus offer, most common first; cached briefly."""

    def compute() -> dict[str, list[str]]:
        return {
            name: [
                row[field]
                for row in Product.objects.exclude(**{field: ""})
                .values(field)
                .annotate(n=Count("id"))
                .order_by("-n", field)[:60]
            ]
            for name, field in FILTER_FIELDS.items()
        }

    return cache.get_or_set("gallery:filter-choices", compute, timeout=300)
