"""Annoy index builds: write, publish, load and query. Arrays and ids only.

Layout under the index directory::

    builds/<version>/vectors.ann   Annoy file (angular metric, dense items 0..n-1)
    builds/<version>/items.npy     sidecar: row i = (product id, embedding id) of item i
    builds/<version>/vectors.npy   row i = item i's unit vector, float32, memory-mapped for exact passes
    builds/<version>/colours.npy   optional: row i = item i's colour descriptor, float16 (zeros: none stored)
    builds/<version>/meta.json     what the build was made from and how
    CURRENT                        the published version's name

A build is written under a hidden temporary name, renamed into ``builds/``
(atomic on one filesystem) and published by replacing ``CURRENT`` with
``os.replace``. Readers mmap the file; a published file is never written again,
so a reader never sees half a build, and an old build stays readable by the
processes still holding it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

logger = logging.getLogger(__name__)

INDEX_FILE = "vectors.ann"
ITEMS_FILE = "items.npy"
VECTORS_FILE = "vectors.npy"
COLOURS_FILE = "colours.npy"
META_FILE = "meta.json"
POINTER_FILE = "CURRENT"
BUILDS_DIR = "builds"
METRIC = "angular"


class IndexCorrupt(RuntimeError):
    """A published build is missing files or its contents do not match its metadata."""


@dataclass(frozen=True)
class IndexMeta:
    version: str
    space: str
    dim: int
    count: int
    n_trees: int
    search_k: int
    metric: str
    built_at: str
    build_seconds: float
    # Every embedding with an id at or below this was visible to the build; newer
    # ones are searched exactly beside the index (see recommender.services).
    watermark: int
    file_bytes: int
    file_blake2b: str

    @property
    def effective_search_k(self) -> int:
        return self.search_k


@dataclass(frozen=True)
class Hit:
    product_id: int
    embedding_id: int
    score: float


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def index_build(
    *,
    directory: Path,
    vectors: np.ndarray,
    product_ids: np.ndarray,
    embedding_ids: np.ndarray,
    space: str,
    n_trees: int,
    search_k: int,
    watermark: int,
    seed: int = 20240611,
    keep: int = 2,
    colours: np.ndarray | None = None,
) -> IndexMeta:
    """Build an Annoy index over unit ``vectors`` and publish it atomically.

    ``colours`` (count, c), when given, are the items' colour descriptors (a row
    of zeros where a product has none); a trail's re-rank reads them beside the
    vectors instead of asking the database for every candidate's.

    Side effects: writes a new build under ``directory/builds``, points
    ``CURRENT`` at it, and removes builds older than the newest ``keep``
    (besides the new one). Raises (leaving the previous build published) on
    any failure, a full disk included.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count, dim = vectors.shape if vectors.ndim == 2 else (0, 0)
    if count != len(product_ids) or count != len(embedding_ids):
        raise ValueError("vectors, product_ids and embedding_ids must have the same length")
    if count == 0:
        raise ValueError("an index needs at least one vector")
    if n_trees < 1:
        raise ValueError("n_trees must be at least 1")
    if colours is not None and (colours.ndim != 2 or len(colours) != count):
        raise ValueError("colours must have one row per vector")

    builds = directory / BUILDS_DIR
    builds.mkdir(parents=True, exist_ok=True)
    # Sortable by time to the microsecond: pruning keeps the newest by name.
    version = f"{datetime.now(tz=UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}"
    tmp = builds / f".tmp-{version}"
    tmp.mkdir()
    started = time.perf_counter()
    try:
        ann = AnnoyIndex(dim, METRIC)
        ann.set_seed(seed)
        for item, vector in enumerate(vectors):
            ann.add_item(item, vector)
        ann.build(n_trees, n_jobs=-1)
        ann.save(str(tmp / INDEX_FILE))
        ann.unload()
        items = np.stack([np.asarray(product_ids, dtype=np.int64), np.asarray(embedding_ids, dtype=np.int64)], axis=1)
        # The vectors again as a plain matrix: an exact pass over a filter's few
        # thousand items reads their rows from the page cache, shared by every
        # process, instead of asking Annoy for one vector at a time.
        arrays = [(ITEMS_FILE, items), (VECTORS_FILE, vectors)]
        if colours is not None:
            # Half precision: the descriptors' cosines need three digits, and 44k products fit in 26 MB.
            arrays.append((COLOURS_FILE, np.ascontiguousarray(colours, dtype=np.float16)))
        for name, array in arrays:
            with (tmp / name).open("wb") as fh:
                np.save(fh, array)
                fh.flush()
                os.fsync(fh.fileno())
        ann_path = tmp / INDEX_FILE
        with ann_path.open("rb") as fh:
            os.fsync(fh.fileno())
        meta = IndexMeta(
            version=version,
            space=space,
            dim=dim,
            count=count,
            n_trees=n_trees,
            search_k=search_k,
            metric=METRIC,
            built_at=datetime.now(tz=UTC).isoformat(timespec="seconds"),
            build_seconds=round(time.perf_counter() - started, 3),
            watermark=int(watermark),
            file_bytes=ann_path.stat().st_size,
            file_blake2b=_file_digest(ann_path),
        )
        _write_synced(tmp / META_FILE, json.dumps(asdict(meta), indent=2).encode())
        final = builds / version
        tmp.rename(final)
        _fsync_dir(builds)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _pointer_publish(directory, version)
    _builds_prune(builds, keep=keep, current=version)
    logger.info(
        "Published index %s: %d vectors, %d-d, %d trees, %.1fs", version, count, dim, n_trees, meta.build_seconds
    )
    return meta


