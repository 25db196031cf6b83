"""Text search over the catalog: the words a shopper types, matched the way shop search engines match them.

From a query to a grid:

1. **Words.** The query is case- and accent-folded (``CAFÉ`` finds "Café"; ``ｂｌｕｅ`` is ``blue``) and split
   into words. ``T-shirt`` is one word, ``tshirt``; ``Levi's`` is ``levis``; stop words (``for``, ``with``,
   ``a``) are dropped; two typed words are read as one where the catalog knows them joined (``hand bag``,
   ``t shirt``).
2. **Matching.** A product holds a word when its name holds it whole (``mens`` never matches "Womens"),
   or holds its English stem (``dresses`` finds "Dress", ``mens`` finds "Men", ``sarees`` "Saree"), or when
   the word names one of its column values: gender, category, sub-category, type, colour, usage or season
   (``kurta`` names the type "Kurtas", ``navy blue`` the colour "Navy Blue", ``footwear`` the category).
   Column values come from the catalog itself, so a new type or colour is searchable the moment it exists.
3. **Corrections.** A word the catalog does not know is replaced by the nearest word it does know: edit
   distance 1 for words of 4-7 letters, 2 from 8 letters, none below (a swap of two neighbouring letters
   is one edit), or a word it begins (``sungl``). A known word that fewer than ``k`` products hold also
   brings in the words sharing its stem's beginning (``hoodie`` also finds "Hooded"), ranked after it.
4. **Ranking.** Products holding every word come first. When none, or fewer than ``k``, do, the grid
   goes on with those holding most of the words (a word naming a product type counts most), so a
   shopper never faces an empty grid while some product matches a word. Then, word by word: a whole
   word in the name, then a column value, then a stem, then a correction; then names with fewer other
   words, then shorter names, then the lower id.

The index lives in each web process's memory, built from the catalog's rows: at 44k products about
5 MB (2 MB of numpy arrays: ids, postings, column codes; the rest the vocabulary), growing by about
40 bytes a product (``bench/search_quality.py``). A process that starts loads the copy another process
shared through Redis (numpy arrays and JSON, never pickle) instead of building it. Each search asks the
database one indexed question, the catalog's latest ``updated_at`` (from 10k products, at most once a
second per process); when it moved, the index is rebuilt: at once under 10k products, otherwise in a
background thread while searches go on with the previous index. Products deleted since a build are
dropped when fetched and bring a rebuild. Products off sale are not indexed, and one taken off sale since
the build is dropped when fetched (its card says so). Searching writes nothing to the database.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import gc
import hashlib
import io
import json
import logging
import re
import threading
import time
import unicodedata
import zipfile
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis
import snowballstemmer
from django.conf import settings
from django.db import connection
from django.db.models import Max
from django_redis import get_redis_connection
from rapidfuzz import process as fuzz_process
from rapidfuzz.distance import OSA

from gallery.cards import Card, card_shown, cards_get
from gallery.filters import FILTER_FIELDS, ProductFilters
from gallery.models import Product

logger = logging.getLogger(__name__)

MAX_WORDS = 8
# Product fields whose values a query word can name, in the order an index row carries them.
VALUE_FIELDS = ("gender", "master_category", "sub_category", "article_type", "base_colour", "usage", "season")
# Every field an index row carries: the named ones, then any other field a filter matches.
INDEX_FIELDS = tuple(dict.fromkeys([*VALUE_FIELDS, *FILTER_FIELDS.values()]))
# Fields whose values say what a product *is*: a word naming one outweighs other words when a grid
# has to drop some ("levis jeans" goes on with other jeans before other Levi's products).
KIND_FIELDS = frozenset({"master_category", "sub_category", "article_type"})
# Values that stand for "unknown" in the catalog: never a match.
BLANK_VALUES = frozenset({"", "na", "n/a", "none", "null", "-"})
# English function words; a query made only of them is searched as typed.
STOP_WORDS = frozenset(
    "a an the and or for with in on of to by at from as into per my your his her our their some any this that "
    "these those is are be it its".split()
)

# Per-word scores, the ranking's order: whole word in the name > column value > stem > correction.
SCORE_EXACT = 4
SCORE_VALUE = 3
SCORE_STEM = 2
SCORE_CORRECTED = 1
WEIGHT_WORD = 2
WEIGHT_KIND_WORD = 3

# Below this many products a rebuild runs in the search that finds the catalog changed (about 0.1 s
# of CPU at 10k); from it, in a background thread, at most once per REBUILD_INTERVAL_FACTOR times its
# own duration, while searches go on with the previous index (which then lags writes by that much).
# A count, not a duration: whether a search may see a stale index must not depend on the machine's load.
REBUILD_IN_BACKGROUND_FROM = 10_000
REBUILD_INTERVAL_FACTOR = 10
# From that size on, the version is also read at most this often per process: a search then asks the
# database one question (its products), not two.
VERSION_CHECK_INTERVAL_S = 1.0
# Writes that bypass updated_at (queryset.update()) are picked up by this age at the latest.
INDEX_MAX_AGE_S = 600
CACHE_TIMEOUT_S = 24 * 3600
CACHE_VERSION = 1

_APOSTROPHE = re.compile(r"(?<=[^\W_])['’‘`´](?=[^\W_])")
_TOKEN = re.compile(r"[^\W_]+(?:[-‐‑][^\W_]+)*")
_HYPHEN_SPLIT = re.compile(r"[-‐‑]")
_stemmer = snowballstemmer.stemmer("english")


# --- Words ----------------------------------------------------------------------------------------------------


def text_fold(text: str) -> str:
    """``text`` lower-cased the Unicode way (casefold), with compatibility forms and accents folded."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


