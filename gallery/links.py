"""The shop's links and URLs, worked out fast: a page holds tens of them and an API answer up to API_MAX_K x 3.

Each gives exactly what Django's own helper gives (``reverse``, ``request.build_absolute_uri``,
``default_storage.url``; tests compare them), without its cost per link: the parts that do not depend on the
product are worked out once (per URL configuration, per response, per storage).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.core.files.storage import FileSystemStorage, storages
from django.http import HttpRequest
from django.urls import get_script_prefix, get_urlconf, reverse

from gallery.trail import Trail


def query_string(**params: object) -> str:
    return urlencode({key: value for key, value in params.items() if value not in ("", None)})


_ID_MARK = 918273645  # stands for the product id in the page path worked out once per URL configuration


@functools.lru_cache(maxsize=16)
def _similar_path_parts(script_prefix: str, urlconf: object) -> tuple[str, str] | None:
    head, mark, tail = reverse("gallery:similar", args=[_ID_MARK], urlconf=urlconf).rpartition(str(_ID_MARK))
    return (head, tail) if mark else None


def similar_path(product_id: int) -> str:
    """``reverse("gallery:similar", args=[product_id])``, without resolving the pattern per link.

    A page holds a grid of links and each trail step's controls: tens of them per response. The path is
    worked out once per script prefix and URL configuration, the id put in its place.
    """
    parts = _similar_path_parts(get_script_prefix(), get_urlconf() or settings.ROOT_URLCONF)
    return f"{parts[0]}{int(product_id)}{parts[1]}" if parts else reverse("gallery:similar", args=[product_id])


def similar_url(product_id: int, trail: Trail, params: dict[str, str]) -> str:
    """The page for ``trail`` anchored at ``product_id``; a one-step trail is just the path."""
    query = query_string(trail=str(trail) if str(trail) != str(product_id) else "", **params)
    base = similar_path(product_id)
    return f"{base}?{query}" if query else base


def view_path(product_id: int, *, position: int | None = None, grid: str = "") -> str:
    """The card's "view product" link: through the gallery (a conversion is noted), on to the shop's page."""
    query = query_string(at=position, g=grid)
    return f"{get_script_prefix()}p/{int(product_id)}/go" + (f"?{query}" if query else "")


def with_param(url: str, name: str, value: object) -> str:
    return f"{url}{'&' if '?' in url else '?'}{name}={value}"


def trail_url(trail: Trail, anchor_id: int, params: dict[str, str]) -> str:
    """Where an edited trail leads: the same anchor while it is still liked, else the newest liked step."""
    liked = [step.product_id for step in trail.steps if not step.disliked]
    if anchor_id in liked:
        return similar_url(anchor_id, trail, params)
    if trail.anchor is not None:
        return similar_url(trail.anchor.product_id, trail, params)
    query = query_string(**params)
    return reverse("gallery:home") + (f"?{query}" if query else "")


# A path made only of these, starting with one "/" and without "." or ".." segments, is what
# request.build_absolute_uri appends to the request's scheme and host unchanged (no join, no quoting).
_PLAIN_PATH = re.compile(r"/(?!/)[A-Za-z0-9_.~/-]*")


class JsonUrls:
    """Absolute URLs for one API response: the request's origin and the product page's URL worked out once.

    Gives exactly what ``request.build_absolute_uri`` (and ``reverse`` for the page) give, without
    their cost per URL: an API grid holds up to API_MAX_K products, each with three URLs.
    """

    def __init__(self, request: HttpRequest) -> None:
        self._request = request
        self._origin = request.build_absolute_uri("/")[:-1]
        # The two per-product paths with a mark for the id, worked out once per response.
        self._page = self.absolute(similar_path(_ID_MARK)).partition(str(_ID_MARK))
        self._view = self.absolute(view_path(_ID_MARK)).partition(str(_ID_MARK))

    def absolute(self, location: str) -> str:
        if _PLAIN_PATH.fullmatch(location) and "/./" not in location and "/../" not in location:
            return self._origin + location
        return self._request.build_absolute_uri(location)

    def page(self, product_id: int) -> str:
        head, _, tail = self._page
        return f"{head}{int(product_id)}{tail}"

    def view(self, product_id: int) -> str:
        """The card's "view product" link (``view_path``), absolute."""
        head, _, tail = self._view
        return f"{head}{int(product_id)}{tail}"


# A stored name made only of these (the names the shop stores: ``products/ab/<hex>.jpg``) has the
# same URL under FileSystemStorage as MEDIA_URL + name: quoting leaves it alone, and without "." or
# ".." segments (a segment never starts with a dot), a scheme or a query, joining only appends it.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")


def storage_url() -> Callable[[str], str]:
    """``default_storage.url``, without its per-name quoting and joining for the plain names of local media."""
    storage = storages["default"]  # what default_storage wraps
    if type(storage) is not FileSystemStorage:
        return storage.url  # S3 and other storages sign or rewrite URLs: always ask them
    base = storage.base_url
    if not base or not base.endswith("/") or "?" in base or "#" in base:
        return storage.url

    def plain(name: str) -> str:
        return base + name if _PLAIN_NAME.fullmatch(name) else storage.url(name)

    return plain
