"""Writes to the catalog: storing product images, availability, importing catalogs."""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import DatabaseError, IntegrityError, OperationalError, transaction
from django.db.models import F, Q
from django.db.models.fields.files import FieldFile
from django.utils import timezone
from PIL import Image

from gallery.catalog import CatalogRow, RowError, images_find, styles_read
from gallery.models import Product
from recommender import api
from recommender.api import ImageRef, ImageRejected, image_load

logger = logging.getLogger(__name__)

STORED_MAX_SIDE = 1200
THUMBNAIL_SIDE = 320
JPEG_QUALITY = 88


@dataclass(frozen=True)
class StoredImage:
    """A validated image, re-encoded as a JPEG of pixels only (in sRGB, no metadata), plus its thumbnail."""

    sha256: str
    image: bytes
    thumbnail: bytes


def _jpeg(img: Image.Image, *, max_side: int) -> bytes:
    """``img`` as a JPEG of its pixels alone: no comment, EXIF, XMP, ICC profile or any other segment of the upload.

    Pillow writes some of an image's ``info`` back when it saves (a JPEG comment, or a PNG text chunk
    named "comment", becomes a COM segment): the upload's metadata (camera and GPS data, HTML) would be
    served from our domain. The colours are already sRGB (``image_load`` applied any ICC profile), which is
    what a JPEG without a profile means.
    """
    img = img.copy()
    img.info = {}
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def image_prepare_for_store(*, data: bytes, max_pixels: int) -> StoredImage:
    """Validate ``data`` as a product photo and re-encode it; raises ImageRejected."""
    if not data:
        raise ImageRejected("The file is empty.")
    # The one decoding path (recommender.preprocess): reduced to the stored size before any conversion.
    rgb = image_load(data, max_pixels=max_pixels, max_side=STORED_MAX_SIDE)
    return StoredImage(
        sha256=hashlib.sha256(data).hexdigest(),
        image=_jpeg(rgb, max_side=STORED_MAX_SIDE),
        thumbnail=_jpeg(rgb, max_side=THUMBNAIL_SIDE),
    )


def _files_delete_later(names: Iterable[str]) -> None:
    """Delete replaced files once the new ones are committed: nothing stored is lost on a rollback."""
    names = [name for name in names if name]

    def delete() -> None:
        for name in names:
            try:
                default_storage.delete(name)
            except OSError:
                logger.warning("Could not delete replaced file %s", name, exc_info=True)

    if names:
        transaction.on_commit(delete)


class ImageStoreFailed(OSError):
    """The image or its thumbnail could not be written (a full disk, a storage error); no file of it was kept."""


# The names of the image files written inside the innermost ``image_files_guard`` block (None outside any).
_guarded_names: ContextVar[list[str] | None] = ContextVar("gallery_guarded_image_names", default=None)


@contextmanager
def image_files_guard() -> Iterator[None]:
    """Remove, when the block ends, the image files written inside it that no committed product names.

    Enter it outside the transaction that calls ``product_save`` (the admin
    wraps its whole save view in it). Django has no on_rollback hook, and a
    savepoint or a try/except around our own atomic block sees only our own
    failure, not a rollback of the caller's enclosing transaction after we
    returned: the one place that knows is after the outermost block has ended.
    There the database says which new names a row holds; an on_commit flag
    would not do, as an earlier on-commit callback that raises skips it and
    committed files would be deleted. Entered inside a transaction, the block
    hands its names to the enclosing guard, if any.
    """
    outer = _guarded_names.get()
    names: list[str] = []
    token = _guarded_names.set(names)
    try:
        yield
    finally:
        _guarded_names.reset(token)
        if transaction.get_connection().in_atomic_block:
            if outer is not None:
                outer.extend(names)
        else:
            _files_unreferenced_delete(names)


def _files_unreferenced_delete(names: list[str]) -> None:
    """Delete those of ``names`` (files this process wrote) that no committed product row names."""
    if not names:
        return
    try:
        held = {
            name
            for pair in Product.objects.filter(Q(image__in=names) | Q(thumbnail__in=names)).values_list(
                "image", "thumbnail"
            )
            for name in pair
        }
    except DatabaseError:
        logger.warning("Could not check which new image files were committed; keeping %s", names, exc_info=True)
        return
    _files_delete(name for name in names if name not in held)