# Stems of the catalog's own words, kept from the last build (bounded by its vocabulary); the Snowball
# stemmer is pure Python (~0.1 ms a word), so a rebuild only stems words new since.
_catalog_stems: dict[str, str] = {}


def word_stem(word: str) -> str:
    """The English (Snowball) stem of a folded word; digits and words under 3 letters are their own stem."""
    stem = _catalog_stems.get(word)
    if stem is None:
        stem = _query_stem(word)
    return stem


@functools.lru_cache(maxsize=4096)
def _query_stem(word: str) -> str:
    if len(word) < 3 or not word.isalpha():
        return word
    return _stemmer.stemWord(word)


_HYPHENS = ("-", "‐", "‑")


def _has_hyphen(text: str) -> bool:
    return "-" in text if text.isascii() else any(h in text for h in _HYPHENS)


def text_tokens(text: str, *, split_compounds: bool = False) -> list[str]:
    """The folded words of ``text``: apostrophes inside words dropped, hyphenated words joined.

    ``T-shirt`` gives ``tshirt``. With ``split_compounds`` (names), a compound whose parts all have two
    letters or more also gives its parts (``Flip-Flops``: ``flipflops``, ``flip``, ``flops``); queries
    search such a compound by its parts, so both spellings of a name find it.
    """
    folded = text_fold(text)
    if "'" in folded or not folded.isascii():
        folded = _APOSTROPHE.sub("", folded)
    tokens = _TOKEN.findall(folded)
    if not _has_hyphen(folded):
        return tokens
    words: list[str] = []
    for token in tokens:
        if not _has_hyphen(token):
            words.append(token)
            continue
        parts = _HYPHEN_SPLIT.split(token)
        splittable = all(len(part) > 1 for part in parts)
        if split_compounds or not splittable:
            words.append("".join(parts))
        if splittable:
            words.extend(parts)
    return words


def typo_budget(word: str) -> int:
    """Edits a correction may make to ``word``: none below 4 letters, 1 for 4-7, 2 from 8."""
    if len(word) < 4 or not word.isalpha():
        return 0
    return 1 if len(word) < 8 else 2


# --- The index ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueField:
    """One column: each product's value as a code into ``values``; ``values[0]`` is blank."""

    codes: np.ndarray
    values: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class IndexCore:
    """What an index is made of, and what the shared cache stores; the rest of a SearchIndex derives from it."""

    ids: np.ndarray  # int64 [N]: the product id of each number, ascending
    name_words: np.ndarray  # uint8 [N]: words in the name
    name_chars: np.ndarray  # uint16 [N]: characters in the name
    words: tuple[str, ...]  # the names' distinct words, by number
    offsets: np.ndarray  # int64 [T + 1]: postings[offsets[t]:offsets[t + 1]] hold word t
    postings: np.ndarray  # int32: product numbers, ascending within each word
    fields: dict[str, ValueField]
    stems: dict[str, str]  # every word of the names and the named columns -> its stem
    built_seconds: float


