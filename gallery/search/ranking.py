"""Planning and ranking: the words a query searches an index for, and the products that hold them, best first.

Reads only the index given; nothing here touches the database.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from rapidfuzz import process as fuzz_process
from rapidfuzz.distance import OSA

from gallery.search.index import SearchIndex
from gallery.search.words import STOP_WORDS, text_tokens, typo_budget, word_stem

MAX_WORDS = 8
# Fields whose values say what a product *is*: a word naming one outweighs other words when a grid
# has to drop some ("levis jeans" goes on with other jeans before other Levi's products).
KIND_FIELDS = frozenset({"master_category", "sub_category", "article_type"})

# Per-word scores, the ranking's order: whole word in the name > column value > stem > correction.
SCORE_EXACT = 4
SCORE_VALUE = 3
SCORE_STEM = 2
SCORE_CORRECTED = 1
WEIGHT_WORD = 2
WEIGHT_KIND_WORD = 3


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