def product_lock(*, product: Product) -> None:
    """Lock ``product``'s row for the rest of the transaction and take its image fields from the row.

    The lock comes before the old file names are read: a writer that read them
    before another committed a new image would delete the files it already
    deleted and leave the other's for ever. PostgreSQL waits here for a
    concurrent writer of the product; SQLite, whose transactions take the
    database's write lock first (BEGIN IMMEDIATE), ignores FOR UPDATE but runs
    the same code. A caller that saves a product loaded earlier calls it too,
    or its save would write back image names another writer has replaced
    (and deleted). A new product has no row to lock.
    """
    if product._state.adding:
        return
    row = (
        Product.objects.select_for_update()
        .filter(id=product.id)
        .values_list("image", "thumbnail", "image_sha256", "image_version")
        .first()
    )
    if row is not None:
        product.image, product.thumbnail, product.image_sha256, product.image_version = row


def _file_write(file: FieldFile, *, filename: str, data: bytes) -> str:
    """Write ``data`` under a new name for ``file``'s field and return the name; raises ImageStoreFailed.

    A write that fails part-way (ENOSPC after some bytes, or none) leaves a
    partial file at that name (Django's FileSystemStorage does not remove it):
    it is deleted before the error is raised. The name is random (uuid4), so
    the file there is this write's.
    """
    name = file.field.generate_filename(file.instance, filename)
    try:
        return file.storage.save(name, ContentFile(data), max_length=file.field.max_length)
    except OSError as exc:
        _files_delete([name])
        raise ImageStoreFailed(exc.errno, exc.strerror or str(exc)) from exc
    except BaseException:
        _files_delete([name])
        raise


@dataclass(frozen=True)
class ProductSaved:
    """What ``product_save`` wrote."""

    created: bool  # the product's row was inserted
    written: bool  # its row was written at all (False: nothing had changed)
    image_changed: bool  # a new image was stored and its embedding requested


def product_save(
    *,
    product: Product,
    stored: StoredImage | None = None,
    fields_changed: bool = True,
    enqueue: bool = True,
) -> ProductSaved:
    """Save ``product`` with the fields the caller set and, given ``stored``, a new image: the one writer of a
    product's row and image (the admin, the import, any other caller).

    One transaction (the caller's, when one is open): an existing product's row
    is locked and its image fields taken from it (a form loaded earlier never
    writes back names another writer has replaced); a new image (other bytes
    than the product holds) is written to two files under new names; the row
    is saved (a new product inserted, never updated-then-inserted); the image
    version is bumped in the database (an UPDATE, so two writers of one product
    never share a version); then the vector engine records the embedding
    request (the product's old vectors are dropped: a stale look is never
    served), and the embedding is queued once the transaction commits
    (``enqueue=False``: the caller queues it, as the import does once per
    batch, or ``embed_catalog`` and the sweep do). With no new image and
    ``fields_changed=False`` an existing product is not written at all.

    Files: the replaced ones are deleted after the commit; the new ones at once
    if this call fails (``ImageStoreFailed`` when a file cannot be written, the
    product as it was), and by ``image_files_guard`` if the caller's
    transaction rolls back later.
    """
    adding = product._state.adding
    if stored is None and not fields_changed and not adding:
        return ProductSaved(created=False, written=False, image_changed=False)
    with transaction.atomic(savepoint=False):
        product_lock(product=product)
        image_changed = stored is not None and not (product.image and product.image_sha256 == stored.sha256)
        if not (adding or fields_changed or image_changed):
            return ProductSaved(created=False, written=False, image_changed=False)
        before = (product.image.name, product.thumbnail.name, product.image_sha256, product.image_version)
        written: list[str] = []
        try:
            if image_changed:
                written.append(_file_write(product.image, filename="image.jpg", data=stored.image))
                written.append(_file_write(product.thumbnail, filename="thumb.jpg", data=stored.thumbnail))
                product.image, product.thumbnail = written
                product.image_sha256 = stored.sha256
                if adding:
                    product.image_version += 1
            # The product's row first: the engine's state row refers to it.
            product.save(force_insert=adding)
            if image_changed:
                if not adding:
                    # The increment happens in the database, under the row's write lock: a
                    # version read earlier (by this request or another) can be stale.
                    Product.objects.filter(id=product.id).update(image_version=F("image_version") + 1)
                    product.image_version = (
                        Product.objects.filter(id=product.id).values_list("image_version", flat=True).get()
                    )
                api.embedding_request(
                    images=[
                        ImageRef(
                            product_id=product.id, image_name=product.image.name, image_version=product.image_version
                        )
                    ]
                )
                if enqueue:
                    api.embedding_enqueue_on_commit(product_ids=[product.id])
        except BaseException:
            # Nothing committed names the new files: remove them now, whatever the caller does with its transaction.
            _files_delete(written)
            product.image, product.thumbnail, product.image_sha256, product.image_version = before
            product._state.adding = adding
            raise
    if image_changed:
        guarded = _guarded_names.get()
        if guarded is not None:
            guarded.extend(written)
        _files_delete_later(before[:2])
    return ProductSaved(created=adding, written=True, image_changed=image_changed)