class SearchIndex:
    """The catalog's names and column values as an inverted index; products are numbered by ascending id.

    Pure data built by :func:`search_index_build`; nothing here touches Django.
    """

    def __init__(self, core: IndexCore) -> None:
        self.core = core
        self.ids, self.postings, self.offsets = core.ids, core.postings, core.offsets
        self.name_words, self.name_chars, self.fields = core.name_words, core.name_chars, core.fields
        self.words, self.built_seconds = core.words, core.built_seconds
        self.terms = {word: number for number, word in enumerate(core.words)}
        counts = np.diff(core.offsets).tolist()
        stems = core.stems
        stem_terms: dict[str, list[int]] = {}
        for number, word in enumerate(core.words):
            stem_terms.setdefault(stems[word], []).append(number)
        # a stem -> the name words that have it
        self.stem_terms = {stem: tuple(numbers) for stem, numbers in stem_terms.items()}
        # a stem -> about how many names hold it: its words' counts summed (a name rarely holds two of them)
        self.stem_docs = {stem: sum(counts[n] for n in numbers) for stem, numbers in stem_terms.items()}
        # a stem -> the column values holding it: (field, code, every stem of the value); how many products
        value_stems: dict[str, list[tuple[str, int, frozenset[str]]]] = {}
        self.value_docs: dict[str, int] = {}
        known = {word: stem for word, stem in stems.items() if word.isalpha()}
        for field_name in VALUE_FIELDS:
            column = core.fields[field_name]
            per_value = np.bincount(column.codes, minlength=len(column.values))
            for code, value in enumerate(column.values):
                if value.strip().casefold() in BLANK_VALUES:
                    continue
                value_words = [w for w in text_tokens(value) if w not in STOP_WORDS]
                value_stem_set = frozenset(stems.get(w) or word_stem(w) for w in value_words)
                for stem in value_stem_set:
                    value_stems.setdefault(stem, []).append((field_name, code, value_stem_set))
                    self.value_docs[stem] = self.value_docs.get(stem, 0) + int(per_value[code])
        self.value_stems = {stem: tuple(entries) for stem, entries in value_stems.items()}
        # Known words (letters only), for corrections: by length, sorted, their stems; and known stems by
        # length, each with the word shown for it (the one most names hold).
        lexicon: dict[int, list[str]] = {}
        for word in known:
            lexicon.setdefault(len(word), []).append(word)
        self.lexicon = {length: tuple(sorted(words)) for length, words in lexicon.items()}
        self.lexicon_sorted = tuple(sorted(known))
        self.lexicon_stem = known
        self.stem_word: dict[str, str] = {}
        held: dict[str, int] = {}
        for word, stem in known.items():
            number = self.terms.get(word)
            count = counts[number] if number is not None else 0
            if stem not in self.stem_word or count > held[stem]:
                self.stem_word[stem], held[stem] = word, count
        stem_lexicon: dict[int, list[str]] = {}
        for stem in self.stem_word:
            stem_lexicon.setdefault(len(stem), []).append(stem)
        self.stem_lexicon = {length: tuple(sorted(group)) for length, group in stem_lexicon.items()}
        self.stems_sorted = tuple(sorted(self.stem_terms))  # for prefix look-ups

    def __len__(self) -> int:
        return len(self.ids)

    def docs(self, term: int) -> np.ndarray:
        return self.postings[self.offsets[term] : self.offsets[term + 1]]

    def stem_count(self, stem: str) -> int:
        """About how many products hold ``stem`` in the name or a column value."""
        return self.stem_docs.get(stem, 0) + self.value_docs.get(stem, 0)

    def knows(self, word: str) -> bool:
        return word in self.terms or self.stem_count(word_stem(word)) > 0

    def memory_bytes(self) -> int:
        """Bytes held by the arrays (the dictionaries' strings come on top, about as much again)."""
        arrays = [self.ids, self.name_words, self.name_chars, self.offsets, self.postings]
        arrays += [f.codes for f in self.fields.values()]
        return int(sum(a.nbytes for a in arrays))


