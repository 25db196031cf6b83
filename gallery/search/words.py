"""Words: a query's or a catalog text's folded words, their stems, and how many typos a word may carry.

Pure functions over strings; nothing here touches Django.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping

import snowballstemmer

# English function words; a query made only of them is searched as typed.
STOP_WORDS = frozenset(
    "a an the and or for with in on of to by at from as into per my your his her our their some any this that "
    "these those is are be it its".split()
)

_APOSTROPHE = re.compile(r"(?<=[^\W_])['’‘`´](?=[^\W_])")
_TOKEN = re.compile(r"[^\W_]+(?:[-‐‑][^\W_]+)*")
_HYPHEN_SPLIT = re.compile(r"[-‐‑]")
_stemmer = snowballstemmer.stemmer("english")


def text_fold(text: str) -> str:
    """``text`` lower-cased the Unicode way (casefold), with compatibility forms and accents folded."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


# Stems of the catalog's own words, kept from the last build (bounded by its vocabulary); the Snowball
# stemmer is pure Python (~0.1 ms a word), so a rebuild only stems words new since.
_catalog_stems: dict[str, str] = {}


def catalog_stems_keep(stems: Mapping[str, str]) -> None:
    """Keep ``stems`` (the catalog's words, built or loaded) as this process's known stems, replacing the last."""
    _catalog_stems.clear()
    _catalog_stems.update(stems)


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
