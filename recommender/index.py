"""Annoy index builds: write, publish, load and query. Arrays and ids only.

Layout under the index directory::

    builds/<version>/vectors.ann   Annoy file (angular metric, dense items 0..n-1)
    builds/<version>/items.npy     sidecar: row i = (product id, embedding id) of item i
    builds/<version>/vectors.npy   row i = item i's unit vector, float32, memory-mapped for exact passes
    builds/<version>/colours.npy   optional: row i = item i's colour descriptor, half-precision values stored as
                                   float32 (zeros: none stored; float16 in builds from before 2026-12-07)
    builds/<version>/sketch.npy    vectors wider than SKETCH_DIM: row i = item i's sketch, float32
    builds/<version>/sketch_basis.npy    the (dim, SKETCH_DIM) basis the sketches project on, float32
    builds/<version>/meta.json     what the build was made from and how
    CURRENT                        the published version's name

A build is written under a hidden temporary name, renamed into ``builds/``
(atomic on one filesystem) and published by replacing ``CURRENT`` with
``os.replace``. Readers mmap the file; a published file is never written again,
so a reader never sees half a build, and an old build stays readable by the
processes still holding it.

A file damaged after publishing (a failing disk, a half-copied build on shared
storage) is another matter: reading a page past the end of a truncated mapped
file kills the process with SIGBUS. ``meta.json`` records each file's size and
checksum; a reader compares the size of every file it maps (``fstat`` of the
very file it mapped) with it before each use, and drops a build that no longer
matches instead of reading it (``IndexCorrupt``: the query path's "no usable
index"). The periodic sweep checks the files of the published build the same
way, and their checksums, and rebuilds from the database when they fail.
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
import weakref
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
from annoy import AnnoyIndex

logger = logging.getLogger(__name__)

INDEX_FILE = "vectors.ann"
ITEMS_FILE = "items.npy"
VECTORS_FILE = "vectors.npy"
COLOURS_FILE = "colours.npy"
SKETCH_FILE = "sketch.npy"
SKETCH_BASIS_FILE = "sketch_basis.npy"
META_FILE = "meta.json"
# Every file a build may hold (the first three always): nothing else is read, checked or delivered.
BUILD_FILES = (META_FILE, INDEX_FILE, ITEMS_FILE, VECTORS_FILE, COLOURS_FILE, SKETCH_FILE, SKETCH_BASIS_FILE)
POINTER_FILE = "CURRENT"
BUILDS_DIR = "builds"
METRIC = "angular"
# A build of vectors wider than this keeps each one's sketch: its projection on the SKETCH_DIM directions that
# hold most of the vectors' inner products, fitted on up to SKETCH_SAMPLE of them. A grid's variety (MMR)
# compares 200 candidates with each other 24 times; on sketches and colours that costs a third of the full
# width's arithmetic (docs/benchmarks.md).
SKETCH_DIM = 256
SKETCH_SAMPLE = 20_000
# Colour descriptors keep half precision (their cosines need three digits) and a build stores them widened to
# this: a click reads 200 candidates' rows as they are, where converting half-precision ones cost it 0.1-0.5 ms
# (numpy's cast is not vectorised here; a look-up table is, but misses the cache). 52 MB at 44,446 products
# instead of 26; 1.2 GB a million.
COLOUR_FILE_DTYPE = np.float32
# Every float16 bit pattern's float32 value (256 KB): a build from before reads its colours through it.
_SINGLE_OF_HALF = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


# A build maps product ids to items through a table indexed by id (4 bytes an id up to the largest: 4 MB a
# million) while that costs at most this many times the ids it holds; sparser ids are looked up by binary search.
DENSE_IDS_MAX_SPREAD = 4


def _dense_lookup(sorted_ids: np.ndarray, items: np.ndarray) -> np.ndarray | None:
    """A table: entry ``i`` is the item holding product id ``i`` (-1: none); None for ids too sparse for one."""
    if not len(sorted_ids) or sorted_ids[0] < 0 or sorted_ids[-1] >= DENSE_IDS_MAX_SPREAD * len(sorted_ids) + 1024:
        return None
    table = np.full(int(sorted_ids[-1]) + 1, -1, dtype=np.int32 if len(items) < 2**31 else np.int64)
    table[sorted_ids[::-1]] = items[::-1]  # an id held twice: its first item, as the binary search finds it
    return table


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
    # name -> {"bytes": int, "blake2b": str} of every file of the build, vectors.ann included;
    # empty for builds published before it was recorded (their .npy sizes follow from their headers).
    files: dict[str, dict[str, object]] = field(default_factory=dict)

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
    with path.open("rb") as fh:
        return _stream_digest(fh)


def _stream_digest(fh: BinaryIO) -> str:
    """The digest of the whole file open as ``fh`` (the file held, whatever its path names now)."""
    digest = hashlib.blake2b(digest_size=16)
    fh.seek(0)
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def sketch_basis(
    vectors: np.ndarray, *, dim: int = SKETCH_DIM, sample: int = SKETCH_SAMPLE, seed: int = 0
) -> np.ndarray:
    """(d, dim) orthonormal: the directions along which ``vectors`` (n, d) have most of their second moment
    (zero columns beyond their rank).

    Uncentred, since what a sketch keeps is the vectors' inner products, not their spread about the mean.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) > sample:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), sample, replace=False))]
    n, d = x.shape
    basis = np.zeros((d, dim))
    if n >= d:
        _, directions = np.linalg.eigh(x.T @ x)  # ascending
        basis[:, : min(dim, d)] = directions[:, ::-1][:, :dim]
    else:  # fewer vectors than dimensions: the same directions from the smaller (n, n) matrix
        values, mixes = np.linalg.eigh(x @ x.T)
        values, mixes = values[::-1][:dim], mixes[:, ::-1][:, :dim]
        kept = values > 1e-9 * max(float(values[0]), 1e-30)
        basis[:, : int(kept.sum())] = (x.T @ mixes[:, kept]) / np.sqrt(values[kept])
    return basis.astype(np.float32)