def search_index_build(rows: Iterable[Sequence[object]]) -> SearchIndex:
    """Index catalog rows ``(id, name, *INDEX_FIELDS values)``, given in ascending id order.

    Streams: only the index itself grows with the catalog, never a copy of the rows. Side effect: keeps
    the stems of the catalog's words for the next build in this process.
    """
    started = time.perf_counter()
    ids = array("q")
    words_per_name = array("B")
    chars_per_name = array("H")
    term_numbers: dict[str, int] = {}
    pair_terms = array("i")  # (word, product) pairs, one per distinct word of each name
    pair_docs = array("i")
    value_codes: dict[str, dict[str, int]] = {name: {"": 0} for name in INDEX_FIELDS}
    codes = {name: array("I") for name in INDEX_FIELDS}
    tables = [(value_codes[name], codes[name]) for name in INDEX_FIELDS]
    for number, (product_id, name, *values) in enumerate(rows):
        name = str(name or "")
        ids.append(int(product_id))
        tokens = text_tokens(name, split_compounds=True)
        words_per_name.append(min(255, len(tokens)))
        chars_per_name.append(min(65535, len(name)))
        for token in set(tokens):
            term = term_numbers.get(token)
            if term is None:
                term = term_numbers[token] = len(term_numbers)
            pair_terms.append(term)
            pair_docs.append(number)
        for (table, column), value in zip(tables, values, strict=True):
            text = str(value or "")
            code = table.get(text)
            if code is None:
                code = table[text] = len(table)
            column.append(code)

    words = tuple(term_numbers)
    term_of_pair = np.frombuffer(pair_terms, dtype=np.int32) if pair_terms else np.zeros(0, np.int32)
    doc_of_pair = np.frombuffer(pair_docs, dtype=np.int32) if pair_docs else np.zeros(0, np.int32)
    # Stable: within a word, products stay in ascending order.
    postings = doc_of_pair[np.argsort(term_of_pair, kind="stable")]
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(np.bincount(term_of_pair, minlength=len(words)), out=offsets[1:])
    fields: dict[str, ValueField] = {}
    for field_name in INDEX_FIELDS:
        table = value_codes[field_name]
        dtype = np.uint8 if len(table) <= 256 else np.uint16 if len(table) <= 65536 else np.uint32
        fields[field_name] = ValueField(codes=np.asarray(codes[field_name], dtype=dtype), values=tuple(table))
    value_words = {word for name in VALUE_FIELDS for value in fields[name].values for word in text_tokens(value)}
    stems = {word: word_stem(word) for word in (*words, *sorted(value_words - term_numbers.keys()))}
    _catalog_stems.clear()
    _catalog_stems.update(stems)
    core = IndexCore(
        ids=np.frombuffer(ids, dtype=np.int64).copy() if ids else np.zeros(0, np.int64),
        name_words=np.frombuffer(words_per_name, dtype=np.uint8).copy() if ids else np.zeros(0, np.uint8),
        name_chars=np.frombuffer(chars_per_name, dtype=np.uint16).copy() if ids else np.zeros(0, np.uint16),
        words=words,
        offsets=offsets,
        postings=postings,
        fields=fields,
        stems=stems,
        built_seconds=0.0,
    )
    index = SearchIndex(core)
    # The build's own duration decides how often it may rerun; recorded with it.
    index.built_seconds = time.perf_counter() - started
    index.core = dataclasses.replace(core, built_seconds=index.built_seconds)
    return index


class IndexDataError(ValueError):
    """Stored index bytes that are not an index this code wrote."""


_CORE_ARRAYS = {
    "ids": np.int64,
    "name_words": np.uint8,
    "name_chars": np.uint16,
    "offsets": np.int64,
    "postings": np.int32,
}


