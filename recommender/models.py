"""Embeddings are the source of truth; every index file is derived from them.

The engine knows the shop's products only by id: the item model is a setting
(``RECOMMENDER_ITEM_MODEL``, "gallery.Product" here), referenced the way
reusable apps reference the user model, so deleting a product deletes its
vectors and state without the engine importing the shop.
"""

import numpy as np
from django.conf import settings
from django.db import models


class EmbedStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Claimed"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class EmbeddingState(models.Model):
    """Where one product's current image stands in the embedding pipeline.

    Written only by ``recommender.state``: the state machine's one owner.
    """

    product = models.OneToOneField(
        settings.RECOMMENDER_ITEM_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="embedding_state"
    )
    # The image the vector must come from: its storage name and the shop's version number for it.
    image_name = models.CharField(max_length=255)
    image_version = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=EmbedStatus.choices, default=EmbedStatus.PENDING)
    error = models.TextField(blank=True)
    requested_at = models.DateTimeField(null=True, blank=True)
    # When the request last reached the task queue (null: publishing failed; the sweep sends it).
    queued_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["status", "requested_at"], name="embedding_state_queue")]

    def __str__(self) -> str:
        return f"product {self.product_id}: {self.status}"


class Embedding(models.Model):
    """One vector per product per embedding space (encoder id, plus head version)."""

    product = models.ForeignKey(settings.RECOMMENDER_ITEM_MODEL, on_delete=models.CASCADE, related_name="embeddings")
    space = models.CharField(max_length=96, db_index=True)
    dim = models.PositiveIntegerField()
    vector = models.BinaryField()  # float32, little-endian, L2-normalised
    image_version = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["product", "space"], name="one_embedding_per_space")]
        indexes = [models.Index(fields=["space", "id"], name="embedding_space_id")]

    def __str__(self) -> str:
        return f"{self.space} vector of product {self.product_id}"

    def as_array(self) -> np.ndarray:
        return np.frombuffer(self.vector, dtype="<f4")