def sketched(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``vectors`` projected on ``basis``: their inner products are the vectors' own less what lies outside it."""
    return np.asarray(vectors, dtype=np.float32) @ basis


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
            # Half precision (the descriptors' cosines need three digits), stored as COLOUR_FILE_DTYPE.
            arrays.append((COLOURS_FILE, np.asarray(colours, dtype=np.float16).astype(COLOUR_FILE_DTYPE)))
        if dim > SKETCH_DIM:
            basis = sketch_basis(vectors, seed=seed)
            arrays.append((SKETCH_BASIS_FILE, basis))
            arrays.append((SKETCH_FILE, sketched(vectors, basis)))  # 45 MB at 44k; float32: read without a cast
        for name, array in arrays:
            with (tmp / name).open("wb") as fh:
                np.save(fh, array)
                fh.flush()
                os.fsync(fh.fileno())
        ann_path = tmp / INDEX_FILE
        with ann_path.open("rb") as fh:
            os.fsync(fh.fileno())
        # One blake2b pass over each file (~0.25 s per 225 MB: 44k x 1280 float32), once per build.
        files: dict[str, dict[str, object]] = {
            name: {"bytes": (tmp / name).stat().st_size, "blake2b": _file_digest(tmp / name)}
            for name in (INDEX_FILE, *(name for name, _ in arrays))
        }
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
            file_bytes=int(files[INDEX_FILE]["bytes"]),
            file_blake2b=str(files[INDEX_FILE]["blake2b"]),
            files=files,
        )
        _write_synced(tmp / META_FILE, json.dumps(asdict(meta), indent=2).encode())
        final = builds / version
        tmp.rename(final)
        _fsync_dir(builds)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer_publish(directory, version)
    builds_prune(builds, keep=keep, current=version)
    logger.info(
        "Published index %s: %d vectors, %d-d, %d trees, %.1fs", version, count, dim, n_trees, meta.build_seconds
    )
    return meta


