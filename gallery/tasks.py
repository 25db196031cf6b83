"""Celery tasks of the catalog: thin callers of gallery.jobs and gallery.catalog_health, each task's
enqueuer beside it (as in recommender.tasks). Arguments are ids only.

The import task is idempotent: it claims its job with one conditional UPDATE
and goes on only if that took; every batch it writes is fenced by that claim.
Messages are acknowledged after the task ends (``acks_late``) and given back
when a worker dies mid-task (``reject_on_worker_lost``); the periodic sweep
resumes a job whose worker was lost, after its last committed batch.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import uuid
from collections.abc import Callable, Iterator

import redis
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.core.files.uploadedfile import UploadedFile
from django.db import InterfaceError, OperationalError, transaction
from kombu.exceptions import KombuError

from gallery import catalog_health, events, jobs
from gallery.models import HealthScan, ImportJob, ImportStatus

logger = logging.getLogger(__name__)

# One task imports for at most this long, then hands the job to a new task that
# continues after the last committed batch: a task never outlives the broker's
# visibility timeout (an hour), after which Redis would deliver it twice.
IMPORT_SOFT_LIMIT_S = 1800
IMPORT_HARD_LIMIT_S = IMPORT_SOFT_LIMIT_S + 300
TRANSIENT = (OperationalError, InterfaceError)
QUEUE_DOWN = (KombuError, redis.RedisError, OSError)
DECODE_WORKERS = 2  # as import_catalog: images decode in two processes beside the task


@contextlib.contextmanager
def _decoding_processes_allowed() -> Iterator[None]:
    """Let this task start the import's decoding processes.

    Celery's prefork pool processes are daemonic, and multiprocessing refuses
    children to a daemonic process (so that none outlive it). The import's
    processes cannot: ``catalog_import`` shuts its pool down in a ``finally``,
    and they exit by themselves when their parent's pipe closes, so the flag
    is lifted for the duration of the import only.
    """
    config = multiprocessing.current_process()._config
    daemon = config.get("daemon")
    config["daemon"] = False
    try:
        yield
    finally:
        config["daemon"] = daemon


def _claiming_task(
    *, name: str, base: type[Task], soft_time_limit: int, time_limit: int, **options: object
) -> Callable[[Callable[..., object]], Task]:
    """The decorator of a task that claims its row with its own id (bound): acknowledged after it ends and
    given back when its worker dies, so a redelivery to the claimant runs it again; ``base`` records a failure.
    """
    return shared_task(
        name=name,
        bind=True,
        base=base,
        acks_late=True,
        reject_on_worker_lost=True,
        soft_time_limit=soft_time_limit,
        time_limit=time_limit,
        **options,
    )


class ImportJobTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ANN001
        """The import raised (retries exhausted or an unexpected error): fail the job, saying why."""
        job_id = args[0] if args else kwargs.get("job_id")
        if job_id is not None:
            jobs.import_job_fail(job_id=int(job_id), claimant=task_id, reason=f"{type(exc).__name__}: {exc}")


@_claiming_task(
    name="gallery.import_catalog_job",
    base=ImportJobTask,
    max_retries=5,
    soft_time_limit=IMPORT_SOFT_LIMIT_S,
    time_limit=IMPORT_HARD_LIMIT_S,
)
def import_catalog_job(self: Task, job_id: int) -> str:
    """Import the zip of job ``job_id`` if it is still queued; ends it done or failed, or hands it on."""
    claimant = self.request.id or f"local-{uuid.uuid4().hex}"
    job = jobs.import_job_claim(job_id=job_id, claimant=claimant)
    if job is None:
        return "not queued: already running, finished or deleted"
    try:
        with _decoding_processes_allowed():
            status = jobs.import_job_run(job=job, workers=DECODE_WORKERS)
    except jobs.ImportJobLost:
        logger.warning("Import job %d was resumed elsewhere; this run stops", job_id)
        return "lost the claim"
    except SoftTimeLimitExceeded:
        # The batch in flight rolled back; the next task starts after the last committed one.
        jobs.import_job_release(job_id=job_id, claimant=claimant, note="Continued in a new task after 30 minutes.")
        import_job_enqueue(job_id=job_id)
        return "continued in a new task"
    except TRANSIENT as exc:
        if self.request.retries >= self.max_retries:
            raise  # on_failure fails the job with the reason
        jobs.import_job_release(job_id=job_id, claimant=claimant, note=f"Retrying after {type(exc).__name__}.")
        raise self.retry(exc=exc, countdown=min(300, 10 * 2**self.request.retries)) from exc
    return ImportStatus(status).label


def import_job_enqueue(*, job_id: int) -> bool:
    """Send the job's task; never raises (with Redis away the job stays queued for the sweep)."""
    try:
        import_catalog_job.apply_async(args=[job_id], retry=False)
    except QUEUE_DOWN as exc:
        logger.warning("Task queue unavailable (%s); import job %d waits for the sweep", exc, job_id)
        return False
    return True