def search_index_dumps(index: SearchIndex, *, version: str) -> bytes:
    """The index as bytes (numpy arrays and JSON in an ``.npz``; no pickle), tagged with the catalog version."""
    core = index.core
    meta = {
        "format": CACHE_VERSION,
        "version": version,
        "words": core.words,
        "stems": core.stems,
        "fields": {name: column.values for name, column in core.fields.items()},
        "built_seconds": core.built_seconds,
    }
    arrays = {name: getattr(core, name) for name in _CORE_ARRAYS}
    arrays |= {f"field:{name}": column.codes for name, column in core.fields.items()}
    out = io.BytesIO()
    np.savez(out, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return out.getvalue()


def search_index_loads(data: bytes, *, version: str) -> SearchIndex | None:
    """The index stored by :func:`search_index_dumps` for ``version``; None if it is another version.

    Raises IndexDataError for bytes that are not a consistent index (never runs code from them).
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            meta = json.loads(bytes(stored["meta"]))
            if meta.get("format") != CACHE_VERSION or meta.get("version") != version:
                return None
            arrays = {name: stored[name] for name in _CORE_ARRAYS}
            fields = {
                name: ValueField(codes=stored[f"field:{name}"], values=tuple(values))
                for name, values in meta["fields"].items()
            }
        core = IndexCore(
            words=tuple(meta["words"]),
            stems=dict(meta["stems"]),
            fields=fields,
            built_seconds=float(meta["built_seconds"]),
            **arrays,
        )
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise IndexDataError(f"not a stored search index: {exc}") from exc
    _core_check(core)
    return SearchIndex(core)


def _core_check(core: IndexCore) -> None:
    n = len(core.ids)
    for name, dtype in _CORE_ARRAYS.items():
        if getattr(core, name).dtype != dtype or getattr(core, name).ndim != 1:
            raise IndexDataError(f"{name} has the wrong type")
    consistent = (
        len(core.name_words) == n
        and len(core.name_chars) == n
        and len(core.offsets) == len(core.words) + 1
        and (len(core.offsets) == 0 or int(core.offsets[-1]) == len(core.postings))
        and bool(np.all(np.diff(core.offsets) >= 0))
        and (len(core.postings) == 0 or (0 <= int(core.postings.min()) and int(core.postings.max()) < n))
        and set(core.fields) == set(INDEX_FIELDS)
        and all(len(c.codes) == n and (n == 0 or int(c.codes.max()) < len(c.values)) for c in core.fields.values())
        and all(word in core.stems for word in core.words)
    )
    if not consistent:
        raise IndexDataError("the stored arrays do not fit together")


# --- Query words ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryWord:
    """One word as searched: what was typed, and what the catalog is searched for."""

    typed: str
    searched: str  # the typed word, or the word it was joined into or corrected to
    corrected: bool = False  # the catalog does not know the typed word; ``searched`` replaces it
    related: tuple[str, ...] = ()  # stems also searched, ranked after (a word few products hold)
    related_shown: tuple[str, ...] = ()  # a name word for each related stem, to show shoppers

    @property
    def stem(self) -> str:
        return word_stem(self.searched)


def query_tokens(query: str) -> list[str]:
    """The distinct folded words of a query, in order (stop words kept), at most ``MAX_WORDS``."""
    return list(dict.fromkeys(text_tokens(query)))[:MAX_WORDS]


def _corrections(index: SearchIndex, word: str) -> list[str]:
    """Known words within ``word``'s typo budget, or that it begins, nearest first (shown forms, distinct).

    Nearest: fewest edits, then the same first letter, then the word more products hold.
    """
    budget = typo_budget(word)
    candidates: list[tuple[int, int, int, str]] = []
    if budget:
        # Compared as typed and as stems: "sandles" is two edits from "sandals" but its stem one from theirs.
        stem = word_stem(word)
        for probe, lexicon, to_stem in ((word, index.lexicon, index.lexicon_stem), (stem, index.stem_lexicon, None)):
            for length in range(len(probe) - budget, len(probe) + budget + 1):
                choices = lexicon.get(length)
                if not choices:
                    continue
                for known, distance, _ in fuzz_process.extract(
                    probe, choices, scorer=OSA.distance, score_cutoff=budget, limit=None
                ):
                    known_stem = to_stem[known] if to_stem is not None else known
                    shown = index.stem_word[known_stem]
                    candidates.append((int(distance), shown[0] != word[0], -index.stem_count(known_stem), shown))
    if len(word) >= 3 and word.isalpha():
        # A word cut short: the known words it begins count as one edit away.
        for known in _starting_with(index.lexicon_sorted, word):
            known_stem = index.lexicon_stem[known]
            if known != word:
                candidates.append((1, False, -index.stem_count(known_stem), index.stem_word[known_stem]))
    ranked = sorted(c for c in candidates if c[0] <= max(budget, 1))
    return list(dict.fromkeys(c[3] for c in ranked))


def _holders(index: SearchIndex, stem: str) -> np.ndarray:
    """Products holding ``stem`` in the name or in any column value (a mask)."""
    mask = np.zeros(len(index), dtype=bool)
    for term in index.stem_terms.get(stem, ()):
        mask[index.docs(term)] = True
    for field_name, code, _ in index.value_stems.get(stem, ()):
        mask |= index.fields[field_name].codes == code
    return mask


def _correction_in_context(index: SearchIndex, candidates: list[str], others: list[str]) -> str | None:
    """The nearest candidate that some product holds together with the query's other words.

    Without other words, the nearest. When no candidate meets the others, none: a correction that no
    product pairs with the rest ("woolen sweater" as "wooden sweater") would only add noise to the grid.
    """
    if not candidates or not others:
        return candidates[0] if candidates else None
    context = np.ones(len(index), dtype=bool)
    for stem in others:
        context &= _holders(index, stem)
    if not context.any():
        return candidates[0]  # the other words never meet either: the nearest word it is
    for candidate in candidates[:8]:
        if (context & _holders(index, word_stem(candidate))).any():
            return candidate
    return None


def _starting_with(sorted_words: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    start = bisect.bisect_left(sorted_words, prefix)
    end = bisect.bisect_left(sorted_words, prefix + "\U0010ffff", lo=start)
    return sorted_words[start:end]


def _related_stems(index: SearchIndex, word: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Known stems sharing the beginning of ``word``'s stem (one is the other plus up to two letters).

    ``hoodie`` (stem ``hoodi``) relates to ``hooded`` (stem ``hood``). Returns the stems and, for each,
    the name word most products hold, to show.
    """
    stem = word_stem(word)
    if len(stem) < 4 or not stem.isalpha():
        return (), ()
    shorter = [stem[:length] for length in range(max(4, len(stem) - 2), len(stem))]
    longer = [c for c in _starting_with(index.stems_sorted, stem) if len(stem) < len(c) <= len(stem) + 2]
    found = sorted((-index.stem_count(c), c) for c in [*shorter, *longer] if c in index.stem_terms)
    stems = tuple(candidate for _, candidate in found[:3])
    shown = tuple(index.words[max(index.stem_terms[s], key=lambda t: len(index.docs(t)))] for s in stems)
    return stems, shown


def query_plan(index: SearchIndex, query: str, *, k: int) -> list[QueryWord]:
    """The words ``query`` searches ``index`` for: stop words dropped, words joined, corrected, related."""
    tokens = query_tokens(query)
    content = [t for t in tokens if t not in STOP_WORDS] or tokens
    joined: list[tuple[str, str]] = []  # (typed, searched)
    i = 0
    while i < len(content):
        if i + 1 < len(content) and _join_wins(index, content[i], content[i + 1]):
            typed = f"{content[i]} {content[i + 1]}"
            joined.append((typed, content[i] + content[i + 1]))
            i += 2
        else:
            joined.append((content[i], content[i]))
            i += 1
    words: list[QueryWord | None] = []
    for typed, searched in joined:
        if index.knows(searched):
            related: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
            if index.stem_count(word_stem(searched)) < k:
                related = _related_stems(index, searched)
            words.append(QueryWord(typed=typed, searched=searched, related=related[0], related_shown=related[1]))
        else:
            words.append(None)
    # Unknown words are corrected after the known ones are read, in the context of those (and of the
    # corrections made before them).
    for position, (typed, searched) in enumerate(joined):
        if words[position] is not None:
            continue
        others = [w.stem for w in words if w is not None and (w.corrected or index.knows(w.searched))]
        correction = _correction_in_context(index, _corrections(index, searched), others)
        words[position] = (
            QueryWord(typed=typed, searched=searched)
            if correction is None
            else QueryWord(typed=typed, searched=correction, corrected=True)
        )
    # A correction may land on a word already searched: search it once.
    unique: dict[str, QueryWord] = {}
    for word in words:
        if word is not None:
            unique.setdefault(word.stem, word)
    return list(unique.values())


def _join_wins(index: SearchIndex, first: str, second: str) -> bool:
    """Whether two typed words are better searched as the one word the catalog knows (``hand bag``)."""
    joined = first + second
    if not index.knows(joined):
        return False
    if len(first) == 1 or len(second) == 1 or not index.knows(first) or not index.knows(second):
        return True
    together = _name_docs(index, first)
    together = np.intersect1d(together, _name_docs(index, second), assume_unique=True)
    return index.stem_count(word_stem(joined)) > len(together)


def _name_docs(index: SearchIndex, word: str) -> np.ndarray:
    numbers = index.stem_terms.get(word_stem(word), ())
    if not numbers:
        return np.zeros(0, dtype=np.int32)
    return np.unique(np.concatenate([index.docs(t) for t in numbers]))


# --- Ranking --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranked:
    """Product numbers best first, with, for each, whether it holds every word and which words it holds."""

    numbers: np.ndarray
    complete: np.ndarray  # bool per result
    held: list[tuple[int, ...]]  # per result: positions in the plan of the words it holds (related included)
    via_related: list[tuple[int, ...]]  # per result: positions held only through a related word


def _value_matches(index: SearchIndex, words: list[QueryWord]) -> list[list[tuple[str, int]]]:
    """For each word, the column values the query names that hold it: every stem of the value is searched."""
    stems = {word.stem for word in words}
    named: list[list[tuple[str, int]]] = []
    for word in words:
        named.append(
            [
                (field_name, code)
                for field_name, code, value_stems in index.value_stems.get(word.stem, ())
                if value_stems <= stems
            ]
        )
    return named


def search_rank(index: SearchIndex, words: list[QueryWord], *, k: int, filters: Mapping[str, str]) -> Ranked:
    """The ``k`` best products for the plan ``words`` among those passing ``filters`` (field -> value)."""
    n = len(index)
    empty = Ranked(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), [], [])
    if not n or not words:
        return empty
    allowed = np.ones(n, dtype=bool)
    for field_name, value in filters.items():
        column = index.fields[field_name]
        if value not in column.values:
            return empty
        allowed &= column.codes == column.values.index(value)

    coverage = np.zeros(n, dtype=np.int64)
    score = np.zeros(n, dtype=np.int64)
    in_name = np.zeros(n, dtype=np.int64)
    complete = np.ones(n, dtype=bool)
    held_masks: list[np.ndarray] = []
    related_masks: list[np.ndarray] = []
    for word, values in zip(words, _value_matches(index, words), strict=True):
        level = np.zeros(n, dtype=np.int8)
        for term in index.stem_terms.get(word.stem, ()):
            level[index.docs(term)] = SCORE_STEM
        exact = index.terms.get(word.searched)
        if exact is not None:
            level[index.docs(exact)] = SCORE_EXACT
        if word.corrected:
            level[level > 0] = SCORE_CORRECTED
        by_value = np.zeros(n, dtype=bool)
        for field_name, code in values:
            by_value |= index.fields[field_name].codes == code
        holds = (level > 0) | by_value
        related = np.zeros(n, dtype=bool)
        for stem in word.related:
            for term in index.stem_terms.get(stem, ()):
                related[index.docs(term)] = True
        related &= ~holds
        kind_word = any(field_name in KIND_FIELDS for field_name, _ in values)
        weight = WEIGHT_KIND_WORD if kind_word else WEIGHT_WORD
        coverage += weight * (holds | related)
        score += level + SCORE_VALUE * by_value + SCORE_CORRECTED * related
        in_name += (level > 0) | related
        complete &= holds
        held_masks.append(holds | related)
        related_masks.append(related)

    candidates = np.flatnonzero((coverage > 0) & allowed)
    if not len(candidates):
        return empty
    extra = np.clip(index.name_words[candidates].astype(np.int64) - in_name[candidates], 0, 255)
    # One integer per product, larger is better: complete, coverage, score, fewer other words, shorter name.
    key = (
        (complete[candidates].astype(np.int64) << 40)
        | (np.minimum(coverage[candidates], 255) << 32)
        | (np.minimum(score[candidates], 255) << 24)
        | ((255 - extra) << 16)
        | (65535 - index.name_chars[candidates].astype(np.int64))
    )
    if len(candidates) > k:
        kth = np.partition(key, len(key) - k)[len(key) - k]
        above = np.flatnonzero(key > kth)
        ties = np.flatnonzero(key == kth)[: k - len(above)]
        chosen = np.concatenate([above, ties])
    else:
        chosen = np.arange(len(candidates))
    # Best key first; equal keys by product number, that is by id.
    chosen = chosen[np.lexsort((chosen, -key[chosen]))]
    numbers = candidates[chosen]
    held = [tuple(i for i, mask in enumerate(held_masks) if mask[number]) for number in numbers]
    via = [tuple(i for i, mask in enumerate(related_masks) if mask[number]) for number in numbers]
    return Ranked(numbers=numbers, complete=complete[numbers], held=held, via_related=via)


