"""The grid's tiles as one filter: ``{{ items|grid_tiles }}`` (see ``gallery.cards.grid_tiles_html``)."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from gallery.cards import grid_tiles_html

register = template.Library()


@register.filter(is_safe=True)
def grid_tiles(items: list) -> SafeString:
    return grid_tiles_html(items)
