"""What a grid shows of products (cards), and per-process memory of what is costly to work out.

Everything here is remembered per catalog version (``catalog_version``): the newest ``updated_at``, the
products saved in the last CATALOG_SETTLE_S seconds and the newest deletion's number, read once per read
request (``catalog_version_held``). Saving or creating a product moves it, taking
one off sale or back does too (``gallery.services.product_availability_set`` writes ``updated_at``), and so
does a deletion (``gallery.services.products_delete`` numbers it). So:

* the ids each filter passes (a scan of the catalog: tens of milliseconds at 44,000 products) and the
  starting grid are worked out once per version (``filter_ids``, ``remembered``; at most MEMORY_MAX), a
  filter's ids from the version before's and the products changed since where few changed;
* each process holds the cards it has shown (``cards_get``), and when the version moves drops only the
  products saved or deleted since: a grid's cards cost no query once its products have been shown once.

A grid still applies the shopper's filter and availability to its cards (``card_shown``), so a product
edited out of a filter, off sale, or deleted, is never shown.
"""

from __future__ import annotations

import hashlib
import threading
import time
import typing
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta

import numpy as np
from django.db import connections, router
from django.db.models import Value
from django.utils import timezone

from config.metrics import cache_lookup
from config.timing import stage
from gallery.filters import FILTER_FIELDS, ProductFilters
from gallery.links import storage_url
from gallery.models import Product, ProductDeletion

MAX_PRODUCT_ID = 2**63 - 1
MEMORY_MAX = 256
# Cards each process holds at most (a card's row is a few hundred bytes: ~30 MB at 100,000).
CARDS_HELD_MAX = 100_000
# A save that commits up to this long after its ``updated_at`` was set (a slow transaction committing after a
# newer one) still moves the version and is re-read: the products saved this recently, with their times,
# are part of it. Beyond SETTLING_ROWS_MAX of them (an import) the version moves every second.
CATALOG_SETTLE_S = 60
SETTLING_ROWS_MAX = 200
# Ids per statement when reading cards: under every database's limit on query parameters.
_READ_CHUNK = 900


def _said(description: str) -> dict[str, str]:
    return {"description": description}


@dataclass(frozen=True)
class Card:
    """What a grid tile and the API show of a product: the one description of it (the API's JSON, its OpenAPI
    schema and the card reads all follow these fields)."""

    id: int = field(metadata=_said("The catalog's own product id"))
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
    # On sale; a grid never shows an inactive product (``card_shown``).
    active: bool = field(default=True, metadata=_said("On sale; grids show only products on sale"))
    stock: int | None = field(default=None, metadata=_said("Units in stock, where counted"))

    def as_json(self, absolute: Callable[[str], str]) -> dict[str, object]:
        """The card's fields as the API shows them, in order; ``absolute`` makes its image URLs absolute."""
        data = {name: getattr(self, name) for name in _CARD_JSON}
        for name in ("image_url", "thumbnail_url"):
            if data[name]:
                data[name] = absolute(data[name])
        return data


_CARD_JSON = tuple(f.name for f in fields(Card))
# The product's column behind each of the card's fields, in order (the image names behind their URLs).
_CARD_FIELDS = tuple(name.removesuffix("_url") for name in _CARD_JSON)
_JSON_TYPES = {int: "integer", str: "string", bool: "boolean", float: "number"}


def card_json_schema() -> dict[str, dict[str, object]]:
    """The JSON schema (OpenAPI) of each of ``Card.as_json``'s properties, from the dataclass's fields."""
    hints = typing.get_type_hints(Card)
    schema: dict[str, dict[str, object]] = {}
    for f in fields(Card):
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        names = [_JSON_TYPES[kind] for kind in kinds if kind is not type(None)]
        schema[f.name] = {"type": [*names, "null"] if type(None) in kinds else names[0], **f.metadata}
    return schema


@dataclass(frozen=True)
class CatalogVersion:
    """The catalog's state as every cache of it is keyed: it moves on each save, creation and deletion."""

    latest: str | None  # the newest ``updated_at``, as the database writes it (None: an empty catalog)
    settling: str  # a digest of the products saved in the last CATALOG_SETTLE_S seconds, with their times
    deletions: int  # the newest deletion's number (0: none yet)
    # When it was read, less CATALOG_SETTLE_S: every product saved since this version was read has an
    # ``updated_at`` after it. Not part of the version.
    settled_before: datetime = field(compare=False, repr=False, default=datetime.min.replace(tzinfo=UTC))

    def __str__(self) -> str:
        return f"{self.latest}|{self.settling}|{self.deletions}"