# --- The index a process serves ---------------------------------------------------------------------------------


@dataclass
class _Served:
    index: SearchIndex
    source: str  # which database
    version: str  # the catalog's latest updated_at when the build started
    built_at: float  # time.monotonic() of the build (or load)
    stale: bool = False  # a product it returned is gone
    checked_at: float = 0.0  # time.monotonic() when the catalog's version was last read and matched


_served: _Served | None = None
_build_lock = threading.Lock()


def _catalog_version() -> str:
    latest = Product.objects.aggregate(latest=Max("updated_at"))["latest"]
    return latest.isoformat() if latest else "empty"


def _source() -> str:
    db = connection.settings_dict
    return f"{connection.vendor}:{db.get('HOST') or ''}:{db.get('PORT') or ''}:{db['NAME']}"


def _shared_key(source: str) -> str:
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"{prefix}:search-index:{CACHE_VERSION}:{digest}"


def _shared_client():  # noqa: ANN202 - redis.Redis, or None without a Redis cache
    try:
        return get_redis_connection("default")
    except NotImplementedError:  # the cache is not django-redis: no index is shared
        return None


def _shared_load(source: str, version: str) -> SearchIndex | None:
    """The index another process stored for this catalog version, if any. Never raises."""
    client = _shared_client()
    if client is None:
        return None
    try:
        data = client.get(_shared_key(source))
        return search_index_loads(data, version=version) if data else None
    except (redis.RedisError, IndexDataError) as exc:
        logger.warning("Shared search index not used: %s", exc)
        return None


