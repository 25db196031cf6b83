"""Catalog health: near-duplicates, suspect labels, outliers and products without a usable image.

The vector side (neighbours, pairs above a cosine, isolation) is the engine's
(``recommender.api.catalog_scan``, in blocks over the published build); what the
shop knows is applied here: labels, image hashes and files, and the admin's
decisions. This module is the only writer of ``HealthScan``, ``HealthFinding``
and ``HealthDismissal``.

A scan runs from the admin (a Celery task, ``gallery.catalog_health_scan``) or
from ``manage.py catalog_health``. Each finding has a key; a dismissed key is
remembered and never raised by a later scan. The thresholds below were chosen on
catalogs where the truth is known (``bench/health_quality.py``, docs/quality.md).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Container, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import transaction
from django.utils import timezone

from gallery import services
from gallery.health_photos import Photo, photo_read, photos_difference
from gallery.models import FindingKind, HealthDismissal, HealthFinding, HealthScan, Product
from recommender import api

logger = logging.getLogger(__name__)

# Near-duplicates in three steps, each chosen on measured data (docs/quality.md). The image vector proposes:
# a re-encoded, resized or lightly cropped copy stays above DUPLICATE_COSINE with its original (the vector is
# about what a photo shows, so look-alike products pass too). A small fingerprint of each candidate's thumbnail
# (the product cut from its background, 32 x 32 RGB) drops pairs that are plainly different pictures
# (cosine under DUPLICATE_PREFILTER; at most MAX_COMPARED pairs go on, the most alike first). The photos
# registered onto each other decide: a copy differs from its original by noise everywhere, a look-alike
# strongly in one place, so the largest aligned difference must be at most DUPLICATE_DIFFERENCE (0-255).
# A clustered catalog can make every product a candidate: fingerprints are read for at most MAX_FINGERPRINTS
# products, those of the pairs nearest the top of their products' own lists first (``pairs_prioritised``),
# which bounds a scan's photo reads whatever the catalog looks like.
DUPLICATE_COSINE = 0.80
DUPLICATE_PREFILTER = 0.5
DUPLICATE_DIFFERENCE = 24.0
MAX_COMPARED = 5_000
MAX_FINGERPRINTS = 10_000
# Threads reading the candidates' thumbnails for their fingerprints.
READERS = 2
NEIGHBOURS = 10
# A label is suspect when its look-alikes' labels are at least e**LABEL_MIN_RATIO times likelier under another
# label's usual neighbours than under its own's (``label_suspects``); LABEL_SMOOTHING pseudo-counts toward the
# catalog-wide neighbour labels keep rare labels from looking certain.
LABEL_MIN_RATIO = 10.0
LABEL_SMOOTHING = 2.0
# The product's name is a second witness beside its look-alikes: a name says what the product is ("Men Blue
# Polo Tshirt"), so a label whose products' names rarely carry its words is likelier wrong. Each label's word
# distribution (the distinct word stems of its products' names) is mixed with the catalog-wide one, NAME_MIX of
# the latter (``_name_likelihoods``); only rows judged by their look-alikes are judged by their names too. Names
# witness the fields that say what a product is (NAME_WITNESSED), not its colour: a name's words go with a
# kind's usual colour whatever this product's is (on the art, faces are named faces and mostly yellow).
NAME_MIX = 0.02
NAME_WITNESSED = frozenset({"article_type", "master_category"})
# Beside the name, the look-alikes' log-likelihood counts this much: the ten nearest are not ten independent
# witnesses (a compass drawn like a clock has ten clocks for look-alikes, alike each other too), so the
# multinomial overstates what they say, about as if three of them had voted. Chosen on real art (the weight with
# the most flips among its first 36 suspects: docs/quality.md, "Suspect labels"). Judged by look-alikes alone
# (colour), a product is ranked and raised as before: one witness has nothing to be weighed against.
LOOK_WEIGHT = 0.3
# An image is an outlier when its mean cosine to its NEIGHBOURS nearest products is below 1 - this (above the
# 99.9th percentile of both measured catalogs, so a clean catalog raises a handful at most).
OUTLIER_ISOLATION = 0.6
# One picture (the same photo, as the duplicate rule judges it) shown for products of at least this many article
# types is a placeholder ("no image", "coming soon"): it shows none of them, and they are not copies of one product
# (keeping one would take real products off sale). A near-duplicate pair whose one product is mislabelled carries
# two types; three cannot come from one slip.
PLACEHOLDER_KINDS = 3
# Findings kept per kind and scan, the most confident first: the page is a work list, not an export.
MAX_FINDINGS = 5000
# Photos of suspect labels read per scan to tell a broken photo (whose look-alikes are chance), the most confident
# first.
MAX_LABEL_READS = 2000
# A scan claimed this long ago whose worker never finished it no longer blocks a new one.
SCAN_STALE_AFTER = timedelta(minutes=30)
KEY_CHARS = 200

# (Product field, the name the page and the edit log give it)
LABEL_FIELDS = (("article_type", "article type"), ("master_category", "master category"), ("base_colour", "colour"))


class HealthActionRefused(Exception):
    """An admin action that cannot be applied; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --- The judgements, on arrays (the benchmark calls these too) -----------------------------------------------


