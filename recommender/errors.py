"""What the vector engine refuses, as typed exceptions the shop maps to HTTP answers.

No Django, no torch: web processes import this without loading a model. Each
exception carries the status a client should get and, where waiting helps,
how long to wait; ``str(exc)`` is a sentence a shopper or an admin can read.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engine's refusals: ``status`` for the HTTP answer, ``retry_after`` seconds or None."""

    status: int = 503
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class ImageRejected(EngineError, ValueError):
    """An upload or catalog file we will not decode (format, size, damage)."""

    status = 400


class NotEmbeddedYet(EngineError):
    """The product's image has no vector (yet, or ever); the message says which."""

    status = 409


class SimilarityUnavailable(EngineError):
    """Similar-product search cannot answer now (no usable index, or the encoder cannot load)."""

    status = 503
    retry_after = 60


class PhotoSearchBusy(EngineError):
    """Too many photo searches in this process right now."""

    status = 503
    retry_after = 2


class EncoderUnavailable(RuntimeError):
    """The requested encoder cannot be built here; the message says what to provide."""