def _shared_store(source: str, version: str, index: SearchIndex) -> None:
    """Offer ``index`` to other processes (one entry per database, replaced by each build). Never raises."""
    client = _shared_client()
    if client is None:
        return
    try:
        client.set(_shared_key(source), search_index_dumps(index, version=version), ex=CACHE_TIMEOUT_S)
    except redis.RedisError as exc:
        logger.warning("Search index not shared: %s", exc)


def _rows() -> Iterator[tuple]:
    # Products off sale are not indexed; taking one off sale or back moves the catalog version.
    products = Product.objects.filter(active=True).order_by("id")
    return products.values_list("id", "name", *INDEX_FIELDS).iterator(chunk_size=5000)


def _fresh_enough(served: _Served, *, version: str) -> bool:
    age = time.monotonic() - served.built_at
    if age > INDEX_MAX_AGE_S:
        return False
    if served.version == version and not served.stale:
        return True
    # The catalog changed: a slow build reruns no more often than REBUILD_INTERVAL_FACTOR times its duration.
    slow = len(served.index) >= REBUILD_IN_BACKGROUND_FROM
    return slow and age < served.index.built_seconds * REBUILD_INTERVAL_FACTOR


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # A build allocates tens of thousands of small objects; in a web process with a large heap the
    # collections they trigger cost more than the build itself (measured: 3x on a 44k load).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _refresh(source: str, version: str) -> SearchIndex:
    """Load (or build) the index for ``version`` and serve it; the caller holds ``_build_lock``."""
    global _served
    served = _served
    same = served is not None and served.source == source and served.version == version
    if same and not served.stale and time.monotonic() - served.built_at <= INDEX_MAX_AGE_S:
        return served.index  # another thread refreshed it meanwhile
    with _gc_paused():
        # The shared copy is what some process built for this version; a copy this process already has
        # is refreshed for a reason (a deleted product, its age), so that one is built afresh.
        index = None if same else _shared_load(source, version)
        if index is not None:
            _catalog_stems.clear()
            _catalog_stems.update(index.core.stems)  # a later rebuild here then stems only new words
        else:
            index = search_index_build(_rows())
            logger.info("Search index built: %d products in %.0f ms", len(index), index.built_seconds * 1000)
            _shared_store(source, version, index)
    now = time.monotonic()
    _served = _Served(index=index, source=source, version=version, built_at=now, checked_at=now)
    return index


