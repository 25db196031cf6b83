"""The index: the catalog's names and column values as numpy arrays, built from rows, and as bytes to share.

Pure data: nothing here reads the database. The bytes are numpy arrays and JSON, never pickle.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import zipfile
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from gallery.filters import FILTER_FIELDS
from gallery.search.words import STOP_WORDS, catalog_stems_keep, text_tokens, word_stem

# Product fields whose values a query word can name, in the order an index row carries them.
VALUE_FIELDS = ("gender", "master_category", "sub_category", "article_type", "base_colour", "usage", "season")
# Every field an index row carries: the named ones, then any other field a filter matches.
INDEX_FIELDS = tuple(dict.fromkeys([*VALUE_FIELDS, *FILTER_FIELDS.values()]))
# Values that stand for "unknown" in the catalog: never a match.
BLANK_VALUES = frozenset({"", "na", "n/a", "none", "null", "-"})
# The stored bytes' format; bytes of another format are not loaded.
CACHE_VERSION = 1


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
    catalog_stems_keep(stems)
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
