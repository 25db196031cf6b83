"""Colour descriptors of product photos and how they blend with image vectors. Pillow and numpy only.

A product photo here is what :func:`recommender.preprocess.image_prepare` makes: RGB, transparency
composited on white, padded to a white square. The descriptor looks only at the product itself (pixels
that are not near-white background) and is a soft histogram in CIELAB, so two colours a shopper would
call the same land in overlapping bins and cosine between descriptors reads as "how alike the colours are".

The image vector (a CNN's) mixes shape, pattern and colour and weights colour weakly: of a product's ten
nearest, about a fifth share its colour on the 400-product demo catalog and under half on 2,000 products.
Blending the two scores per trail step is what lets a shopper say "same colour" or "any colour" (see
:class:`Aspect` and ASPECT_COLOUR_WEIGHTS; clicks are ranked with them by
:func:`recommender.feedback.candidate_scores`). Serving stores one descriptor per product beside its image
vector (an ``Embedding`` row of COLOUR_SPACE); computing it costs about 3 ms per prepared 224-pixel image on one core.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np
from PIL import Image

# Lab bin centres. Lightness separates black / grey / white and navy from blue; a and b (the two
# colour-opponent axes) separate hues. Spacing and widths: a colour sits between two or three centres
# per axis, so a small shift (JPEG, shading, a slightly different dye) moves mass between neighbouring
# bins instead of jumping to a disjoint one, which is what makes cosine between histograms smooth.
L_CENTRES = np.array([0.0, 20.0, 40.0, 60.0, 80.0, 100.0], dtype=np.float32)
AB_CENTRES = np.array([-72.0, -48.0, -24.0, 0.0, 24.0, 48.0, 72.0], dtype=np.float32)
L_SIGMA = 11.0
AB_SIGMA = 13.0
COLOUR_DIM = len(L_CENTRES) * len(AB_CENTRES) ** 2
# The embedding space colour descriptors are stored under (recommender.models.Embedding), one per product,
# whatever encoder serves the image vectors: they come from the same decoded square.
COLOUR_SPACE = f"colour-lab{COLOUR_DIM}"
# The descriptor is computed on a reduced copy: colour statistics need far fewer pixels than the CNN.
WORK_SIDE = 64
# Background: near-white and nearly neutral. The demo's lit white products are capped at sRGB 242
# (L* 95.3) and its backgrounds start at 250 (L* 98); real catalog photos sit on pure white.
BACKGROUND_MIN_L = 96.5
BACKGROUND_MAX_CHROMA = 6.0
# Fewer foreground pixels than this share of the image: a white product on white; use every pixel.
MIN_FOREGROUND_SHARE = 0.01

_D65_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float32,
)
_CHANNEL = np.arange(256, dtype=np.float64) / 255.0
# sRGB transfer function as a lookup table: 256 values instead of a power per pixel.
_LINEAR = np.where(_CHANNEL <= 0.04045, _CHANNEL / 12.92, ((_CHANNEL + 0.055) / 1.055) ** 2.4).astype(np.float32)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of uint8 sRGB values; any leading shape, last axis 3. Returns float32 L*, a*, b*."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB values with a last axis of 3, got {rgb.dtype} {rgb.shape}")
    xyz = _LINEAR[rgb] @ _RGB_TO_XYZ.T / _D65_WHITE
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    lab = np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)
    return lab.astype(np.float32)


def foreground_lab(image: np.ndarray | Image.Image) -> np.ndarray:
    """Lab values (N, 3) of the product's pixels: the near-white, near-neutral background left out.

    ``image`` is RGB (a PIL image or a uint8 HxWx3 array), already on white as the preprocessing leaves
    it. It is reduced to at most WORK_SIDE on its longer side first. When almost nothing but background
    remains (a white product on white), every pixel is returned, so a descriptor always exists.
    """
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")
    if pil.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {pil.mode!r}")
    if max(pil.size) > WORK_SIDE:
        pil = pil.copy()
        # BOX averages whole pixels: an edge pixel becomes a mix with the background, never a new hue.
        pil.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    lab = srgb_to_lab(np.asarray(pil)).reshape(-1, 3)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    foreground = ~((lab[:, 0] >= BACKGROUND_MIN_L) & (chroma <= BACKGROUND_MAX_CHROMA))
    if foreground.mean() < MIN_FOREGROUND_SHARE:
        return lab
    return lab[foreground]


def _soft(values: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    weights = np.exp(-0.5 * ((values[:, None] - centres[None, :]) / sigma) ** 2)
    # Each pixel spreads one unit of mass along each axis, wherever it falls.
    return weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)


def colour_descriptor(image: np.ndarray | Image.Image) -> np.ndarray:
    """The product's colour as a unit float32 vector of COLOUR_DIM: a soft CIELAB histogram of its foreground.

    Square-rooted before normalising (the Hellinger map), so the cosine of two descriptors is the
    Bhattacharyya overlap of the two colour distributions, and a secondary colour covering a fifth of
    the product (stripes, a sole) still counts without outweighing the main one. Pure function.
    """
    lab = foreground_lab(image)
    histogram = np.einsum(
        "pi,pj,pk->ijk",
        _soft(lab[:, 0], L_CENTRES, L_SIGMA),
        _soft(lab[:, 1], AB_CENTRES, AB_SIGMA),
        _soft(lab[:, 2], AB_CENTRES, AB_SIGMA),
        optimize=True,
    ).reshape(-1)
    root = np.sqrt(np.maximum(histogram, 0.0))
    return (root / max(float(np.linalg.norm(root)), 1e-12)).astype(np.float32)


def colour_descriptors(images: Sequence[np.ndarray | Image.Image]) -> np.ndarray:
    """colour_descriptor of each image, stacked (N, COLOUR_DIM) float32."""
    if not len(images):
        return np.zeros((0, COLOUR_DIM), dtype=np.float32)
    return np.stack([colour_descriptor(image) for image in images])


# --- Blending with the image vector -------------------------------------------------------------------------


class Aspect(StrEnum):
    """What a shopper asks a trail step to keep. The value is the step's code in links (empty: the default)."""

    DEFAULT = ""
    SAME_COLOUR = "c"  # keep the colour, the style may change
    ANY_COLOUR = "a"  # keep the look, the colour may change
    SAME_SHAPE = "s"  # keep the shape, and show it in other colours


