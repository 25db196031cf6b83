"""Turn untrusted image files into the fixed-size RGB arrays the encoders eat.

One path for every image: catalog files being stored, catalog images being
embedded and shoppers' photos all go through :func:`image_load`, which checks
the header before decoding, decodes JPEGs at a reduced scale, shrinks any
other format by an integer factor before a mode conversion can copy it at full
size, applies EXIF orientation, moves colours from an embedded ICC profile
into sRGB and composites transparency on white. :func:`image_check` reads
the header alone (format, size, pixel limit), for callers that must refuse
before they do anything costly. The tensor step lives with the encoders. Pure Pillow/numpy (no Django, no torch), so
web processes import it without loading a model. Anything wrong with the
*bytes* of an image surfaces as :class:`ImageRejected`, whose message can be
shown to a shopper or an admin as it is.
"""

from __future__ import annotations

import io
import logging
import re
import struct
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from recommender.errors import ImageRejected

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
_T = TypeVar("_T")
# The mode whose pixels an ICC profile of each colour space describes.
_PROFILE_MODES = {"RGB": "RGB", "CMYK": "CMYK", "GRAY": "L"}
# Modes whose colours are RGB values, which an RGB profile describes (palettes included).
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA"})


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


def _open_checked(stream: BinaryIO, *, max_pixels: int) -> tuple[Image.Image, int]:
    """Identify and size-check ``stream`` from its header, decoding no pixel; returns (image, the pixel limit)."""
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
    return img, limit


def _open_loaded(stream: BinaryIO, *, max_pixels: int, draft_to: int | None) -> Image.Image:
    """Identify, size-check, optionally draft, then decode the first frame of ``stream``."""
    img, limit = _open_checked(stream, max_pixels=max_pixels)
    width, height = img.size
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


def _with_stream(source: ImageSource, read: Callable[[BinaryIO], _T]) -> _T:
    """``read(stream)`` over ``source``'s bytes; ImageRejected for an empty one."""
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageRejected(MSG_EMPTY)
        return read(io.BytesIO(source))
    if isinstance(source, str | Path):
        path = Path(source)
        # Opening the path is outside the rejection net on purpose: a missing file is our bug, not a bad image.
        with path.open("rb") as stream:
            if path.stat().st_size == 0:
                raise ImageRejected(MSG_EMPTY)
            return read(stream)
    if _stream_is_empty(source):
        raise ImageRejected(MSG_EMPTY)
    return read(source)


def _image_open(source: ImageSource, *, max_pixels: int, draft_to: int | None) -> Image.Image:
    return _with_stream(source, lambda stream: _open_loaded(stream, max_pixels=max_pixels, draft_to=draft_to))


