"""Writes to the catalog: storing product images, importing catalogs."""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from PIL import Image

from gallery.catalog import CatalogRow, RowError, image_path_for, styles_read
from gallery.models import EmbedStatus, Product
from recommender.preprocess import ImageRejected, image_open, image_to_rgb

logger = logging.getLogger(__name__)

STORED_MAX_SIDE = 1200
THUMBNAIL_SIDE = 320
JPEG_QUALITY = 88


@dataclass(frozen=True)
class StoredImage:
    """A validated image, re-encoded as plain JPEG without EXIF, plus its thumbnail."""

    sha256: str
    image: bytes
    thumbnail: bytes


def _jpeg(img: Image.Image, *, max_side: int) -> bytes:
    img = img.copy()
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    # Saving without an exif= argument writes no EXIF: camera data never leaves.
    img.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def image_prepare_for_store(*, data: bytes, max_pixels: int) -> StoredImage:
    """Validate ``data`` as a product photo and re-encode it; raises ImageRejected."""
    if not data:
        raise ImageRejected("The file is empty.")
    rgb = image_to_rgb(image_open(data, max_pixels=max_pixels))
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


def product_image_set(*, product: Product, stored: StoredImage) -> bool:
    """Give ``product`` a new image (unless it already has these bytes); marks it pending.

    Must run inside a transaction. Side effects: writes the image and thumbnail
    files, drops the product's embeddings (a stale vector is never served) and
    queues an embedding once the transaction commits. Returns whether the image
    changed.
    """
    if product.image and product.image_sha256 == stored.sha256:
        return False
    old_names = [product.image.name, product.thumbnail.name]
    product.image.save("image.jpg", ContentFile(stored.image), save=False)
    product.thumbnail.save("thumb.jpg", ContentFile(stored.thumbnail), save=False)
    product.image_sha256 = stored.sha256
    product.image_version += 1
    product.embed_status = EmbedStatus.PENDING
    product.embed_error = ""
    product.embed_requested_at = timezone.now()
    product.embed_claimed_at = None
    product.embed_claimed_by = ""
    if not product._state.adding:
        product.embeddings.all().delete()
    _files_delete_later(old_names)
    return True


def products_embed_enqueue_on_commit(product_ids: list[int]) -> None:
    """Queue embedding of ``product_ids`` after the current transaction commits."""
    from recommender.tasks import embed_enqueue

    if product_ids:
        ids = list(product_ids)
        transaction.on_commit(lambda: embed_enqueue(product_ids=ids))


# --- Catalog import -------------------------------------------------------------------


@dataclass
class ImportSummary:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    reasons: list[RowError] = field(default_factory=list)
    seconds: float = 0.0
    max_reasons: int = 10

    def skip(self, error: RowError) -> None:
        self.skipped += 1
        if len(self.reasons) < self.max_reasons:
            self.reasons.append(error)

    @property
    def rows(self) -> int:
        return self.created + self.updated + self.unchanged + self.skipped

    def lines(self) -> list[str]:
        rate = self.rows / self.seconds if self.seconds else 0.0
        out = [
            f"{self.rows} rows in {self.seconds:.1f}s ({rate:.0f} rows/s): {self.created} created, "
            f"{self.updated} updated, {self.unchanged} unchanged, {self.skipped} skipped"
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
) -> ImportSummary:
    """Import ``directory/styles.csv`` and ``directory/images/<id>.jpg`` into the catalog.

    Idempotent: rows update products by id; an image whose bytes did not change
    is not processed again. Bad rows are skipped and counted, never fatal.
    Images are decoded in ``workers`` processes, one batch at a time, so memory
    stays flat whatever the catalog's size. New or changed images are queued for
    embedding after each batch commits (unless ``enqueue`` is False: they stay
    pending for ``embed_catalog`` or the sweep).
    """
    started = time.perf_counter()
    summary = ImportSummary()
    seen: set[int] = set()
    max_pixels = settings.IMAGE_MAX_PIXELS
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for batch in _batches(styles_read(directory / "styles.csv"), batch_size):
            rows: list[CatalogRow] = []
            for item in batch:
                if isinstance(item, RowError):
                    summary.skip(item)
                elif item.id in seen:
                    summary.skip(RowError(item.line, f"id {item.id} appears earlier in the file"))
                else:
                    seen.add(item.id)
                    rows.append(item)
            existing = Product.objects.in_bulk([row.id for row in rows])
            jobs = [
                _ImageJob(
                    row.line,
                    image_path_for(directory, row.id),
                    existing[row.id].image_sha256 if row.id in existing and existing[row.id].image else "",
                    max_pixels,
                )
                for row in rows
            ]
            results = list(pool.map(_image_job_run, jobs, chunksize=8) if pool else map(_image_job_run, jobs))
            _batch_save(rows, results, existing, summary, enqueue=enqueue)
            if progress:
                progress(len(batch))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    summary.seconds = time.perf_counter() - started
    return summary


def _batch_save(
    rows: list[CatalogRow],
    results: list[StoredImage | RowError | str],
    existing: dict[int, Product],
    summary: ImportSummary,
    *,
    enqueue: bool,
) -> None:
    changed: list[int] = []
    with transaction.atomic():
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, RowError):
                summary.skip(result)
                continue
            product = existing.get(row.id) or Product(id=row.id)
            is_new = product._state.adding
            fields_changed = any(getattr(product, name) != value for name, value in row.fields.items())
            for name, value in row.fields.items():
                setattr(product, name, value)
            image_changed = isinstance(result, StoredImage) and product_image_set(product=product, stored=result)
            if is_new or fields_changed or image_changed:
                product.save()
            if image_changed:
                changed.append(product.id)
            if is_new:
                summary.created += 1
            elif fields_changed or image_changed:
                summary.updated += 1
            else:
                summary.unchanged += 1
        if enqueue:
            products_embed_enqueue_on_commit(changed)
