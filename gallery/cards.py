"""Per-process memory of what a grid shows: product cards, the ids each filter passes, the starting grid.

A click's grid needs the 25 products' names and thumbnails and, with a
filter, the set of ids that pass it; none of that changes between catalog
edits, so each web process keeps them and asks the database one cheap
question per request instead: the catalog's version, (number of products,
latest ``updated_at``), read from the indexes. Any product saved, created or
deleted changes it, and every memory here is dropped at once. Bounded: at
most CARDS_MAX cards and FILTERS_MAX filter sets are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.db.models import Count, Max

from gallery.filters import ProductFilters
from gallery.models import Product

CARDS_MAX = 100_000
FILTERS_MAX = 256
_CARD_FIELDS = (
    "id",
    "name",
    "image",
    "thumbnail",
    "gender",
    "master_category",
    "sub_category",
    "article_type",
    "base_colour",
    "season",
    "year",
    "usage",
)


@dataclass(frozen=True)
class Card:
    """What a grid tile and the API show of a product."""

    id: int
    name: str
    image_url: str | None
    thumbnail_url: str | None
    gender: str
    master_category: str
    sub_category: str
    article_type: str
    base_colour: str
    season: str
    year: int | None
    usage: str


CatalogVersion = tuple[int, datetime | None]


def catalog_version() -> CatalogVersion:
    """(number of products, latest updated_at): changes whenever a product is saved, created or deleted."""
    row = Product.objects.aggregate(n=Count("id"), latest=Max("updated_at"))
    return row["n"], row["latest"]


class _Memory:
    """Everything remembered for one catalog version; replaced whole when the version moves."""

    def __init__(self, version: CatalogVersion) -> None:
        self.version = version
        self.cards: OrderedDict[int, Card | None] = OrderedDict()
        self.filters: OrderedDict[object, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()


_memory = _Memory((-1, None))


def _current(version: CatalogVersion | None) -> _Memory:
    global _memory
    version = version if version is not None else catalog_version()
    memory = _memory
    if memory.version != version:
        memory = _memory = _Memory(version)
    return memory


def _card(row: dict[str, object], storage_url: Callable[[str], str]) -> Card:
    return Card(
        id=row["id"],
        name=row["name"],
        image_url=storage_url(row["image"]) if row["image"] else None,
        thumbnail_url=storage_url(row["thumbnail"]) if row["thumbnail"] else None,
        **{name: row[name] for name in _CARD_FIELDS[4:]},
    )


def cards_get(product_ids: Iterable[int], *, version: CatalogVersion | None = None) -> dict[int, Card]:
    """Cards of the given products that exist, by id (one query for those not remembered)."""
    from django.core.files.storage import default_storage

    memory = _current(version)
    ids = list(dict.fromkeys(int(i) for i in product_ids))
    missing = [i for i in ids if i not in memory.cards]
    if missing:
        rows = {row["id"]: row for row in Product.objects.filter(id__in=missing).values(*_CARD_FIELDS)}
        with memory.lock:
            for pid in missing:
                row = rows.get(pid)
                memory.cards[pid] = _card(row, default_storage.url) if row else None
            while len(memory.cards) > CARDS_MAX:
                memory.cards.popitem(last=False)
    found = {}
    for pid in ids:
        card = memory.cards.get(pid)
        if card is not None:
            found[pid] = card
    return found


def filter_ids(filters: ProductFilters, *, version: CatalogVersion | None = None) -> np.ndarray:
    """The sorted ids of the products passing ``filters`` (int64), remembered per catalog version."""
    memory = _current(version)
    key = filters.values
    ids = memory.filters.get(key)
    if ids is None:
        ids = np.fromiter(
            Product.objects.filter(filters.q()).order_by("id").values_list("id", flat=True), dtype=np.int64
        )
        with memory.lock:
            memory.filters[key] = ids
            while len(memory.filters) > FILTERS_MAX:
                memory.filters.popitem(last=False)
    return ids


def remembered(key: object, compute: Callable[[], object], *, version: CatalogVersion | None = None) -> object:
    """``compute()`` once per catalog version under ``key`` (the starting grid, for one)."""
    memory = _current(version)
    wrapped = ("value", key)
    if wrapped not in memory.filters:
        value = compute()
        with memory.lock:
            memory.filters[wrapped] = value
    return memory.filters[wrapped]


def forget() -> None:
    """Drop everything remembered (tests that change the catalog under one version)."""
    global _memory
    _memory = _Memory((-1, None))