def products_delete(*, product_ids: list[int]) -> int:
    """Delete products, their image files (after the commit) and, by cascade, their vectors; returns how many.

    Each deletion is numbered in the same transaction (``gallery.cards.deletion_numbered``): the catalog's
    version moves, so no cached grid or card outlives the products it shows.
    """
    with transaction.atomic():
        names = [
            name
            for pair in Product.objects.filter(id__in=product_ids).values_list("image", "thumbnail")
            for name in pair
        ]
        deleted, _ = Product.objects.filter(id__in=product_ids).delete()
        _files_delete_later(names)
    return deleted


# --- Availability ---------------------------------------------------------------------


class _Keep:
    """Leave the field as it is (``product_availability_set``'s default for ``stock``)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


def product_availability_set(
    *, product_ids: Iterable[int], active: bool | None = None, stock: int | None | _Keep = KEEP
) -> int:
    """Take products off sale (``active=False``) or put them back (``True``), and/or set their stock.

    The one writer of availability for the admin's actions, the API and other services (a catalog
    check taking duplicates off sale calls it too). Nothing else of a product changes: its image and
    vectors stay, so putting it back is instant. ``stock=None`` clears the count; ``KEEP`` (the default)
    leaves it. Writes ``updated_at`` on the products that changed, which moves the catalog version
    (``gallery.cards.catalog_version``): every process drops its remembered grids, filters and text
    index, so no grid shows a product off sale. Returns how many products changed. Raises ValueError
    for a negative stock.
    """
    if not isinstance(stock, _Keep) and stock is not None and (isinstance(stock, bool) or int(stock) < 0):
        raise ValueError(f"stock must be a whole number of 0 or more, not {stock!r}")
    ids = sorted({int(i) for i in product_ids})
    changes: dict[str, object] = {}
    differs = Q()
    if active is not None:
        changes["active"] = bool(active)
        differs |= ~Q(active=bool(active))
    if not isinstance(stock, _Keep):
        changes["stock"] = None if stock is None else int(stock)
        differs |= Q(stock__isnull=False) if stock is None else (Q(stock__isnull=True) | ~Q(stock=int(stock)))
    if not ids or not changes:
        return 0
    changed = 0
    with transaction.atomic():
        for start in range(0, len(ids), 900):  # under every database's limit on query parameters
            part = ids[start : start + 900]
            changed += Product.objects.filter(differs, id__in=part).update(**changes, updated_at=timezone.now())
    if changed:
        logger.info("Availability of %d products set: %s", changed, changes)
    return changed


# --- Catalog import -------------------------------------------------------------------

# A batch that meets a concurrent write (a product created by another writer
# between our read and our insert, a deadlock, a lock timeout) is retried from
# a fresh read this many times in all.
BATCH_ATTEMPTS = 3
# Any 64-bit number unique to this lock: PostgreSQL advisory lock serialising import batches.
_IMPORT_LOCK_KEY = 0x67616C6C657279


@dataclass
class _RowCounts:
    """What rows of styles.csv did: created, updated, unchanged, skipped (with reasons), images queued."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    images_queued: int = 0
    reasons: list[RowError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.created + self.updated + self.unchanged + self.skipped


@dataclass
class BatchReport(_RowCounts):
    """What one committed batch of styles.csv rows did (it counts nothing a rollback undid)."""

    last_line: int = 0

    def skip(self, error: RowError) -> None:
        self.skipped += 1
        self.reasons.append(error)


@dataclass
class ImportSummary(_RowCounts):
    """What a whole import did: its batches added up, the first ``max_reasons`` reasons kept."""

    max_reasons: int = 10

    def skip(self, error: RowError) -> None:
        self.skipped += 1
        if len(self.reasons) < self.max_reasons:
            self.reasons.append(error)

    def add(self, report: BatchReport) -> None:
        """Count a committed batch in."""
        self.created += report.created
        self.updated += report.updated
        self.unchanged += report.unchanged
        self.skipped += report.skipped
        self.images_queued += report.images_queued
        self.reasons += report.reasons[: max(0, self.max_reasons - len(self.reasons))]

    def lines(self) -> list[str]:
        rate = self.rows / self.seconds if self.seconds else 0.0
        out = [
            f"{self.rows} rows in {self.seconds:.1f}s ({rate:.0f} rows/s): {self.created} created, "
            f"{self.updated} updated, {self.unchanged} unchanged, {self.skipped} skipped; "
            f"{self.images_queued} images queued for embedding"
        ]
        out += [f"  line {r.line}: {r.reason}" for r in self.reasons]
        if self.skipped > len(self.reasons):
            out.append(f"  ... and {self.skipped - len(self.reasons)} more skipped rows")
        return out


@dataclass(frozen=True)
class _ImageJob:
    line: int
    path: Path
    known_sha256: str
    max_pixels: int


def _image_job_run(job: _ImageJob) -> StoredImage | RowError | str:
    """Read and prepare one catalog image (in a worker process); the sha256 alone when unchanged."""
    try:
        data = job.path.read_bytes()
    except FileNotFoundError:
        return RowError(job.line, f"image {job.path.parent.name}/{job.path.name} is missing")
    except OSError as exc:
        return RowError(job.line, f"image {job.path.name} cannot be read: {exc.strerror}")
    sha = hashlib.sha256(data).hexdigest()
    if sha == job.known_sha256:
        return sha
    try:
        return image_prepare_for_store(data=data, max_pixels=job.max_pixels)
    except ImageRejected as exc:
        return RowError(job.line, f"image {job.path.name}: {exc}")


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch


def catalog_import(
    *,
    directory: Path,
    enqueue: bool = True,
    workers: int = 2,
    batch_size: int = 200,
    progress: Callable[[int], None] | None = None,
    start_after_line: int = 0,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> ImportSummary:
    """Import ``directory/styles.csv`` and ``directory/images/<id>.jpg`` into the catalog.

    Every data line of styles.csv is created, updated, unchanged or skipped
    with its line number and reason, so the counts add up to the file's data
    lines. Images are found by ``gallery.catalog.image_id_of`` (``.jpg`` or
    ``.jpeg``, any case), the rule the bulk upload checks names by. Idempotent:
    rows update products by id; an image whose bytes did not change is not
    processed again. Bad rows are skipped and counted, never fatal.
    Images are decoded in ``workers`` processes, one batch at a time, so memory
    stays flat whatever the catalog's size. Each batch commits whole or not at
    all, and is safe beside another import of the same ids (see
    ``_batch_save``). New or changed images are queued for embedding after each
    batch commits (unless ``enqueue`` is False: they stay pending for
    ``embed_catalog`` or the sweep).

    ``start_after_line`` resumes an interrupted import: lines up to it are
    read (for the duplicate check) but neither applied nor counted again.
    ``on_batch`` is called inside each batch's transaction with what it did,
    so whatever it writes (a job's progress) commits or rolls back with the
    rows; ``progress`` is called after the commit with the batch's line count.
    """
    started = time.perf_counter()
    summary = ImportSummary()
    seen: set[int] = set()
    max_pixels = settings.IMAGE_MAX_PIXELS
    images_dir = directory / "images"
    images = images_find(directory)  # one listing of images/ (44,000 names: milliseconds), not a stat per row
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for batch in _batches(styles_read(directory / "styles.csv"), batch_size):
            batch_started = time.perf_counter()
            report = BatchReport(last_line=batch[-1].line)
            rows: list[CatalogRow] = []
            fresh = 0
            for item in batch:
                if item.line <= start_after_line:
                    # Applied and counted by the run this one resumes; its id still counts as seen.
                    if isinstance(item, CatalogRow):
                        seen.add(item.id)
                    continue
                fresh += 1
                if isinstance(item, RowError):
                    report.skip(item)
                elif item.id in seen:
                    report.skip(RowError(item.line, f"id {item.id} appears earlier in the file"))
                elif len(names := images.get(item.id, ())) > 1:
                    seen.add(item.id)
                    listed = " and ".join(f"images/{name}" for name in names)
                    report.skip(RowError(item.line, f"{listed} name the same product {item.id}; keep one of them"))
                else:
                    seen.add(item.id)
                    rows.append(item)
            if fresh:
                # A hint only (images whose bytes we already hold are not decoded again):
                # _batch_save judges each row against the products as they are at its commit.
                known = dict(
                    Product.objects.filter(id__in=[row.id for row in rows])
                    .exclude(image="")
                    .values_list("id", "image_sha256")
                )
                # A row without an image looks for <id>.jpg, and its reason names that file as missing.
                jobs = [
                    _ImageJob(
                        row.line,
                        images_dir / (images.get(row.id) or [f"{row.id}.jpg"])[0],
                        known.get(row.id, ""),
                        max_pixels,
                    )
                    for row in rows
                ]
                results = list(pool.map(_image_job_run, jobs, chunksize=8) if pool else map(_image_job_run, jobs))
                report = _batch_save(
                    rows=rows,
                    jobs=jobs,
                    results=results,
                    report=report,
                    enqueue=enqueue,
                    on_batch=on_batch,
                    started=batch_started,
                )
                summary.add(report)
            if progress:
                progress(len(batch))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    summary.seconds = time.perf_counter() - started
    return summary


def _catalog_write_lock() -> None:
    """Make concurrent imports apply their batches one at a time (their decoding still runs side by side).

    PostgreSQL: a transaction-scoped advisory lock. SQLite needs none here:
    config/settings.py opens every transaction with BEGIN IMMEDIATE, which
    takes the database's write lock before the first read.
    """
    connection = transaction.get_connection()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_IMPORT_LOCK_KEY])