def image_check(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) of an image we would decode, read from its header alone; no pixel is decoded.

    Raises ImageRejected, as :func:`image_open` does, for an empty file, an unknown format or one over
    ``max_pixels``: what can be refused before any costly work (a model loaded, a decode). A file whose
    header passes may still be refused when it is decoded (truncated or corrupt data).
    """

    def header(stream: BinaryIO) -> tuple[str, int, int]:
        img, _ = _open_checked(stream, max_pixels=max_pixels)
        with img:
            return str(img.format), img.width, img.height

    return _with_stream(source, header)


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
    """Upright, opaque 8-bit sRGB: applies EXIF orientation and an embedded ICC profile, puts transparency on
    white, rescales 16-bit/float.

    ``img`` itself is not modified.
    """
    return _in_srgb(_exif_transposed(img), _icc_profile(img))


@cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _icc_profile(img: Image.Image) -> bytes | None:
    profile = img.info.get("icc_profile")
    return bytes(profile) if isinstance(profile, bytes | bytearray) and profile else None


def _profile_to_srgb(img: Image.Image, profile: bytes | None) -> Image.Image | None:
    """``img`` moved from the colours ``profile`` describes into sRGB (an RGB image), or None where the profile
    does not describe these pixels (another colour space) or cannot be used: the pixels are then read as sRGB."""
    if profile is None:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if _PROFILE_MODES.get(source.profile.xcolor_space.strip()) != img.mode:
            return None
        # A transform is built per image, never shared: a littleCMS transform keeps a cache that makes it
        # unsafe to apply from two threads at once (web processes serve several).
        return ImageCms.profileToProfile(img, source, _srgb_profile(), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        # A phone's or an editor's odd profile is no reason to refuse the photo.
        logger.info("Ignoring an ICC profile we cannot apply (%s); reading the colours as sRGB", type(exc).__name__)
        return None


def _in_srgb(img: Image.Image, profile: bytes | None) -> Image.Image:
    """Opaque 8-bit RGB in sRGB: ``img``'s colours moved out of the space its ICC ``profile`` describes.

    Stored images carry no profile (viewers read them as sRGB), so a wide-gamut or CMYK photo must be
    converted, not stripped. CMYK and grey pixels go through their profile directly (better than Pillow's
    plain conversion); RGB ones after transparency is put on white (white stays white in any profile).
    """
    if img.mode in ("CMYK", "L") and "transparency" not in img.info:
        converted = _profile_to_srgb(img, profile)
        if converted is not None:
            return converted
    rgb = _modes_to_rgb(img)
    if img.mode not in _RGB_MODES:
        return rgb  # an RGB profile on grey or CMYK pixels does not describe them
    return _profile_to_srgb(rgb, profile) or rgb


def _modes_to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Full 16-bit range to 8 bit; Pillow's own convert clips at 255 and would turn the image white.
        return _array_to_rgb(np.asarray(img, dtype=np.float32) / 257.0)
    if mode == "I":
        # From our formats only 16-bit PNG greyscale decodes as "I", so read it on the 16-bit scale.
        return _array_to_rgb(np.clip(np.asarray(img, dtype=np.float32), 0, 65535) / 257.0)
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
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


# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose does).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112) or 1)
    except (OSError, SyntaxError, ValueError, struct.error, KeyError, TypeError, IndexError):
        logger.info("Ignoring unreadable EXIF orientation", exc_info=True)
        return 1


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """``img`` reduced by the largest integer factor that keeps its longer side at least ``max_side``.

    Runs before any mode conversion: a 40-megapixel transparent PNG composited
    on white at full size costs ~750 MB, the same after a box reduction a few MB.
    Modes whose pixels cannot be averaged (palette, 1-bit, 16-bit) are widened
    first, the cheapest way that keeps their values.
    """
    factor = max(img.size) // max_side
    if factor < 2:
        return img
    if factor >= 4:
        # Far larger than needed: keep every (factor // 2)-th pixel first. A nearest-neighbour resize
        # touches only the pixels it keeps (a box reduction of 40 megapixels costs about a second), and
        # the 2x reduction below still averages what is left.
        step = factor // 2
        img = img.resize((max(1, img.width // step), max(1, img.height // step)), Image.Resampling.NEAREST)
        factor = max(img.size) // max_side
        if factor < 2:
            return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode in _SIXTEEN_BIT_MODES:
        img = img.convert("I")
    return img.reduce(factor)


def image_load(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None
) -> Image.Image:
    """Open, validate and decode an image to upright, opaque 8-bit sRGB, at least ``max_side`` on its longer side.

    The one decoding path for stored catalog images, embedded images and shoppers' photos. With
    ``max_side`` the image is decoded (JPEG) or reduced (other formats) to no more than about twice that
    before anything is converted, so memory and time follow the output size, not the file's pixel count.
    Raises ImageRejected like :func:`image_open`.
    """
    img = _image_open(source, max_pixels=max_pixels, draft_to=max_side)
    if max_side is None:
        return image_to_rgb(img)
    orientation = _orientation(img)
    # Read before any reduction or conversion: not every Pillow operation carries the image's info along.
    profile = _icc_profile(img)
    img = _shrink(img, max_side)
    if orientation in _UPRIGHT:
        img = img.transpose(_UPRIGHT[orientation])
    return _in_srgb(img, profile)


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

    With ``jpeg_draft`` (the default) it goes through :func:`image_load` at the output size; without, the
    image is decoded at full size first (a reference for tests and benchmarks).
    Raises ImageRejected like image_open.
    """
    if jpeg_draft:
        rgb = image_load(source, max_pixels=max_pixels, max_side=size)
    else:
        rgb = image_to_rgb(_image_open(source, max_pixels=max_pixels, draft_to=None))
    return np.array(image_to_square(rgb, size=size), dtype=np.uint8)
