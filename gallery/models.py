"""The catalog: one row per product, keyed by the dataset's own id.

Where a product's image stands in the embedding pipeline is the vector
engine's state (``recommender.models.EmbeddingState``, reached as
``product.embedding_state``), not a field here.
"""

import uuid

from django.conf import settings
from django.db import models


def _random_name(prefix: str) -> str:
    # Stored names are random: an uploaded file name never reaches the disk.
    return f"{prefix}/{uuid.uuid4().hex[:2]}/{uuid.uuid4().hex}.jpg"


def product_image_name(instance: "Product", filename: str) -> str:
    return _random_name("products")


def product_thumbnail_name(instance: "Product", filename: str) -> str:
    return _random_name("thumbs")


class Product(models.Model):
    # The dataset's id is the product's id everywhere: URLs, API, index sidecars.
    id = models.PositiveBigIntegerField(primary_key=True)
    gender = models.CharField(max_length=32, blank=True, db_index=True)
    master_category = models.CharField("master category", max_length=64, blank=True, db_index=True)
    sub_category = models.CharField("sub-category", max_length=64, blank=True)
    article_type = models.CharField("article type", max_length=64, blank=True, db_index=True)
    base_colour = models.CharField("colour", max_length=32, blank=True, db_index=True)
    season = models.CharField(max_length=16, blank=True)
    year = models.PositiveSmallIntegerField(null=True, blank=True)
    usage = models.CharField(max_length=32, blank=True)
    name = models.CharField("display name", max_length=255)

    image = models.ImageField(upload_to=product_image_name, blank=True)
    thumbnail = models.ImageField(upload_to=product_thumbnail_name, blank=True, editable=False)
    # SHA-256 of the source bytes: a re-import of the same file changes nothing.
    image_sha256 = models.CharField(max_length=64, blank=True, editable=False)
    # Bumped on every new image (under a row lock); the vector engine is told each version
    # and stores a vector only for the version it was computed from.
    image_version = models.PositiveIntegerField(default=0, editable=False)

    # On sale: an inactive product is never shown in a grid, but keeps its row, image and vectors, so
    # putting it back is instant. Written only by gallery.services.product_availability_set (and the import).
    active = models.BooleanField("on sale", default=True, db_index=True)
    # Units in stock, when the shop tracks them (shown in the admin and the API; the grids read ``active``).
    stock = models.PositiveIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    # Indexed: the latest value is part of the catalog's version, read on every grid (gallery.cards).
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    @property
    def image_url(self) -> str | None:
        return self.image.url if self.image else None

    @property
    def thumbnail_url(self) -> str | None:
        return self.thumbnail.url if self.thumbnail else None


class ProductDeletion(models.Model):
    """A product deleted from the catalog: numbered, so that the catalog's version moves on a deletion as it
    does on a save (``gallery.cards.catalog_version``) and each web process drops the deleted products'
    cards it holds. Written only by ``gallery.cards.deletion_numbered``, in the deleting transaction."""

    product_id = models.PositiveBigIntegerField()
    deleted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"deletion {self.id}: product {self.product_id}"


class ImportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ImportJob(models.Model):
    """One catalog import (a bulk upload or an ``import_catalog`` run) and its progress.

    ``gallery.jobs`` alone moves a job's status and counters. The counters are
    written in the same transaction as each batch of products, so they always
    match what the catalog holds, and ``lines_done`` is where a resumed job
    picks up.
    """

    class Source(models.TextChoices):
        UPLOAD = "upload", "Bulk upload"
        COMMAND = "command", "import_catalog"

    source = models.CharField(max_length=16, choices=Source.choices, default=Source.UPLOAD)
    status = models.CharField(max_length=16, choices=ImportStatus.choices, default=ImportStatus.QUEUED, db_index=True)
    # The uploaded file's name, shown to admins only; the stored zip has a random name.
    original_name = models.CharField(max_length=255, blank=True)
    # Relative to IMPORT_JOBS_DIR; emptied once the stored zip is removed.
    archive = models.CharField(max_length=255, blank=True)
    archive_bytes = models.PositiveBigIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="import_jobs"
    )

    rows_total = models.PositiveIntegerField(null=True, blank=True)
    rows_read = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    images_queued = models.PositiveIntegerField(default=0)
    # The first skipped rows, as [{"line": 12, "reason": "..."}].
    reasons = models.JSONField(default=list, blank=True)
    # The last styles.csv line whose batch is committed: a resumed job starts after it.
    lines_done = models.PositiveIntegerField(default=0)

    attempts = models.PositiveSmallIntegerField(default=0)
    claimed_by = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    seconds = models.FloatField(default=0.0)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "catalog import"
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="import_job_sweep")]

    def __str__(self) -> str:
        return f"Import {self.pk} ({self.get_status_display().lower()})"