def _catalog_version_read() -> CatalogVersion:
    settled_before = timezone.now() - timedelta(seconds=CATALOG_SETTLE_S)
    product, deletion = Product._meta, ProductDeletion._meta
    connection = connections[router.db_for_read(Product)]
    quote = connection.ops.quote_name
    table, key = quote(product.db_table), quote(product.pk.column)
    updated = quote(product.get_field("updated_at").column)
    # One statement, each part one look-up on an index (updated_at, the deletions' key): the newest save (0),
    # the newest deletion (1), the saves of the last CATALOG_SETTLE_S seconds (2). Only the models' own
    # table and column names are spliced in; values are parameters.
    sql = (
        f"SELECT 0, CAST(MAX({updated}) AS TEXT), NULL FROM {table} "  # noqa: S608
        f"UNION ALL SELECT 1, NULL, MAX({quote(deletion.pk.column)}) FROM {quote(deletion.db_table)} "
        f"UNION ALL SELECT * FROM (SELECT 2, CAST({updated} AS TEXT), {key} FROM {table} "
        f"WHERE {updated} >= %s ORDER BY {updated} DESC LIMIT %s) AS recent"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [connection.ops.adapt_datetimefield_value(settled_before), SETTLING_ROWS_MAX + 1])
        rows = cursor.fetchall()
    latest = next(value for part, value, _ in rows if part == 0)
    deletions = next(number for part, _, number in rows if part == 1)
    recent = sorted((number, value) for part, value, number in rows if part == 2)
    if len(recent) > SETTLING_ROWS_MAX:
        # Saves are pouring in (an import): the version is of this second, caches of it live as long.
        settling = f"busy@{int(time.time())}"
    else:
        settling = hashlib.blake2b(repr(recent).encode(), digest_size=8).hexdigest()
    return CatalogVersion(latest, settling, int(deletions or 0), settled_before)


# The version a read request holds (``catalog_version_held``): one read per request, not one per cache.
_held_version: ContextVar[list[CatalogVersion] | None] = ContextVar("catalog_version_held", default=None)


def catalog_version() -> CatalogVersion:
    """The catalog's version: moves whenever a product is saved, created or deleted.

    Inside ``catalog_version_held`` it is read once and kept for the rest of the block.
    """
    held = _held_version.get()
    if held is None:
        return _catalog_version_read()
    if not held:
        held.append(_catalog_version_read())
    return held[0]


def deletion_numbered(sender: type, instance: Product, **kwargs: object) -> None:
    """Number a product's deletion, in the deleting transaction (``post_delete``: however it is deleted, the
    ORM sends it for each product): the catalog's version moves and every process drops the card."""
    ProductDeletion.objects.create(product_id=instance.pk)


@contextmanager
def catalog_version_held() -> Iterator[None]:
    """Read the catalog's version at most once in this block (a read request: it writes nothing)."""
    token = _held_version.set([])
    try:
        yield
    finally:
        _held_version.reset(token)


_UNSET = object()


class _Memory:
    """Everything remembered for one catalog version; replaced whole when the version moves.

    A new version's memory keeps each filter's ids of the newest earlier version that worked them out
    (``earlier``: key -> (version, ids)), so that a filter is brought up to date from the few products changed
    since instead of scanning the catalog again.
    """

    def __init__(self, version: object, earlier: _Memory | None = None) -> None:
        self.version = version
        self.values: OrderedDict[object, object] = OrderedDict()
        self.lock = threading.Lock()
        self.earlier: dict[object, tuple[object, np.ndarray]] = {}
        if earlier is not None:
            carried = dict(earlier.earlier)
            with earlier.lock:
                for key, ids in earlier.values.items():
                    if key[0] == "filter":
                        carried.pop(key, None)  # moved to the end: the newest come last
                        carried[key] = (earlier.version, ids)
            self.earlier = dict(list(carried.items())[-MEMORY_MAX:])  # the newest MEMORY_MAX filters

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
        memory = _memory = _Memory(version, earlier=memory)
    return memory


def _cards_select() -> tuple[object, str]:
    """The database connection and ``SELECT <the card fields> FROM <products>``: only the model's own table and
    column names are spliced in; every value goes as a parameter."""
    meta = Product._meta
    connection = connections[router.db_for_read(Product)]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(meta.get_field(name).column) for name in _CARD_FIELDS)
    return connection, f"SELECT {columns} FROM {quote(meta.db_table)}"  # noqa: S608


