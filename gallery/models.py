"""The catalog: one row per product, keyed by the dataset's own id."""

import uuid

from django.db import models


def _random_name(prefix: str) -> str:
    # Stored names are random: an uploaded file name never reaches the disk.
    return f"{prefix}/{uuid.uuid4().hex[:2]}/{uuid.uuid4().hex}.jpg"


def product_image_name(instance: "Product", filename: str) -> str:
    return _random_name("products")


def product_thumbnail_name(instance: "Product", filename: str) -> str:
    return _random_name("thumbs")


class EmbedStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


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
    # Bumped on every new image; an embedding records the version it was made from.
    image_version = models.PositiveIntegerField(default=0, editable=False)

    embed_status = models.CharField(
        "embedding", max_length=16, choices=EmbedStatus.choices, default=EmbedStatus.PENDING, db_index=True
    )
    embed_error = models.TextField("embedding error", blank=True, editable=False)
    embed_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    embed_claimed_at = models.DateTimeField(null=True, blank=True, editable=False)
    embed_claimed_by = models.CharField(max_length=64, blank=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["embed_status", "embed_requested_at"], name="product_embed_queue")]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"