def _files_delete(names: Iterable[str]) -> None:
    """Remove files written by a save that failed or rolled back: no row points at them."""
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("Could not delete %s, written by a save that did not commit", name, exc_info=True)


def _rows_apply(
    *,
    rows: list[CatalogRow],
    jobs: list[_ImageJob],
    results: list[StoredImage | RowError | str],
    current: dict[int, Product],
    report: BatchReport,
    written: list[str],
) -> list[int]:
    """Create, update or keep each row's product as it is now; returns the ids whose image changed."""
    changed: list[int] = []
    for row, job, result in zip(rows, jobs, results, strict=True):
        product = current.get(row.id)
        held = product.image_sha256 if product is not None and product.image else ""
        if isinstance(result, str) and result != held:
            # Another writer changed or removed this image since our decode began:
            # prepare ours now, or the row would end with its fields and their image.
            result = _image_job_run(replace(job, known_sha256=held))
        if isinstance(result, RowError):
            report.skip(result)
            continue
        if product is None:
            product = Product(id=row.id)
        fields_changed = any(getattr(product, name) != value for name, value in row.fields.items())
        for name, value in row.fields.items():
            setattr(product, name, value)
        # Queued once for the whole batch after its commit (_batch_save), not one task per product.
        saved = product_save(
            product=product,
            stored=result if isinstance(result, StoredImage) else None,
            fields_changed=fields_changed,
            enqueue=False,
        )
        if saved.image_changed:
            written += [product.image.name, product.thumbnail.name]
            changed.append(product.id)
        if saved.created:
            report.created += 1
        elif saved.written:
            report.updated += 1
        else:
            report.unchanged += 1
    return changed


