"""Turn untrusted image files into the fixed-size RGB arrays the encoders eat.

Everything here is pure Pillow/numpy/torch (no Django), safe to call from web
requests, Celery workers and management commands alike. Anything wrong with
the *bytes* of an image surfaces as :class:`ImageRejected`, whose message can be
shown to a shopper or an admin as it is.
"""

from __future__ import annotations

import io
import logging
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
DEFAULT_MAX_PIXELS = 40_000_000
WHITE = (255, 255, 255)

MSG_EMPTY = "The file is empty"
MSG_NOT_IMAGE = "This file is not an image we can read: JPEG, PNG, WebP or GIF"
MSG_CORRUPT = "The image file is truncated or corrupt"

ImageSource = str | Path | bytes | BinaryIO

_TRANSPARENT_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageRejected(ValueError):
    """An upload or catalogue file we will not decode; ``str(exc)`` is shopper-readable."""


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:g} megapixels"


def _too_large(width: int, height: int, limit: int) -> ImageRejected:
    return ImageRejected(f"The image is too large: {width}x{height} pixels, the limit is {_megapixels(limit)}")


def _stream_is_empty(stream: BinaryIO) -> bool:
    if not stream.seekable():
        return False  # Pillow copies unseekable streams itself; emptiness then shows up as unidentified.
    position = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(position)
    return end - position == 0


