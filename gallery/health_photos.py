"""The pixel side of catalog health: a thumbnail read once into what the scan judges, and two photos compared.

A copy of a photo (re-encoded, resized, lightly cropped) and a look-alike (another drawing of the same kind,
a flag one star apart) can have the same image vector and nearly the same small fingerprint. What tells them
apart is *where* they differ: registered onto each other, a copy differs from its original by JPEG noise
everywhere and nowhere by much; a look-alike differs strongly in one place. So ``photos_difference``
registers one photo onto the other (the scale from the content's bounding box, or searched where the crop
cut into it; the offset from an uncut edge, or by phase correlation) and returns the largest per-pixel
difference that survives a slight blur and a one-pixel tolerance (for resampling), 0-255.

Numpy, scipy.ndimage and Pillow only; no Django. Callers: ``gallery.catalog_health`` and the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.ndimage import gaussian_filter, maximum_filter, minimum_filter

PHOTO_SIDE = 96  # the long side photos are compared at
FINGERPRINT_SIDE = 32  # the small fingerprint, the product cut from its background, that pre-selects pairs
BACKGROUND = 235  # a pixel whose every channel is above this is background (the catalog's photos are on white)
EDGE = 160  # the bounding box registration uses: pixels darker than this, half-way, so blur barely moves it
BLANK_RMS = 4.0  # a photo whose fingerprint spreads less than this (root mean square, 0-255) is blank
# A photo whose neighbouring pixels (at PHOTO_SIDE) agree less than this (their correlation, 1: alike) is noise:
# a picture, drawn or photographed, has regions; a broken file decoded to static has none.
NOISE_CORRELATION = 0.3
BLUR_SIGMA = 0.7  # both photos blurred alike before differencing: resampling and JPEG noise, not shapes
# A copy's field of view is its original's, lightly cropped (up to about 8 % a side): registered, it lies inside
# the original (COVER) and spans at least MIN_FILL of its area (0.84 x 0.84 = 0.71 at that crop); a picture that
# must be scaled past that is another drawing at another size (a medium square against a large one).
COVER = 0.95
MIN_FILL, MAX_FILL = 0.68, 1.1
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Photo:
    rgb: np.ndarray  # (h, w, 3) uint8, long side at most PHOTO_SIDE
    gray: np.ndarray  # (h, w) uint8, its luminance
    box: Box | None  # the content's bounding box (left, top, right, bottom); None for a blank photo
    edge: Box | None  # the bounding box of its darker half, for registration
    fingerprint: np.ndarray  # (FINGERPRINT_SIDE**2 * 3,) float32, centred, unit length; zeros when blank
    correlation: float = 1.0  # of neighbouring pixels' luminance (:func:`neighbour_correlation`)

    @property
    def blank(self) -> bool:
        return not self.fingerprint.any()

    @property
    def noise(self) -> bool:
        """Static, not a picture: neighbouring pixels no more alike than any two (and not one colour)."""
        return not self.blank and self.correlation < NOISE_CORRELATION


def neighbour_correlation(gray: np.ndarray) -> float:
    """The correlation of each pixel's luminance with its right and lower neighbours' (1.0 for one colour):
    near 1 for a picture (flat regions, smooth edges), near 0 for static."""
    g = np.asarray(gray, dtype=np.float32)
    g = g - g.mean()
    variance = float((g * g).mean())
    if variance < 1e-6 or min(g.shape) < 2:
        return 1.0
    across = float((g[:, 1:] * g[:, :-1]).mean())
    down = float((g[1:] * g[:-1]).mean())
    return (across + down) / 2 / variance


@dataclass(frozen=True)
class PhotoMatch:
    difference: float  # 0-255: the largest difference of the registered, blurred photos beyond one pixel's shift
    cover: float  # the share of the smaller view that lies inside the larger once registered
    fill: float  # the smaller view's area over the larger's, once registered
    scale: float

    @property
    def same_view(self) -> bool:
        """Registered, the two views could be one photo and a lightly cropped copy of it."""
        return self.cover >= COVER and MIN_FILL <= self.fill <= MAX_FILL


def _bbox(mask: np.ndarray) -> Box | None:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def photo_read(source: object) -> Photo | None:
    """A photo (a path or an open binary file) read once: reduced to PHOTO_SIDE, its content boxes and its
    fingerprint. None when it cannot be read. JPEGs larger than twice PHOTO_SIDE are decoded at reduced scale."""
    try:
        with Image.open(source) as image:
            # Decoded at the smallest scale at least twice PHOTO_SIDE (a 320-pixel thumbnail whole): decoding at
            # half scale, measured, loses copies resized to under half (recall 0.975 -> 0.940 on real art).
            image.draft("RGB", (PHOTO_SIDE * 2, PHOTO_SIDE * 2))
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    if max(image.size) > PHOTO_SIDE:
        image.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.BOX)
    rgb = np.asarray(image, dtype=np.uint8)
    darkest = rgb.min(axis=2)
    box = _bbox(darkest < BACKGROUND)
    cut = image.crop(box) if box else image
    pixels = np.asarray(cut.resize((FINGERPRINT_SIDE, FINGERPRINT_SIDE), Image.Resampling.BOX), dtype=np.float32)
    pixels = pixels.ravel() - pixels.mean()
    norm = float(np.linalg.norm(pixels))
    gray = np.asarray(image.convert("L"), dtype=np.uint8)
    if norm < BLANK_RMS * np.sqrt(pixels.size):
        return Photo(rgb=rgb, gray=gray, box=None, edge=None, fingerprint=np.zeros_like(pixels))
    return Photo(rgb=rgb, gray=gray, box=box, edge=_bbox(darkest < EDGE) or box, fingerprint=pixels / norm,
                 correlation=neighbour_correlation(gray))  # fmt: skip


def _margins(photo: Photo, box: Box) -> np.ndarray:
    h, w = photo.rgb.shape[:2]
    return np.array([box[0], box[1], w - box[2], h - box[3]], dtype=np.float64)


def _resized(pixels: np.ndarray, scale: float) -> np.ndarray:
    h, w = pixels.shape[:2]
    size = (max(4, round(w * scale)), max(4, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


def _mean_difference(ref: np.ndarray, moved: np.ndarray, y: int, x: int) -> float:
    height, width = ref.shape
    h, w = moved.shape
    y0, x0, y1, x1 = max(0, y), max(0, x), min(height, y + h), min(width, x + w)
    if y1 - y0 < 4 or x1 - x0 < 4:
        return np.inf
    return float(np.abs(ref[y0:y1, x0:x1] - moved[y0 - y : y1 - y, x0 - x : x1 - x]).mean())


def _phase_offset(ref: np.ndarray, moved: np.ndarray, pad: int) -> tuple[int, int] | None:
    """(y, x) of ``moved`` in ``ref`` by phase correlation of their darkness (the background is 0)."""
    height, width = ref.shape
    h, w = moved.shape
    size = (height + 2 * pad, width + 2 * pad)
    if h > size[0] or w > size[1]:
        return None
    a = np.zeros(size, dtype=np.float32)
    a[pad : pad + height, pad : pad + width] = 255.0 - ref
    b = np.zeros(size, dtype=np.float32)
    b[:h, :w] = 255.0 - moved
    cross = np.fft.rfft2(a) * np.conj(np.fft.rfft2(b))
    cross /= np.abs(cross) + 1e-3 * np.abs(cross).max()
    peak = np.fft.irfft2(cross, s=size)
    y, x = (int(v) for v in np.unravel_index(int(peak.argmax()), peak.shape))
    y -= size[0] if y > size[0] - h // 2 else 0
    x -= size[1] if x > size[1] - w // 2 else 0
    return y - pad, x - pad


def _register(ref: Photo, moved: Photo) -> tuple[float, int, int] | None:
    """(scale, y, x) that lays ``moved`` best onto ``ref``: least mean difference of their luminance."""
    ref_margin, moved_margin = _margins(ref, ref.edge), _margins(moved, moved.edge)
    estimates, anchors = [], []
    for low, high in ((0, 2), (1, 3)):  # x, then y
        if min(moved_margin[low], moved_margin[high], ref_margin[low], ref_margin[high]) > 0.5:
            estimates.append((ref.edge[high] - ref.edge[low]) / (moved.edge[high] - moved.edge[low]))
        anchors.append(low if moved_margin[low] > 0.5 else high if moved_margin[high] > 0.5 else None)
    height, width = ref.rgb.shape[:2]
    h, w = moved.rgb.shape[:2]
    pad = max(height, width) // 10
    if estimates:  # the content's size fixes the scale, up to a few per cent of blur and rounding
        scales, step = [float(np.mean(estimates)) * f for f in (0.97, 0.98, 0.99, 1.0, 1.01, 1.02, 1.03)], 0.005
    else:  # cut on every side: the crop took 0-20 % of the view
        scales, step = [0.5 * (width / w + height / h) * f for f in np.arange(0.82, 1.0001, 0.02)], 0.01
    ref_gray = ref.gray.astype(np.float32)

    def place(scale: float, *, search: bool) -> tuple[float, tuple[float, int, int] | None]:
        gray = _resized(moved.gray, scale).astype(np.float32)
        offset: list[int | None] = [None, None]
        for axis, side in enumerate(anchors):
            if side is not None:
                offset[axis] = round(ref.edge[side] - scale * moved.edge[side])
        if None in offset:
            found = _phase_offset(ref_gray, gray, pad)
            if found is None:
                return np.inf, None
            offset = [found[1] if offset[0] is None else offset[0], found[0] if offset[1] is None else offset[1]]
        steps = (-1, 0, 1) if search else (0,)
        best: tuple[float, tuple[float, int, int] | None] = (np.inf, None)
        for dy in steps:
            for dx in steps:
                y, x = offset[1] + dy, offset[0] + dx
                difference = _mean_difference(ref_gray, gray, y, x)
                if difference < best[0]:
                    best = (difference, (scale, y, x))
        return best

    best = min((place(scale, search=False) for scale in scales), key=lambda found: found[0])
    if best[1] is None:
        return None
    centre = best[1][0]
    for scale in (centre * (1 - step), centre * (1 + step)):  # half a step of scale either way
        found = place(scale, search=False)
        if found[0] < best[0]:
            best = found
    return place(best[1][0], search=True)[1]  # then a pixel either way


def _beyond(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How far each pixel of ``a`` lies outside the range of ``b`` over its 3 x 3 neighbourhood (per channel, max)."""
    high = maximum_filter(b, size=(3, 3, 1))
    low = minimum_filter(b, size=(3, 3, 1))
    a = a.astype(np.int16)
    return np.maximum(np.maximum(a - high, low - a), 0).max(axis=2)