@dataclass(frozen=True)
class LabelSuspect:
    row: int
    suggested: str
    ratio: float  # natural log of how much likelier the neighbours' labels are under ``suggested`` than the own label
    share: float  # of the neighbours carrying a label, the share that carry ``suggested``
    votes: int
    own_share: float  # of the same neighbours, the share that carry the product's own label
    name_ratio: float = 0.0  # of ``ratio``, what the product's name adds (negative: the name fits its own label)

    @property
    def confidence(self) -> float:
        return self.ratio

    @property
    def look_ratio(self) -> float:
        """Of ``ratio``, what the look-alikes' labels give."""
        return self.ratio - self.name_ratio


def label_suspects(
    *,
    labels: Sequence[str],
    neighbour_rows: np.ndarray,
    names: Sequence[str] | None = None,
    min_ratio: float = LABEL_MIN_RATIO,
    smoothing: float = LABEL_SMOOTHING,
    name_mix: float = NAME_MIX,
    look_weight: float = LOOK_WEIGHT,
) -> list[LabelSuspect]:
    """Rows whose neighbours' labels (and names) are much likelier under another label than under their own,
    likeliest first.

    Calibrated by the catalog itself: for each label L, ``p_L`` is the distribution of the labels of the
    neighbours of the products labelled L (smoothed toward the catalog-wide one by ``smoothing`` pseudo-counts;
    a row's own neighbours are left out of its own label's). A row labelled L whose neighbours carry the labels
    ``c`` is suspect when ``log p_M(c) - log p_L(c)`` (multinomial) is at least ``min_ratio`` for some other label
    M, suggesting the likeliest M. Types that always look like another (kurtas near shirts) carry that look in
    their own ``p_L`` and are not raised; a product whose look-alikes fit another type's pattern is.
    ``neighbour_rows`` (n, k) holds row numbers into ``labels`` (-1: none); neighbours with an empty label do not
    count, and a row needs labelled neighbours for at least half its k. Vectorised: (n, T) and (T, T) arrays for T
    labels.

    With ``names`` (one per row), the name's words add their own log-likelihood ratio (:func:`_name_likelihoods`):
    a T-shirt labelled *Shirts* is named "... Tshirt", a word *Shirts* products' names hardly carry, while a
    compass drawn like a clock but named "compass" is not pulled toward *clocks* by its name. The look-alikes'
    part then counts ``look_weight`` times (LOOK_WEIGHT: ten look-alikes are not ten independent witnesses).
    """
    n, k = neighbour_rows.shape
    values, codes, empty = label_codes(labels)
    size = len(values)
    votes = np.where(neighbour_rows >= 0, codes[neighbour_rows.clip(min=0)], empty)
    counts = np.zeros((n, size))
    np.add.at(counts, (np.repeat(np.arange(n), k), votes.ravel()), 1.0)
    counts[:, empty] = 0.0
    by_label = np.zeros((size, size))
    np.add.at(by_label, codes, counts)  # by_label[L, j]: neighbours labelled j of the products labelled L
    overall = by_label.sum(axis=0) + 1.0
    prior = smoothing * overall / overall.sum()
    log_p = np.log((by_label + prior) / (by_label.sum(axis=1, keepdims=True) + smoothing))
    likelihood = counts @ log_p.T  # (n, T): log-likelihood of each row's neighbour labels under each label
    own = by_label[codes] - counts  # the own label's counts without the row itself
    own_likelihood = (counts * np.log((own + prior) / (own.sum(axis=1, keepdims=True) + smoothing))).sum(axis=1)
    if names is not None:  # two witnesses: the look-alikes' evidence weighed as about three votes, not ten
        likelihood *= look_weight
        own_likelihood *= look_weight
    name_likelihood, name_own = (
        _name_likelihoods(names=names, codes=codes, size=size, empty=empty, mix=name_mix)
        if names is not None
        else (np.zeros((n, size)), np.zeros(n))
    )
    likelihood += name_likelihood
    own_likelihood = own_likelihood + name_own
    best = likeliest_other(likelihood, codes=codes, empty=empty)
    ratio = likelihood[np.arange(n), best] - own_likelihood
    name_ratio = name_likelihood[np.arange(n), best] - name_own
    voters = counts.sum(axis=1)
    flagged = np.nonzero((codes != empty) & (voters * 2 >= k) & np.isfinite(ratio) & (ratio >= min_ratio))[0]
    out = [
        LabelSuspect(
            row=row,
            suggested=str(values[best[row]]),
            ratio=float(ratio[row]),
            share=float(counts[row, best[row]] / voters[row]),
            votes=int(counts[row, best[row]]),
            own_share=float(counts[row, codes[row]] / voters[row]),
            name_ratio=float(name_ratio[row]),
        )
        for row in flagged.tolist()
    ]
    out.sort(key=lambda s: (-s.ratio, s.row))
    return out