def import_job_submit(*, upload: UploadedFile, user: object) -> ImportJob:
    """Store an uploaded catalog zip as a queued job (``jobs.import_job_create``) and send its task once the
    transaction commits (with Redis away the sweep sends it); raises BulkUploadRejected with the reason."""
    job = jobs.import_job_create(upload=upload, user=user)
    transaction.on_commit(lambda: import_job_enqueue(job_id=job.id))
    return job


@shared_task(name="gallery.import_jobs_sweep", acks_late=True, soft_time_limit=240, time_limit=300)
def import_jobs_sweep(stale_after_s: float = jobs.IMPORT_STALE_AFTER_S) -> dict[str, int]:
    """Scheduled: resume jobs whose worker was lost, re-send lost messages, remove orphaned files.

    Returns how many jobs were resumed, failed, re-sent, and how many orphaned files were removed.
    """
    outcome = jobs.import_jobs_recover(stale_after_s=stale_after_s)
    for job_id in outcome.resumed_ids:
        import_job_enqueue(job_id=job_id)
    counts = outcome.counts
    counts["resent"] = sum(import_job_enqueue(job_id=job_id) for job_id in outcome.waiting_ids)
    if any(counts.values()):
        logger.info("Import sweep: %s", counts)
    return counts


class HealthScanTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ANN001
        """The scan raised or hit its time limit: end it failed, saying why (the last good scan stays shown)."""
        scan_id = args[0] if args else kwargs.get("scan_id")
        if scan_id is not None:
            catalog_health.health_scan_fail(scan_id=int(scan_id), reason=f"{type(exc).__name__}: {exc}")


@_claiming_task(name="gallery.catalog_health_scan", base=HealthScanTask, soft_time_limit=900, time_limit=960)
def catalog_health_scan(self: Task, scan_id: int) -> str:
    """Run catalog health scan ``scan_id`` if it is still queued (a redelivery to its claimant runs it again)."""
    claimant = self.request.id or f"local-{uuid.uuid4().hex}"
    scan = catalog_health.health_scan_claim(scan_id=scan_id, claimant=claimant)
    if scan is None:
        return "not queued: already running, finished or deleted"
    scan = catalog_health.health_scan_run(scan=scan)
    return f"done: {scan.counts}"


def health_scan_send(*, scan_id: int) -> None:
    """Send scan ``scan_id``'s task; with the queue unreachable the scan ends failed at once, saying so."""
    try:
        catalog_health_scan.apply_async(args=[scan_id], retry=False)
    except QUEUE_DOWN as exc:
        logger.warning("Catalog health scan %d could not be queued: %s", scan_id, exc)
        catalog_health.health_scan_fail(
            scan_id=scan_id,
            reason="The task queue is unreachable: start the scan again later, or run manage.py catalog_health.",
        )


def health_scan_submit(*, user: object | None = None) -> tuple[HealthScan, bool]:
    """A queued scan and whether it is new (``catalog_health.health_scan_request``); a new one's task is sent
    to the workers after the commit (``gallery.catalog_health_scan``)."""
    scan, created = catalog_health.health_scan_request(user=user)
    if created:
        scan_id = scan.id
        transaction.on_commit(lambda: health_scan_send(scan_id=scan_id))
    return scan, created


@shared_task(name="gallery.events_flush", acks_late=True, soft_time_limit=60, time_limit=90)
def events_flush() -> int:
    """Scheduled (EVENTS_FLUSH_INTERVAL_S): store the shopper events buffered in Redis, in batches."""
    try:
        return events.events_flush()
    except (redis.RedisError, OSError) as exc:
        # The buffer lives in Redis: nothing to move while it is away; the next run picks up.
        logger.warning("Events flush skipped: Redis unavailable (%s)", exc.__class__.__name__)
        return 0


@shared_task(name="gallery.events_purge", acks_late=True, soft_time_limit=240, time_limit=300)
def events_purge() -> int:
    """Scheduled (hourly): delete shopper events older than EVENTS_RETENTION_DAYS."""
    deleted = events.events_purge()
    if deleted:
        logger.info("Events purge: %d events older than the retention deleted", deleted)
    return deleted
