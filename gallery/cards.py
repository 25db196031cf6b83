"""What a grid shows of products (cards), and per-process memory of what is costly to work out.

The ids each filter passes (a scan of the catalog: tens of milliseconds at
44,000 products) and the starting grid (an aggregate over it) change only when
products do, so each web process keeps them per catalog version: the latest
``updated_at``, one look-up on its index per request. Saving or creating a
product moves it. A deletion does not, and needs not: a deleted product has
no vector left to be found by, and cards are always read fresh (one indexed
query per grid), with the shopper's filter applied again, so a product edited
out of a filter, or deleted, is never shown. Bounded: at most MEMORY_MAX
entries are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.db.models import Max

from gallery.filters import ProductFilters
from gallery.models import Product

MAX_PRODUCT_ID = 2**63 - 1
MEMORY_MAX = 256
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


CatalogVersion = datetime | None


def catalog_version() -> CatalogVersion:
    """The latest ``updated_at`` of any product: moves whenever a product is saved or created."""
    return Product.objects.aggregate(latest=Max("updated_at"))["latest"]


_UNSET = object()


class _Memory:
    """Everything remembered for one catalog version; replaced whole when the version moves."""

    def __init__(self, version: object) -> None:
        self.version = version
        self.values: OrderedDict[object, object] = OrderedDict()
        self.lock = threading.Lock()

    def get_or_compute(self, key: object, compute: Callable[[], object]) -> object:
        value = self.values.get(key, _UNSET)
        if value is _UNSET:
            value = compute()
            with self.lock:
                self.values[key] = value
                while len(self.values) > MEMORY_MAX:
                    self.values.popitem(last=False)
        return value


_memory = _Memory(_UNSET)


def _current(version: CatalogVersion | object) -> _Memory:
    global _memory
    version = catalog_version() if version is _UNSET else version
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


def cards_get(product_ids: Iterable[int], *, filters: ProductFilters | None = None) -> dict[int, Card]:
    """Cards of the given products that exist (and pass ``filters``), by id: one query, read fresh."""
    from django.core.files.storage import default_storage

    # Ids beyond what the column holds name no product (and would overflow the database driver).
    ids = [i for i in dict.fromkeys(int(i) for i in product_ids) if 0 < i <= MAX_PRODUCT_ID]
    if not ids:
        return {}
    rows = Product.objects.filter(id__in=ids)
    if filters:
        rows = rows.filter(filters.q())
    return {row["id"]: _card(row, default_storage.url) for row in rows.values(*_CARD_FIELDS)}


def filter_ids(filters: ProductFilters, *, version: CatalogVersion | object = _UNSET) -> np.ndarray:
    """The sorted ids of the products passing ``filters`` (int64), remembered per catalog version."""

    def compute() -> np.ndarray:
        rows = Product.objects.filter(filters.q()).order_by("id").values_list("id", flat=True)
        return np.fromiter(rows, dtype=np.int64)

    return _current(version).get_or_compute(("filter", filters.values), compute)


def remembered(key: object, compute: Callable[[], object], *, version: CatalogVersion | object = _UNSET) -> object:
    """``compute()`` once per catalog version under ``key`` (the starting grid, the filter menus)."""
    return _current(version).get_or_compute(("value", key), compute)


def forget() -> None:
    """Drop everything remembered (tests that change the catalog within one version)."""
    global _memory
    _memory = _Memory(_UNSET)
