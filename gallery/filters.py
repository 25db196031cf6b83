"""The one registry of catalog filters: forms, views, selectors and the API description all read it.

A filter is an exact match on one Product field, named as in URLs and the API.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from django.db.models import Q

MAX_VALUE_CHARS = 64


@dataclass(frozen=True)
class Filter:
    name: str  # as in URLs and the API
    field: str  # the Product field it matches exactly
    label: str  # the menu's label
    description: str  # for the API description


FILTERS: tuple[Filter, ...] = (
    Filter("gender", "gender", "Gender", "Exact gender, e.g. Men, Women, Unisex."),
    Filter("category", "master_category", "Category", "Exact master category, e.g. Apparel, Footwear, Accessories."),
    Filter("type", "article_type", "Type", "Exact article type, e.g. Tshirts, Heels, Watches."),
    Filter("colour", "base_colour", "Colour", "Exact base colour, e.g. Navy Blue."),
)
FILTER_NAMES = tuple(f.name for f in FILTERS)
FILTER_FIELDS = {f.name: f.field for f in FILTERS}


def text_clean(text: str) -> str:
    """``text`` with control characters (NUL, line breaks...) as spaces and other invisible ones dropped.

    None of them reaches the database. Spaces, not nothing: "blue\ndenim" is two
    words, as the shopper meant; a zero-width space inside a word goes.
    """
    categories = (unicodedata.category(ch) for ch in text)
    return "".join(
        " " if cat == "Cc" else ch for ch, cat in zip(text, categories, strict=True) if cat[0] != "C" or cat == "Cc"
    )


@dataclass(frozen=True)
class ProductFilters:
    """Exact-match filters a shopper picked; empty values mean no filter."""

    values: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> ProductFilters:
        picked = []
        for name in FILTER_NAMES:
            value = text_clean(str(data.get(name) or ""))[:MAX_VALUE_CHARS].strip()
            if value:
                picked.append((name, value))
        return cls(tuple(picked))

    def q(self, prefix: str = "") -> Q:
        return Q(**{f"{prefix}{FILTER_FIELDS[name]}": value for name, value in self.values})

    def matches(self, product: object) -> bool:
        """Whether ``product`` (a Product or a card) passes every filter."""
        return all(getattr(product, FILTER_FIELDS[name]) == value for name, value in self.values)

    def __bool__(self) -> bool:
        return bool(self.values)

    def as_dict(self) -> dict[str, str]:
        return dict(self.values)
