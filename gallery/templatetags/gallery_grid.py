"""Markup a page repeats many times, rendered in one call each rather than node by node.

``{{ items|grid_tiles }}``: the grid's tiles (see ``gallery.cards.grid_tiles_html``).
``{{ menu.options|filter_options }}``: a filter menu's options (about 120 across the menus of a page).
"""

from __future__ import annotations

from django import template
from django.utils.html import conditional_escape
from django.utils.safestring import SafeString, mark_safe

from gallery.cards import grid_tiles_html

register = template.Library()


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