# --- Catalog health (gallery.catalog_health alone writes these) ------------------------------------------------


class HealthScan(models.Model):
    """One catalog health scan: when it ran, for how long, over which index build, and how many of each finding."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="health_scans"
    )
    claimed_by = models.CharField(max_length=64, blank=True)
    index_version = models.CharField(max_length=64, blank=True)
    products = models.PositiveIntegerField(default=0)
    # kind -> {"found": n, "dismissed": n}, and the thresholds the scan ran with.
    counts = models.JSONField(default=dict, blank=True)
    settings_used = models.JSONField(default=dict, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "catalog health scan"

    def __str__(self) -> str:
        return f"Catalog health scan {self.pk} ({self.get_status_display().lower()})"


class FindingKind(models.TextChoices):
    DUPLICATE = "duplicate", "Near-duplicates"
    LABEL = "label", "Suspect labels"
    OUTLIER = "outlier", "Outliers"
    NO_IMAGE = "no_image", "No usable image"


class HealthFinding(models.Model):
    """One thing a scan raised: a duplicate group, a suspect label, an outlier or a product without a usable image."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RESOLVED = "resolved", "Resolved"
        DISMISSED = "dismissed", "Dismissed"

    scan = models.ForeignKey(HealthScan, on_delete=models.CASCADE, related_name="findings")
    kind = models.CharField(max_length=16, choices=FindingKind.choices)
    # What a dismissal remembers: the same key in a later scan is not raised again.
    key = models.CharField(max_length=200)
    product_ids = models.JSONField(default=list)
    confidence = models.FloatField()
    # Kind-specific: field/current/suggested/share for a label, cosines/exact for duplicates, the reason for images.
    detail = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-confidence", "id"]
        indexes = [models.Index(fields=["scan", "kind", "status", "-confidence"], name="health_finding_page")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.key}"


class HealthDismissal(models.Model):
    """A finding an admin dismissed: later scans skip the same key."""

    kind = models.CharField(max_length=16, choices=FindingKind.choices)
    key = models.CharField(max_length=200)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "key"], name="one_dismissal_per_key")]

    def __str__(self) -> str:
        return f"dismissed {self.kind}: {self.key}"


class ShopperEvent(models.Model):
    """One thing a shopper did, under an anonymous session id (a random cookie; nothing personal).

    Written only by ``gallery.events`` (in batches, from the Redis buffer); deleted after
    EVENTS_RETENTION_DAYS. ``arm`` is the ranking experiment's arm the session was in (blank outside one).
    """

    class Kind(models.TextChoices):
        SEARCH = "search", "Text search"
        GRID = "grid", "Grid shown"
        CLICK = "click", "Tile clicked"
        PHOTO = "photo", "Photo search"
        TRAIL = "trail", "Trail edited"
        CONVERT = "convert", "Viewed product"

    # Random, made where the event happened: a flush repeated after a crash inserts nothing twice.
    event_id = models.CharField(max_length=16, unique=True)
    at = models.DateTimeField(db_index=True)
    session = models.CharField(max_length=22, blank=True, db_index=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    query = models.CharField(max_length=255, blank=True)
    count = models.PositiveIntegerField(null=True, blank=True)  # a search's results, a grid's tiles
    product_id = models.PositiveBigIntegerField(null=True, blank=True)  # not a foreign key: events outlive products
    position = models.PositiveSmallIntegerField(null=True, blank=True)  # 1-based place of a clicked tile
    arm = models.CharField(max_length=32, blank=True)
    grid = models.CharField(max_length=16, blank=True)  # the grid kind: start, search, similar, photo
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["kind", "at"], name="event_kind_at")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} at {self.at:%Y-%m-%d %H:%M:%S}"
