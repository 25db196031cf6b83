"""An offline demo catalog in the layout of the Fashion Product Images dataset.

``demo_catalog_write`` draws products with Pillow (shape = article type, true base
colour, pattern in a secondary colour) and writes ``styles.csv`` plus
``images/<id>.jpg`` exactly as the real dataset ships them, including its fault of
unquoted commas in ``productDisplayName``. Pure Python: no Django imports, so the
generator can run from scripts and tests without settings.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

STYLES_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"

RGB = tuple[int, int, int]
Pts = list[tuple[float, float]]

# Well separated on purpose: the mean colour of a drawn product must stay nearest its own name.
PALETTE: dict[str, RGB] = {
    "Black": (38, 38, 40),
    "White": (234, 234, 230),
    "Grey": (140, 140, 142),
    "Navy Blue": (30, 42, 92),
    "Blue": (38, 92, 200),
    "Teal": (0, 128, 128),
    "Green": (46, 139, 70),
    "Olive": (112, 118, 46),
    "Yellow": (242, 206, 46),
    "Orange": (240, 124, 36),
    "Red": (204, 32, 40),
    "Maroon": (120, 24, 44),
    "Pink": (240, 140, 176),
    "Purple": (112, 54, 150),
    "Brown": (112, 72, 42),
    "Beige": (222, 200, 164),
}

PATTERN_WORDS = {
    "Solid": "",
    "Striped": "Striped",
    "Checked": "Checked",
    "Polka Dot": "Polka Dot",
    "Printed": "Printed",
}

_SILVER: RGB = (196, 198, 204)
_GOLD: RGB = (206, 168, 78)
_SOLE_WHITE: RGB = (238, 238, 234)
_SOLE_DARK: RGB = (40, 40, 42)

_APPAREL_COLOURS = {
    "Black": 10,
    "White": 8,
    "Navy Blue": 9,
    "Blue": 8,
    "Grey": 7,
    "Red": 6,
    "Green": 5,
    "Olive": 3,
    "Maroon": 4,
    "Pink": 4,
    "Purple": 3,
    "Yellow": 3,
    "Orange": 2,
    "Teal": 3,
    "Brown": 2,
    "Beige": 3,
}
_WOMEN_COLOURS = {**_APPAREL_COLOURS, "Pink": 8, "Purple": 5, "Red": 8, "Navy Blue": 5, "Beige": 4}
_BOTTOM_COLOURS = {"Black": 10, "Navy Blue": 8, "Grey": 7, "Beige": 6, "Brown": 4, "Olive": 4, "Blue": 3, "White": 2}
_JEANS_COLOURS = {"Blue": 12, "Navy Blue": 9, "Black": 6, "Grey": 3}
_SHOE_COLOURS = {
    "Black": 10,
    "White": 8,
    "Grey": 5,
    "Navy Blue": 5,
    "Blue": 5,
    "Red": 4,
    "Brown": 4,
    "Green": 2,
    "Olive": 2,
    "Orange": 2,
}
_FORMAL_SHOE_COLOURS = {"Black": 10, "Brown": 8, "Maroon": 3}
_HEEL_COLOURS = {"Black": 8, "Red": 6, "Beige": 5, "Pink": 4, "Maroon": 3, "White": 3, "Brown": 3, "Blue": 2}
_SANDAL_COLOURS = {"Brown": 8, "Black": 8, "Beige": 4, "Navy Blue": 3, "Olive": 2, "Maroon": 2}
_FLIP_COLOURS = {"Black": 6, "Blue": 5, "Navy Blue": 4, "Red": 3, "Pink": 3, "Grey": 3, "Green": 2, "Yellow": 2}
_BAG_COLOURS = {"Black": 8, "Brown": 8, "Beige": 5, "Red": 4, "Maroon": 4, "Pink": 3, "White": 2, "Navy Blue": 2}
_BACKPACK_COLOURS = {"Black": 10, "Navy Blue": 6, "Grey": 6, "Blue": 5, "Red": 4, "Green": 3, "Olive": 3, "Orange": 2}
_WATCH_COLOURS = {"Black": 10, "White": 5, "Brown": 5, "Blue": 4, "Navy Blue": 3, "Grey": 3, "Maroon": 2, "Pink": 2}
_CAP_COLOURS = {"Black": 8, "Navy Blue": 6, "Red": 5, "White": 4, "Grey": 4, "Blue": 4, "Olive": 3, "Green": 2}
_SHADES_COLOURS = {"Black": 10, "Brown": 5, "Grey": 4, "Blue": 3, "Green": 2}
_BELT_COLOURS = {"Black": 10, "Brown": 9, "Maroon": 2, "Navy Blue": 1, "Beige": 1}

_APPAREL_BRANDS = (
    "Roadster",
    "Nike",
    "Puma",
    "Adidas",
    "United Colors of Benetton",
    "Flying Machine",
    "Wrangler",
    "Lee",
    "Levis",
    "Mango",
    "Jealous 21",
    "Allen Solly",
    "Van Heusen",
    "Arrow",
    "Peter England",
    "Scullers",
    "Basics",
    "Proline",
    "Spykar",
)
_FOOTWEAR_BRANDS = (
    "Nike",
    "Puma",
    "Adidas",
    "Reebok",
    "Converse",
    "Vans",
    "Woodland",
    "Catwalk",
    "Carlton London",
    "Red Tape",
    "Clarks",
    "Bata",
    "Lotto",
    "Fila",
)
_ACCESSORY_BRANDS = (
    "Fastrack",
    "Titan",
    "Timex",
    "Casio",
    "Baggit",
    "Lino Perros",
    "Wildcraft",
    "American Tourister",
    "Puma",
    "Nike",
    "Lee Cooper",
)
_KIDS_BRANDS = ("Gini and Jony", "Doodle", "Palm Tree", "Disney Kids")
_YEARS = {2011: 25, 2012: 35, 2013: 5, 2014: 5, 2015: 8, 2016: 12, 2017: 7, 2018: 3}
_COMMA_TAILS = {
    "Apparel": (", Slim Fit", ", Regular Fit", ", Cotton", ", Pack of 1"),
    "Footwear": (", Comfort Fit", ", Cushioned", ", Lightweight"),
    "Sports Shoes": (", Running", ", Training", ", Walking"),
    "Accessories": (", Classic", ", Limited Edition", ", Gift Box"),
}


# --------------------------------------------------------------------------- colour helpers


def _clamp(x: float) -> int:
    return max(0, min(255, round(x)))


def _shade(rgb: RGB, f: float) -> RGB:
    return (_clamp(rgb[0] * f), _clamp(rgb[1] * f), _clamp(rgb[2] * f))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (_clamp(a[0] + (b[0] - a[0]) * t), _clamp(a[1] + (b[1] - a[1]) * t), _clamp(a[2] + (b[2] - a[2]) * t))


def _lum(rgb: RGB) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _dist(a: Sequence[float], b: Sequence[float]) -> float:
    return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b, strict=True)))


def _seam(rgb: RGB, strength: float = 1.0) -> RGB:
    """A stitch/detail colour that reads on ``rgb``: darker on light colours, lighter on near-black."""
    if _lum(rgb) < 55:
        return _mix(rgb, (150, 150, 150), 0.35 * strength)
    return _shade(rgb, 1 - 0.38 * strength)


def _weighted(r: random.Random, weights: dict[str, float] | dict[int, float]):
    keys = list(weights)
    return r.choices(keys, weights=[weights[k] for k in keys], k=1)[0]


# --------------------------------------------------------------------------- geometry helpers


def _mirror(half: Pts) -> Pts:
    """Right half traced from the top centre to the bottom centre -> the full symmetric outline."""
    return list(half) + [(1 - u, v) for u, v in reversed(half)]


def _curve(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], n: int = 10) -> Pts:
    """Quadratic Bezier from p0 to p2 pulled toward p1."""
    out = []
    for i in range(n + 1):
        t = i / n
        a, b, c = (1 - t) ** 2, 2 * (1 - t) * t, t * t
        out.append((a * p0[0] + b * p1[0] + c * p2[0], a * p0[1] + b * p1[1] + c * p2[1]))
    return out


def _arc(cu: float, cv: float, ru: float, rv: float, a0: float = 0, a1: float = 360, n: int = 40) -> Pts:
    """Points on an ellipse from angle a0 to a1 in degrees (0 = right, 90 = down)."""
    return [
        (
            cu + ru * math.cos(math.radians(a0 + (a1 - a0) * i / n)),
            cv + rv * math.sin(math.radians(a0 + (a1 - a0) * i / n)),
        )
        for i in range(n + 1)
    ]


def _rrect(u0: float, v0: float, u1: float, v1: float, ru: float, rv: float | None = None) -> Pts:
    rv = ru if rv is None else rv
    return (
        _arc(u1 - ru, v0 + rv, ru, rv, 270, 360, 6)
        + _arc(u1 - ru, v1 - rv, ru, rv, 0, 90, 6)
        + _arc(u0 + ru, v1 - rv, ru, rv, 90, 180, 6)
        + _arc(u0 + ru, v0 + rv, ru, rv, 180, 270, 6)
    )


def _flip(pts: Pts) -> Pts:
    return [(1 - u, v) for u, v in pts]


# --------------------------------------------------------------------------- patterns


def _pattern_mask(
    kind: str, *, size: tuple[int, int], period: float, angle: float, phase: float, r: random.Random, k: float
) -> Image.Image | None:
    """Where the secondary colour goes (L, 0-255) for the whole image, or None for Solid."""
    if kind == "Solid":
        return None
    width, height = size
    ca, sa = math.cos(angle), math.sin(angle)
    reach = math.hypot(width, height)

    def band(d: ImageDraw.ImageDraw, t0: float, t1: float, *, across: bool, fill: int) -> None:
        # a stripe between offsets t0..t1 along the pattern axis, long enough to cross the whole image
        if across:
            corners = [(t0, -reach), (t1, -reach), (t1, reach), (t0, reach)]
            d.polygon([(x * ca - y * sa, x * sa + y * ca) for x, y in corners], fill=fill)
        else:
            corners = [(-reach, t0), (reach, t0), (reach, t1), (-reach, t1)]
            d.polygon([(x * ca - y * sa, x * sa + y * ca) for x, y in corners], fill=fill)

    m = Image.new("L", size, 0)
    d = ImageDraw.Draw(m)
    offsets = [period * i - phase % period for i in range(-int(reach / period) - 2, int(reach / period) + 3)]
    if kind == "Striped":
        for t in offsets:
            band(d, t, t + 0.3 * period, across=True, fill=255)
    elif kind == "Checked":
        cross = Image.new("L", size, 0)
        dc = ImageDraw.Draw(cross)
        for t in offsets:
            band(d, t, t + 0.26 * period, across=True, fill=115)
            band(dc, t, t + 0.26 * period, across=False, fill=115)
            band(d, t + 0.62 * period, t + 0.66 * period, across=True, fill=40)
        m = ImageChops.add(m, cross)
    elif kind == "Polka Dot":
        radius = 0.22 * period
        for row, ty in enumerate(offsets):
            for tx in offsets:
                x0 = tx + (period / 2 if row % 2 else 0.0)
                cx, cy = x0 * ca - ty * sa, x0 * sa + ty * ca
                if -radius <= cx <= width + radius and -radius <= cy <= height + radius:
                    d.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    else:
        _print_motifs(d, r, size=size, k=k)
    return m


def _print_motifs(d: ImageDraw.ImageDraw, r: random.Random, *, size: tuple[int, int], k: float) -> None:
    """Scattered small flowers and leaves (about a fifth of the area) for the Printed pattern."""
    motif = k * r.uniform(0.035, 0.05)
    step = motif * 3.4
    for row in range(int(size[1] / step) + 2):
        for col in range(int(size[0] / step) + 2):
            px = (col + (0.5 if row % 2 else 0.0) + r.uniform(-0.25, 0.25)) * step
            py = (row + r.uniform(-0.25, 0.25)) * step
            if r.random() < 0.6:
                for i in range(5):
                    a = 2 * math.pi * i / 5
                    qx, qy = px + motif * 0.6 * math.cos(a), py + motif * 0.6 * math.sin(a)
                    d.ellipse((qx - motif * 0.45, qy - motif * 0.45, qx + motif * 0.45, qy + motif * 0.45), fill=255)
                d.ellipse((px - motif * 0.3, py - motif * 0.3, px + motif * 0.3, py + motif * 0.3), fill=120)
            else:
                a = r.uniform(0, math.pi)
                dx, dy = math.cos(a) * motif, math.sin(a) * motif
                leaf = [
                    (px - dx, py - dy),
                    (px - dy * 0.45, py + dx * 0.45),
                    (px + dx, py + dy),
                    (px + dy * 0.45, py - dx * 0.45),
                ]
                d.polygon(leaf, fill=255)


# --------------------------------------------------------------------------- the drawing surface


@functools.cache
def _lut(scale: float) -> list[int]:
    return [_clamp(i * scale) for i in range(256)]


_DOUBLE = _lut(2.0)
_MAX_LIGHT = 242  # cap on lit parts of a product, so white products stay distinguishable from the white background
_ANTIALIAS = ImageFilter.BoxBlur(0.5)
_ERODE = [255 if i >= 250 else 0 for i in range(256)]  # after a 3x3 box blur: only pixels whose 8 neighbours are set


class _Sketch:
    """A product drawn in a unit box (u right, v down) mapped onto the image with scale, offset and tilt."""

    def __init__(
        self,
        *,
        width: int,
        height: int,
        bg: RGB,
        box: tuple[float, float, float, float],
        angle: float,
        base: RGB,
        second: RGB,
        pattern: Image.Image | None,
    ) -> None:
        self.width, self.height = width, height
        self.canvas = Image.new("RGB", (width, height), bg)
        self.cx, self.cy, self.bw, self.bh = box
        self._cos, self._sin = math.cos(angle), math.sin(angle)
        self.base, self.second, self.pattern = base, second, pattern
        self.k = math.sqrt(self.bw * self.bh)

    # geometry
    def px(self, u: float, v: float) -> tuple[float, float]:
        dx, dy = (u - 0.5) * self.bw, (v - 0.5) * self.bh
        return (self.cx + dx * self._cos - dy * self._sin, self.cy + dx * self._sin + dy * self._cos)

    def circle(self, cu: float, cv: float, r: float, a0: float = 0, a1: float = 360) -> Pts:
        """A true circle (radius ``r`` in box widths) despite the box's aspect."""
        return _arc(cu, cv, r, r * self.bw / self.bh, a0, a1, 48)

    def _blank(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        m = Image.new("L", (self.width, self.height), 0)
        return m, ImageDraw.Draw(m)

    def poly(self, *shapes: Pts, cut: Sequence[Pts] = ()) -> Image.Image:
        m, d = self._blank()
        for pts in shapes:
            d.polygon([self.px(u, v) for u, v in pts], fill=255)
        for pts in cut:
            d.polygon([self.px(u, v) for u, v in pts], fill=0)
        return m

    def lines(self, *paths: Pts, width: float, dash: float = 0.0) -> Image.Image:
        """Polylines ``width`` (fraction of the box's size) wide; ``dash`` > 0 draws stitches that long."""
        m, d = self._blank()
        w = max(1, round(width * self.k))
        for path in paths:
            pts = [self.px(u, v) for u, v in path]
            if dash:
                _dashed(d, pts, w, dash * self.k)
            else:
                d.line(pts, fill=255, width=w, joint="curve")
        return m

    def dots(self, centres: Pts, r: float) -> Image.Image:
        m, d = self._blank()
        rp = max(1.0, r * self.k)
        for u, v in centres:
            x, y = self.px(u, v)
            d.ellipse((x - rp, y - rp, x + rp, y + rp), fill=255)
        return m

    # painting
    def paint(
        self,
        mask: Image.Image,
        colour: RGB | None = None,
        *,
        shade: float = 0.0,
        outline: float = 0.0,
        opacity: float = 1.0,
        soft: float = 0.0,
        clip: Image.Image | None = None,
        light: float = 0.0,
    ) -> None:
        """Composite ``colour`` (None: the product's patterned body) through ``mask``.

        ``shade`` adds top-left lighting and darker edges (mean brightness kept), ``outline`` a darker rim,
        ``soft`` blurs the mask (fraction of box size), ``light`` a highlight toward the top-left.
        """
        bbox = mask.getbbox()
        if bbox is None:
            return
        blur = soft * self.k
        pad = int(3 + 3 * blur)
        box = (
            max(0, bbox[0] - pad),
            max(0, bbox[1] - pad),
            min(self.width, bbox[2] + pad),
            min(self.height, bbox[3] + pad),
        )
        size = (box[2] - box[0], box[3] - box[1])
        crop = mask.crop(box)
        # a half-pixel box blur is the cheapest anti-aliasing Pillow offers for polygon edges
        alpha = crop.filter(ImageFilter.GaussianBlur(blur) if blur else _ANTIALIAS)
        if opacity < 1:
            alpha = alpha.point(_lut(round(opacity, 2)))
        if clip is not None:
            alpha = ImageChops.multiply(alpha, clip.crop(box))
        ref = self.base if colour is None else colour
        if colour is None and self.pattern is not None:
            src = Image.composite(
                Image.new("RGB", size, self.second), Image.new("RGB", size, self.base), self.pattern.crop(box)
            )
        elif shade or light or outline:
            src = Image.new("RGB", size, ref)
        else:
            self.canvas.paste(ref, box, alpha)
            return
        if shade or light:
            inner_box = (bbox[0] - box[0], bbox[1] - box[1], bbox[2] - box[0], bbox[3] - box[1])
            factor = self._shading(crop, inner_box, shade=shade, light=light, headroom=_MAX_LIGHT / max(1, *ref))
            if factor is not None:
                src = ImageChops.multiply(src, Image.merge("RGB", (factor, factor, factor))).point(_DOUBLE * 3)
        if outline:
            eroded = crop.filter(ImageFilter.BoxBlur(1)).point(_ERODE)
            rim = ImageChops.subtract(crop, eroded)
            src.paste(_outline(ref), (0, 0, *size), rim.point(_lut(round(outline, 2))))
        self.canvas.paste(src, box, alpha)

    def _shading(
        self, crop: Image.Image, bbox: tuple[int, int, int, int], *, shade: float, light: float, headroom: float
    ) -> Image.Image | None:
        """Brightness factor / 2 as an L image: lit from the top-left, darker toward the edges, mean 1 inside.

        The swing is compressed to ``headroom`` (cap / brightest channel) so light colours keep their
        brightness instead of clipping into the background's white."""
        down = 4  # the factor is smooth, so it is computed on a quarter-size grid and scaled up
        small_size = (max(1, crop.width // down), max(1, crop.height // down))
        small = crop.resize(small_size, Image.Resampling.BOX)
        inside = np.asarray(small) > 127
        n_inside = int(np.count_nonzero(inside))
        if not n_inside:
            return None
        radius = max(0.5, 0.06 * self.k / down)
        inner = np.asarray(small.filter(ImageFilter.BoxBlur(radius)), np.float32)
        inner = np.clip(inner * (2 / 255.0) - 1, 0, 1)
        sx, sy = max(1.0, (bbox[2] - bbox[0]) / 2), max(1.0, (bbox[3] - bbox[1]) / 2)
        gx = (np.arange(small_size[0], dtype=np.float32) * down + down / 2 - (bbox[0] + bbox[2]) / 2) / sx
        gy = (np.arange(small_size[1], dtype=np.float32) * down + down / 2 - (bbox[1] + bbox[3]) / 2) / sy
        g = -(gx[None, :] + gy[:, None]) * 0.5
        f = 1.0 + shade * (0.45 * g + 0.6 * (inner - 1))
        f /= float(np.sum(f, where=inside)) / n_inside
        peak = float(f.max(initial=1.0, where=inside))
        if peak > headroom:
            # squeeze the highlights under the cap; keep at least half of the shadows so light colours still look 3-D
            squeeze = max(0.0, headroom - 1.0) / (peak - 1.0)
            f = 1.0 + (f - 1.0) * np.where(f > 1.0, squeeze, max(squeeze, 0.5))
        if light:
            f += light * np.clip(g, 0, None) ** 2 * inner
        small_f = Image.fromarray(np.clip(np.rint(f * 127.5), 0, 255).astype(np.uint8), "L")
        return small_f.resize(crop.size, Image.Resampling.BILINEAR)

    def body(self, mask: Image.Image, *, shade: float = 0.5, outline: float = 0.85) -> None:
        self.paint(mask, None, shade=shade, outline=outline)

    def seam(self, mask: Image.Image, *, strength: float = 1.0, opacity: float = 0.9, clip: Image.Image | None = None):
        self.paint(mask, _seam(self.base, strength), opacity=opacity, clip=clip)

    def image(self, noise: Image.Image) -> Image.Image:
        """The finished photo with a little sensor-like noise (``noise`` is 128-centred)."""
        return ImageChops.add(self.canvas, noise, 1.0, -128)


def _sole(rgb: RGB) -> RGB:
    """Sole colour for a shoe upper: white under light colours, a darker tone of the same colour otherwise
    (a contrasting sole would pull the shoe's overall colour away from its baseColour)."""
    if _lum(rgb) >= 170:
        return _SOLE_WHITE
    return _shade(rgb, 0.9)


def _outline(rgb: RGB) -> RGB:
    return _mix(rgb, (100, 100, 100), 0.45) if _lum(rgb) < 45 else _shade(rgb, 0.5)


def _dashed(d: ImageDraw.ImageDraw, pts: list[tuple[float, float]], w: int, dash: float) -> None:
    on, carry = True, 0.0
    for (xa, ya), (xb, yb) in zip(pts, pts[1:], strict=False):
        seg = math.hypot(xb - xa, yb - ya)
        pos = 0.0
        while pos < seg:
            step = min(dash - carry, seg - pos)
            if on:
                t0, t1 = pos / seg, (pos + step) / seg
                d.line([(xa + (xb - xa) * t0, ya + (yb - ya) * t0), (xa + (xb - xa) * t1, ya + (yb - ya) * t1)], 255, w)
            pos += step
            carry += step
            if carry >= dash - 1e-6:
                on, carry = not on, 0.0


# --------------------------------------------------------------------------- article drawings
# Each drawer paints one product into the sketch and returns a style word for the display name ("" if none).


def _draw_tshirt(s: _Sketch, r: random.Random) -> str:
    tw = r.uniform(0.22, 0.28)
    a = math.radians(r.uniform(28, 42))
    length = min(r.uniform(0.26, 0.36), (0.985 - 0.5 - tw) / math.cos(a))
    ow = r.uniform(0.12, 0.16)
    sh = (0.5 + tw, 0.08)
    et = (sh[0] + length * math.cos(a), sh[1] + length * math.sin(a))
    eb = (et[0] - ow * math.sin(a), et[1] + ow * math.cos(a))
    arm = (0.5 + tw - 0.01, 0.08 + r.uniform(0.2, 0.25))
    hem = (0.5 + tw + r.uniform(-0.01, 0.03), 0.985)
    style = r.choices(["crew", "vneck", "polo"], weights=[5, 2, 3])[0]
    body = _mirror([(0.5, 0.03), (0.62, 0.02), sh, et, eb, arm, hem, (0.5, 0.985)])
    neck = s.circle(0.5, 0.0, 0.12) if style != "vneck" else [(0.4, -0.01), (0.6, -0.01), (0.5, 0.2)]
    s.body(s.poly(body, cut=[neck]))
    shape = s.poly(body, cut=[neck])
    if style == "crew":
        s.seam(s.lines(s.circle(0.5, 0.0, 0.135, 0, 180), width=0.025), strength=0.6)
    elif style == "vneck":
        s.seam(s.lines([(0.38, 0.0), (0.5, 0.23), (0.62, 0.0)], width=0.025), strength=0.6)
    else:
        collar = [(0.5, 0.06), (0.37, 0.0), (0.33, 0.05), (0.44, 0.15)]
        s.paint(s.poly(collar, _flip(collar)), s.base, shade=0.3, outline=0.9)
        s.seam(s.lines([(0.47, 0.09), (0.47, 0.27), (0.53, 0.27), (0.53, 0.09)], width=0.008), opacity=0.8)
        s.paint(s.dots([(0.5, 0.14), (0.5, 0.22)], 0.01), _seam(s.base, 1.2))
    sleeve_hem = [(et[0] - 0.035 * math.cos(a), et[1] - 0.035 * math.sin(a)), (eb[0] - 0.035 * math.cos(a), eb[1])]
    s.seam(s.lines(sleeve_hem, _flip(sleeve_hem), [(0.5 - tw, 0.95), (0.5 + tw, 0.95)], width=0.008), clip=shape)
    return "Polo" if style == "polo" else ""


def _long_sleeves(r: random.Random, tw: float, top: float, cuff_reach: float) -> tuple[Pts, tuple, tuple]:
    sh = (0.5 + tw, top + 0.05)
    c1 = (r.uniform(0.93, 0.985), cuff_reach)
    c2 = (c1[0] - r.uniform(0.11, 0.14), cuff_reach + 0.04)
    arm = (0.5 + tw - 0.005, top + r.uniform(0.22, 0.27))
    return [sh, c1, c2, arm], c1, c2


def _draw_shirt(s: _Sketch, r: random.Random) -> str:
    tw = r.uniform(0.24, 0.28)
    sleeve, c1, c2 = _long_sleeves(r, tw, 0.02, r.uniform(0.74, 0.84))
    body = _mirror([(0.5, 0.03), (0.6, 0.02), *sleeve, (0.5 + tw + 0.01, 0.93), (0.62, 0.975), (0.5, 0.99)])
    shape = s.poly(body)
    s.body(shape)
    # cuffs and the armhole seams
    cuff = [c1, c2, (c2[0] + 0.01, c2[1] - 0.08), (c1[0] + 0.005, c1[1] - 0.08)]
    s.paint(s.poly(cuff, _flip(cuff)), None, outline=0.8)
    s.seam(s.lines(_curve((0.5 + tw, 0.07), (0.5 + tw - 0.03, 0.18), sleeve[3]), width=0.007), opacity=0.7)
    s.seam(s.lines(_flip(_curve((0.5 + tw, 0.07), (0.5 + tw - 0.03, 0.18), sleeve[3])), width=0.007), opacity=0.7)
    # placket with buttons
    s.seam(s.lines([(0.47, 0.1), (0.47, 0.99)], [(0.53, 0.1), (0.53, 0.985)], width=0.006), opacity=0.7)
    button = (245, 245, 240) if _lum(s.base) < 150 else (60, 60, 60)
    s.paint(s.dots([(0.5, 0.2 + 0.12 * i) for i in range(7)], 0.011), button)
    if r.random() < 0.6:
        s.seam(s.lines(_rrect(0.3, 0.24, 0.42, 0.38, 0.015), width=0.007), opacity=0.8)
    collar = [(0.5, 0.12), (0.4, -0.01), (0.44, -0.03), (0.5, -0.02)]
    s.paint(s.poly(_arc(0.5, 0.01, 0.1, 0.035)), _shade(s.base, 0.8))
    s.paint(s.poly(collar, _flip(collar)), None, shade=0.2, outline=1.0)
    s.seam(s.lines([(0.5, 0.12), (0.5, -0.02)], width=0.006))
    return ""


def _draw_top(s: _Sketch, r: random.Random) -> str:
    nd = r.uniform(0.12, 0.22)
    waist = r.uniform(0.22, 0.26)
    hem = r.uniform(0.32, 0.42)
    sleeves = r.random() < 0.45
    half = [(0.5, nd), *_curve((0.5, nd), (0.61, nd), (0.61, 0.0), 6), (0.7, 0.0)]
    if sleeves:
        half += [(0.8, 0.03), (0.96, 0.2), (0.88, 0.29), (0.79, 0.25)]
    else:
        half += _curve((0.7, 0.0), (0.74, 0.22), (0.82, 0.28), 6)
    half += [(0.5 + waist, 0.6), (0.5 + hem, 0.98), (0.5, 0.99)]
    body = _mirror(half)
    shape = s.poly(body)
    s.body(shape)
    s.seam(
        s.lines(
            _curve((0.39, 0.0), (0.39, nd + 0.03), (0.5, nd + 0.03)),
            _curve((0.61, 0.0), (0.61, nd + 0.03), (0.5, nd + 0.03)),
            width=0.012,
        ),
        clip=shape,
    )
    if r.random() < 0.5:
        s.seam(s.lines([(0.5 - waist, 0.6), (0.5 + waist, 0.6)], width=0.01), clip=shape, opacity=0.8)
    return ""


def _draw_sweatshirt(s: _Sketch, r: random.Random) -> str:
    hooded = r.random() < 0.45
    top = 0.13 if hooded else 0.02
    tw = r.uniform(0.27, 0.3)
    sleeve, c1, c2 = _long_sleeves(r, tw, top, r.uniform(0.84, 0.9))
    body = _mirror([(0.5, top + 0.01), (0.6, top), *sleeve, (0.5 + tw + 0.02, 0.99), (0.5, 0.99)])
    if hooded:
        hood = s.circle(0.5, 0.13, 0.17)
        s.paint(s.poly(hood), None, shade=0.4, outline=0.8)
    shape = s.poly(body)
    s.body(shape)
    rib = _seam(s.base, 0.35)
    cuff = [c1, c2, (c2[0] + 0.005, c2[1] - 0.07), (c1[0], c1[1] - 0.07)]
    s.paint(
        s.poly(
            cuff,
            _flip(cuff),
            [(0.5 - tw - 0.02, 0.91), (0.5 + tw + 0.02, 0.91), (0.5 + tw + 0.02, 0.99), (0.5 - tw - 0.02, 0.99)],
        ),
        rib,
        outline=0.8,
    )
    s.seam(
        s.lines(
            *[[(0.5 - tw + i * 0.04, 0.92), (0.5 - tw + i * 0.04, 0.98)] for i in range(1, int(2 * tw / 0.04))],
            width=0.005,
        ),
        opacity=0.5,
    )
    if hooded:
        s.paint(s.poly(_arc(0.5, 0.135, 0.095, 0.11)), _seam(s.base, 0.9), shade=0.3, outline=0.9)
        s.paint(s.lines([(0.45, 0.22), (0.44, 0.42)], [(0.55, 0.22), (0.56, 0.42)], width=0.01), (235, 235, 230))
        s.seam(s.lines([(0.32, 0.82), (0.36, 0.58), (0.64, 0.58), (0.68, 0.82), (0.32, 0.82)], width=0.009))
    else:
        s.paint(s.lines(s.circle(0.5, 0.02, 0.115, 0, 180), width=0.035), rib)
    return "Hooded" if hooded else ""


def _draw_jacket(s: _Sketch, r: random.Random) -> str:
    tw = r.uniform(0.26, 0.29)
    puffer = r.random() < 0.4
    sleeve, c1, c2 = _long_sleeves(r, tw, 0.04, r.uniform(0.8, 0.88))
    body = _mirror([(0.5, 0.06), (0.58, 0.05), *sleeve, (0.5 + tw + 0.015, 0.99), (0.5, 0.99)])
    shape = s.poly(body)
    s.body(shape, shade=0.6)
    collar = [(0.37, 0.0), (0.63, 0.0), (0.65, 0.1), (0.35, 0.1)]
    s.paint(s.poly(collar), None, shade=0.3, outline=0.9)
    if puffer:
        rows = [[(0.0, v), (1.0, v + 0.01)] for v in np.arange(0.2, 0.95, 0.1)]
        s.seam(s.lines(*rows, width=0.008), clip=shape, strength=1.2)
    else:
        s.seam(s.lines([(0.3, 0.56), (0.36, 0.7)], [(0.7, 0.56), (0.64, 0.7)], width=0.012), strength=1.3)
        s.seam(s.lines([(0.5 - tw, 0.92), (0.5 + tw, 0.92)], width=0.007), clip=shape)
    s.paint(s.lines([(0.5, 0.0), (0.5, 0.99)], width=0.014), _SILVER)
    s.paint(s.lines([(0.5, 0.0), (0.5, 0.99)], width=0.007, dash=0.006), (110, 110, 115), opacity=0.7)
    cuff = [c1, c2, (c2[0] + 0.005, c2[1] - 0.06), (c1[0], c1[1] - 0.06)]
    s.paint(s.poly(cuff, _flip(cuff)), _seam(s.base, 0.4), outline=0.8)
    return "Puffer" if puffer else ""


def _legs(lw: float, crotch: float, hip: float, bottom: float = 1.0) -> Pts:
    return [
        (0.5 - hip, 0.0),
        (0.5 + hip, 0.0),
        (0.5 + hip + 0.03, 0.3),
        (0.53 + lw, bottom),
        (0.525, bottom),
        (0.5, crotch),
        (0.475, bottom),
        (0.47 - lw, bottom),
        (0.5 - hip - 0.03, 0.3),
    ]


def _draw_jeans(s: _Sketch, r: random.Random) -> str:
    fit = r.choice(["Skinny Fit", "Slim Fit", "Regular Fit"])
    lw = {"Skinny Fit": 0.2, "Slim Fit": 0.25, "Regular Fit": 0.3}[fit] + r.uniform(-0.02, 0.02)
    hip = r.uniform(0.38, 0.42)
    shape = s.poly(_legs(lw, 0.36, hip))
    s.body(shape)
    # a lighter wash on the thighs, as worn denim has
    fade = s.poly(_arc(0.3, 0.32, 0.11, 0.12), _arc(0.7, 0.32, 0.11, 0.12))
    s.paint(fade, _shade(s.base, 1.35), opacity=0.35, soft=0.05, clip=shape)
    s.seam(s.lines([(0.5 - hip, 0.065), (0.5 + hip, 0.065)], width=0.012), clip=shape)
    stitch = (205, 145, 60)
    s.paint(s.lines(_curve((0.54, 0.07), (0.55, 0.3), (0.5, 0.31)), width=0.006), stitch, opacity=0.8)
    pockets = [_curve((0.5 - hip + 0.17, 0.07), (0.5 - hip + 0.12, 0.2), (0.5 - hip - 0.01, 0.2))]
    pockets.append(_flip(pockets[0]))
    s.paint(s.lines(*pockets, width=0.007), stitch, opacity=0.8)
    s.paint(
        s.lines(*[[(u, 0.0), (u, 0.075)] for u in (0.5 - hip + 0.05, 0.33, 0.67, 0.5 + hip - 0.05)], width=0.02),
        _seam(s.base, 0.5),
    )
    s.paint(s.dots([(0.5, 0.035)], 0.018), _SILVER)
    hems = [[(0.475, 0.975), (0.47 - lw, 0.975)], [(0.525, 0.975), (0.53 + lw, 0.975)]]
    s.paint(s.lines(*hems, width=0.006), stitch, opacity=0.7)
    return fit


def _draw_trousers(s: _Sketch, r: random.Random) -> str:
    lw = r.uniform(0.24, 0.3)
    hip = r.uniform(0.36, 0.4)
    shape = s.poly(_legs(lw, 0.33, hip))
    s.body(shape)
    s.seam(s.lines([(0.5 - hip, 0.06), (0.5 + hip, 0.06)], width=0.01), clip=shape)
    s.seam(
        s.lines(
            [(0.5 - hip + 0.12, 0.065), (0.5 - hip, 0.22)], [(0.5 + hip - 0.12, 0.065), (0.5 + hip, 0.22)], width=0.008
        )
    )
    # pressed creases down the middle of each leg
    s.seam(
        s.lines(
            [(0.5 - hip / 2, 0.1), (0.5 - lw / 2 - 0.02, 0.99)],
            [(0.5 + hip / 2, 0.1), (0.5 + lw / 2 + 0.02, 0.99)],
            width=0.006,
        ),
        strength=0.6,
        opacity=0.7,
    )
    s.seam(s.lines([(0.52, 0.07), (0.52, 0.28)], width=0.006), opacity=0.7)
    s.paint(
        s.lines(*[[(u, 0.0), (u, 0.07)] for u in (0.5 - hip + 0.06, 0.35, 0.65, 0.5 + hip - 0.06)], width=0.018),
        _seam(s.base, 0.4),
    )
    s.paint(s.dots([(0.5, 0.03)], 0.012), _seam(s.base, 1.3))
    return ""


def _draw_shorts(s: _Sketch, r: random.Random) -> str:
    hip = r.uniform(0.36, 0.4)
    flare = r.uniform(0.05, 0.09)
    body = [
        (0.5 - hip, 0.0),
        (0.5 + hip, 0.0),
        (0.5 + hip + flare, 0.97),
        (0.53, 1.0),
        (0.5, 0.6),
        (0.47, 1.0),
        (0.5 - hip - flare, 0.97),
    ]
    shape = s.poly(body)
    s.body(shape)
    s.paint(
        s.poly([(0.5 - hip, 0.0), (0.5 + hip, 0.0), (0.5 + hip + 0.01, 0.11), (0.5 - hip - 0.01, 0.11)]),
        None,
        outline=0.9,
        shade=0.2,
    )
    sporty = r.random() < 0.4
    if sporty:
        s.paint(s.lines([(0.48, 0.11), (0.46, 0.3)], [(0.52, 0.11), (0.54, 0.3)], width=0.012), (240, 240, 236))
        s.paint(
            s.lines(
                [(0.5 + hip + 0.015, 0.14), (0.5 + hip + flare - 0.015, 0.95)],
                [(0.5 - hip - 0.015, 0.14), (0.5 - hip - flare + 0.015, 0.95)],
                width=0.03,
            ),
            s.second,
            clip=shape,
        )
    else:
        s.seam(
            s.lines(
                [(0.5 - hip + 0.14, 0.11), (0.5 - hip - 0.005, 0.3)],
                [(0.5 + hip - 0.14, 0.11), (0.5 + hip + 0.005, 0.3)],
                width=0.008,
            )
        )
        s.seam(
            s.lines(
                [(0.5 + hip + flare - 0.01, 0.9), (0.54, 0.92)],
                [(0.5 - hip - flare + 0.01, 0.9), (0.46, 0.92)],
                width=0.008,
            ),
            clip=shape,
        )
    return ""


def _draw_skirt(s: _Sketch, r: random.Random) -> str:
    ww = r.uniform(0.24, 0.3)
    kind = r.choice(["A-line", "flared", "pencil"])
    hw = {"A-line": r.uniform(0.38, 0.43), "flared": r.uniform(0.45, 0.49), "pencil": r.uniform(0.3, 0.33)}[kind]
    hem_v = 0.96 if kind != "pencil" else 0.98
    body = [
        (0.5 - ww, 0.0),
        (0.5 + ww, 0.0),
        (0.5 + ww + 0.01, 0.1),
        (0.5 + hw, hem_v),
        *_curve((0.5 + hw, hem_v), (0.5, 1.03), (0.5 - hw, hem_v)),
        (0.5 - ww - 0.01, 0.1),
    ]
    shape = s.poly(body)
    s.body(shape)
    s.seam(s.lines([(0.5 - ww, 0.1), (0.5 + ww, 0.1)], width=0.012), clip=shape)
    if kind != "pencil" and r.random() < 0.5:
        n = 7
        pleats = [[(0.5 - ww + 2 * ww * i / n, 0.11), (0.5 - hw + 2 * hw * i / n, 0.99)] for i in range(1, n)]
        s.seam(s.lines(*pleats, width=0.008), clip=shape, strength=0.7, opacity=0.7)
    elif kind == "pencil":
        s.seam(s.lines([(0.5, 0.8), (0.5, 1.0)], width=0.008), clip=shape)
    return ""


def _draw_dress(s: _Sketch, r: random.Random) -> str:
    nd = r.uniform(0.06, 0.12)
    waist_v = r.uniform(0.34, 0.4)
    ww = r.uniform(0.17, 0.2)
    hw = r.uniform(0.42, 0.49)
    half = [(0.5, nd), *_curve((0.5, nd), (0.6, nd), (0.61, 0.0), 5), (0.68, 0.0)]
    sleeves = r.random() < 0.4
    if sleeves:
        half += [(0.76, 0.02), (0.86, 0.13), (0.8, 0.18), (0.74, 0.15)]
    else:
        half += _curve((0.68, 0.0), (0.7, 0.1), (0.76, 0.14), 5)
    half += [
        (0.5 + ww + 0.02, 0.26),
        (0.5 + ww, waist_v),
        (0.5 + hw, 0.96),
        *_curve((0.5 + hw, 0.96), (0.75, 1.0), (0.5, 1.0), 6),
    ]
    shape = s.poly(_mirror(half))
    s.body(shape, shade=0.6)
    if r.random() < 0.5:
        s.paint(
            s.poly(
                [
                    (0.5 - ww - 0.01, waist_v - 0.025),
                    (0.5 + ww + 0.01, waist_v - 0.025),
                    (0.5 + ww, waist_v + 0.015),
                    (0.5 - ww, waist_v + 0.015),
                ]
            ),
            _seam(s.base, 0.7),
            outline=0.6,
        )
    else:
        s.seam(s.lines([(0.5 - ww, waist_v), (0.5 + ww, waist_v)], width=0.008), clip=shape)
    folds = [[(0.5 + ww * t, waist_v + 0.03), (0.5 + hw * t * 1.05, 0.98)] for t in (-0.8, -0.3, 0.3, 0.8)]
    s.seam(s.lines(*folds, width=0.01), strength=0.45, opacity=0.6, clip=shape)
    return ""


def _draw_casual_shoe(s: _Sketch, r: random.Random) -> str:
    sole = _sole(s.base)
    loafer = r.random() < 0.3
    sole_top = r.uniform(0.76, 0.8)
    if loafer:
        collar = [(0.44, 0.4), (0.5, 0.36), *_curve((0.56, 0.38), (0.74, 0.44), (0.88, 0.3), 6)]
    else:
        collar = [(0.44, 0.3), (0.5, 0.1), (0.58, 0.12), *_curve((0.6, 0.2), (0.72, 0.34), (0.88, 0.22), 6)]
    upper = [
        (0.03, sole_top + 0.02),
        *_curve((0.03, sole_top + 0.02), (-0.01, 0.52), (0.16, 0.48), 6),
        *collar,
        *_curve(collar[-1], (0.99, collar[-1][1] - 0.02), (0.99, sole_top + 0.02), 6),
    ]
    s.body(s.poly(upper))
    s.paint(s.poly(_rrect(0.0, sole_top, 1.0, 1.0, 0.05, 0.08)), sole, shade=0.3, outline=0.7)
    stripe = _SOLE_WHITE if _lum(s.base) < 170 else (70, 70, 74)
    s.paint(s.lines([(0.02, sole_top + 0.08), (0.98, sole_top + 0.08)], width=0.014), stripe, opacity=0.9)
    if loafer:
        s.seam(s.lines(_curve((0.2, 0.47), (0.3, 0.36), (0.44, 0.4)), width=0.01))
        s.paint(s.lines([(0.3, 0.44), (0.42, 0.42)], width=0.025), _seam(s.base, 0.6), outline=0.5)
        return "Loafers"
    s.paint(
        s.poly(_curve((0.03, sole_top + 0.02), (0.0, 0.55), (0.16, 0.5), 6) + [(0.2, sole_top)]),
        sole,
        opacity=0.9,
        outline=0.5,
    )
    eyelets = [(0.22 + 0.055 * i, 0.47 - 0.04 * i) for i in range(5)]
    s.paint(s.dots(eyelets, 0.01), _seam(s.base, 1.3))
    lace = (240, 240, 236) if _lum(s.base) < 170 else (60, 60, 60)
    s.paint(s.lines(*[[(u - 0.02, v - 0.04), (u + 0.03, v + 0.02)] for u, v in eyelets], width=0.02), lace)
    s.seam(s.lines(_curve((0.64, 0.26), (0.68, 0.5), (0.82, sole_top - 0.01)), width=0.008), opacity=0.7)
    return ""


def _draw_sports_shoe(s: _Sketch, r: random.Random) -> str:
    mid = _sole(s.base)
    top = r.uniform(0.64, 0.7)
    upper = [
        (0.03, top + 0.04),
        *_curve((0.03, top + 0.04), (0.0, 0.46), (0.18, 0.43), 6),
        (0.44, 0.24),
        (0.5, 0.05),
        (0.6, 0.08),
        *_curve((0.62, 0.14), (0.76, 0.22), (0.86, 0.05), 5),
        (0.94, 0.04),
        (0.99, 0.18),
        (0.99, top + 0.04),
    ]
    shape = s.poly(upper)
    s.body(shape)
    midsole = [
        (0.0, top),
        *_curve((0.2, top + 0.02), (0.6, top - 0.04), (1.0, top - 0.05), 6),
        (1.0, 0.93),
        (0.04, 0.94),
    ]
    s.paint(s.poly(midsole), mid, shade=0.3, outline=0.7)
    stripe = _SOLE_WHITE if _lum(s.base) < 170 else (70, 70, 74)
    s.paint(
        s.lines(_curve((0.04, top + 0.1), (0.6, top + 0.04), (0.99, top + 0.04), 8), width=0.014), stripe, opacity=0.9
    )
    outsole = _mix(_SOLE_DARK, s.base, 0.35) if _lum(s.base) < 170 else _seam(s.base, 0.5)
    s.paint(s.poly(_rrect(0.03, 0.91, 0.99, 1.0, 0.03, 0.04)), outsole, outline=0.4)
    s.paint(s.lines(*[[(0.08 + 0.06 * i, 0.96), (0.11 + 0.06 * i, 1.0)] for i in range(15)], width=0.008), (90, 90, 92))
    accent = s.second
    if r.random() < 0.5:
        swoosh = _curve((0.28, 0.62), (0.6, 0.62), (0.92, 0.3), 8) + _curve((0.86, 0.36), (0.5, 0.5), (0.34, 0.56), 8)
        s.paint(s.poly(swoosh), accent, outline=0.5, clip=shape)
    else:
        bars = [[(0.44 + 0.07 * i, 0.62), (0.52 + 0.07 * i, 0.3)] for i in range(3)]
        s.paint(s.lines(*bars, width=0.035), accent, clip=shape)
    lace = (240, 240, 236) if _lum(s.base) < 170 else (50, 50, 52)
    s.paint(
        s.lines(
            *[[(0.26 + 0.05 * i, 0.44 - 0.05 * i), (0.31 + 0.05 * i, 0.48 - 0.05 * i)] for i in range(5)], width=0.02
        ),
        lace,
    )
    s.paint(s.lines([(0.94, 0.04), (0.98, -0.04)], width=0.04), _seam(s.base, 0.6))
    return ""


def _draw_heel(s: _Sketch, r: random.Random) -> str:
    hh = r.uniform(0.06, 0.26)
    block = r.random() < 0.35
    seat = hh + 0.26
    upper = [
        (0.0, 0.93),
        *_curve((0.0, 0.93), (-0.02, 0.74), (0.2, 0.7), 6),
        (0.38, 0.64),
        *_curve((0.38, 0.64), (0.7, 0.62), (0.9, hh), 8),
        (0.97, hh + 0.03),
        (0.97, seat),
        *_curve((0.97, seat), (0.62, seat + 0.1), (0.34, 0.95), 8),
    ]
    heel = [
        (0.84, seat - 0.03),
        (0.97, seat - 0.03),
        (0.925 + (0.02 if block else 0.0), 1.0),
        (0.895 - (0.03 if block else 0.0), 1.0),
    ]
    heel_colour = s.base if r.random() < 0.7 else _seam(s.base, 0.5)
    s.paint(s.poly(heel), heel_colour, shade=0.4, outline=0.8)
    s.body(s.poly(upper))
    lining = _curve((0.4, 0.655), (0.7, 0.63), (0.9, hh + 0.04), 8) + _curve(
        (0.9, hh + 0.1), (0.72, 0.66), (0.45, 0.68), 8
    )
    s.paint(s.poly(lining), _seam(s.base, 0.6), opacity=0.9)
    s.paint(
        s.lines(_curve((0.97, seat), (0.62, seat + 0.11), (0.34, 0.955), 8) + [(0.0, 0.955)], width=0.012), _SOLE_DARK
    )
    if r.random() < 0.3:
        s.paint(s.lines(s.circle(0.88, hh + 0.08, 0.08, 200, 340), width=0.018), s.base, outline=0.6)
        return "Strappy"
    return "Block" if block else ""


def _draw_formal_shoe(s: _Sketch, r: random.Random) -> str:
    throat = r.uniform(0.3, 0.36)
    upper = [
        (0.0, 0.86),
        *_curve((0.0, 0.86), (0.0, 0.58), (0.2, 0.52), 6),
        (0.44, throat + 0.04),
        (0.52, throat - 0.04),
        (0.58, throat - 0.1),
        (0.62, throat - 0.02),
        *_curve((0.62, throat - 0.02), (0.8, throat + 0.06), (0.92, throat - 0.02), 5),
        *_curve((0.92, throat - 0.02), (1.0, throat), (0.99, 0.86), 5),
    ]
    s.body(s.poly(upper), shade=0.7)
    sole = [
        (0.0, 0.84),
        (0.99, 0.84),
        (0.99, 0.9),
        *_curve((0.76, 0.9), (0.68, 0.88), (0.56, 0.96), 5),
        (0.2, 1.0),
        *_curve((0.2, 1.0), (0.03, 0.99), (0.0, 0.9), 4),
    ]
    s.paint(s.poly(sole), _SOLE_DARK, outline=0.3)
    s.paint(s.poly(_rrect(0.77, 0.85, 0.97, 1.0, 0.01, 0.02)), _SOLE_DARK, shade=0.3, outline=0.4)
    s.paint(s.lines([(0.02, 0.86), (0.98, 0.86)], width=0.006, dash=0.01), (150, 150, 150), opacity=0.7)
    s.seam(s.lines(_curve((0.17, 0.85), (0.14, 0.62), (0.25, 0.51)), width=0.009))
    style = ""
    if r.random() < 0.4:
        s.seam(s.lines(_curve((0.155, 0.83), (0.12, 0.62), (0.235, 0.515)), width=0.007, dash=0.008), strength=1.4)
        style = "Brogue"
    s.seam(s.lines(_curve((0.5, throat), (0.56, 0.62), (0.74, 0.85)), width=0.008), opacity=0.8)
    laces = [
        [(0.45 + 0.035 * i, throat + 0.05 - 0.045 * i), (0.5 + 0.035 * i, throat + 0.08 - 0.045 * i)] for i in range(3)
    ]
    s.paint(s.lines(*laces, width=0.014), _seam(s.base, 1.3))
    # polished leather shine
    s.paint(s.poly(_arc(0.13, 0.64, 0.07, 0.06)), (255, 255, 255), opacity=0.35, soft=0.02)
    return style


def _draw_sandal(s: _Sketch, r: random.Random) -> str:
    bed = r.uniform(0.72, 0.76)
    strap_w = r.uniform(0.06, 0.08)
    straps = [
        _curve((0.08, bed + 0.02), (0.18, 0.36), (0.3, bed + 0.02), 12),
        _curve((0.36, bed + 0.02), (0.46, 0.1), (0.64, bed + 0.02), 12),
        [(0.93, bed + 0.02), (0.88, 0.2)],
        _curve((0.88, 0.2), (0.72, 0.22), (0.55, 0.36), 8),
    ]
    s.paint(s.lines(*straps, width=strap_w), None, shade=0.4, outline=0.8)
    s.seam(s.lines(*straps, width=0.006, dash=0.012), opacity=0.8)
    s.paint(s.poly(_rrect(0.7, 0.2, 0.77, 0.29, 0.012)), _GOLD, shade=0.3, outline=0.7)
    footbed = _shade(s.base, 1.12) if _lum(s.base) > 45 else _mix(s.base, (90, 90, 90), 0.3)
    s.paint(s.poly(_rrect(0.0, bed, 1.0, 0.88, 0.05, 0.06)), footbed, shade=0.3, outline=0.6)
    s.paint(s.poly(_rrect(0.01, 0.86, 0.99, 1.0, 0.03, 0.05)), _shade(s.base, 0.6), shade=0.2, outline=0.5)
    s.paint(
        s.lines(*[[(0.05 + 0.045 * i, 0.97), (0.07 + 0.045 * i, 1.0)] for i in range(21)], width=0.006),
        _shade(s.base, 0.4),
    )
    return ""


def _foot(cu: float, inward: float) -> tuple[Pts, Callable[[float], tuple[float, float, float]]]:
    """Top view of a sole: round toe, widest at the ball, narrow arch, round heel. Returns the outline and
    a function t (0 toe .. 1 heel) -> (centre u, half width, v)."""

    def at(t: float) -> tuple[float, float, float]:
        ball, arch, heel = 0.17, 0.115, 0.135
        if t < 0.3:
            w = ball * math.sqrt(max(0.0, 1 - ((0.3 - t) / 0.3) ** 2))
        elif t < 0.62:
            w = arch + (ball - arch) * (1 + math.cos(math.pi * (t - 0.3) / 0.32)) / 2
        elif t < 0.8:
            w = arch + (heel - arch) * (1 - math.cos(math.pi * (t - 0.62) / 0.18)) / 2
        else:
            w = heel * math.sqrt(max(0.0, 1 - ((t - 0.8) / 0.2) ** 2))
        return cu + inward * 0.035 * (1 - t), w, 0.02 + 0.96 * t

    samples = [at(i / 40) for i in range(41)]
    return [(c + w, v) for c, w, v in samples] + [(c - w, v) for c, w, v in reversed(samples)], at


def _draw_flip_flop(s: _Sketch, r: random.Random) -> str:
    strap = _seam(s.base, 0.7)
    for cu, inward in ((0.26, 1.0), (0.74, -1.0)):
        sole, at = _foot(cu, inward)
        s.paint(s.poly([(u, v + 0.015) for u, v in sole]), _shade(s.base, 0.6), outline=0.6)
        s.body(s.poly(sole), shade=0.4, outline=0.7)
        c, _, v = at(0.15)
        post = (c + inward * 0.04, v)
        c, w, v = at(0.5)
        sides = [(c - w * 0.97, v), (c + w * 0.97, v)]
        s.paint(
            s.lines(*[_curve(post, (side[0], post[1] + 0.08), side, 10) for side in sides], width=0.07),
            strap,
            shade=0.3,
            outline=0.9,
        )
        s.paint(s.dots([post], 0.03), _shade(strap, 0.75), outline=0.6)
    return ""


def _draw_handbag(s: _Sketch, r: random.Random) -> str:
    top = r.uniform(0.36, 0.42)
    inset = r.uniform(0.08, 0.14)
    handle = _curve((0.3, top + 0.02), (0.5, top - 0.5), (0.7, top + 0.02), 14)
    s.paint(s.lines(handle, width=0.045), _shade(s.base, 0.75), shade=0.3, outline=0.7)
    body = [
        (inset, top),
        (1 - inset, top),
        (0.97, 0.92),
        *_curve((0.97, 0.92), (0.97, 0.99), (0.9, 0.99), 4),
        (0.1, 0.99),
        *_curve((0.1, 0.99), (0.03, 0.99), (0.03, 0.92), 4),
    ]
    shape = s.poly(body)
    s.body(shape, shade=0.6)
    s.seam(s.lines([(inset + 0.02, top + 0.04), (1 - inset - 0.02, top + 0.04)], width=0.005, dash=0.01), opacity=0.8)
    if r.random() < 0.5:
        flap = [
            (inset, top),
            (1 - inset, top),
            (1 - inset + 0.03, top + 0.2),
            *_curve((1 - inset + 0.03, top + 0.2), (0.5, top + 0.38), (inset - 0.03, top + 0.2), 10),
        ]
        s.paint(s.poly(flap), None, shade=0.3, outline=0.9)
        s.paint(s.poly(_rrect(0.46, top + 0.22, 0.54, top + 0.3, 0.01)), _GOLD, shade=0.3, outline=0.6)
    else:
        s.paint(s.lines([(inset + 0.04, top + 0.08), (1 - inset - 0.04, top + 0.08)], width=0.008), _SILVER)
        s.paint(s.poly(_rrect(0.66, top + 0.09, 0.69, top + 0.2, 0.01)), _SILVER, outline=0.6)
    s.paint(s.lines(handle, width=0.045), s.base, shade=0.3, outline=0.7)
    for u in (0.3, 0.7):
        s.paint(s.poly(_rrect(u - 0.025, top - 0.02, u + 0.025, top + 0.05, 0.01)), _GOLD, outline=0.6)
    return ""


def _draw_backpack(s: _Sketch, r: random.Random) -> str:
    strap = _shade(s.base, 0.7) if _lum(s.base) > 50 else _mix(s.base, (90, 90, 90), 0.3)
    for side in (False, True):
        pts = _curve((0.12, 0.14), (-0.06, 0.5), (0.1, 0.9), 10) + _curve((0.16, 0.86), (0.05, 0.5), (0.18, 0.2), 10)
        s.paint(s.poly(_flip(pts) if side else pts), strap, shade=0.4, outline=0.8)
    s.paint(s.lines(_curve((0.4, 0.08), (0.5, -0.12), (0.6, 0.08), 10), width=0.03), strap, outline=0.7)
    body = _arc(0.5, 0.4, 0.4, 0.34, 180, 360, 20) + [
        (0.9, 0.94),
        *_curve((0.9, 0.94), (0.9, 1.0), (0.82, 1.0), 4),
        (0.18, 1.0),
        *_curve((0.18, 1.0), (0.1, 1.0), (0.1, 0.94), 4),
    ]
    shape = s.poly(body)
    s.body(shape, shade=0.6)
    s.seam(s.lines(_arc(0.5, 0.42, 0.33, 0.29, 190, 350, 16), width=0.012))
    s.paint(s.poly(_rrect(0.2, 0.55, 0.8, 0.92, 0.08, 0.06)), None, shade=0.4, outline=1.0)
    s.seam(s.lines([(0.24, 0.6), (0.76, 0.6)], width=0.012))
    s.paint(s.poly(_rrect(0.66, 0.6, 0.7, 0.7, 0.01)), _SILVER, outline=0.6)
    s.paint(s.poly(_rrect(0.42, 0.34, 0.58, 0.42, 0.015)), s.second, outline=0.5)
    return ""


def _draw_watch(s: _Sketch, r: random.Random) -> str:
    sw = r.uniform(0.26, 0.31)
    strap = s.base
    s.paint(
        s.poly([(0.5 - sw, 0.0), (0.5 + sw, 0.0), (0.5 + sw + 0.02, 0.4), (0.5 - sw - 0.02, 0.4)]),
        strap,
        shade=0.5,
        outline=0.8,
    )
    s.paint(s.poly(_rrect(0.5 - sw, 0.6, 0.5 + sw, 1.0, sw * 0.9, 0.06)), strap, shade=0.5, outline=0.8)
    s.paint(s.dots([(0.5, 0.76 + 0.045 * i) for i in range(4)], 0.018), _seam(strap, 1.4))
    case = _SILVER if r.random() < 0.5 else (_GOLD if r.random() < 0.5 else _seam(s.base, 0.6))
    s.paint(s.poly(_rrect(0.9, 0.47, 1.0, 0.53, 0.02)), case, outline=0.6)
    radius = r.uniform(0.44, 0.48)
    s.paint(s.poly(s.circle(0.5, 0.5, radius)), case, shade=0.6, outline=0.8)
    dial = s.base
    s.paint(s.poly(s.circle(0.5, 0.5, radius * 0.84)), dial, shade=0.4, light=0.25)
    mark = (238, 238, 232) if _lum(dial) < 150 else (30, 30, 32)
    ticks = []
    for i in range(12):
        a = math.radians(30 * i)
        ro, ri = radius * 0.76, radius * (0.62 if i % 3 == 0 else 0.68)
        ticks.append([_dial_pt(0.5, 0.5, ro, a, s), _dial_pt(0.5, 0.5, ri, a, s)])
    s.paint(s.lines(*ticks, width=0.012), mark)
    h, m = math.radians(r.uniform(0, 360)), math.radians(r.uniform(0, 360))
    s.paint(s.lines([(0.5, 0.5), _dial_pt(0.5, 0.5, radius * 0.38, h, s)], width=0.022), mark)
    s.paint(s.lines([(0.5, 0.5), _dial_pt(0.5, 0.5, radius * 0.6, m, s)], width=0.014), mark)
    s.paint(s.dots([(0.5, 0.5)], 0.014), case)
    return ""


def _dial_pt(cu: float, cv: float, r: float, a: float, s: _Sketch) -> tuple[float, float]:
    """The point at angle ``a`` (radians, 0 = 12 o'clock, clockwise) on a circle of radius ``r`` box widths."""
    return (cu + r * math.sin(a), cv - r * math.cos(a) * s.bw / s.bh)


def _draw_cap(s: _Sketch, r: random.Random) -> str:
    base_v = r.uniform(0.76, 0.8)
    brim_out = r.uniform(0.95, 1.0)
    brim = [
        (0.6, base_v - 0.06),
        (0.8, base_v - 0.04),
        *_curve((0.8, base_v - 0.04), (brim_out, base_v), (brim_out, base_v + 0.1), 6),
        *_curve((brim_out, base_v + 0.1), (0.8, base_v + 0.14), (0.6, base_v + 0.06), 6),
    ]
    crown = _arc(0.39, base_v, 0.37, base_v - 0.06, 180, 360, 30)
    shape = s.poly(crown)
    s.body(shape, shade=0.6)
    s.paint(s.poly(brim), None, shade=0.5, outline=0.9)
    s.paint(s.poly(brim[-7:] + [(0.6, base_v - 0.02)]), _shade(s.base, 0.7), opacity=0.5)
    seams = [_curve((0.39, 0.06), (0.24, 0.2), (0.18, base_v)), _curve((0.39, 0.06), (0.5, 0.25), (0.56, base_v))]
    s.seam(s.lines(*seams, width=0.008), opacity=0.8)
    s.seam(s.lines([(0.02, base_v - 0.03), (0.76, base_v - 0.03)], width=0.008), clip=shape)
    s.paint(s.poly(_arc(0.39, 0.06, 0.035, 0.04)), _shade(s.base, 0.8), outline=0.8)
    s.paint(s.dots([(0.27, 0.32), (0.5, 0.32)], 0.012), _seam(s.base, 1.2))
    if r.random() < 0.35:
        s.paint(s.poly(_rrect(0.42, 0.42, 0.6, 0.58, 0.02)), s.second, outline=0.6)
    return ""


def _lens(style: str, cu: float, mirror: bool) -> Pts:
    pts = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        x, y = math.cos(t), math.sin(t)
        if style == "wayfarer":
            x = math.copysign(abs(x) ** 0.55, x)
            y = max(math.copysign(abs(y) ** 0.6, y), -0.85)
            x *= 1 - 0.12 * (y + 1) / 2
        elif style == "aviator":
            y = y * 1.1 if y > 0 else y * 0.85
            x *= 1 - 0.25 * max(y, 0) * (1 if x < 0 else 0.3)
        x = -x if mirror else x
        pts.append((cu + 0.2 * x, 0.55 + 0.36 * y * (0.9 if style == "round" else 1)))
    return pts


def _draw_sunglasses(s: _Sketch, r: random.Random) -> str:
    style = r.choice(["wayfarer", "aviator", "round"])
    frame = s.base
    lens_colour = _mix(s.base, (30, 30, 34), 0.15)
    width = {"wayfarer": 0.05, "aviator": 0.022, "round": 0.035}[style]
    for cu, mirror in ((0.26, False), (0.74, True)):
        lens = _lens(style, cu, mirror)
        s.paint(s.lines(lens + lens[:1], width=width * 2), frame, shade=0.3, outline=0.8)
        s.paint(s.poly(lens), lens_colour, shade=0.8, light=0.2)
    s.paint(s.lines(_curve((0.44, 0.32), (0.5, 0.22), (0.56, 0.32)), width=width * 1.2), frame, outline=0.6)
    if style == "aviator":
        s.paint(s.lines([(0.14, 0.25), (0.86, 0.25)], width=0.022), frame, outline=0.5)
    s.paint(s.lines([(0.065, 0.36), (0.0, 0.3)], [(0.935, 0.36), (1.0, 0.3)], width=width * 1.4), frame, outline=0.6)
    return {"wayfarer": "Wayfarer", "aviator": "Aviator", "round": "Round"}[style]


def _draw_belt(s: _Sketch, r: random.Random) -> str:
    a = s.px(0.1, 0.9)
    b = s.px(0.84, 0.14)
    length = math.hypot(b[0] - a[0], b[1] - a[1])
    ax, ay = (b[0] - a[0]) / length, (b[1] - a[1]) / length
    nx, ny = -ay, ax
    w = r.uniform(0.07, 0.085) * s.k

    def at(t: float, o: float) -> tuple[float, float]:
        return (a[0] + ax * t * length + nx * o * w, a[1] + ay * t * length + ny * o * w)

    def mask(*shapes: list[tuple[float, float]], width: int = 0) -> Image.Image:
        m, d = s._blank()
        for pts in shapes:
            if width:
                d.line(pts + pts[:1], fill=255, width=width, joint="curve")
            else:
                d.polygon(pts, fill=255)
        return m

    strap = [at(0.04, -1), at(0.96, -1), at(0.96, 1), at(0.04, 1), at(0.0, 0)]
    s.paint(mask(strap), s.base, shade=0.6, outline=0.8)
    stitch = _seam(s.base, 1.1)
    sm, sd = s._blank()
    for o in (-0.72, 0.72):
        _dashed(sd, [at(0.05, o), at(0.88, o)], max(1, round(w * 0.06)), w * 0.25)
    s.paint(sm, stitch, opacity=0.8)
    hm, hd = s._blank()
    for i in range(5):
        x, y = at(0.12 + 0.045 * i, 0)
        rp = w * 0.12
        hd.ellipse((x - rp, y - rp, x + rp, y + rp), fill=255)
    s.paint(hm, _shade(s.base, 0.3) if _lum(s.base) > 60 else (10, 10, 10))
    metal = _SILVER if r.random() < 0.6 else _GOLD
    frame = [at(0.84, -1.5), at(0.98, -1.5), at(0.98, 1.5), at(0.84, 1.5)]
    s.paint(mask(frame, width=max(2, round(w * 0.22))), metal, shade=0.4, outline=0.7)
    s.paint(mask([at(0.84, -0.1), at(0.93, -0.1), at(0.93, 0.1), at(0.84, 0.1)]), metal, outline=0.6)
    s.paint(mask([at(0.78, -1.15), at(0.81, -1.15), at(0.81, 1.15), at(0.78, 1.15)]), _seam(s.base, 0.5), outline=0.7)
    return ""


# --------------------------------------------------------------------------- article types


@dataclass(frozen=True)
class Article:
    name: str
    master: str
    sub: str
    noun: str
    weight: float
    aspect: tuple[float, float]
    draw: Callable[[_Sketch, random.Random], str]
    genders: dict[str, float]
    colours: dict[str, float]
    seasons: dict[str, float]
    usages: dict[str, float]
    patterns: dict[str, float] = field(default_factory=lambda: {"Solid": 1.0})
    size: float = 1.0
    tilt: float = 3.0


_ALL_SEASONS = {"Summer": 4, "Fall": 3, "Winter": 2, "Spring": 2}
_WARM = {"Summer": 6, "Spring": 2, "Fall": 1}
_COLD = {"Winter": 6, "Fall": 4, "Spring": 1}
_MEN = {"Men": 1.0}
_WOMEN = {"Women": 1.0}

# fmt: off
ARTICLES: tuple[Article, ...] = (
    Article("Tshirts", "Apparel", "Topwear", "T-shirt", weight=12, aspect=(0.92, 1.0), draw=_draw_tshirt,
             genders={"Men": 45, "Women": 25, "Boys": 10, "Girls": 6, "Unisex": 8}, colours=_APPAREL_COLOURS,
             seasons={"Summer": 6, "Fall": 2, "Spring": 2, "Winter": 1}, usages={"Casual": 8, "Sports": 2},
             patterns={"Solid": 5, "Striped": 3, "Printed": 1.5, "Polka Dot": 0.5}),
    Article("Shirts", "Apparel", "Topwear", "Shirt", weight=8, aspect=(0.78, 0.86), draw=_draw_shirt,
             genders={"Men": 70, "Women": 20, "Boys": 10}, colours=_APPAREL_COLOURS, seasons=_ALL_SEASONS,
             usages={"Casual": 6, "Formal": 4}, patterns={"Solid": 4, "Checked": 3.5, "Striped": 2.5}),
    Article("Tops", "Apparel", "Topwear", "Top", weight=6, aspect=(0.82, 0.9), draw=_draw_top,
             genders={"Women": 85, "Girls": 15}, colours=_WOMEN_COLOURS, seasons=_WARM,
             usages={"Casual": 8, "Party": 2}, patterns={"Solid": 5, "Printed": 2, "Striped": 1.5, "Polka Dot": 1.5}),
    Article("Sweatshirts", "Apparel", "Topwear", "Sweatshirt", weight=4, aspect=(0.84, 0.9), draw=_draw_sweatshirt,
             genders={"Men": 50, "Women": 30, "Unisex": 10, "Boys": 10}, colours=_APPAREL_COLOURS, seasons=_COLD,
             usages={"Casual": 8, "Sports": 2}, patterns={"Solid": 7.5, "Striped": 1.5, "Printed": 1}),
    Article("Jackets", "Apparel", "Topwear", "Jacket", weight=4, aspect=(0.82, 0.88), draw=_draw_jacket,
             genders={"Men": 60, "Women": 35, "Boys": 5}, colours=_APPAREL_COLOURS, seasons=_COLD,
             usages={"Casual": 8, "Sports": 2}, patterns={"Solid": 9, "Checked": 1}),
    Article("Jeans", "Apparel", "Bottomwear", "Jeans", weight=5, aspect=(0.44, 0.5), draw=_draw_jeans,
             genders={"Men": 60, "Women": 35, "Boys": 5}, colours=_JEANS_COLOURS, seasons=_ALL_SEASONS,
             usages={"Casual": 1}),
    Article("Trousers", "Apparel", "Bottomwear", "Trousers", weight=4, aspect=(0.42, 0.48), draw=_draw_trousers,
             genders={"Men": 60, "Women": 40}, colours=_BOTTOM_COLOURS, seasons=_ALL_SEASONS,
             usages={"Formal": 5, "Casual": 5}, patterns={"Solid": 9, "Checked": 1}),
    Article("Shorts", "Apparel", "Bottomwear", "Shorts", weight=4, aspect=(0.9, 1.0), draw=_draw_shorts, size=0.8,
             genders={"Men": 50, "Women": 20, "Boys": 15, "Girls": 15}, colours=_APPAREL_COLOURS, seasons=_WARM,
             usages={"Casual": 6, "Sports": 4}, patterns={"Solid": 6, "Checked": 2, "Striped": 1, "Printed": 1}),
    Article("Skirts", "Apparel", "Bottomwear", "Skirt", weight=3, aspect=(0.75, 0.88), draw=_draw_skirt, size=0.85,
             genders=_WOMEN, colours=_WOMEN_COLOURS, seasons=_WARM, usages={"Casual": 7, "Party": 3},
             patterns={"Solid": 4.5, "Printed": 2, "Checked": 1.5, "Polka Dot": 1, "Striped": 1}),
    Article("Dresses", "Apparel", "Dress", "Dress", weight=5, aspect=(0.52, 0.6), draw=_draw_dress,
             genders=_WOMEN, colours=_WOMEN_COLOURS, seasons=_WARM, usages={"Casual": 5, "Party": 4, "Ethnic": 1},
             patterns={"Solid": 4, "Printed": 3, "Polka Dot": 1.5, "Striped": 1, "Checked": 0.5}),
    Article("Casual Shoes", "Footwear", "Shoes", "Casual Shoes", weight=8, aspect=(2.2, 2.45),
             draw=_draw_casual_shoe, tilt=2, genders={"Men": 60, "Women": 30, "Unisex": 10}, colours=_SHOE_COLOURS,
             seasons=_ALL_SEASONS, usages={"Casual": 1}),
    Article("Sports Shoes", "Footwear", "Shoes", "Sports Shoes", weight=7, aspect=(2.2, 2.4),
             draw=_draw_sports_shoe, tilt=2, genders={"Men": 60, "Women": 30, "Unisex": 10}, colours=_SHOE_COLOURS,
             seasons=_ALL_SEASONS, usages={"Sports": 1}),
    Article("Heels", "Footwear", "Shoes", "Heels", weight=4, aspect=(1.3, 1.45), draw=_draw_heel, size=0.85, tilt=2,
             genders=_WOMEN, colours=_HEEL_COLOURS, seasons=_ALL_SEASONS,
             usages={"Casual": 5, "Party": 3, "Formal": 2}),
    Article("Formal Shoes", "Footwear", "Shoes", "Formal Shoes", weight=4, aspect=(2.1, 2.35),
             draw=_draw_formal_shoe, tilt=2, genders={"Men": 90, "Women": 10}, colours=_FORMAL_SHOE_COLOURS,
             seasons=_ALL_SEASONS, usages={"Formal": 1}),
    Article("Sandals", "Footwear", "Sandal", "Sandals", weight=3, aspect=(2.2, 2.4), draw=_draw_sandal, tilt=2,
             genders={"Men": 50, "Women": 40, "Boys": 10}, colours=_SANDAL_COLOURS, seasons=_WARM,
             usages={"Casual": 9, "Ethnic": 1}),
    # The real dataset files Flip Flops under their own subCategory, not under Sandal.
    Article("Flip Flops", "Footwear", "Flip Flops", "Flip Flops", weight=3, aspect=(0.82, 0.92),
             draw=_draw_flip_flop, size=0.85, genders={"Men": 50, "Women": 40, "Unisex": 10}, colours=_FLIP_COLOURS,
             seasons=_WARM, usages={"Casual": 1}),
    Article("Handbags", "Accessories", "Bags", "Handbag", weight=5, aspect=(1.05, 1.2), draw=_draw_handbag, size=0.9,
             genders=_WOMEN, colours=_BAG_COLOURS, seasons=_ALL_SEASONS, usages={"Casual": 8, "Party": 2},
             patterns={"Solid": 8, "Printed": 1, "Checked": 1}),
    Article("Backpacks", "Accessories", "Bags", "Backpack", weight=3, aspect=(0.72, 0.8), draw=_draw_backpack,
             size=0.9, genders={"Unisex": 60, "Men": 30, "Women": 10}, colours=_BACKPACK_COLOURS,
             seasons=_ALL_SEASONS, usages={"Casual": 7, "Sports": 3},
             patterns={"Solid": 8, "Checked": 1, "Printed": 1}),
    Article("Watches", "Accessories", "Watches", "Watch", weight=6, aspect=(0.42, 0.5), draw=_draw_watch, size=0.85,
             genders={"Men": 60, "Women": 35, "Unisex": 5}, colours=_WATCH_COLOURS, seasons=_ALL_SEASONS,
             usages={"Casual": 8, "Formal": 2}),
    Article("Caps", "Accessories", "Headwear", "Cap", weight=2, aspect=(1.25, 1.4), draw=_draw_cap, size=0.85,
             genders={"Men": 50, "Unisex": 50}, colours=_CAP_COLOURS, seasons=_WARM, usages={"Casual": 6, "Sports": 4},
             patterns={"Solid": 8, "Checked": 1, "Striped": 1}),
    Article("Sunglasses", "Accessories", "Eyewear", "Sunglasses", weight=4, aspect=(2.4, 2.7),
             draw=_draw_sunglasses, tilt=2, genders={"Men": 50, "Women": 40, "Unisex": 10}, colours=_SHADES_COLOURS,
             seasons=_WARM, usages={"Casual": 1}),
    Article("Belts", "Accessories", "Belts", "Belt", weight=3, aspect=(0.95, 1.05), draw=_draw_belt, size=0.95,
             genders={"Men": 80, "Women": 20}, colours=_BELT_COLOURS, seasons=_ALL_SEASONS,
             usages={"Casual": 5, "Formal": 5}),
)
# fmt: on


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class DemoCatalog:
    """What ``demo_catalog_write`` produced: the directory holding styles.csv and images/."""

    directory: Path
    count: int
    article_types: dict[str, int]


@dataclass(frozen=True)
class _Row:
    id: int
    gender: str
    article: Article
    colour: str
    season: str
    year: int
    usage: str
    name: str

    def line(self) -> str:
        a = self.article
        fields = (self.id, self.gender, a.master, a.sub, a.name, self.colour, self.season, self.year, self.usage)
        return ",".join(map(str, fields)) + "," + self.name


def _allocate(count: int) -> list[Article]:
    """Article types in proportion to their weights (largest remainder), every type present once count allows."""
    total = sum(a.weight for a in ARTICLES)
    floor_each = 1 if count >= len(ARTICLES) else 0
    spare = count - floor_each * len(ARTICLES)
    quotas = [spare * a.weight / total for a in ARTICLES]
    counts = [floor_each + int(q) for q in quotas]
    order = sorted(range(len(ARTICLES)), key=lambda i: (-(quotas[i] - int(quotas[i])), i))
    for i in order[: count - sum(counts)]:
        counts[i] += 1
    return [a for a, n in zip(ARTICLES, counts, strict=True) for _ in range(n)]


def _secondary(r: random.Random, base: RGB) -> RGB:
    """A contrasting colour for stripes, checks, dots and accents (light on dark products, and the reverse)."""
    if _lum(base) < 120:
        options = {"White": 5, "Yellow": 1, "Red": 1, "Beige": 1, "Pink": 1, "Orange": 1}
    else:
        options = {"Navy Blue": 3, "Black": 3, "Red": 1.5, "Blue": 1.5, "Maroon": 1, "White": 1}
    options = {k: v for k, v in options.items() if _dist(PALETTE[k], base) > 120} or {"Black": 1.0}
    return PALETTE[_weighted(r, options)]


def _jitter(r: random.Random, rgb: RGB) -> RGB:
    f = r.uniform(0.94, 1.06)
    return tuple(_clamp(c * f + r.uniform(-3, 3)) for c in rgb)  # type: ignore[return-value]


# The near-white backgrounds a photo is drawn on (the lab's drawn real rows use the first four).
BACKGROUNDS: tuple[RGB, ...] = ((255, 255, 255), (253, 253, 253), (251, 251, 250), (250, 251, 252), (252, 251, 249))


def product_render(
    article: Article,
    base_rgb: RGB,
    pattern_kind: str,
    r: random.Random,
    noise: Image.Image,
    *,
    backgrounds: Sequence[RGB] = BACKGROUNDS,
) -> tuple[Image.Image, str]:
    """Draw one product photo of ``article`` in ``base_rgb`` with a pattern (Solid, Striped, Checked, Polka Dot,
    Printed) over a crop of the film grain ``noise``; returns it with the drawer's style word. The demo
    catalog's photos and the lab's drawn real rows (``lab.shopper``) alike."""
    width = r.randrange(456, 506, 2)
    height = round(width * 4 / 3) + r.randrange(-12, 14, 2)
    bg: RGB = r.choice(backgrounds)
    aspect = r.uniform(*article.aspect)
    scale = r.uniform(0.8, 1.0) * article.size
    bh = min(height * 0.86, width * 0.86 / aspect) * scale
    bw = bh * aspect
    angle = math.radians(r.uniform(-article.tilt, article.tilt))
    cx = width / 2 + r.uniform(-0.5, 0.5) * max(0.0, width - bw * 1.08) / 2
    cy = height / 2 + r.uniform(-0.5, 0.5) * max(0.0, height - bh * 1.08) / 2
    base = _jitter(r, base_rgb)
    second = _jitter(r, _secondary(r, base_rgb))
    k = math.sqrt(bw * bh)
    vertical = article.name in {"Shirts", "Trousers", "Skirts"}
    pattern = _pattern_mask(
        pattern_kind,
        size=(width, height),
        period=k * r.uniform(0.06, 0.1),
        angle=angle + (0.0 if vertical else math.pi / 2),
        phase=r.uniform(0, 100),
        r=r,
        k=k,
    )
    sketch = _Sketch(
        width=width, height=height, bg=bg, box=(cx, cy, bw, bh), angle=angle, base=base, second=second, pattern=pattern
    )
    style = article.draw(sketch, r)
    ox, oy = r.randrange(0, noise.width - width), r.randrange(0, noise.height - height)
    return sketch.image(noise.crop((ox, oy, ox + width, oy + height))), style


def _display_name(r: random.Random, article: Article, gender: str, colour: str, pattern: str, style: str) -> str:
    if gender in {"Boys", "Girls"}:
        brand = r.choice(_KIDS_BRANDS)
    else:
        brand = r.choice(
            {"Apparel": _APPAREL_BRANDS, "Footwear": _FOOTWEAR_BRANDS}.get(article.master, _ACCESSORY_BRANDS)
        )
    words = [brand, gender, colour, PATTERN_WORDS[pattern], style, article.noun]
    if style == "Loafers":  # the style word is the noun itself
        words[-1] = ""
    return " ".join(w for w in words if w)


def demo_catalog_write(*, out_dir: Path, count: int = 400, seed: int = 7) -> DemoCatalog:
    """Write ``count`` drawn products as ``out_dir/styles.csv`` + ``out_dir/images/<id>.jpg`` (Fashion Product Images
    layout, unquoted CSV). Deterministic: the same seed gives byte-identical files. Existing files of the same names are
    overwritten; nothing else in ``out_dir`` is touched."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if count > 50_000:
        raise ValueError("count must be at most 50000 (ids are 4-5 digit numbers)")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    master = random.Random(seed)
    grain = np.random.default_rng(seed).normal(128.0, 2.0, (800, 640, 3))
    noise = Image.fromarray(np.clip(np.rint(grain), 0, 255).astype(np.uint8), "RGB")
    ids = master.sample(range(1500, 60000), count)
    articles = _allocate(count)
    master.shuffle(articles)
    n_commas = round(count * 0.03) or (1 if count >= 10 else 0)
    comma_rows = set(master.sample(range(count), n_commas))
    rows: list[_Row] = []
    for i, (pid, article) in enumerate(zip(ids, articles, strict=True)):
        r = random.Random(master.getrandbits(64))
        gender = _weighted(r, article.genders)
        colour = _weighted(r, article.colours)
        pattern = _weighted(r, article.patterns)
        image, style = product_render(article, PALETTE[colour], pattern, r, noise)
        image.save(images / f"{pid}.jpg", format="JPEG", quality=90)
        name = _display_name(r, article, gender, colour, pattern, style)
        if i in comma_rows:
            name += r.choice(_COMMA_TAILS.get(article.name) or _COMMA_TAILS[article.master])
        rows.append(
            _Row(
                id=pid,
                gender=gender,
                article=article,
                colour=colour,
                season=_weighted(r, article.seasons),
                year=_weighted(r, _YEARS),
                usage=_weighted(r, article.usages),
                name=name,
            )
        )
    # Written by hand, unquoted, because the real styles.csv is: commas inside names are left bare.
    text = "\n".join([STYLES_HEADER, *(row.line() for row in rows)]) + "\n"
    (out_dir / "styles.csv").write_text(text, encoding="utf-8", newline="\n")
    by_type = {a.name: sum(row.article is a for row in rows) for a in ARTICLES}
    by_type = {name: n for name, n in by_type.items() if n}
    logger.info("demo catalog: %d products in %s (%.1fs)", count, out_dir, time.perf_counter() - started)
    return DemoCatalog(directory=out_dir, count=count, article_types=by_type)
