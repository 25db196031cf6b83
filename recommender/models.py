"""Embeddings are the source of truth; every index file is derived from them."""

import numpy as np
from django.db import models


class Embedding(models.Model):
    """One vector per product per embedding space (encoder id, plus head version)."""

    product = models.ForeignKey("gallery.Product", on_delete=models.CASCADE, related_name="embeddings")
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