def _cards_read(ids: list[int]) -> list[tuple]:
    """The card fields of the products among ``ids``: one plain statement per chunk of ids."""
    connection, select = _cards_select()
    where = f"{select} WHERE {connection.ops.quote_name(Product._meta.pk.column)} IN"
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        for start in range(0, len(ids), _READ_CHUNK):
            part = ids[start : start + _READ_CHUNK]
            cursor.execute(f"{where} ({', '.join(['%s'] * len(part))})", part)
            rows.extend(cursor.fetchall())
    return rows


def _cards_read_all() -> list[tuple] | None:
    """Every product's card fields; None when the catalog holds more than CARDS_HELD_MAX products."""
    connection, select = _cards_select()
    with connection.cursor() as cursor:
        cursor.execute(f"{select} LIMIT %s", [CARDS_HELD_MAX + 1])
        rows = cursor.fetchall()
    return rows if len(rows) <= CARDS_HELD_MAX else None


def _changed_since(held: CatalogVersion, version: CatalogVersion, *, most: int | None = None) -> set[int] | None:
    """The ids saved or deleted between two versions. None: the catalog went back (e.g. a restored backup), or
    more than ``most`` were saved since."""
    if version.deletions < held.deletions or version.latest is None:
        return None
    # Unordered: the model's ordering by id would have SQLite walk every product in id order rather than
    # the few saved since through the updated_at index (211 ms at 1M products, on every move of the version).
    saved = Product.objects.filter(updated_at__gte=held.settled_before).order_by().values_list("id", flat=True)
    changed = set(saved if most is None else saved[: most + 1])
    if most is not None and len(changed) > most:
        return None
    if version.deletions > held.deletions:
        deleted = ProductDeletion.objects.filter(id__gt=held.deletions).values_list("product_id", flat=True)
        changed.update(deleted)
    return changed


class _HeldCards:
    """The card rows this process has read, valid for one catalog version.

    When the version moves, the products saved or deleted since the held one are dropped (read again when
    next shown); the rest stay. A row is a tuple of ``_CARD_FIELDS``: image names, not URLs (a storage
    that signs URLs signs them per request).
    """

    def __init__(self) -> None:
        self.rows: dict[int, tuple] = {}
        self.version: CatalogVersion | None = None
        self.lock = threading.Lock()

    def get(self, ids: list[int], version: CatalogVersion) -> dict[int, tuple]:
        with self.lock:
            if self.version is None:
                # A process's first grid reads every card at once (44,000 in a fraction of a second), so that
                # no later grid waits on a query for its cards; a catalog beyond CARDS_HELD_MAX is read as shown.
                self.rows = {row[0]: row for row in _cards_read_all() or ()}
            elif version != self.version:
                changed = _changed_since(self.version, version)
                if changed is None:
                    self.rows.clear()
                else:
                    for pid in changed:
                        self.rows.pop(pid, None)
            self.version = version
            found = {pid: row for pid in ids if (row := self.rows.get(pid)) is not None}
        missing = [pid for pid in ids if pid not in found]
        cache_lookup(cache="cards", hit=not missing)  # per grid: did it cost a query
        if missing:
            read = {row[0]: row for row in _cards_read(missing)}
            found.update(read)
            with self.lock:
                # Held only under the version they were read for: a newer one may already have dropped them.
                if self.version == version:
                    if len(self.rows) + len(read) > CARDS_HELD_MAX:
                        self.rows.clear()
                    self.rows.update(read)
        return found


_held_cards = _HeldCards()


def cards_get(product_ids: Iterable[int], *, filters: ProductFilters | None = None) -> dict[int, Card]:
    """Cards of the given products that exist (and pass ``filters``), by id in id order.

    Held per process and catalog version (``_HeldCards``: every card read at the process's first grid, those
    saved or deleted since dropped and read again when shown): a grid's cards normally cost no query. The
    filters are the same exact matches as ``ProductFilters.q``, checked on the cards.
    """
    # Ids beyond what the column holds name no product (and would overflow the database driver).
    ids = sorted({int(i) for i in product_ids if 0 < int(i) <= MAX_PRODUCT_ID})
    if not ids:
        return {}
    version = catalog_version()
    with stage("cards"):
        return _cards_of(ids, version, filters)