def _batch_save(
    *,
    rows: list[CatalogRow],
    jobs: list[_ImageJob],
    results: list[StoredImage | RowError | str],
    report: BatchReport,
    enqueue: bool,
    on_batch: Callable[[BatchReport], None] | None,
    started: float,
) -> BatchReport:
    """Apply one batch in one transaction; returns what it did, ``report``'s parse-time skips included.

    Safe beside a concurrent import of the same ids: under the catalog write
    lock, the batch's products are read again (locked) and each row creates,
    updates or keeps the product as it is at that moment, never as it was when
    decoding began. A row that still collides (a product added by hand in the
    meantime) rolls the batch back, deletes the files it wrote, and the batch
    is tried again from a fresh read. Side effects: product rows and files,
    embeddings queued on commit, and whatever ``on_batch`` writes.
    """
    attempt = 0
    while True:
        attempt += 1
        outcome = replace(report, reasons=list(report.reasons))
        written: list[str] = []
        try:
            with transaction.atomic():
                _catalog_write_lock()
                ids = [row.id for row in rows]
                current = {p.id: p for p in Product.objects.select_for_update().filter(id__in=ids).order_by("id")}
                changed = _rows_apply(
                    rows=rows, jobs=jobs, results=results, current=current, report=outcome, written=written
                )
                if enqueue:
                    api.embedding_enqueue_on_commit(product_ids=changed)
                    outcome.images_queued = len(changed)
                outcome.reasons.sort(key=lambda error: error.line)
                outcome.seconds = time.perf_counter() - started
                if on_batch:
                    on_batch(outcome)
        except (IntegrityError, OperationalError) as exc:
            _files_delete(written)
            if attempt >= BATCH_ATTEMPTS:
                raise
            logger.warning(
                "Import batch up to line %d met a concurrent write (%s); trying it again", report.last_line, exc
            )
        except BaseException:
            _files_delete(written)
            raise
        else:
            return outcome
