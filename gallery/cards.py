"""What a grid shows of products (cards), and per-process memory of what is costly to work out.

The ids each filter passes (a scan of the catalog: tens of milliseconds at
44,000 products) and the starting grid (an aggregate over it) change only when
products do, so each web process keeps them per catalog version: the latest
``updated_at``, one look-up on its index per request. Saving or creating a
product moves it, and so does taking it off sale or back
(``gallery.services.product_availability_set`` writes ``updated_at``). A
deletion does not, and needs not: a deleted product has no vector left to be
found by, and cards are always read fresh (one indexed query per grid), with
the shopper's filter and availability applied again (``card_shown``), so a
product edited out of a filter, off sale, or deleted, is never shown. Bounded: at most MEMORY_MAX
entries are kept.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.db import connections, router
from django.db.models import Max
from django.template.defaultfilters import floatformat
from django.utils.html import conditional_escape
from django.utils.safestring import SafeString, mark_safe

from config.metrics import cache_lookup
from gallery.filters import ProductFilters
from gallery.models import Product

MAX_PRODUCT_ID = 2**63 - 1
MEMORY_MAX = 256
# Ids per statement when reading cards: under every database's limit on query parameters.
_READ_CHUNK = 900
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
    "active",
    "stock",
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
    active: bool = True  # on sale; a grid never shows an inactive product (``card_shown``)
    stock: int | None = None


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
        cache_lookup(cache="catalog-memory", hit=value is not _UNSET)
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


# A stored name made only of these (the names the shop stores: ``products/ab/<hex>.jpg``) has the
# same URL under FileSystemStorage as MEDIA_URL + name: quoting leaves it alone, and without "." or
# ".." segments (a segment never starts with a dot), a scheme or a query, joining only appends it.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")


def _storage_url() -> Callable[[str], str]:
    """``default_storage.url``, without its per-name quoting and joining for the plain names of local media."""
    from django.core.files.storage import FileSystemStorage, storages

    storage = storages["default"]  # what default_storage wraps
    if type(storage) is not FileSystemStorage:
        return storage.url  # S3 and other storages sign or rewrite URLs: always ask them
    base = storage.base_url
    if not base or not base.endswith("/") or "?" in base or "#" in base:
        return storage.url

    def plain(name: str) -> str:
        return base + name if _PLAIN_NAME.fullmatch(name) else storage.url(name)

    return plain


def _cards_read(ids: list[int]) -> list[tuple]:
    """The card fields of the products among ``ids``, by id: one plain statement per chunk of ids."""
    meta = Product._meta
    connection = connections[router.db_for_read(Product)]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(meta.get_field(name).column) for name in _CARD_FIELDS)
    table, key = quote(meta.db_table), quote(meta.pk.column)
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        for start in range(0, len(ids), _READ_CHUNK):
            part = ids[start : start + _READ_CHUNK]
            # Only the model's own table and column names are spliced in; every id is a parameter.
            placeholders = ", ".join(["%s"] * len(part))
            cursor.execute(f"SELECT {columns} FROM {table} WHERE {key} IN ({placeholders})", part)  # noqa: S608
            rows.extend(cursor.fetchall())
    rows.sort(key=lambda row: row[0])  # the ORM's order (Product.Meta.ordering), whatever the chunks
    return rows


def cards_get(product_ids: Iterable[int], *, filters: ProductFilters | None = None) -> dict[int, Card]:
    """Cards of the given products that exist (and pass ``filters``), by id: one query, read fresh.

    A grid's cards are read on every request (never remembered), so the read is
    lean: a plain statement and tuples, no model instances; the filters are the
    same exact matches as ``ProductFilters.q``, checked on the rows.
    """
    # Ids beyond what the column holds name no product (and would overflow the database driver).
    ids = [i for i in dict.fromkeys(int(i) for i in product_ids) if 0 < i <= MAX_PRODUCT_ID]
    if not ids:
        return {}
    url = _storage_url()
    cards: dict[int, Card] = {}
    for pid, name, image, thumbnail, *rest in _cards_read(ids):
        card = Card(pid, name, url(image) if image else None, url(thumbnail) if thumbnail else None, *rest)
        if not filters or filters.matches(card):
            cards[pid] = card
    return cards


def card_shown(card: Card, filters: ProductFilters | None = None) -> bool:
    """Whether a grid may show ``card``: on sale and passing ``filters``. Every grid's last check on its cards."""
    return card.active and (not filters or filters.matches(card))


