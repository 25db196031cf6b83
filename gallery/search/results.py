"""A search's result: the products found, best first, and the words the page and the API say about them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from config.timing import stage
from gallery.cards import Card, card_shown, cards_get
from gallery.filters import FILTER_FIELDS, ProductFilters
from gallery.models import Product
from gallery.search.ranking import QueryWord, query_plan, search_rank
from gallery.search.serving import search_index, search_index_mark_stale


@dataclass(frozen=True)
class SearchResult:
    """What a text search found and how: the products, best first, and what the page and the API say."""

    query: str
    products: list[Card]
    words: tuple[QueryWord, ...] = ()
    complete: int = 0  # the first ``complete`` products hold every word
    matched: dict[int, tuple[str, ...]] = field(default_factory=dict)  # product id -> the words it holds

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products)

    def __len__(self) -> int:
        return len(self.products)

    @property
    def partial(self) -> bool:
        """Some products shown hold only some of the words."""
        return bool(self.words) and self.complete < len(self.products)

    @property
    def corrections(self) -> dict[str, str]:
        """Typed word -> the catalog word searched instead."""
        return {w.typed: w.searched for w in self.words if w.corrected}

    @property
    def related(self) -> dict[str, list[str]]:
        """Typed word -> words also searched because few products hold it."""
        return {w.typed: list(w.related_shown) for w in self.words if w.related_shown}

    @property
    def words_matched(self) -> list[str]:
        """Words (as searched) that at least one product shown holds."""
        held = {word for words in self.matched.values() for word in words}
        return [w.searched for w in self.words if w.searched in held]

    @property
    def words_unmatched(self) -> list[str]:
        held = set(self.words_matched)
        return [w.searched for w in self.words if w.searched not in held]

    @property
    def notice(self) -> str:
        """One line saying what the grid shows when it is not simply every word matched; "" otherwise."""
        if not self.products or not self.words:
            return ""
        searched = " ".join(w.searched for w in self.words)
        parts = []
        if self.corrections:
            parts.append(f"Showing results for “{searched}”.")
            subject = f"“{searched}”"
        else:
            subject = f"“{self.query}”"
        if self.partial:
            tail = self.products[self.complete :]
            tail_words = _words_listed(
                [word for product in tail for word in self.matched.get(product.id, ())], order=self._display_order()
            )
            if self.complete == 0:
                parts.append(f"No exact match for {subject}; showing products matching {tail_words}.")
            else:
                count = f"{self.complete} product matches" if self.complete == 1 else f"{self.complete} products match"
                parts.append(f"Only {count} {subject}; after them, products matching {tail_words}.")
        return " ".join(parts)

    def explanation(self) -> dict[str, object]:
        """How the results came about, for the API: the notice, words matched or not, corrections."""
        return {
            "notice": self.notice,
            "words": [w.searched for w in self.words],
            "matched": self.words_matched,
            "unmatched": self.words_unmatched,
            "corrections": self.corrections,
            "related": self.related,
            "complete": self.complete,
            "partial": self.partial,
        }

    def _display_order(self) -> list[str]:
        order: list[str] = []
        for w in self.words:
            order.append(w.searched)
            order.extend(w.related_shown)
        return order


def _words_listed(words: Iterable[str], *, order: list[str]) -> str:
    present = set(words)
    listed = [f"“{w}”" for w in order if w in present]
    if len(listed) <= 1:
        return listed[0] if listed else "some of the words"
    return ", ".join(listed[:-1]) + " or " + listed[-1]


def catalog_search(*, query: str, k: int, filters: ProductFilters | None = None) -> SearchResult:
    """Search the catalog's names and column values for ``query``; the ``k`` best products passing ``filters``.

    A query without words finds nothing (callers show their starting grid instead). Reads only.
    """
    with stage("search"):  # the words' index (read or refreshed when the catalog moved), then the ranking
        index = search_index()
        words = query_plan(index, query, k=k)
        by_field = {FILTER_FIELDS[name]: value for name, value in filters.values} if filters else {}
        ranked = search_rank(index, words, k=k, filters=by_field)
    ids = [int(index.ids[number]) for number in ranked.numbers]
    # Cards, read fresh (one lean query): what the grid and the API show of each product.
    found = cards_get(ids)
    if len(found) < len(ids):
        search_index_mark_stale()  # deleted since the build: dropped now, gone from the next build
    products: list[Card] = []
    complete = 0
    matched: dict[int, tuple[str, ...]] = {}
    for position, product_id in enumerate(ids):
        product = found.get(product_id)
        if product is None or not card_shown(product):
            continue  # deleted, or taken off sale while a large catalog's index is rebuilt in the background
        products.append(product)
        if ranked.complete[position]:
            complete += 1
        held: list[str] = []
        for i in ranked.held[position]:
            if i in ranked.via_related[position]:
                held.extend(words[i].related_shown)
            else:
                held.append(words[i].searched)
        matched[product_id] = tuple(held)
    return SearchResult(query=query, products=products, words=tuple(words), complete=complete, matched=matched)