def _refresh_in_background(source: str, version: str) -> None:
    """Start one background refresh unless one is running; searches meanwhile use the current index."""
    if not _build_lock.acquire(blocking=False):
        return

    def run() -> None:
        try:
            _refresh(source, version)
        except Exception:
            logger.exception("Search index refresh failed; the previous index stays in use")
        finally:
            connection.close()  # this thread's own connection
            _build_lock.release()

    threading.Thread(target=run, name="search-index-refresh", daemon=True).start()


def search_index() -> SearchIndex:
    """The index of the catalog as it is now (within the bounds in the module docstring).

    Side effects: may build the index (and share it through Redis) or load the shared one, here or in a
    background thread. Concurrent callers in one process share one refresh; while a slow one runs, they
    search the previous index.
    """
    source = _source()
    served = _served
    if (
        served is not None
        and served.source == source
        and not served.stale
        and len(served.index) >= REBUILD_IN_BACKGROUND_FROM
        and time.monotonic() - served.checked_at < VERSION_CHECK_INTERVAL_S
    ):
        return served.index  # a large catalog's version was read a moment ago
    version = _catalog_version()
    if served is None or served.source != source:
        with _build_lock:
            return _refresh(source, version)
    if _fresh_enough(served, version=version):
        if served.version == version:
            served.checked_at = time.monotonic()
        return served.index
    if len(served.index) >= REBUILD_IN_BACKGROUND_FROM:
        _refresh_in_background(source, version)
        return served.index
    if not _build_lock.acquire(blocking=False):
        return served.index  # another thread is refreshing: this search uses the current index
    try:
        return _refresh(source, version)
    finally:
        _build_lock.release()


def search_index_warm() -> None:
    """Build or load this process's index now, so the first shopper's search does not wait for it."""
    search_index()


def search_index_reset() -> None:
    """Forget this process's index (tests; after restoring a database)."""
    global _served
    with _build_lock:
        _served = None


def _mark_stale() -> None:
    served = _served
    if served is not None:
        served.stale = True


# --- Searching --------------------------------------------------------------------------------------------------


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
    index = search_index()
    words = query_plan(index, query, k=k)
    by_field = {FILTER_FIELDS[name]: value for name, value in filters.values} if filters else {}
    ranked = search_rank(index, words, k=k, filters=by_field)
    ids = [int(index.ids[number]) for number in ranked.numbers]
    # Cards, read fresh (one lean query): what the grid and the API show of each product.
    found = cards_get(ids)
    if len(found) < len(ids):
        _mark_stale()  # deleted since the build: dropped now, gone from the next build
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
