"""Catalog import jobs: an uploaded zip imported by a worker, its progress kept on an ImportJob row.

This module alone moves a job through its states (queued -> running -> done or
failed) and writes its counters; the admin and the task only call it.

- A job's counters and ``lines_done`` are written inside the transaction of
  each batch of products (``catalog_import``'s ``on_batch``), so they always
  match what the catalog holds, and a resumed job starts after the last
  committed batch: no row is applied or counted twice.
- Every write made on a job's behalf names its claimant (the task id, or the
  command's process); a runner that lost its claim (the sweep gave the job to
  another worker) has its next batch rolled back instead of applied twice.
- The stored zip and the scratch folder are removed when the job ends, done or
  failed, by whichever process ends it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from gallery.bulk import BulkUploadRejected, zip_extract_catalog, zip_inspect_catalog
from gallery.catalog import CatalogError
from gallery.models import ImportJob, ImportStatus
from gallery.services import BatchReport, ImportSummary, catalog_import
from recommender import api

logger = logging.getLogger(__name__)

# A running job whose last batch committed longer ago than this has lost its
# worker (a batch of 200 rows takes seconds; 40-megapixel photos, a minute).
IMPORT_STALE_AFTER_S = 300
# A job whose worker was lost this many times is failed, not resumed again:
# something in it (memory, a photo) kills workers.
MAX_RESUMES = 3
# Skipped rows whose reason is kept on the job (all are counted).
MAX_REASONS = 100
# Batches are sized so that the progress bar moves in about this many steps.
PROGRESS_STEPS = 20
MAX_ERROR_CHARS = 2000
FINISHED = (ImportStatus.DONE, ImportStatus.FAILED)


class ImportJobLost(RuntimeError):
    """This runner no longer holds the job (the sweep resumed it elsewhere, or it was failed)."""


def jobs_dir() -> Path:
    return Path(settings.IMPORT_JOBS_DIR)


def _scratch_dir(job_id: int) -> Path:
    return jobs_dir() / f"job-{job_id}"


def bulk_upload_allowed(*, user: object) -> bool:
    """Whether ``user`` may upload a catalog zip: active staff who may both add and change products."""
    return bool(
        getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
        and user.has_perms(["gallery.add_product", "gallery.change_product"])
    )


def batch_size_for(rows_total: int | None) -> int:
    """Rows per batch: about PROGRESS_STEPS batches, between 10 and 200 rows each."""
    return max(10, min(200, (rows_total or 0) // PROGRESS_STEPS))


# --- Creating and queueing -------------------------------------------------------------


def _archive_store(upload: UploadedFile) -> tuple[str, int]:
    """Move or copy ``upload`` into IMPORT_JOBS_DIR under a random name; returns (name, bytes).

    Written under a temporary name and renamed, so a stored zip is never seen half-written.
    """
    directory = jobs_dir()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.zip"
    part = directory / f"{name}.part"
    try:
        if hasattr(upload, "temporary_file_path"):
            # Django spooled it to FILE_UPLOAD_TEMP_DIR: a rename there, a copy across filesystems.
            shutil.move(upload.temporary_file_path(), part)
        else:
            with part.open("wb") as out:
                for chunk in upload.chunks():
                    out.write(chunk)
        part.replace(directory / name)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return name, (directory / name).stat().st_size


def import_job_create(*, upload: UploadedFile, user: object) -> ImportJob:
    """Store an uploaded catalog zip as a queued job importing it; raises BulkUploadRejected with the reason.

    The zip's layout is checked first (its directory and styles.csv header,
    not its images): a refused zip is deleted at once and no job is made.
    Side effects: the zip under IMPORT_JOBS_DIR and a queued ImportJob. Its
    task is sent by ``gallery.tasks.import_job_submit``, which calls this.
    """
    name, size = _archive_store(upload)
    path = jobs_dir() / name
    try:
        inspected = zip_inspect_catalog(path)
        with transaction.atomic():
            job = ImportJob.objects.create(
                source=ImportJob.Source.UPLOAD,
                original_name=(upload.name or "")[:255],
                archive=name,
                archive_bytes=size,
                created_by=user if getattr(user, "is_authenticated", False) else None,
                rows_total=inspected.rows,
                heartbeat_at=timezone.now(),
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    logger.info("Import job %d queued: %s, %d bytes, %d rows", job.id, job.original_name, size, inspected.rows)
    return job


# --- Running ----------------------------------------------------------------------------


def import_job_claim(*, job_id: int, claimant: str) -> ImportJob | None:
    """Take a queued job for ``claimant`` with one conditional UPDATE; None when it is not queued."""
    now = timezone.now()
    claimed = ImportJob.objects.filter(id=job_id, status=ImportStatus.QUEUED).update(
        status=ImportStatus.RUNNING,
        claimed_by=claimant[:64],
        heartbeat_at=now,
        started_at=Coalesce(F("started_at"), now),
    )
    if not claimed:
        if not ImportJob.objects.filter(id=job_id).exists():
            logger.info("Import job %d does not exist (deleted); nothing to do", job_id)
        return None
    return ImportJob.objects.get(id=job_id)


def _progress_writer(job_id: int, claimant: str) -> Callable[[BatchReport], None]:
    """The ``on_batch`` of a job: adds a batch's counts to the job, in the batch's own transaction."""

    def write(report: BatchReport) -> None:
        job = ImportJob.objects.select_for_update().filter(id=job_id, claimed_by=claimant).first()
        if job is None or job.status != ImportStatus.RUNNING:
            raise ImportJobLost(f"import job {job_id} is no longer held by {claimant}")
        room = max(0, MAX_REASONS - len(job.reasons))
        ImportJob.objects.filter(id=job_id).update(
            rows_read=F("rows_read") + report.rows,
            created=F("created") + report.created,
            updated=F("updated") + report.updated,
            unchanged=F("unchanged") + report.unchanged,
            skipped=F("skipped") + report.skipped,
            images_queued=F("images_queued") + report.images_queued,
            seconds=F("seconds") + report.seconds,
            reasons=[*job.reasons, *({"line": r.line, "reason": r.reason} for r in report.reasons[:room])],
            lines_done=report.last_line,
            heartbeat_at=timezone.now(),
        )

    return write


def _heartbeat(*, job_id: int, claimant: str) -> None:
    ImportJob.objects.filter(id=job_id, claimed_by=claimant, status=ImportStatus.RUNNING).update(
        heartbeat_at=timezone.now()
    )


def _reason_without_paths(message: str, directory: Path) -> str:
    # Admins read this: the worker's scratch path means nothing to them.
    return message.replace(str(directory / "styles.csv"), "styles.csv").replace(str(directory), "the zip")


def import_job_run(*, job: ImportJob, workers: int = 2) -> ImportStatus:
    """Import a claimed job's zip, from after its last committed batch, and end the job.

    Returns the job's final status: DONE, or FAILED with the reason (a zip
    that turns out damaged, a styles.csv that cannot be read). Raises when
    interrupted (the caller decides: retry, continue, or fail) and leaves the
    job running for a resume. Side effects: extracts into a scratch folder,
    imports (products, files, embeddings queued), removes the zip and scratch
    when the job ends.
    """
    claimant = job.claimed_by
    scratch = _scratch_dir(job.id)
    # A lost attempt may have left a partial extraction: start from the zip again.
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    archive = jobs_dir() / job.archive
    try:
        directory = zip_extract_catalog(archive, destination=scratch)
    except FileNotFoundError:
        import_job_fail(
            job_id=job.id,
            claimant=claimant,
            reason="The stored zip is gone: IMPORT_JOBS_DIR must be storage every worker reads (see the README).",
        )
        return ImportStatus.FAILED
    except BulkUploadRejected as exc:
        import_job_fail(job_id=job.id, claimant=claimant, reason=str(exc))
        return ImportStatus.FAILED
    _heartbeat(job_id=job.id, claimant=claimant)
    try:
        catalog_import(
            directory=directory,
            workers=workers,
            batch_size=batch_size_for(job.rows_total),
            start_after_line=job.lines_done,
            on_batch=_progress_writer(job.id, claimant),
        )
    except CatalogError as exc:
        import_job_fail(job_id=job.id, claimant=claimant, reason=_reason_without_paths(str(exc), directory))
        return ImportStatus.FAILED
    # The extracted copy goes before the job is marked done (44,000 files take a while to delete), the
    # zip after: a worker lost in between leaves a job that resumes from the zip and finds nothing left.
    shutil.rmtree(scratch, ignore_errors=True)
    return import_job_finish(job_id=job.id, claimant=claimant)


def import_job_finish(*, job_id: int, claimant: str) -> ImportStatus:
    """Mark a job done (if ``claimant`` still holds it) and remove its files; returns its status."""
    ended = ImportJob.objects.filter(id=job_id, claimed_by=claimant, status=ImportStatus.RUNNING).update(
        status=ImportStatus.DONE, finished_at=timezone.now(), heartbeat_at=timezone.now(), error=""
    )
    job = ImportJob.objects.get(id=job_id)
    if ended:
        import_job_cleanup(job=job)
        logger.info("Import job %d done: %d rows read", job_id, job.rows_read)
    return ImportStatus(job.status)


def import_job_fail(*, job_id: int, reason: str, claimant: str | None = None) -> bool:
    """Mark an unfinished job failed with ``reason`` (only ``claimant``'s, when given); removes its files.

    Returns whether this call ended it. Rows already imported stay: each
    batch committed whole, and importing the same zip again completes it.
    """
    jobs = ImportJob.objects.filter(id=job_id).exclude(status__in=FINISHED)
    if claimant is not None:
        jobs = jobs.filter(claimed_by=claimant)
    ended = jobs.update(status=ImportStatus.FAILED, error=reason[:MAX_ERROR_CHARS], finished_at=timezone.now())
    if ended:
        logger.warning("Import job %d failed: %s", job_id, reason)
        job = ImportJob.objects.filter(id=job_id).first()
        if job is not None:
            import_job_cleanup(job=job)
    return bool(ended)


def import_job_release(*, job_id: int, claimant: str, note: str = "") -> bool:
    """Give a running job back to the queue (a transient error, a task's time running out); keeps its progress."""
    released = ImportJob.objects.filter(id=job_id, claimed_by=claimant, status=ImportStatus.RUNNING).update(
        status=ImportStatus.QUEUED, claimed_by="", heartbeat_at=timezone.now(), error=note[:MAX_ERROR_CHARS]
    )
    return bool(released)


def import_job_cleanup(*, job: ImportJob) -> None:
    """Remove a finished job's stored zip and scratch folder. Never raises."""
    try:
        shutil.rmtree(_scratch_dir(job.id), ignore_errors=True)
        if job.archive:
            (jobs_dir() / job.archive).unlink(missing_ok=True)
    except OSError:
        logger.warning("Could not remove the files of import job %d", job.id, exc_info=True)
        return
    if job.archive:
        ImportJob.objects.filter(id=job.id).update(archive="")


# --- From the command line ------------------------------------------------------------


def import_job_command_start(*, directory: Path, rows_total: int) -> ImportJob:
    """A running job for an ``import_catalog`` run in this process (no zip: it reads ``directory``)."""
    now = timezone.now()
    return ImportJob.objects.create(
        source=ImportJob.Source.COMMAND,
        original_name=str(directory)[:255],
        status=ImportStatus.RUNNING,
        claimed_by=f"import_catalog@{socket.gethostname()}:{os.getpid()}"[:64],
        rows_total=rows_total,
        started_at=now,
        heartbeat_at=now,
    )


def import_job_command_run(
    *,
    job: ImportJob,
    directory: Path,
    enqueue: bool,
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Run ``import_catalog`` for a command job, reporting into it; the job ends done or failed (then re-raises)."""
    try:
        summary = catalog_import(
            directory=directory,
            enqueue=enqueue,
            workers=workers,
            progress=progress,
            on_batch=_progress_writer(job.id, job.claimed_by),
        )
    except BaseException as exc:
        reason = "Interrupted (Ctrl-C)." if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        import_job_fail(job_id=job.id, claimant=job.claimed_by, reason=reason)
        raise
    import_job_finish(job_id=job.id, claimant=job.claimed_by)
    return summary


# --- The sweep --------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    """What ``import_jobs_recover`` did, and the jobs whose task the caller sends (``gallery.tasks``)."""

    counts: dict[str, int]
    resumed_ids: list[int]
    waiting_ids: list[int]


def import_jobs_recover(*, stale_after_s: float = IMPORT_STALE_AFTER_S) -> SweepOutcome:
    """Resume or fail jobs whose worker was lost, find jobs left queued, remove orphaned files.

    A running job with no committed batch for ``stale_after_s`` is given back
    to the queue (it continues after its last committed batch), or failed with
    the reason once its worker was lost MAX_RESUMES times; a command's job is
    failed (its process is gone). A job left queued that long has its
    heartbeat moved on and is returned for its task to be sent again (its
    message was lost, or waits behind others: a second message is harmless,
    since only one runner can claim the job). Sends nothing: the sweep task
    (``gallery.tasks.import_jobs_sweep``) sends the returned jobs' tasks.
    """
    cutoff = timezone.now() - timedelta(seconds=stale_after_s)
    counts = {"resumed": 0, "failed": 0, "resent": 0, "files_removed": 0}
    resumed_ids: list[int] = []
    for job in ImportJob.objects.filter(status=ImportStatus.RUNNING, heartbeat_at__lt=cutoff):
        since = timezone.localtime(job.heartbeat_at).strftime("%Y-%m-%d %H:%M:%S")
        if job.source == ImportJob.Source.COMMAND:
            reason = (
                f"The import_catalog process stopped before the end (its last batch committed at {since}, "
                f"after line {job.lines_done}). Run it again: rows already imported are left unchanged."
            )
            counts["failed"] += import_job_fail(job_id=job.id, claimant=job.claimed_by, reason=reason)
            continue
        if job.attempts >= MAX_RESUMES:
            reason = (
                f"The worker importing it stopped {job.attempts + 1} times (killed, out of memory or shut down); "
                f"the last batch committed at {since}, after line {job.lines_done}. Rows up to there are imported."
            )
            counts["failed"] += import_job_fail(job_id=job.id, claimant=job.claimed_by, reason=reason)
            continue
        # Conditional on the claim the sweep saw: a runner that just committed a batch keeps its job.
        resumed = ImportJob.objects.filter(
            id=job.id, status=ImportStatus.RUNNING, claimed_by=job.claimed_by, heartbeat_at=job.heartbeat_at
        ).update(
            status=ImportStatus.QUEUED,
            claimed_by="",
            attempts=F("attempts") + 1,
            heartbeat_at=timezone.now(),
            error=f"Resumed after line {job.lines_done}: the worker importing it stopped (last batch at {since}).",
        )
        if resumed:
            logger.warning("Import job %d lost its worker; resuming after line %d", job.id, job.lines_done)
            counts["resumed"] += 1
            resumed_ids.append(job.id)
    waiting = ImportJob.objects.filter(status=ImportStatus.QUEUED).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    )
    waiting_ids = list(waiting.values_list("id", flat=True))
    for job_id in waiting_ids:
        ImportJob.objects.filter(id=job_id, status=ImportStatus.QUEUED).update(heartbeat_at=timezone.now())
    for job in ImportJob.objects.filter(status__in=FINISHED).exclude(archive=""):
        import_job_cleanup(job=job)
    counts["files_removed"] = _orphans_remove(older_than_s=stale_after_s)
    return SweepOutcome(counts=counts, resumed_ids=resumed_ids, waiting_ids=waiting_ids)


def _orphans_remove(*, older_than_s: float) -> int:
    """Remove zips and scratch folders no unfinished job refers to (a web process died mid-upload)."""
    directory = jobs_dir()
    if not directory.is_dir():
        return 0
    active = ImportJob.objects.exclude(status__in=FINISHED)
    keep = set(active.exclude(archive="").values_list("archive", flat=True))
    keep |= {f"job-{job_id}" for job_id in active.values_list("id", flat=True)}
    removed = 0
    limit = time.time() - older_than_s
    for entry in directory.iterdir():
        try:
            if entry.name in keep or entry.stat().st_mtime > limit:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            logger.warning("Could not remove %s from IMPORT_JOBS_DIR", entry.name, exc_info=True)
    return removed


# --- Reading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingProgress:
    """How far the catalog is from being browsable by similarity."""

    total: int
    done: int
    awaiting: int
    failed: int
    per_second: float  # over the engine's window (recommender.selectors.RATE_WINDOW_S); 0.0: none embedded in it
    eta_seconds: float | None
    index_count: int | None
    index_built_at: str | None


def embedding_progress() -> EmbeddingProgress:
    """Products embedded and awaiting embedding, the recent rate and when the rest will be findable.

    Everything comes from ``recommender.api.engine_status()`` (what /api/status reports), the rate
    included (``embedding_per_second``: products marked done over the engine's last minutes). A read:
    polling the panel writes nothing.
    """
    status = api.engine_status()
    products = status["products"]
    done = int(products.get("done", 0))
    awaiting = int(status["awaiting_embedding"])
    rate = float(status["embedding_per_second"] or 0.0)
    eta = awaiting / rate if rate and awaiting else (0.0 if not awaiting else None)
    index = status.get("index") or {}
    return EmbeddingProgress(
        total=int(products.get("total", 0)),
        done=done,
        awaiting=awaiting,
        failed=int(products.get("failed", 0)),
        per_second=rate,
        eta_seconds=eta,
        index_count=index.get("count"),
        index_built_at=str(index["built_at"]) if index.get("built_at") else None,
    )


def import_job_fraction(*, job: ImportJob) -> float:
    """How far a job has come, 0 to 1 (1 once done)."""
    if job.status == ImportStatus.DONE:
        return 1.0
    if not job.rows_total:
        return 0.0
    return min(1.0, job.rows_read / job.rows_total)