def photos_difference(a: Photo, b: Photo) -> PhotoMatch | None:
    """Register the photo with the tighter view onto the other and measure how they differ; None when either is
    blank or no registration overlaps."""
    if a.box is None or b.box is None:
        return None

    def looseness(photo: Photo) -> float:  # margins around the content, relative to its size: a crop lowers it
        left, top, right, bottom = photo.box
        size = np.array([right - left, bottom - top, right - left, bottom - top], dtype=np.float64)
        return float((_margins(photo, photo.box) / size).sum())

    ref, moved = (a, b) if looseness(a) >= looseness(b) else (b, a)
    registered = _register(ref, moved)
    if registered is None:
        return None
    scale, y, x = registered
    resized = _resized(moved.rgb, scale)
    height, width = ref.rgb.shape[:2]
    h, w = resized.shape[:2]
    y0, x0, y1, x1 = max(0, y), max(0, x), min(height, y + h), min(width, x + w)
    if y1 - y0 < 4 or x1 - x0 < 4:
        return None
    sigma = (BLUR_SIGMA, BLUR_SIGMA, 0)
    one = np.rint(gaussian_filter(ref.rgb[y0:y1, x0:x1].astype(np.float32), sigma)).astype(np.uint8)
    other = resized[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.float32)
    other = np.rint(gaussian_filter(other, sigma)).astype(np.uint8)
    difference = np.minimum(_beyond(one, other), _beyond(other, one))
    return PhotoMatch(
        difference=float(difference.max()),
        cover=(y1 - y0) * (x1 - x0) / (h * w),
        fill=(h * w) / (height * width),
        scale=float(scale),
    )
