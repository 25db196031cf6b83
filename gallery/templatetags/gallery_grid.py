"""Markup a page repeats many times, rendered in one call each rather than node by node.

``{{ items|grid_tiles }}``: the grid's tiles, each ``templates/gallery/_tile.html``.
``{{ menu.options|filter_options }}``: a filter menu's options (about 120 across the menus of a page).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from decimal import ROUND_HALF_UP, Decimal

from django import template
from django.template.loader import get_template
from django.utils.formats import get_format
from django.utils.html import conditional_escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

_TILE_FIELDS = ("url", "name", "thumbnail", "score2", "score3", "score4", "view_url")
_MARKED = re.compile("\x00(\\w+)\x00")


@functools.cache
def _tile_parts(*, thumbnail: bool, score: bool, view: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``_tile.html`` for one shape of tile, rendered once with a marker in place of each value: its literal
    parts, and the names of the values between them (one more literal than values)."""
    marked = {name: f"\x00{name}\x00" for name in _TILE_FIELDS}
    context = {
        **marked,
        "thumbnail": marked["thumbnail"] if thumbnail else "",
        "view_url": marked["view_url"] if view else "",
        "score": 0.0 if score else None,
    }
    parts = _MARKED.split(get_template("gallery/_tile.html").render(context))
    return tuple(parts[0::2]), tuple(parts[1::2])


def _score_format(separator: str) -> Callable[[float, int], str]:
    """``floatformat(score, places)`` for a similarity score (|score| <= 1, so never grouped), with the decimal
    ``separator`` looked up once per grid: the filter's per-call locale look-ups cost more than the rest of a
    tile. The same rounding: the score's shortest decimal form, halves away from zero, no "-0"."""

    def formatted(score: float, places: int) -> str:
        rounded = Decimal(repr(float(score))).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
        text = f"{abs(rounded):.{places}f}".replace(".", separator)
        return f"-{text}" if rounded.is_signed() and rounded else text

    return formatted


def grid_tiles_html(items: Iterable[object]) -> SafeString:
    """The grid's tiles: ``templates/gallery/_tile.html`` per item, between the loop's line breaks.

    ``items`` are grid items (``product``: a card, ``score``, ``url``, ``view_url``: the "view product"
    link). The template is rendered once per shape of tile (with or without a thumbnail, a score, a "view
    product" link) and each tile fills its values in, escaped as autoescape does and the scores through the
    same rounding as ``floatformat``: the markup is exactly the template's (tests/test_click_path.py renders both),
    without a template node per value and tile (a grid of 25 cost a few milliseconds that way).
    """
    out: list[str] = []
    score_text = _score_format(get_format("DECIMAL_SEPARATOR"))
    for item in items:
        product, score = item.product, item.score
        thumbnail, view_url = product.thumbnail_url, getattr(item, "view_url", None)
        values = {
            "url": conditional_escape(item.url),
            "name": conditional_escape(product.name),
            "thumbnail": conditional_escape(thumbnail) if thumbnail else "",
            "view_url": conditional_escape(view_url) if view_url else "",
        }
        if score is not None:
            values |= {"score2": score_text(score, 2), "score3": score_text(score, 3), "score4": score_text(score, 4)}
        literals, names = _tile_parts(thumbnail=bool(thumbnail), score=score is not None, view=bool(view_url))
        out.append("\n  ")
        out.append(literals[0])
        for name, literal in zip(names, literals[1:], strict=True):
            out.append(values[name])
            out.append(literal)
        out.append("\n  ")
    return mark_safe("".join(out))  # noqa: S308 - the template's own markup, every value escaped or a formatted number


@register.filter(is_safe=True)
def grid_tiles(items: list) -> SafeString:
    return grid_tiles_html(items)


@register.filter(is_safe=True)
def filter_options(options: list[tuple[str, bool]]) -> SafeString:
    """``<option>`` per (value, selected), the value escaped as autoescape does, the shopper's choice selected."""
    parts = []
    for value, selected in options:
        value = conditional_escape(value)
        parts.append(f'<option value="{value}"{" selected" if selected else ""}>{value}</option>')
    return mark_safe("".join(parts))  # noqa: S308 - every value is escaped