def _cards_of(ids: list[int], version: CatalogVersion, filters: ProductFilters | None) -> dict[int, Card]:
    rows = _held_cards.get(ids, version)
    url = storage_url()
    cards: dict[int, Card] = {}
    for pid in ids:
        row = rows.get(pid)
        if row is None:
            continue
        _, name, image, thumbnail, *rest = row
        card = Card(pid, name, url(image) if image else None, url(thumbnail) if thumbnail else None, *rest)
        if not filters or filters.matches(card):
            cards[pid] = card
    return cards


def card_shown(card: Card | Product, filters: ProductFilters | None = None) -> bool:
    """Whether a grid may show ``card`` (or a product): on sale and passing ``filters``. Every grid's last check
    on its cards, and the check of a filter's changed products."""
    return card.active and (not filters or filters.matches(card))


def _shared(ids: np.ndarray) -> np.ndarray:
    """``ids`` made read-only: every request of this catalog version shares the array (and the engine may key
    its own memory by it)."""
    ids.flags.writeable = False
    return ids


# A filter's ids are brought up to date from the products changed since the version before when at most this
# many changed (one indexed read of them); more (an import settling) and the filter is read again whole.
FILTER_DELTA_MAX = 5_000


def filter_ids(filters: ProductFilters, *, version: CatalogVersion | object = _UNSET) -> np.ndarray:
    """The sorted ids of the products on sale passing ``filters`` (int64), remembered per catalog version.

    Read whole once; when the version moves, the ids of an earlier version are brought up to date from the
    products saved or deleted since (``_changed_since``, as the held cards are): while a catalog settles after
    a burst of saves its version moves every second, and a broad filter at 1M products takes 400 ms to read.
    """
    return _filter_ids(_current(version), filters)


def _filter_ids(memory: _Memory, filters: ProductFilters) -> np.ndarray:
    key = ("filter", filters.values)

    def compute() -> np.ndarray:
        updated = _filter_updated(memory, key, filters)
        if updated is not None:
            return updated
        rows = Product.objects.filter(filters.q(), active=True).order_by("id").values_list("id", flat=True)
        return _shared(np.fromiter(rows, dtype=np.int64))

    return memory.get_or_compute(key, compute)


def _filter_updated(memory: _Memory, key: object, filters: ProductFilters) -> np.ndarray | None:
    """The filter's ids in ``memory``'s version, from an earlier version's and the products changed since; None
    when there is nothing to start from or too much changed."""
    before, ids = memory.earlier.get(key, (None, None))
    if ids is None or not isinstance(before, CatalogVersion) or not isinstance(memory.version, CatalogVersion):
        return None
    changed = _changed_since(before, memory.version, most=FILTER_DELTA_MAX)
    if changed is None:
        return None
    changed_ids = np.asarray(sorted(changed), dtype=np.int64)
    passing: list[int] = []
    # Read by id and checked here: asked in SQL, SQLite walks the filter's own index instead (220,000 rows for
    # colour=Black at 1M: 84 ms against 5).
    columns = ["id", "active", *(FILTER_FIELDS[name] for name, _ in filters.values)]
    for start in range(0, len(changed_ids), _READ_CHUNK):
        part = changed_ids[start : start + _READ_CHUNK].tolist()
        products = Product.objects.filter(id__in=part).order_by().only(*columns)
        passing += [product.id for product in products if card_shown(product, filters)]
    # Both sorted: binary searches and one copy each way, never a sort of the whole filter (220,000 ids at 1M).
    at = np.searchsorted(ids, changed_ids).clip(max=max(len(ids) - 1, 0))
    kept = np.delete(ids, at[ids[at] == changed_ids]) if len(ids) else ids
    added = np.asarray(sorted(passing), dtype=np.int64)
    return _shared(np.insert(kept, np.searchsorted(kept, added), added))


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
        # Compared with a parameter: SQLite answers Django's "NOT active" by walking the whole index (28 ms at
        # 1M products, on every move of the version), "active = ?" with one look-up (0.05 ms).
        if not Product.objects.filter(active=Value(False)).exists():
            return None
        return _filter_ids(memory, ProductFilters())  # every product on sale, followed as a filter is

    return memory.get_or_compute(("on-sale",), compute)


def remembered(key: object, compute: Callable[[], object], *, version: CatalogVersion | object = _UNSET) -> object:
    """``compute()`` once per catalog version under ``key`` (the starting grid, the filter menus)."""
    return _current(version).get_or_compute(("value", key), compute)


def forget() -> None:
    """Drop everything remembered and held (tests that rebuild a catalog under the same ids)."""
    global _memory, _held_cards
    _memory = _Memory(_UNSET)
    _held_cards = _HeldCards()