def pointer_publish(directory: Path, version: str) -> None:
    """Point ``directory``'s ``CURRENT`` at build ``version`` (already whole under ``builds/``), atomically."""
    tmp = directory / f".{POINTER_FILE}.{uuid.uuid4().hex}"
    try:
        _write_synced(tmp, version.encode())
        tmp.replace(directory / POINTER_FILE)  # atomic: readers see the old or the new name
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


def builds_prune(builds: Path, *, keep: int, current: str) -> None:
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
    return build_meta_read(directory / BUILDS_DIR / version, version)


def build_meta_read(build: Path, version: str) -> IndexMeta:
    """The metadata of the build in folder ``build`` (any name: a copy being fetched too), which must be ``version``."""
    try:
        raw = json.loads((build / META_FILE).read_text())
        meta = IndexMeta(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise IndexCorrupt(f"index build {version} has no readable metadata: {exc}") from exc
    if meta.version != version:
        raise IndexCorrupt(f"index build {version} holds the metadata of {meta.version}")
    return meta


def _npy_header(fh: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of the .npy file open as ``fh``; ValueError when unreadable."""
    fh.seek(0)
    major, _ = np.lib.format.read_magic(fh)
    if major == 1:
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif major == 2:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format version {major}")
    return shape, fortran, dtype, fh.tell()


def _npy_bytes(fh: BinaryIO) -> int:
    """The size the .npy file open as ``fh`` has when whole: its header and every element it declares."""
    shape, _, dtype, offset = _npy_header(fh)
    return offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _recorded_files(meta: IndexMeta, build: Path) -> dict[str, tuple[int, str | None]]:
    """name -> (size, blake2b or None) of every file of the build, as published."""
    if meta.files:
        return {name: (int(info["bytes"]), str(info["blake2b"])) for name, info in meta.files.items()}
    # A build from before sizes were recorded: the Annoy file's from the metadata, each array's from its header.
    recorded: dict[str, tuple[int, str | None]] = {INDEX_FILE: (meta.file_bytes, meta.file_blake2b)}
    for name in (ITEMS_FILE, VECTORS_FILE, COLOURS_FILE):
        if name != ITEMS_FILE and not (build / name).exists():
            continue
        try:
            with (build / name).open("rb") as fh:
                recorded[name] = (_npy_bytes(fh), None)
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"index build {meta.version}: {name} is unreadable: {exc}") from exc
    return recorded


FileSignature = tuple[tuple[str, int, int, int], ...]


def index_files_verify(directory: Path, version: str, *, checksum: bool = True) -> FileSignature:
    """Check build ``version``'s files on disk against its metadata: every size, and with ``checksum`` every byte.

    Raises IndexCorrupt on the first mismatch. Returns the files' (name, inode, size, mtime) as
    checked, so that a caller can skip the checksum (~0.5 s for 44k x 1280-d) while they stay the same.
    """
    return build_files_verify(directory / BUILDS_DIR / version, version, checksum=checksum)


def build_files_verify(build: Path, version: str, *, checksum: bool = True) -> FileSignature:
    """``index_files_verify`` for the build in folder ``build``, whatever the folder's name."""
    meta = build_meta_read(build, version)
    recorded = _recorded_files(meta, build)
    signature = []
    for name, (size, _) in sorted(recorded.items()):
        try:
            stat = (build / name).stat()
        except OSError as exc:
            raise IndexCorrupt(f"index build {version} is missing {name}: {exc}") from exc
        if stat.st_size != size:
            raise IndexCorrupt(f"index build {version}: {name} is {stat.st_size} bytes, {size} when published")
        signature.append((name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    if checksum:
        for name, (_, digest) in sorted(recorded.items()):
            if digest is not None and _file_digest(build / name) != digest:
                raise IndexCorrupt(f"index build {version}: {name} fails its checksum")
    return tuple(signature)


def _build_signature(build: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """(inode, size, mtime) of each file a build may hold, None where missing: changes when any file does."""
    signature = []
    for name in BUILD_FILES:
        try:
            stat = (build / name).stat()
        except OSError:
            signature.append(None)
        else:
            signature.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


def _files_close(mapped: list[tuple[str, BinaryIO, int]]) -> None:
    for _, fh, _ in mapped:
        fh.close()


class LoadedIndex:
    """One published build, memory-mapped; safe to query from many threads.

    Reading a page past the end of a mapped file that shrank after it was mapped kills the
    process (SIGBUS), so the build keeps each file it maps open and ``damage`` compares its
    size with the published one: ``IndexReader.current`` does before every use. Copying the
    files to private memory instead would cost every worker process ~0.5 GB at 44k x 1280-d
    (nothing shared through the page cache) and a full read per process per build; the check
    costs a few microseconds. What it cannot close is the window of one click: a file cut
    between the check and the reads of the click that follows it still faults.
    """

    def __init__(self, directory: Path, version: str, *, verify: bool = True) -> None:
        self.meta = index_meta_read(directory, version)
        # (name, the open file, its size when published) of each mapped file; see ``damage``.
        self._mapped: list[tuple[str, BinaryIO, int]] = []
        # Closed with the build (the maps keep their own handles): a dropped build holds no files.
        closer = weakref.finalize(self, _files_close, self._mapped)
        try:
            self._load(directory / BUILDS_DIR / version, verify=verify)
        except BaseException:
            closer()
            raise

    def _load(self, build: Path, *, verify: bool) -> None:
        version = self.meta.version
        ann_path = build / INDEX_FILE
        try:
            ann_file = ann_path.open("rb")
        except OSError as exc:
            raise IndexCorrupt(f"index build {version} is incomplete: {exc}") from exc
        self._mapped.append((INDEX_FILE, ann_file, self.meta.file_bytes))
        try:
            items = np.load(build / ITEMS_FILE, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"index build {version} is incomplete: {exc}") from exc
        size = os.fstat(ann_file.fileno()).st_size
        if size != self.meta.file_bytes:
            raise IndexCorrupt(f"index build {version}: {INDEX_FILE} is {size} bytes, {self.meta.file_bytes} published")
        if items.shape != (self.meta.count, 2):
            raise IndexCorrupt(f"index build {version}: {ITEMS_FILE} does not match its metadata")
        # A checksum pass costs one read of the file per process per build; it
        # stops a damaged file from ever being queried.
        if verify and _stream_digest(ann_file) != self.meta.file_blake2b:
            raise IndexCorrupt(f"index build {version} fails its checksum")
        self._ann = AnnoyIndex(self.meta.dim, self.meta.metric)
        try:
            self._ann.load(str(ann_path), prefault=False)
            # Annoy maps the file by its path: the one checked above unless the path was replaced meanwhile.
            replaced = ann_path.stat().st_ino != os.fstat(ann_file.fileno()).st_ino
        except OSError as exc:
            raise IndexCorrupt(f"index build {version} cannot be loaded: {exc}") from exc
        if replaced:
            raise IndexCorrupt(f"index build {version}: {INDEX_FILE} was replaced while it was loaded")
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
        # ... or, where the ids are dense enough, by one look-up in a table indexed by product id: a click maps
        # hundreds of candidates to items, and each binary search over 44k ids is a dozen cache misses.
        self._item_of_product = _dense_lookup(self._product_ids_sorted, self._items_by_product)
        # Without vectors.npy (a build from before it) exact passes ask Annoy instead; without
        # colours.npy trails rank by the image vector alone.
        self._vectors = self._map(build, VECTORS_FILE, dtype=np.float32, shape=(self.meta.count, self.meta.dim))
        self._colours = self._map(build, COLOURS_FILE, dtype=(np.float32, np.float16), shape=(self.meta.count, None))
        # Without a sketch (narrow vectors, a build from before it) a grid's variety compares the vectors.
        self._sketch = self._map(build, SKETCH_FILE, dtype=np.float32, shape=(self.meta.count, None))
        basis = self._map(build, SKETCH_BASIS_FILE, dtype=np.float32, shape=(self.meta.dim, None))
        self._sketch_basis = None if basis is None else np.array(basis)  # small: read whole
        if (self._sketch is None) != (basis is None) or (basis is not None and basis.shape[1] != self._sketch.shape[1]):
            raise IndexCorrupt(f"index build {version}: {SKETCH_FILE} and {SKETCH_BASIS_FILE} do not match")

    def _map(
        self, build: Path, name: str, *, dtype: type | tuple[type, ...], shape: tuple[int, int | None]
    ) -> np.ndarray | None:
        """A read-only memory map of array file ``name`` (of ``dtype``, or of any of several), kept open for
        ``damage``; None where a build has none."""
        version = self.meta.version
        try:
            fh = (build / name).open("rb")
        except FileNotFoundError as exc:
            if name in self.meta.files:
                raise IndexCorrupt(f"index build {version} is missing {name}") from exc
            return None
        except OSError as exc:
            raise IndexCorrupt(f"index build {version} has an unreadable {name}: {exc}") from exc
        self._mapped.append((name, fh, 0))
        try:
            found, fortran, found_dtype, offset = _npy_header(fh)
            whole = offset + int(np.prod(found, dtype=np.int64)) * found_dtype.itemsize
            recorded = self.meta.files.get(name, {}).get("bytes", whole)
            if (
                found_dtype not in (dtype if isinstance(dtype, tuple) else (dtype,))
                or fortran
                or len(found) != 2
                or found[0] != shape[0]
                or shape[1] not in (None, found[1])
                or whole != recorded
            ):
                raise IndexCorrupt(f"index build {version}: {name} does not match its metadata")
            self._mapped[-1] = (name, fh, whole)
            if os.fstat(fh.fileno()).st_size != whole:
                raise IndexCorrupt(f"index build {version}: {name} is not the size it was published at ({whole} bytes)")
            # Mapped through the file held open, so ``damage`` watches the very file mapped. Handed out as a plain
            # array over the map (which it keeps alive): gathering a click's 200 rows through the memmap subclass
            # costs half as much again (170 against 270 us for 1280-d vectors).
            return np.asarray(np.memmap(fh, dtype=found_dtype, mode="r", shape=found, offset=offset))
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"index build {version} has an unreadable {name}: {exc}") from exc

    def damage(self) -> str | None:
        """Why this build's mapped files can no longer be read safely; None while each is its published size.

        One ``fstat`` per mapped file (about 1 us each), of the file mapped even if its path
        now names another: cheap enough for every query.
        """
        for name, fh, size in self._mapped:
            try:
                now = os.fstat(fh.fileno()).st_size
            except (OSError, ValueError) as exc:
                return f"{name} cannot be checked: {exc}"
            if now != size:
                return f"{name} is {now} bytes, {size} when published"
        return None

    def items_of(self, product_ids: np.ndarray) -> np.ndarray:
        """The items holding any of ``product_ids`` (in the index's own order), skipping unknown ids."""
        items = self.item_at(product_ids)
        return np.sort(items[items >= 0])

    def item_at(self, product_ids: np.ndarray) -> np.ndarray:
        """The item holding each of ``product_ids``, in their order; -1 for an id the build does not hold."""
        ids = np.asarray(product_ids, dtype=np.int64)
        known = self._product_ids_sorted
        if not len(known) or not len(ids):
            return np.full(len(ids), -1, dtype=np.int64)
        table = self._item_of_product
        if table is not None:
            inside = (ids >= 0) & (ids < len(table))
            found = table[ids] if inside.all() else np.where(inside, table[np.where(inside, ids, 0)], -1)
            return found.astype(np.int64, copy=False)
        positions = np.searchsorted(known, ids).clip(max=len(known) - 1)
        return np.where(known[positions] == ids, self._items_by_product[positions], -1)

    def vectors_of(self, items: np.ndarray) -> np.ndarray:
        """The (len(items), dim) float32 vectors of ``items``."""
        if self._vectors is not None:
            return self._vectors[np.asarray(items, dtype=np.int64)]
        return np.array([self._ann.get_item_vector(int(item)) for item in items], dtype=np.float32).reshape(
            len(items), self.meta.dim
        )

    def vectors_all(self) -> np.ndarray:
        """Every item's vector (count, dim), float32: the build's read-only memory map (no copy) when it has one."""
        if self._vectors is not None:
            return self._vectors
        return self.vectors_of(np.arange(self.meta.count))

    def colours_of(self, items: np.ndarray) -> np.ndarray | None:
        """The (len(items), c) float32 colour descriptors of ``items``; None when the build has none."""
        if self._colours is None:
            return None
        rows = self._colours[np.asarray(items, dtype=np.int64)]
        if rows.dtype == np.float16:  # a build from before they were stored wide: exact, half numpy's cast
            return np.take(_SINGLE_OF_HALF, rows.view(np.uint16))
        return rows

    @property
    def colour_file_dtype(self) -> np.dtype | None:
        """How the build stores colour descriptors (COLOUR_FILE_DTYPE; float16 in older builds); None: it has none."""
        return None if self._colours is None else self._colours.dtype

    def sketches_of(self, items: np.ndarray) -> np.ndarray | None:
        """The (len(items), s) float32 sketches of ``items`` (``sketched``); None when the build has none."""
        if self._sketch is None:
            return None
        return self._sketch[np.asarray(items, dtype=np.int64)]

    @property
    def sketch_dim(self) -> int:
        """The width of the build's sketches; 0 where it keeps none (narrow vectors, a build from before them)."""
        return 0 if self._sketch_basis is None else int(self._sketch_basis.shape[1])

    def sketch(self, vectors: np.ndarray) -> np.ndarray | None:
        """Sketches of vectors the build does not hold (stored since), as the build's own; None without one."""
        return None if self._sketch_basis is None else sketched(vectors, self._sketch_basis)

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
        # (version, its files' signature, why) of the last build refused: not loaded (and checksummed)
        # again on every query while its files stay as they are.
        self._refused: tuple[str, tuple, str] | None = None
        self._lock = threading.Lock()

    def current(self) -> LoadedIndex | None:
        """The published build, loading it on first use or when ``CURRENT`` changed.

        Returns None when nothing is published; raises IndexCorrupt when the
        published build cannot be served. The build in use is checked on every
        call (``LoadedIndex.damage``): one whose files changed since it was
        mapped is dropped and loaded again from disk (refused, when damaged there).
        """
        version = published_version(self.directory)
        if version is None:
            return None
        loaded = self._loaded
        if loaded is not None and loaded.meta.version == version:
            damage = loaded.damage()
            if damage is None:
                return loaded
            with self._lock:
                if self._loaded is loaded:
                    # Never read from it again: a page past a file's new end kills the process.
                    self._loaded = None
                    logger.error("Dropped index %s: %s", version, damage)
        with self._lock:
            loaded = self._loaded
            if loaded is not None and loaded.meta.version == version and loaded.damage() is None:
                return loaded
            signature = _build_signature(self.directory / BUILDS_DIR / version)
            if self._refused is not None and self._refused[:2] == (version, signature):
                raise IndexCorrupt(self._refused[2])
            try:
                # The previous LoadedIndex stays valid for queries already holding it.
                loaded = LoadedIndex(self.directory, version)
            except IndexCorrupt as exc:
                self._refused = (version, signature, str(exc))
                raise
            self._loaded, self._refused = loaded, None
            logger.info("Loaded index %s (%d vectors)", version, loaded.meta.count)
            return loaded