def _draft_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The size of the image after fitting its longer side to ``size``: what the JPEG decoder may shrink to."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _open_loaded(stream: BinaryIO, *, max_pixels: int, draft_to: int | None) -> Image.Image:
    """Identify, size-check, optionally draft, then decode the first frame of ``stream``."""
    try:
        img = Image.open(stream, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow refuses above 2x MAX_IMAGE_PIXELS before we see the size; it only reports the pixel count.
        found = _BOMB_PIXELS.search(str(exc))
        detail = _megapixels(int(found.group(1))) if found else "too many pixels"
        raise ImageRejected(f"The image is too large: {detail}, the limit is {_megapixels(max_pixels)}") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(MSG_NOT_IMAGE) from exc
    except (OSError, SyntaxError, ValueError, struct.error, IndexError, TypeError) as exc:
        raise ImageRejected(MSG_CORRUPT) from exc

    width, height = img.size
    # Pillow's own bomb threshold (warning only, between 1x and 2x) also counts, so raising max_pixels
    # above it never decodes what Pillow considers a bomb.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if width <= 0 or height <= 0:
        raise ImageRejected(MSG_CORRUPT)
    if width * height > limit:
        raise _too_large(width, height, limit)

    try:
        if draft_to is not None and img.format == "JPEG":
            img.draft("RGB", _draft_size(width, height, draft_to))
        # Animated GIF/WebP/APNG open on frame 0; loading decodes only that frame.
        img.load()
    except Image.DecompressionBombError as exc:
        raise _too_large(width, height, limit) from exc
    except (OSError, SyntaxError, ValueError, struct.error, IndexError, TypeError, EOFError) as exc:
        raise ImageRejected(MSG_CORRUPT) from exc
    return img


def _image_open(source: ImageSource, *, max_pixels: int, draft_to: int | None) -> Image.Image:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageRejected(MSG_EMPTY)
        return _open_loaded(io.BytesIO(source), max_pixels=max_pixels, draft_to=draft_to)
    if isinstance(source, str | Path):
        path = Path(source)
        # Opening the path is outside the rejection net on purpose: a missing file is our bug, not a bad image.
        with path.open("rb") as stream:
            if path.stat().st_size == 0:
                raise ImageRejected(MSG_EMPTY)
            return _open_loaded(stream, max_pixels=max_pixels, draft_to=draft_to)
    if _stream_is_empty(source):
        raise ImageRejected(MSG_EMPTY)
    return _open_loaded(source, max_pixels=max_pixels, draft_to=draft_to)


def image_open(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode the first frame of a JPEG/PNG/WebP/GIF, refusing anything else before decoding it.

    Raises ImageRejected for empty, unknown-format, oversized (checked from the header, before any pixel is
    decoded), truncated or corrupt files. A missing or unreadable *path* raises the plain OSError. File objects
    are read from their current position and left open. Relies on PIL.ImageFile.LOAD_TRUNCATED_IMAGES staying
    False (Pillow's default) to reject truncated files.
    """
    return _image_open(source, max_pixels=max_pixels, draft_to=None)


def _exif_transposed(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, struct.error, KeyError, TypeError, IndexError):
        # Broken EXIF is common on phone uploads; the pixels are fine, so keep them unrotated.
        logger.info("Ignoring unreadable EXIF orientation", exc_info=True)
        return img


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _array_to_rgb(values: np.ndarray) -> Image.Image:
    grey = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")


def image_to_rgb(img: Image.Image) -> Image.Image:
    """Upright, opaque 8-bit RGB: applies EXIF orientation, puts transparency on white, rescales 16-bit/float.

    ``img`` itself is not modified.
    """
    img = _exif_transposed(img)
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Full 16-bit range to 8 bit; Pillow's own convert clips at 255 and would turn the image white.
        return _array_to_rgb(np.asarray(img, dtype=np.float64) / 257.0)
    if mode == "I":
        # From our formats only 16-bit PNG greyscale decodes as "I", so read it on the 16-bit scale.
        return _array_to_rgb(np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0)
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        # Float images are either 0..1 (normalised) or 0..255; there is no header telling which.
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return _array_to_rgb(values)
    if mode in _TRANSPARENT_MODES or "transparency" in img.info:
        return _on_white(img)
    if mode == "RGB":
        return img
    try:
        # P, L, 1, CMYK (Adobe-inverted CMYK is undone by the JPEG decoder), YCbCr, RGBX...
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageRejected(f"This image uses a colour mode we cannot read ({mode})") from exc


def image_to_square(img: Image.Image, *, size: int) -> Image.Image:
    """Fit the whole RGB image into ``size`` x ``size``: longer side scaled to ``size``, centred on white."""
    if img.mode != "RGB":
        raise ValueError(f"image_to_square expects an RGB image, got mode {img.mode!r}; call image_to_rgb first")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    width, height = img.size
    if (width, height) == (size, size):
        return img
    # Padding rather than centre-cropping keeps tall products (shoes, hems) whole.
    fitted = _draft_size(width, height, size)
    if fitted != (width, height):
        # reducing_gap: a cheap box reduction first when shrinking a lot, then Lanczos on the small image.
        img = img.resize(fitted, Image.Resampling.LANCZOS, reducing_gap=3.0)
    square = Image.new("RGB", (size, size), WHITE)
    square.paste(img, ((size - fitted[0]) // 2, (size - fitted[1]) // 2))
    return square


def image_prepare(
    source: ImageSource,
    *,
    size: int = 224,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_draft: bool = True,
) -> np.ndarray:
    """Open, validate and normalise one image to a writable uint8 array of shape (size, size, 3).

    With ``jpeg_draft`` JPEGs are decoded at a reduced DCT scale that still covers the output size.
    Raises ImageRejected like image_open.
    """
    img = _image_open(source, max_pixels=max_pixels, draft_to=size if jpeg_draft else None)
    square = image_to_square(image_to_rgb(img), size=size)
    return np.array(square, dtype=np.uint8)


def batch_to_tensor(
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """Stack uint8 HxWx3 arrays into a normalised float32 Nx3xHxW tensor in channels_last memory format.

    ``mean``/``std`` are per channel on the [0, 1] scale. Raises ValueError on an empty batch or bad shapes.
    """
    if len(images) == 0:
        raise ValueError("batch_to_tensor needs at least one image")
    batch = np.stack(images) if not isinstance(images, np.ndarray) else images
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 arrays of shape HxWx3, got {batch.dtype} {batch.shape[1:]}")
    # NHWC memory viewed as NCHW is exactly the channels_last layout, so the permute costs nothing.
    nchw = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std_t
    tensor = nchw.to(torch.float32).mul_(scale).sub_(shift)
    return tensor.contiguous(memory_format=torch.channels_last)