def _pointer_publish(directory: Path, version: str) -> None:
    tmp = directory / f".{POINTER_FILE}.{uuid.uuid4().hex}"
    try:
        _write_synced(tmp, version.encode())
        tmp.replace(directory / POINTER_FILE)  # atomic: readers see the old or the new name
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


def _builds_prune(builds: Path, *, keep: int, current: str) -> None:
    """Remove old builds, keeping the current one and ``keep`` before it for rollback.

    Processes still reading a removed build keep their mmap (the inode lives on
    until they let go), and switch on their next query.
    """
    finished = sorted(p for p in builds.iterdir() if p.is_dir() and not p.name.startswith("."))
    older = [p for p in finished if p.name != current]
    for stale in older[: max(0, len(older) - keep)]:
        shutil.rmtree(stale, ignore_errors=True)
    # Leftovers of builds killed midway (never published): safe to drop once old.
    for partial in builds.glob(".tmp-*"):
        if time.time() - partial.stat().st_mtime > 3600:
            shutil.rmtree(partial, ignore_errors=True)


def published_version(directory: Path) -> str | None:
    """The version ``CURRENT`` names, or None when nothing was ever published."""
    try:
        return (directory / POINTER_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def index_meta_read(directory: Path, version: str) -> IndexMeta:
    try:
        raw = json.loads((directory / BUILDS_DIR / version / META_FILE).read_text())
        return IndexMeta(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise IndexCorrupt(f"index build {version} has no readable metadata: {exc}") from exc


class LoadedIndex:
    """One published build, memory-mapped; safe to query from many threads."""

    def __init__(self, directory: Path, version: str, *, verify: bool = True) -> None:
        self.meta = index_meta_read(directory, version)
        build = directory / BUILDS_DIR / version
        ann_path = build / INDEX_FILE
        try:
            size = ann_path.stat().st_size
            items = np.load(build / ITEMS_FILE, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"index build {version} is incomplete: {exc}") from exc
        if size != self.meta.file_bytes or items.shape != (self.meta.count, 2):
            raise IndexCorrupt(f"index build {version} does not match its metadata")
        # A checksum pass costs one read of the file per process per build; it
        # stops a damaged file from ever being queried.
        if verify and _file_digest(ann_path) != self.meta.file_blake2b:
            raise IndexCorrupt(f"index build {version} fails its checksum")
        self._ann = AnnoyIndex(self.meta.dim, self.meta.metric)
        try:
            self._ann.load(str(ann_path), prefault=False)
        except OSError as exc:
            raise IndexCorrupt(f"index build {version} cannot be loaded: {exc}") from exc
        if self._ann.get_n_items() != self.meta.count:
            raise IndexCorrupt(
                f"index build {version} holds {self._ann.get_n_items()} items, expected {self.meta.count}"
            )
        self.product_ids = np.ascontiguousarray(items[:, 0])
        self.embedding_ids = np.ascontiguousarray(items[:, 1])
        self._embedding_ids_sorted = np.sort(self.embedding_ids)
        # Items ordered by product id: product ids -> items by binary search.
        self._items_by_product = np.argsort(self.product_ids, kind="stable")
        self._product_ids_sorted = self.product_ids[self._items_by_product]
        self._vectors: np.ndarray | None = None
        try:
            vectors = np.load(build / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            vectors = None  # a build from before vectors.npy: exact passes ask Annoy instead
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"index build {version} has an unreadable {VECTORS_FILE}: {exc}") from exc
        if vectors is not None:
            if vectors.shape != (self.meta.count, self.meta.dim) or vectors.dtype != np.float32:
                raise IndexCorrupt(f"index build {version}: {VECTORS_FILE} does not match its metadata")
            self._vectors = vectors
        self._colours: np.ndarray | None = None
        try:
            colours = np.load(build / COLOURS_FILE, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            colours = None  # built without colour descriptors: trails rank by the image vector alone
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"index build {version} has an unreadable {COLOURS_FILE}: {exc}") from exc
        if colours is not None:
            if colours.ndim != 2 or len(colours) != self.meta.count or colours.dtype != np.float16:
                raise IndexCorrupt(f"index build {version}: {COLOURS_FILE} does not match its metadata")
            self._colours = colours

    def items_of(self, product_ids: np.ndarray) -> np.ndarray:
        """The items holding any of ``product_ids`` (in the index's own order), skipping unknown ids."""
        ids = np.asarray(product_ids, dtype=np.int64)
        known = self._product_ids_sorted
        if not len(known) or not len(ids):
            return np.zeros(0, dtype=np.int64)
        positions = np.searchsorted(known, ids).clip(max=len(known) - 1)
        return np.sort(self._items_by_product[positions[known[positions] == ids]])

    def vectors_of(self, items: np.ndarray) -> np.ndarray:
        """The (len(items), dim) float32 vectors of ``items``."""
        if self._vectors is not None:
            return np.asarray(self._vectors[np.asarray(items, dtype=np.int64)])
        return np.array([self._ann.get_item_vector(int(item)) for item in items], dtype=np.float32).reshape(
            len(items), self.meta.dim
        )

    def colours_of(self, items: np.ndarray) -> np.ndarray | None:
        """The (len(items), c) float32 colour descriptors of ``items``; None when the build has none."""
        if self._colours is None:
            return None
        return np.asarray(self._colours[np.asarray(items, dtype=np.int64)], dtype=np.float32)

    def holds(self, embedding_ids: np.ndarray) -> np.ndarray:
        """A boolean mask: which of ``embedding_ids`` this build holds (binary search, no Python loop)."""
        known = self._embedding_ids_sorted
        if not len(known):
            return np.zeros(len(embedding_ids), dtype=bool)
        positions = np.searchsorted(known, embedding_ids).clip(max=len(known) - 1)
        return known[positions] == embedding_ids

    def item_vector(self, item: int) -> np.ndarray:
        """The vector Annoy holds for item ``item`` (Annoy keeps angular vectors as given)."""
        return np.asarray(self._ann.get_item_vector(item), dtype=np.float32)

    def query(self, vector: np.ndarray, *, n: int, search_k: int | None = None) -> list[Hit]:
        """The ``n`` nearest items to a unit ``vector``, best first, scored by cosine."""
        items, scores = self.query_items(vector, n=n, search_k=search_k)
        return [
            Hit(int(self.product_ids[item]), int(self.embedding_ids[item]), score)
            for item, score in zip(items.tolist(), scores.tolist(), strict=True)
        ]

    def query_items(self, vector: np.ndarray, *, n: int, search_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` nearest items to a unit ``vector`` (int64) and their cosines (float64), best first.

        Arrays, for callers that filter hundreds of hits: no Hit object is made for the ones they drop.
        """
        if len(vector) != self.meta.dim:
            raise ValueError(f"query has {len(vector)} dimensions, the index {self.meta.dim}")
        items, distances = self._ann.get_nns_by_vector(
            np.asarray(vector, dtype=np.float32).tolist(),
            min(n, self.meta.count),
            search_k=self.meta.search_k if search_k is None else search_k,
            include_distances=True,
        )
        found = np.asarray(items, dtype=np.int64)
        distance = np.asarray(distances, dtype=np.float64)
        # Annoy's angular distance is sqrt(2 - 2 cos) on unit vectors.
        return found, 1.0 - (distance * distance) / 2.0

    def scores_of(self, items: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """The cosine of unit ``vector`` with each of ``items`` (float32), read from the memory map.

        Equal to ``vectors_of(items) @ vector`` without copying every row first: a
        contiguous run of items (the whole build) is multiplied in place, other
        items are gathered SCORE_CHUNK_BYTES at a time into a small buffer, so a
        broad filter's exact pass never allocates tens of megabytes per request.
        """
        items = np.asarray(items, dtype=np.int64)
        vector = np.asarray(vector, dtype=np.float32)
        if self._vectors is None or not len(items):
            return self.vectors_of(items) @ vector
        first, last = int(items[0]), int(items[-1])
        if last - first + 1 == len(items) and np.all(np.diff(items) == 1):
            return np.asarray(self._vectors[first : last + 1] @ vector, dtype=np.float32)
        scores = np.empty(len(items), dtype=np.float32)
        rows = min(max(1, SCORE_CHUNK_BYTES // (4 * self.meta.dim)), len(items))
        buffer = np.empty((rows, self.meta.dim), dtype=np.float32)
        for start in range(0, len(items), rows):
            part = items[start : start + rows]
            chunk = buffer[: len(part)]
            np.take(self._vectors, part, axis=0, out=chunk)
            np.matmul(chunk, vector, out=scores[start : start + len(part)])
        return scores

    def fresh_memory(self) -> dict[int, tuple[int, bytes]]:
        """This process's memory of vectors stored since this build: embedding id -> (product id, vector).

        Filled and bounded by ``recommender.selectors.delta_rows``. An embedding row is written once (a
        new image is a new row, the old one deleted), so a vector read by its id stays right while the
        row exists; which rows exist is asked of the database on every query. Dropped with the build.
        """
        memory = self.__dict__.get("_fresh_memory")
        if memory is None:
            memory = self.__dict__.setdefault("_fresh_memory", {})
        return memory


# An exact pass gathers about this many bytes of rows from the memory map at a time (204 rows at
# 1280-d): the chunk stays in the core's cache between the copy and the product, and is never a large
# allocation. 9,700 rows at 1280-d score in 9-12 ms this way, 17-20 ms as one fancy-indexed copy.
SCORE_CHUNK_BYTES = 1 << 20


class IndexReader:
    """Per-process access to the published build; switches on the next query after a publish."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._loaded: LoadedIndex | None = None
        self._lock = threading.Lock()

    def current(self) -> LoadedIndex | None:
        """The published build, loading it on first use or when ``CURRENT`` changed.

        Returns None when nothing is published; raises IndexCorrupt when the
        published build cannot be served.
        """
        version = published_version(self.directory)
        if version is None:
            return None
        loaded = self._loaded
        if loaded is not None and loaded.meta.version == version:
            return loaded
        with self._lock:
            if self._loaded is None or self._loaded.meta.version != version:
                # The previous LoadedIndex stays valid for queries already holding it.
                self._loaded = LoadedIndex(self.directory, version)
                logger.info("Loaded index %s (%d vectors)", version, self._loaded.meta.count)
            return self._loaded