def _shared(ids: np.ndarray) -> np.ndarray:
    """``ids`` made read-only: every request of this catalog version shares the array (and the engine may key
    its own memory by it)."""
    ids.flags.writeable = False
    return ids


def filter_ids(filters: ProductFilters, *, version: CatalogVersion | object = _UNSET) -> np.ndarray:
    """The sorted ids of the products on sale passing ``filters`` (int64), remembered per catalog version."""

    def compute() -> np.ndarray:
        rows = Product.objects.filter(filters.q(), active=True).order_by("id").values_list("id", flat=True)
        return _shared(np.fromiter(rows, dtype=np.int64))

    return _current(version).get_or_compute(("filter", filters.values), compute)


def grid_allowed_ids(filters: ProductFilters | None = None) -> np.ndarray | None:
    """The sorted ids a similarity grid may show (on sale, passing ``filters``); None when every product may.

    What the shop tells the vector engine (``allowed_ids``): with no filter and every product on sale it
    is None (the engine's unfiltered path); once any product is off sale, the ids of those on sale.
    Remembered per catalog version, which taking a product off sale or back moves.
    """
    if filters:
        return filter_ids(filters)
    memory = _current(_UNSET)

    def compute() -> np.ndarray | None:
        if not Product.objects.filter(active=False).exists():
            return None
        rows = Product.objects.filter(active=True).order_by("id").values_list("id", flat=True)
        return _shared(np.fromiter(rows, dtype=np.int64))

    return memory.get_or_compute(("on-sale",), compute)


def remembered(key: object, compute: Callable[[], object], *, version: CatalogVersion | object = _UNSET) -> object:
    """``compute()`` once per catalog version under ``key`` (the starting grid, the filter menus)."""
    return _current(version).get_or_compute(("value", key), compute)


def forget() -> None:
    """Drop everything remembered (tests that change the catalog within one version)."""
    global _memory
    _memory = _Memory(_UNSET)


def grid_tiles_html(items: Iterable[object]) -> SafeString:
    """The grid's tiles (``templates/gallery/_grid.html``), rendered here rather than node by node.

    ``items`` are grid items (``product``: a card, ``score``, ``url``, ``view_url``: the "view product"
    link). The markup is exactly what the template's loop gave (tests/test_click_path.py renders both):
    names and URLs escaped as autoescape does, scores through the same ``floatformat``. A grid of 25 costs a few
    milliseconds in template nodes and a fraction of one here.
    """
    parts: list[str] = []
    for item in items:
        product, score, url = item.product, item.score, conditional_escape(item.url)
        name = conditional_escape(product.name)
        title = f"{name} · similarity {floatformat(score, '3')}" if score is not None else name
        thumbnail = product.thumbnail_url
        image = (
            f'\n      <img src="{conditional_escape(thumbnail)}" alt="{name}" loading="lazy" decoding="async" '
            'width="160" height="213">\n      '
            if thumbnail
            else '<span class="noimage">no image</span>'
        )
        shown = (
            f'<span class="score" data-score="{floatformat(score, "4")}">{floatformat(score, "2")}</span>'
            if score is not None
            else ""
        )
        view_url = getattr(item, "view_url", None)
        view = (
            f'\n    <p class="view"><a href="{conditional_escape(view_url)}" rel="nofollow">View product</a></p>'
            if view_url
            else ""
        )
        parts.append(
            f'\n  <li class="card">\n    <a href="{url}" hx-get="{url}" hx-target="#results" hx-select="#results" '
            f'hx-swap="outerHTML" hx-push-url="true"\n       title="{title}">\n      {image}\n'
            f'      <span class="name">{name}</span>\n      {shown}\n    </a>{view}\n  </li>\n  '
        )
    return mark_safe("".join(parts))  # noqa: S308 - every value above is escaped or a formatted number