def label_codes(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """(the distinct labels, each row's code into them, the code of the empty label)."""
    values, codes = np.unique(np.asarray([*labels, ""], dtype=object).astype(str), return_inverse=True)
    return values, codes[:-1], int(codes[-1])


def likeliest_other(likelihood: np.ndarray, *, codes: np.ndarray, empty: int) -> np.ndarray:
    """Per row of ``likelihood`` (n, T), the label likeliest other than its own, the empty one and labels no
    product carries (those are set to -inf in ``likelihood``)."""
    likelihood[np.arange(len(codes)), codes] = -np.inf
    likelihood[:, empty] = -np.inf
    likelihood[:, np.bincount(codes, minlength=likelihood.shape[1]) == 0] = -np.inf  # not suggested
    return likelihood.argmax(axis=1)


def _name_words(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(row, word number) for each distinct word stem of each name, stop words and digits left out, by row.

    Words are the text search's own (``gallery.search.words``): "T-Shirts" and "tshirt" are one word.
    """
    from gallery.search.words import STOP_WORDS, text_tokens, word_stem

    numbers: dict[str, int] = {}
    stems: dict[str, str] = {}  # each distinct word stemmed once (the stemmer is pure Python)
    rows: list[int] = []
    words: list[int] = []
    for row, name in enumerate(names):
        seen: set[int] = set()
        for token in text_tokens(name or ""):
            if token in STOP_WORDS or token.isdigit():
                continue
            stem = stems.get(token)
            if stem is None:
                stem = stems[token] = word_stem(token)
            number = numbers.setdefault(stem, len(numbers))
            if number not in seen:
                seen.add(number)
                rows.append(row)
                words.append(number)
    return np.asarray(rows, dtype=np.int64), np.asarray(words, dtype=np.int64)


def _name_likelihoods(
    *, names: Sequence[str], codes: np.ndarray, size: int, empty: int, mix: float = NAME_MIX
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the log-likelihood of its name's words under each of the ``size`` labels (n, size), and under
    its own label without the row itself (n,). A label's word probability is its products' share of the word
    mixed with the catalog-wide share, ``mix`` of the latter (linear interpolation): a word no product of either
    label carries says nothing between them, whatever their sizes, and no one word weighs more than its lift.
    Rows with the ``empty`` label do not count.

    Memory is bounded by the words, not by rows x vocabulary: one (size, V) table and per-block gathers.
    """
    n = len(codes)
    rows, words = _name_words(names)
    labelled = codes[rows] != empty
    vocabulary = int(words.max()) + 1 if len(words) else 0
    counts = np.zeros((size, vocabulary))
    np.add.at(counts, (codes[rows[labelled]], words[labelled]), 1.0)
    totals = counts.sum(axis=1)
    overall = counts.sum(axis=0)
    # A word only unlabelled products carry is the same (and so neutral) under every label.
    catalog_wide = np.where(overall > 0, overall / max(overall.sum(), 1.0), 1.0)
    log_p = np.log((1.0 - mix) * counts / np.maximum(totals, 1.0)[:, None] + mix * catalog_wide)  # (size, V)
    likelihood = np.zeros((n, size))
    block = max(1, 4_000_000 // max(size, 1))  # word occurrences gathered at once: (block, size) floats
    for start in range(0, len(rows), block):
        part_rows, part_words = rows[start : start + block], words[start : start + block]
        first = np.concatenate([[0], np.nonzero(np.diff(part_rows))[0] + 1])  # rows are ascending
        likelihood[part_rows[first]] += np.add.reduceat(log_p.T[part_words], first, axis=0)
    # The own label without the row: its words counted once less, its total less the row's word count.
    per_row = np.bincount(rows, minlength=n).astype(np.float64)
    own_codes = codes[rows]
    own_total = totals[own_codes] - per_row[rows] * labelled
    own_share = np.where(own_total > 0, (counts[own_codes, words] - labelled) / np.maximum(own_total, 1.0), 0.0)
    own = np.bincount(rows, weights=np.log((1.0 - mix) * own_share + mix * catalog_wide[words]), minlength=n)
    return likelihood, own


@dataclass(frozen=True)
class DuplicateGroup:
    product_ids: list[int]
    confidence: float  # the lowest agreement (1 - aligned difference / 255) among the group's links (1.0: exact copy)
    exact: bool  # every product of the group has the same image bytes


def duplicate_groups(*, pairs: np.ndarray, pair_cosines: np.ndarray, hashes: dict[int, str]) -> list[DuplicateGroup]:
    """Groups of products joined by a pair above the threshold or by the same image hash, most alike first."""
    by_hash: dict[str, list[int]] = {}
    for product_id, digest in hashes.items():
        if digest:
            by_hash.setdefault(digest, []).append(product_id)
    hash_pairs = [(ids[0], other) for ids in by_hash.values() if len(ids) > 1 for other in ids[1:]]
    links = [(int(a), int(b)) for a, b in pairs.tolist()] + hash_pairs
    weakest: dict[int, float] = {}
    groups = api.pair_groups(links)
    member = {pid: i for i, group in enumerate(groups) for pid in group}
    for (a, _), cosine in zip(pairs.tolist(), pair_cosines.tolist(), strict=True):
        g = member[int(a)]
        weakest[g] = min(weakest.get(g, 1.0), float(cosine))
    out = []
    for i, group in enumerate(groups):
        digests = {hashes.get(pid, "") for pid in group}
        exact = len(digests) == 1 and "" not in digests
        out.append(DuplicateGroup(product_ids=group, confidence=1.0 if exact else weakest.get(i, 1.0), exact=exact))
    out.sort(key=lambda g: (-g.confidence, g.product_ids[0]))
    return out


def placeholders(*, groups: Sequence[DuplicateGroup], kind_of: dict[int, str]) -> dict[int, int]:
    """Product id -> how many article types its picture is shown for, for every product of a duplicate group (one
    picture) whose products carry at least PLACEHOLDER_KINDS different types: a placeholder, no photo of its own."""
    out: dict[int, int] = {}
    for group in groups:
        kinds = {kind_of.get(pid, "") for pid in group.product_ids} - {""}
        if len(kinds) >= PLACEHOLDER_KINDS:
            out.update(dict.fromkeys(group.product_ids, len(kinds)))
    return out


def photos_to_read(
    *, outliers: Iterable[int], suspects: Iterable[tuple[float, int]], read: Container[int]
) -> list[int]:
    """The products whose photos a scan reads besides its duplicate candidates', each once and none of ``read``:
    every outlier, then the products of the suspect labels ((confidence, product id)), the most confident first,
    at most MAX_LABEL_READS of them. A broken photo's look-alikes are chance, so it is often raised as one."""
    suspected = dict.fromkeys(pid for _, pid in sorted(suspects, key=lambda s: -s[0]) if pid not in read)
    return list(dict.fromkeys([*(pid for pid in outliers if pid not in read), *list(suspected)[:MAX_LABEL_READS]]))


def photo_judged(source: object) -> tuple[np.ndarray | None, bool]:
    """(a photo's small fingerprint, whether it is static; ``health_photos.photo_read``): (None, False) when the
    file cannot be read, an all-zero fingerprint for a blank photo (one colour). ``source`` is a path or an open
    binary file."""
    return _judged(photo_read(source))


def _judged(photo: Photo | None) -> tuple[np.ndarray | None, bool]:
    return (None, False) if photo is None else (photo.fingerprint, photo.noise)


def candidate_pairs(*, result: object, duplicate_cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, cosines): the scan's pairs above ``duplicate_cosine`` and each product's neighbours above it.

    The neighbours matter when look-alikes crowd the pair list past its bound: a copy is then still among
    its original's k nearest. Each pair once, smaller id first.
    """
    ids = result.product_ids
    rows, cols = np.nonzero(result.neighbour_cosines >= duplicate_cosine)
    near = np.sort(np.stack([ids[rows], result.neighbour_ids[rows, cols]], axis=1), axis=1)
    above = result.pair_cosines >= duplicate_cosine
    both = np.concatenate([result.pairs[above].reshape(-1, 2), near.reshape(-1, 2)])
    cosines = np.concatenate([result.pair_cosines[above], result.neighbour_cosines[rows, cols]])
    if not len(both):
        return both, cosines
    _, first = np.unique(both, axis=0, return_index=True)
    return both[first], cosines[first]


def pairs_verify(*, pairs: np.ndarray, fingerprints: dict[int, np.ndarray | None]) -> np.ndarray:
    """The fingerprint cosine of each pair; NaN where a photo is unreadable."""
    out = np.full(len(pairs), np.nan, dtype=np.float32)
    for i, (a, b) in enumerate(pairs.tolist()):
        fa, fb = fingerprints.get(a), fingerprints.get(b)
        if fa is not None and fb is not None:
            out[i] = float(fa @ fb)
    return out


def pairs_prioritised(*, pairs: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of ``pairs``, the most worth a look first: each pair ranked by its place in its products' own
    lists (each product's most alike partner, then its second...; the better of its two), ties by ``value``
    (a cosine), so that a copy is not crowded out by a family of look-alikes elsewhere."""
    # Each pair stands twice, once in each of its products' lists (as the smaller id and as the larger).
    product = pairs.T.ravel()
    pair = np.tile(np.arange(len(pairs)), 2)
    order = np.lexsort((-np.tile(value, 2), product))
    first = np.r_[0, np.flatnonzero(np.diff(product[order])) + 1]
    within = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    rank = np.full(len(pairs), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(rank, pair[order], within)
    return np.lexsort((-value, rank))


def pairs_to_compare(*, pairs: np.ndarray, prefilter: np.ndarray, minimum: float, limit: int) -> np.ndarray:
    """Indices of the pairs worth registering: fingerprint cosine at least ``minimum`` and, past ``limit``, the
    first by ``pairs_prioritised``. In pair order (consecutive pairs share their first photo, so a small cache
    of photos serves them)."""
    keep = np.nonzero(np.nan_to_num(prefilter, nan=-1.0) >= minimum)[0]
    if len(keep) > limit:
        keep = keep[pairs_prioritised(pairs=pairs[keep], value=prefilter[keep])[:limit]]
    return np.sort(keep)


def pairs_to_fingerprint(*, pairs: np.ndarray, cosines: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the candidate pairs whose products' fingerprints are read: the first by ``pairs_prioritised``
    (on the vectors' ``cosines``) while their products number at most ``limit``. In pair order."""
    if not len(pairs) or len(np.unique(pairs)) <= limit:
        return np.arange(len(pairs))
    order = pairs_prioritised(pairs=pairs, value=cosines)
    products = pairs[order].ravel()
    _, first_seen = np.unique(products, return_index=True)
    new = np.zeros(len(products), dtype=np.int64)
    new[first_seen] = 1
    read_by = np.cumsum(new)[1::2]  # the products read once pairs ..j are
    return np.sort(order[: int(np.searchsorted(read_by, limit, side="right"))])


def pairs_compare(*, pairs: np.ndarray, photo: Callable[[int], Photo | None]) -> np.ndarray:
    """The aligned difference (``health_photos.photos_difference``, 0-255) of each pair; inf where a photo is
    unreadable or blank, or the two views cannot be one photo and a light crop of it. One thread: registration
    is many small numpy steps that hold the GIL (two threads measured no faster)."""
    out = np.full(len(pairs), np.inf, dtype=np.float32)
    for i, (a, b) in enumerate(pairs.tolist()):
        pa, pb = photo(a), photo(b)
        match = photos_difference(pa, pb) if pa is not None and pb is not None else None
        if match is not None and match.same_view:
            out[i] = match.difference
    return out


def _key(*parts: object) -> str:
    key = ":".join(str(part) for part in parts)
    if len(key) <= KEY_CHARS:
        return key
    return f"{key[:120]}~{hashlib.sha256(key.encode()).hexdigest()[:64]}"


# --- Scans ------------------------------------------------------------------------------------------------------


def health_scan_request(*, user: object | None = None) -> tuple[HealthScan, bool]:
    """A queued scan and whether it is new: one already queued or running (and not stale) is returned instead.

    Sends nothing: ``gallery.tasks.health_scan_submit`` calls this and sends a new one to the workers after
    the commit; with the queue unreachable it ends failed at once, saying so, rather than waiting queued for ever.
    """
    with transaction.atomic():
        stale = timezone.now() - SCAN_STALE_AFTER
        HealthScan.objects.filter(status=HealthScan.Status.RUNNING, started_at__lt=stale).update(
            status=HealthScan.Status.FAILED, error="The worker running this scan stopped; start another.",
            finished_at=timezone.now(),
        )  # fmt: skip
        pending = HealthScan.objects.filter(status__in=[HealthScan.Status.QUEUED, HealthScan.Status.RUNNING]).first()
        if pending is not None:
            return pending, False
        scan = HealthScan.objects.create(created_by=user if getattr(user, "pk", None) else None)
    return scan, True


def health_scan_create(*, user: object | None = None) -> HealthScan:
    """A new queued scan for the caller to run in its own process (the management command)."""
    return HealthScan.objects.create(created_by=user if getattr(user, "pk", None) else None)


def health_scan_claim(*, scan_id: int, claimant: str) -> HealthScan | None:
    """Claim a queued scan (or one this claimant already holds: a redelivered task); None when it is not ours."""
    claimed = (
        HealthScan.objects.filter(id=scan_id, status=HealthScan.Status.QUEUED)
        .update(status=HealthScan.Status.RUNNING, claimed_by=claimant[:64], started_at=timezone.now())
    )  # fmt: skip
    if (
        not claimed
        and not HealthScan.objects.filter(
            id=scan_id, status=HealthScan.Status.RUNNING, claimed_by=claimant[:64]
        ).exists()
    ):
        return None
    return HealthScan.objects.get(id=scan_id)


def health_scan_fail(*, scan_id: int, reason: str) -> None:
    """End a scan that raised, saying why; its findings (none were written) stay as the last good scan's."""
    HealthScan.objects.filter(id=scan_id).exclude(status=HealthScan.Status.DONE).update(
        status=HealthScan.Status.FAILED, error=reason[:2000], finished_at=timezone.now()
    )


def health_scan_run(
    *,
    scan: HealthScan,
    duplicate_cosine: float = DUPLICATE_COSINE,
    duplicate_difference: float = DUPLICATE_DIFFERENCE,
    k: int = NEIGHBOURS,
    label_min_ratio: float = LABEL_MIN_RATIO,
    outlier_isolation: float = OUTLIER_ISOLATION,
    progress: Callable[[int, int], None] | None = None,
) -> HealthScan:
    """Run a claimed (or just created) scan: read the vectors in blocks, judge, store the findings, mark it done.

    Findings of dismissed keys are counted but not stored. The findings of earlier scans are removed once this
    one's are written (one transaction), so the page always shows one complete scan. Raises on failure, after
    recording why on the scan.
    """
    started = time.perf_counter()
    if scan.status != HealthScan.Status.RUNNING:
        HealthScan.objects.filter(id=scan.id).update(status=HealthScan.Status.RUNNING, started_at=timezone.now())
    try:
        scanned = api.catalog_scan(k=k, duplicate_cosine=duplicate_cosine, progress=progress)
        result = scanned.result
        findings = _findings(
            result=result,
            duplicate_cosine=duplicate_cosine,
            duplicate_difference=duplicate_difference,
            label_min_ratio=label_min_ratio,
            outlier_isolation=outlier_isolation,
        )
        dismissed = set(HealthDismissal.objects.values_list("kind", "key"))
        counts: dict[str, dict[str, int]] = {kind.value: {"found": 0, "dismissed": 0} for kind in FindingKind}
        rows = []
        for finding in findings:
            bucket = counts[finding.kind]
            if (finding.kind, finding.key) in dismissed:
                bucket["dismissed"] += 1
                continue
            bucket["found"] += 1
            if bucket["found"] <= MAX_FINDINGS:
                finding.scan_id = scan.id
                rows.append(finding)
        with transaction.atomic():
            HealthFinding.objects.bulk_create(rows, batch_size=500)
            HealthFinding.objects.filter(scan__lt=scan.id).delete()
            HealthScan.objects.filter(id=scan.id).update(
                status=HealthScan.Status.DONE,
                index_version=scanned.version,
                products=scanned.count,
                counts={**counts, "pairs_truncated": result.pairs_truncated},
                settings_used={
                    "duplicate_cosine": duplicate_cosine,
                    "duplicate_difference": duplicate_difference,
                    "neighbours": k,
                    "label_min_ratio": label_min_ratio,
                    "outlier_isolation": outlier_isolation,
                    "space": scanned.space,
                },
                seconds=round(time.perf_counter() - started, 2),
                finished_at=timezone.now(),
                error="",
            )
    except Exception as exc:
        health_scan_fail(scan_id=scan.id, reason=f"{type(exc).__name__}: {exc}")
        raise
    scan.refresh_from_db()
    logger.info("Catalog health scan %d: %s in %.1fs", scan.id, scan.counts, scan.seconds or 0.0)
    return scan


def _findings(
    *,
    result: object,
    duplicate_cosine: float,
    duplicate_difference: float,
    label_min_ratio: float,
    outlier_isolation: float,
) -> list[HealthFinding]:
    """Every finding of one scan, unsaved, most confident first within each kind."""
    ids = result.product_ids
    rows = {
        pid: rest
        for pid, *rest in Product.objects.values_list(
            "id", "image", "image_sha256", "article_type", "master_category", "base_colour", "name", "thumbnail"
        ).iterator(chunk_size=5000)
    }
    out: list[HealthFinding] = []

    # Near-duplicates: the vectors' candidates confirmed by the thumbnails' pixels, plus identical image bytes.
    hashes = {pid: row[1] for pid, row in rows.items() if row[0]}
    pairs, cosines = candidate_pairs(result=result, duplicate_cosine=duplicate_cosine)
    live = np.array([a in rows and b in rows for a, b in pairs.tolist()], dtype=bool).reshape(-1)
    pairs, cosines = pairs[live], cosines[live]
    pairs = pairs[pairs_to_fingerprint(pairs=pairs, cosines=cosines, limit=MAX_FINGERPRINTS)]
    candidates = np.unique(pairs).tolist()
    with ThreadPoolExecutor(max_workers=READERS) as pool:  # decoding releases the GIL: reads overlap
        read = dict(zip(candidates, pool.map(lambda pid: _thumbnail_read(rows[pid][-1]), candidates), strict=True))
    fingerprints = {pid: fingerprint for pid, (fingerprint, _) in read.items()}
    noise = {pid for pid, (_, static) in read.items() if static}
    chosen = pairs_to_compare(
        pairs=pairs,
        prefilter=pairs_verify(pairs=pairs, fingerprints=fingerprints),
        minimum=DUPLICATE_PREFILTER,
        limit=MAX_COMPARED,
    )
    photo = functools.lru_cache(maxsize=4096)(lambda pid: _thumbnail_photo(rows[pid][-1]))
    difference = pairs_compare(pairs=pairs[chosen], photo=photo)
    same = difference <= duplicate_difference
    agreement = 1.0 - difference[same] / 255.0  # 1: the registered photos agree pixel for pixel
    groups = duplicate_groups(pairs=pairs[chosen][same], pair_cosines=agreement, hashes=hashes)
    shared = placeholders(groups=groups, kind_of={pid: row[2] for pid, row in rows.items()})
    for group in groups:
        if group.product_ids[0] in shared:
            continue  # products of several kinds under one placeholder: not copies of one product (no usable image)
        out.append(
            HealthFinding(
                kind=FindingKind.DUPLICATE,
                key=_key(*group.product_ids),
                product_ids=group.product_ids,
                confidence=round(group.confidence, 4),
                detail={"exact": group.exact, "difference": round((1.0 - group.confidence) * 255.0, 1)},
            )
        )

    # Suspect labels: each field judged from the same neighbours (rows of the build; deleted products don't vote).
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    flat = result.neighbour_ids.ravel()
    pos = np.searchsorted(sorted_ids, flat).clip(max=len(ids) - 1) if len(ids) else flat
    neighbour_rows = np.where((flat >= 0) & (sorted_ids[pos] == flat), order[pos], -1).reshape(
        result.neighbour_ids.shape
    ) if len(ids) else result.neighbour_ids  # fmt: skip
    names = [rows[pid][5] if pid in rows else "" for pid in ids.tolist()]
    for index, (field, title) in enumerate(LABEL_FIELDS):
        labels = [rows[pid][2 + index] if pid in rows else "" for pid in ids.tolist()]
        for suspect in label_suspects(
            labels=labels,
            neighbour_rows=neighbour_rows,
            names=names if field in NAME_WITNESSED else None,
            min_ratio=label_min_ratio,
        ):
            pid = int(ids[suspect.row])
            if pid not in rows:
                continue
            current = labels[suspect.row]
            out.append(
                HealthFinding(
                    kind=FindingKind.LABEL,
                    key=_key(pid, field, current, suspect.suggested),
                    product_ids=[pid],
                    confidence=round(suspect.confidence, 4),
                    detail={
                        "field": field,
                        "title": title,
                        "current": current,
                        "suggested": suspect.suggested,
                        "share": round(suspect.share, 3),
                        "votes": suspect.votes,
                        "ratio": round(suspect.ratio, 2),
                        "look_ratio": round(suspect.look_ratio, 2),
                        **(
                            {"name": names[suspect.row], "name_ratio": round(suspect.name_ratio, 2)}
                            if field in NAME_WITNESSED
                            else {}
                        ),
                        "neighbours": [int(x) for x in result.neighbour_ids[suspect.row] if x >= 0],
                    },
                )
            )

    # Outliers: far from everything in the catalog.
    isolated = []
    for row in np.argsort(-result.isolation, kind="stable").tolist():
        score = float(result.isolation[row])
        if score < outlier_isolation:
            break
        pid = int(ids[row])
        if pid in rows:
            isolated.append(pid)
            out.append(
                HealthFinding(
                    kind=FindingKind.OUTLIER,
                    key=_key(pid, rows[pid][1]),
                    product_ids=[pid],
                    confidence=round(score, 4),
                    detail={"neighbours": [int(x) for x in result.neighbour_ids[row] if x >= 0]},
                )
            )

    # No usable image: none at all, one that could not be embedded, a file gone from storage, a blank photo,
    # static (judged from the fingerprints read: duplicate candidates, where repeated placeholders land, outliers,
    # where a lone one does, and suspect labels) or one picture standing for products of several kinds.
    unread = photos_to_read(
        outliers=isolated,
        suspects=((f.confidence, f.product_ids[0]) for f in out if f.kind == FindingKind.LABEL),
        read=fingerprints,
    )
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        for pid, (fingerprint, static) in zip(unread, pool.map(lambda pid: _thumbnail_read(rows[pid][-1]), unread),
                                              strict=True):  # fmt: skip
            fingerprints[pid] = fingerprint
            if static:
                noise.add(pid)
    failed = dict(api.embedding_failures())
    local = isinstance(default_storage, FileSystemStorage)
    for pid, (image, digest, *_) in rows.items():
        if not image:
            reason = "no image"
        elif pid in failed:
            reason = f"cannot be embedded: {failed[pid]}"[:300]
        elif local and not default_storage.exists(image):
            reason = "the image file is missing"
        elif fingerprints.get(pid) is not None and not fingerprints[pid].any():
            reason = "the photo is blank (a single colour)"
        elif pid in noise:
            reason = "the photo is noise (no picture in it)"
        elif pid in shared:
            reason = f"the same picture is shown for products of {shared[pid]} kinds (a placeholder)"
        else:
            continue
        out.append(
            HealthFinding(
                kind=FindingKind.NO_IMAGE,
                key=_key(pid, digest or "-", reason[:40]),
                product_ids=[pid],
                confidence=1.0,
                detail={"reason": reason},
            )
        )
    # A photo that is no picture says nothing about its product's label: its look-alikes are chance.
    unusable = {f.product_ids[0] for f in out if f.kind == FindingKind.NO_IMAGE}
    return [f for f in out if not (f.kind == FindingKind.LABEL and f.product_ids[0] in unusable)]


def _thumbnail_photo(name: str) -> Photo | None:
    if not name:
        return None
    try:
        with default_storage.open(name, "rb") as fh:
            return photo_read(fh)
    except OSError:
        return None


def _thumbnail_read(name: str) -> tuple[np.ndarray | None, bool]:
    """``photo_judged`` of a product's thumbnail in storage."""
    return _judged(_thumbnail_photo(name))


# --- Reading -------------------------------------------------------------------------------------------------


def health_scan_latest() -> HealthScan | None:
    """The newest finished scan (its findings are the ones shown)."""
    return HealthScan.objects.filter(status=HealthScan.Status.DONE).order_by("-finished_at", "-id").first()


def health_scan_pending() -> HealthScan | None:
    """A scan queued or running now, if any."""
    return HealthScan.objects.filter(status__in=[HealthScan.Status.QUEUED, HealthScan.Status.RUNNING]).first()


LOOKALIKES_SHOWN = 5


def findings_open(
    *, scan: HealthScan, kind: str, limit: int = 100
) -> list[tuple[HealthFinding, list[Product], list[Product]]]:
    """The scan's open findings of ``kind``, most confident first: each with its products that still exist and,
    for a label or an outlier, the first LOOKALIKES_SHOWN of the look-alikes it was judged by."""
    findings = list(
        HealthFinding.objects.filter(scan=scan, kind=kind, status=HealthFinding.Status.OPEN).order_by(
            "-confidence", "id"
        )[:limit]
    )
    wanted = {pid for f in findings for pid in [*f.product_ids, *f.detail.get("neighbours", [])[:LOOKALIKES_SHOWN]]}
    products = Product.objects.in_bulk(wanted)
    return [
        (
            f,
            [products[pid] for pid in f.product_ids if pid in products],
            [products[pid] for pid in f.detail.get("neighbours", [])[:LOOKALIKES_SHOWN] if pid in products],
        )
        for f in findings
    ]


# --- Admin actions ----------------------------------------------------------------------------------------------


def _finding_open(*, finding_id: int, kind: str) -> HealthFinding:
    finding = HealthFinding.objects.select_for_update().filter(id=finding_id).first()
    if finding is None:
        raise HealthActionRefused("No such finding: the scan it came from may have been replaced.", status=404)
    if finding.kind != kind:
        raise HealthActionRefused(f"This finding is a {finding.get_kind_display().lower()} finding.", status=400)
    if finding.status != HealthFinding.Status.OPEN:
        raise HealthActionRefused(f"This finding was already {finding.get_status_display().lower()}.", status=409)
    return finding


def _finding_close(finding: HealthFinding, *, status: str, user: object) -> None:
    finding.status = status
    finding.resolved_by = user if getattr(user, "pk", None) else None
    finding.resolved_at = timezone.now()
    finding.save(update_fields=["status", "resolved_by", "resolved_at"])


def duplicates_retire_mode() -> str:
    """How "keep one" retires the others: "off sale" when the shop has availability, else "delete"."""
    return "off sale" if hasattr(services, "product_availability_set") else "delete"


def duplicates_retire(*, product_ids: list[int], user: object) -> int:
    """Retire the other products of a duplicate group: taken off sale where the shop has availability, else
    deleted with their files (``products_delete``), each recorded in the admin's history. Returns how many.
    """
    products = list(Product.objects.filter(id__in=product_ids))
    if duplicates_retire_mode() == "off sale":
        _history_log(user, products, CHANGE, "Taken off sale by catalog health: a duplicate of a product kept.")
        return services.product_availability_set(product_ids=[p.id for p in products], active=False)
    _history_log(user, products, DELETION, "Deleted by catalog health: a duplicate of a product kept.")
    return services.products_delete(product_ids=[p.id for p in products])


def _history_log(user: object, products: list[Product], action_flag: int, message: str) -> None:
    """Record what catalog health did to ``products`` in the admin's history, in the name of a signed-in user."""
    if getattr(user, "pk", None) and products:
        LogEntry.objects.log_actions(
            user_id=user.pk, queryset=products, action_flag=action_flag, change_message=message
        )


def duplicate_keep_one(*, finding_id: int, keep_id: int, user: object) -> list[int]:
    """Keep ``keep_id`` of a duplicate group and retire the others (``duplicates_retire``); returns their ids.

    Refused (HealthActionRefused) when the finding is not an open duplicate group or ``keep_id`` not in it.
    """
    with transaction.atomic():
        finding = _finding_open(finding_id=finding_id, kind=FindingKind.DUPLICATE)
        if keep_id not in finding.product_ids:
            raise HealthActionRefused(f"Product {keep_id} is not in this group.", status=400)
        if not Product.objects.filter(id=keep_id).exists():
            raise HealthActionRefused(f"Product {keep_id} no longer exists; choose another to keep.", status=409)
        others = [pid for pid in finding.product_ids if pid != keep_id]
        duplicates_retire(product_ids=others, user=user)
        _finding_close(finding, status=HealthFinding.Status.RESOLVED, user=user)
    return others


def label_accept(*, finding_id: int, user: object) -> Product:
    """Give the product the label its neighbours suggest, recorded as an edit in the admin's history.

    The label changes only if it is still the one the scan saw (a later edit is never overwritten: 409).
    """
    with transaction.atomic():
        finding = _finding_open(finding_id=finding_id, kind=FindingKind.LABEL)
        detail = finding.detail
        field, current, suggested = detail["field"], detail["current"], detail["suggested"]
        if field not in dict(LABEL_FIELDS):
            raise HealthActionRefused("This finding names a field that cannot be changed here.", status=400)
        pid = finding.product_ids[0]
        changed = Product.objects.filter(id=pid, **{field: current}).update(
            **{field: suggested}, updated_at=timezone.now()
        )
        if not changed:
            exists = Product.objects.filter(id=pid).exists()
            raise HealthActionRefused(
                f"The product's {detail['title']} changed since the scan; nothing was changed."
                if exists
                else "The product no longer exists.",
                status=409 if exists else 404,
            )
        product = Product.objects.get(id=pid)
        _history_log(
            user,
            [product],
            CHANGE,
            f"Catalog health scan {finding.scan_id}: {detail['title']} {current!r} -> {suggested!r} "
            f"({detail['votes']} of its look-alikes agree).",
        )
        _finding_close(finding, status=HealthFinding.Status.RESOLVED, user=user)
    return product


def finding_dismiss(*, finding_id: int, user: object) -> HealthFinding:
    """Dismiss a finding of any kind and remember its key: later scans do not raise it again."""
    with transaction.atomic():
        finding = HealthFinding.objects.select_for_update().filter(id=finding_id).first()
        if finding is None:
            raise HealthActionRefused("No such finding: the scan it came from may have been replaced.", status=404)
        if finding.status != HealthFinding.Status.OPEN:
            raise HealthActionRefused(f"This finding was already {finding.get_status_display().lower()}.", status=409)
        HealthDismissal.objects.get_or_create(
            kind=finding.kind, key=finding.key, defaults={"created_by": user if getattr(user, "pk", None) else None}
        )
        _finding_close(finding, status=HealthFinding.Status.DISMISSED, user=user)
    return finding