# Share of the colour descriptor's cosine in a step's score, the image vector's cosine taking the rest.
# Chosen through the served site (docs/quality.md, "Refinement: coherence and convergence"): 0.1 keeps the
# clicked kind on the demo as plain neighbours do, where 0.2 let other kinds in the click's colour take
# 0.04-0.06 of the grid, and shoppers on real art find their target as often as with 0.2.
DEFAULT_COLOUR_WEIGHT = 0.1
# "Same colour": colour counts more than by default, among the products that look most alike
# (recommender.feedback.ASPECT_SHORTLIST), so the kind stays.
SAME_COLOUR_WEIGHT = 0.35
# "Same shape": the step's own colour is pushed down a little, so the same cut comes back in other colours.
SAME_SHAPE_COLOUR_WEIGHT = -0.1

ASPECT_COLOUR_WEIGHTS: dict[Aspect, float] = {
    Aspect.DEFAULT: DEFAULT_COLOUR_WEIGHT,
    Aspect.SAME_COLOUR: SAME_COLOUR_WEIGHT,
    Aspect.ANY_COLOUR: 0.0,
    Aspect.SAME_SHAPE: SAME_SHAPE_COLOUR_WEIGHT,
}


def blend(image_scores: np.ndarray, colour_scores: np.ndarray, *, colour_weight: float) -> np.ndarray:
    """(1 - w) * image cosine + w * colour cosine, elementwise (w may be negative: away from the colour)."""
    image_scores = np.asarray(image_scores, dtype=np.float32)
    colour_scores = np.asarray(colour_scores, dtype=np.float32)
    if image_scores.shape != colour_scores.shape:
        raise ValueError(f"score shapes differ: {image_scores.shape} and {colour_scores.shape}")
    image_weight = 1.0 - max(colour_weight, 0.0)
    return image_weight * image_scores + colour_weight * colour_scores


def aspect_scores(
    *, image_scores: np.ndarray, colour_scores: np.ndarray, aspect: Aspect | str = Aspect.DEFAULT
) -> np.ndarray:
    """One trail step's score of each candidate under ``aspect`` (an Aspect or its code); raises ValueError."""
    return blend(image_scores, colour_scores, colour_weight=ASPECT_COLOUR_WEIGHTS[Aspect(aspect)])


def blended_vector(image_vector: np.ndarray, colour_vector: np.ndarray, *, colour_weight: float) -> np.ndarray:
    """A unit vector whose cosine with another such vector equals the blend of the two cosines.

    [sqrt(1 - w) * image, sqrt(w) * colour] for 0 <= w <= 1: what an index holding both must store to answer
    a blended query with one nearest-neighbour search instead of a re-rank of over-fetched candidates.
    """
    if not 0.0 <= colour_weight <= 1.0:
        raise ValueError(f"colour_weight must be between 0 and 1 for a stored vector, got {colour_weight}")
    image_vector = np.asarray(image_vector, dtype=np.float32)
    colour_vector = np.asarray(colour_vector, dtype=np.float32)
    joined = np.concatenate(
        [np.sqrt(1.0 - colour_weight) * image_vector, np.sqrt(colour_weight) * colour_vector], axis=-1
    )
    return (joined / np.maximum(np.linalg.norm(joined, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
