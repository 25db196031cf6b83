"""Shopper-facing pages and the JSON API. Views validate, call one selector, render."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from config.metrics import grid_served
from config.timing import stage
from gallery import events
from gallery.cards import Card, cards_get
from gallery.experiments import arm_of
from gallery.filters import FILTERS
from gallery.forms import PhotoSearchForm, SearchForm, SimilarForm, form_errors_text
from gallery.links import JsonUrls, similar_url, trail_url, view_path, with_param
from gallery.models import Product
from gallery.openapi import openapi_spec
from gallery.ratelimit import rate_limit_hit
from gallery.selectors import filter_choices, product_search
from gallery.services import KEEP, product_availability_set
from gallery.similarity import GridItem, PhotoGrid, photo_grid, photo_thumbnail_get, similar_grid
from gallery.trail import ASPECTS, Step, Trail
from recommender.api import EngineError, SimilarityUnavailable, engine_status


def _context_params(form: SearchForm, *, photo: str = "") -> dict[str, str]:
    """Parameters every link carries on: the text query or photo the trail started from, and the filters."""
    photo = photo or form.cleaned_data.get("photo", "")
    return {"q": form.cleaned_data.get("q", ""), "photo": photo, **form.filters.as_dict()}


def _trail_start(form: SearchForm) -> str | None:
    """Where a trail began, one rule for the page and the API: the photo (None: its grid is not known), else
    the text search of ``q``, else (no q, or an empty one) the home page's starting grid."""
    return None if form.cleaned_data.get("photo") else form.cleaned_data.get("q", "")


def _filter_menus(selected: dict[str, str]) -> list[dict[str, object]]:
    """The filter selects: every value the catalog offers, the shopper's choice marked."""
    choices = filter_choices()
    return [
        {
            "name": f.name,
            "label": f.label,
            "options": [(value, value == selected.get(f.name)) for value in choices.get(f.name, [])],
        }
        for f in FILTERS
    ]


def _photo_context(params: dict[str, str]) -> dict[str, str]:
    # Only a token this site made names a thumbnail (served by photo_thumbnail below): any other shows nothing.
    token = params.get("photo", "")
    return {"photo_src": reverse("gallery:photo-thumbnail", args=[token]) if token else ""}


def _tiles(items: list[GridItem], *, grid: str) -> list[GridItem]:
    """The grid's items with each link naming the tile's place (a click notes it) and a "view product" link."""
    return [
        replace(
            item,
            url=with_param(item.url, events.POSITION_PARAM, position) if item.url else item.url,
            view_url=view_path(item.product.id, position=position, grid=grid),
        )
        for position, item in enumerate(items, start=1)
    ]


@dataclass(frozen=True)
class TrailStep:
    step: Step
    product: Card | None
    current: bool
    url: str
    remove_url: str
    dislike_url: str
    pin_url: str
    # (code, label, url, on) per aspect this step can keep: "same colour", "any colour", "same shape".
    aspects: tuple[tuple[str, str, str, bool], ...] = ()


def _step_aspects(trail: Trail, index: int, anchor_id: int, params: dict[str, str]) -> tuple:
    if trail.steps[index].disliked:
        return ()  # a "not like this" step keeps nothing
    return tuple(
        (
            code,
            label,
            with_param(trail_url(trail.aspected(index, code), anchor_id, params), events.ACTION_PARAM, "a"),
            trail.steps[index].aspect == code,
        )
        for code, label in ASPECTS.items()
    )


def _trail_steps(trail: Trail, anchor_id: int, products: dict[int, Card], params: dict[str, str]) -> list[TrailStep]:
    return [
        TrailStep(
            step=step,
            product=products.get(step.product_id),
            current=step.product_id == anchor_id,
            url=similar_url(step.product_id, Trail(trail.steps[: index + 1]), params),
            # Each edit's link names it, so the page it leads to notes a trail edit (gallery.events).
            remove_url=with_param(trail_url(trail.without(index), anchor_id, params), events.ACTION_PARAM, "r"),
            dislike_url=with_param(trail_url(trail.marked(index, "n"), anchor_id, params), events.ACTION_PARAM, "n"),
            pin_url=with_param(trail_url(trail.marked(index, "p"), anchor_id, params), events.ACTION_PARAM, "p"),
            aspects=_step_aspects(trail, index, anchor_id, params),
        )
        for index, step in enumerate(trail.steps)
    ]


def _render(request: HttpRequest, template: str, context: dict, status: int = 200) -> HttpResponse:
    # htmx swaps only the results; plain requests (JavaScript off) and htmx's
    # history restore (it replaces the whole body) get the page.
    if request.htmx and not request.htmx.boosted and not request.htmx.history_restore_request:
        template = "gallery/_results.html"
        context = {**context, "partial": True}
    with stage("render"):
        response = render(request, template, context, status=status)
    # One URL answers a fragment or a page: the browser's cache (Back, Forward) must keep them apart.
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    with stage("parse"):
        form = SearchForm(request.GET)
        valid = form.is_valid()
    if not valid:
        return _render(request, "gallery/home.html", {"form": form, "error": form_errors_text(form)}, status=400)
    params = _context_params(form)
    found = product_search(query=form.cleaned_data["q"], k=settings.GRID_SIZE, filters=form.filters)
    grid_served(kind="text" if form.cleaned_data["q"] else "starting", filtered=bool(form.filters))
    items = [GridItem(product, None, similar_url(product.id, Trail().then(product.id), params)) for product in found]
    grid_kind = "search" if form.cleaned_data["q"] and found.words else "start"
    events.search_noted(request, query=found.query if found.words else "", found=found, grid=grid_kind)
    context = {
        "form": form,
        "items": _tiles(items, grid=grid_kind),
        "notice": found.notice,
        "query": form.cleaned_data["q"],
        "filter_menus": _filter_menus(params),
        "params": params,
        **_photo_context(params),
    }
    return _render(request, "gallery/home.html", context)


class TooManyPhotoSearches(EngineError):
    """This client sent more photo searches this minute than PHOTO_SEARCH_RATE_PER_MINUTE allows."""

    status = 429


def _photo_search(
    request: HttpRequest, form: PhotoSearchForm, *, k: int, link: Callable[[int, str], str] | None = None
) -> PhotoGrid:
    """Run a photo search from a valid form (``link(product_id, photo token)``: each item's link); raises
    EngineError (rate limit, bad image, busy, no index)."""
    retry_after = rate_limit_hit(scope="photo", request=request, per_minute=settings.PHOTO_SEARCH_RATE_PER_MINUTE)
    if retry_after:
        raise TooManyPhotoSearches(
            f"Too many photo searches; try again in {retry_after} seconds.", retry_after=retry_after
        )
    grid = photo_grid(data=form.cleaned_data["image"], k=k, filters=form.filters, link=link)
    grid_served(kind="photo", filtered=bool(form.filters))
    return grid


def _retry_after(response: HttpResponse, error: EngineError) -> HttpResponse:
    """Tell clients when to come back, as the refusal says."""
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    return response


@require_POST
def search_by_image(request: HttpRequest) -> HttpResponse:
    form = PhotoSearchForm(request.POST, request.FILES)
    selected = form.filters.as_dict() if form.is_valid() else {}
    context: dict[str, object] = {"filter_menus": _filter_menus(selected), "form": form, "photo_search": True}
    if not form.is_valid():
        return _render(request, "gallery/home.html", {**context, "error": form_errors_text(form)}, status=400)
    filters = form.filters.as_dict()

    def link(product_id: int, token: str) -> str:
        return similar_url(product_id, Trail().then(product_id), {"q": "", "photo": token, **filters})

    try:
        grid = _photo_search(request, form, k=settings.GRID_SIZE, link=link)
    except EngineError as exc:
        response = _render(request, "gallery/home.html", {**context, "error": str(exc)}, status=exc.status)
        return _retry_after(response, exc)
    params = {"q": "", "photo": grid.photo_token, **filters}
    items = grid.items
    events.event_note(request, "photo", count=len(items))
    events.grid_noted(request, grid="photo", ids=[item.product.id for item in items])
    context |= {"items": _tiles(items, grid="photo"), "params": params, **_photo_context(params)}
    return _render(request, "gallery/home.html", context)


@require_safe
def similar(request: HttpRequest, product_id: int) -> HttpResponse:
    product = cards_get([product_id]).get(product_id)
    if product is None:
        raise Http404("No such product.")
    with stage("parse"):
        form = SimilarForm(request.GET)
        valid = form.is_valid()
    if not valid:
        return _render(
            request,
            "gallery/similar.html",
            {"form": form, "product": product, "error": form_errors_text(form)},
            status=400,
        )
    params = _context_params(form)
    trail = form.cleaned_data["trail"]
    if product.id not in trail.product_ids:
        trail = trail.then(product.id)
    context = {
        "form": form,
        "product": product,
        "filter_menus": _filter_menus(params),
        "params": params,
        "query": params["q"],
        **_photo_context(params),
    }
    try:
        grid = similar_grid(
            anchor_id=product.id,
            trail=trail,
            k=settings.GRID_SIZE,
            filters=form.filters,
            link=lambda pid, t: similar_url(pid, t, params),
            start_query=_trail_start(form),
            strategy=arm_of(events.session_of(request)) or None,
        )
    except SimilarityUnavailable as exc:
        response = _render(request, "gallery/similar.html", {**context, "error": str(exc)}, status=exc.status)
        return _retry_after(response, exc)
    events.click_noted(request, product_id=product.id)
    events.grid_noted(request, grid="similar", ids=[item.product.id for item in grid.items], anchor=product.id)
    grid_served(kind="similar", filtered=bool(form.filters))
    steps = _trail_steps(trail, product.id, grid.trail_products, params)
    notice = grid.notice
    if not product.active:
        # A trail link may name a product since taken off sale: it still opens, its grid from its vector.
        notice = " ".join(filter(None, ["This product is no longer on sale; here are products like it.", notice]))
    items = _tiles(grid.items, grid="similar")
    context |= {"items": items, "notice": notice, "trail_steps": steps, "trail_param": str(trail)}
    return _render(request, "gallery/similar.html", context)


@require_safe
def view_product(request: HttpRequest, product_id: int) -> HttpResponse:
    """A card's "view product" link: the shopper found what they wanted. Noted as a conversion, then on to
    the shop's product page (PRODUCT_URL_TEMPLATE with the id put in; the admin's page when unset).

    Only the template is ever a destination: nothing of the request is part of the address but the id,
    a whole number the URL pattern matched, so no link can send a shopper elsewhere.
    """
    product = cards_get([product_id]).get(product_id)
    if product is None:
        raise Http404("No such product.")
    events.event_note(
        request,
        "convert",
        product_id=product.id,
        position=events.position_of(request),
        grid=request.GET.get("g", "")[:16],
    )
    template = settings.PRODUCT_URL_TEMPLATE
    location = (
        template.replace("{id}", str(int(product.id)))
        if template
        else reverse("admin:gallery_product_change", args=[product.id])
    )
    response = HttpResponseRedirect(location)
    response["Cache-Control"] = "no-store"  # every visit is a conversion to note
    return response


# --- JSON API -----------------------------------------------------------------------------


def _product_json(
    request: HttpRequest, product: Card, score: float | None = None, *, urls: JsonUrls | None = None
) -> dict[str, object]:
    """A card as the API shows it (``Card.as_json``), with its page, its "view product" link and its score."""
    urls = urls or JsonUrls(request)
    data = product.as_json(urls.absolute)
    data["url"] = urls.page(product.id)
    data["view_url"] = urls.view(product.id)
    if score is not None:
        data["score"] = round(score, 6)
    return data


def _results_json(request: HttpRequest, products: list[tuple[Card, float | None]]) -> list[dict[str, object]]:
    """The API's ``results``: each (product, score) as ``_product_json``, the URLs' common parts worked out once."""
    urls = JsonUrls(request)
    return [_product_json(request, product, score, urls=urls) for product, score in products]


def api_error(message: str, *, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


# The read-only API views are csrf_exempt: they change nothing and read no session, so there is nothing to
# forge, and without it the CSRF middleware (which runs before the view) would answer a POST, PUT, PATCH or
# DELETE with 403 "Forbidden" instead of the 405 naming the allowed methods that require_safe gives.
@csrf_exempt
@require_safe
def api_search(request: HttpRequest) -> JsonResponse:
    with stage("parse"):
        form = SearchForm(request.GET)
        valid = form.is_valid()
    if not valid:
        return api_error(form_errors_text(form), status=400)
    found = product_search(query=form.cleaned_data["q"], k=form.cleaned_data["k"], filters=form.filters)
    events.search_noted(
        request, query=found.query if found.words else "", found=found, grid="search" if found.words else "start"
    )
    grid_served(kind="text" if form.cleaned_data["q"] else "starting", filtered=bool(form.filters))
    with stage("render"):
        return JsonResponse(
            {
                "query": form.cleaned_data["q"],
                "filters": form.filters.as_dict(),
                "results": _results_json(request, [(p, None) for p in found]),
                **found.explanation(),
            }
        )


@csrf_exempt  # read-only: see api_search
@require_safe
def api_similar(request: HttpRequest, product_id: int) -> JsonResponse:
    with stage("parse"):
        form = SimilarForm(request.GET)
        valid = form.is_valid()
    if not valid:
        return api_error(form_errors_text(form), status=400)
    product = cards_get([product_id]).get(product_id)
    if product is None:
        return api_error(f"No product has id {product_id}.", status=404)
    trail = form.cleaned_data["trail"]
    if product.id not in trail.product_ids:
        trail = trail.then(product.id)
    try:
        grid = similar_grid(
            anchor_id=product.id,
            trail=trail,
            k=form.cleaned_data["k"],
            filters=form.filters,
            start_query=_trail_start(form),
            strategy=arm_of(events.session_of(request)) or None,
        )
    except SimilarityUnavailable as exc:
        return _retry_after(api_error(str(exc), status=exc.status), exc)
    if grid.notice and not grid.items:
        return api_error(grid.notice, status=409)
    events.click_noted(request, product_id=product.id)
    events.grid_noted(request, grid="similar", ids=[item.product.id for item in grid.items], anchor=product.id)
    grid_served(kind="similar", filtered=bool(form.filters))
    with stage("render"):
        return JsonResponse(
            {
                "query": product.id,
                "trail": str(trail),
                "filters": form.filters.as_dict(),
                "results": _results_json(request, [(item.product, item.score) for item in grid.items]),
            }
        )


@csrf_exempt  # read-only: see api_search
@require_safe
def api_product(request: HttpRequest, product_id: int) -> JsonResponse:
    """One product as the catalog holds it, on sale or not (the grids show only those on sale)."""
    product = cards_get([product_id]).get(product_id)
    if product is None:
        return api_error(f"No product has id {product_id}.", status=404)
    return JsonResponse(_product_json(request, product))


# It changes the catalog for a signed-in staff session, so a forged cross-site POST must be refused: CSRF is
# checked in the view, after the method, so that a GET is the 405 every API view answers (not the
# middleware's HTML 403) and a refusal is the API's JSON.
@csrf_exempt
@require_POST
def api_product_availability(request: HttpRequest, product_id: int) -> JsonResponse:
    """Take a product off sale or put it back, and/or set its stock: JSON ``{"active": bool, "stock": int|null}``.

    For staff allowed to change products (the admin's session and CSRF token). Answers the product's JSON.
    """
    if CsrfViewMiddleware(lambda _: HttpResponse()).process_view(request, None, (), {}) is not None:
        return api_error("The CSRF token is missing or wrong: send the admin's csrftoken as X-CSRFToken.", status=403)
    if not request.user.is_authenticated or not request.user.has_perm("gallery.change_product"):
        return api_error("Sign in as staff allowed to change products.", status=403)
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return api_error("The body must be a JSON object.", status=400)
    if not isinstance(body, dict) or not body or set(body) - {"active", "stock"}:
        return api_error('The body must be a JSON object with "active" (true or false) and/or "stock".', status=400)
    active = body.get("active")
    if "active" in body and not isinstance(active, bool):
        return api_error('"active" must be true or false.', status=400)
    stock = body.get("stock", KEEP)
    if "stock" in body and stock is not None and (isinstance(stock, bool) or not isinstance(stock, int) or stock < 0):
        return api_error('"stock" must be a whole number of 0 or more, or null.', status=400)
    if not Product.objects.filter(id=product_id).exists():
        return api_error(f"No product has id {product_id}.", status=404)
    product_availability_set(product_ids=[product_id], active=active, stock=stock)
    return JsonResponse(_product_json(request, cards_get([product_id])[product_id]))


@csrf_exempt  # an API for shop integrations: no cookies, no session, nothing to forge
@require_POST
def api_search_by_image(request: HttpRequest) -> JsonResponse:
    # k and the filters may come in the query string or as form fields.
    with stage("parse"):
        data = request.GET.copy()
        data.update(request.POST)
        form = PhotoSearchForm(data, request.FILES)
        valid = form.is_valid()
    if not valid:
        return api_error(form_errors_text(form), status=400)
    try:
        grid = _photo_search(request, form, k=form.cleaned_data["k"])
    except EngineError as exc:
        return _retry_after(api_error(str(exc), status=exc.status), exc)
    with stage("render"):
        return JsonResponse(
            {
                "query": "image",
                "filters": form.filters.as_dict(),
                "results": _results_json(request, [(item.product, item.score) for item in grid.items]),
            }
        )


@csrf_exempt  # read-only: see api_search
@require_safe
def api_openapi(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_spec())


@csrf_exempt  # read-only: see api_search
@require_safe
def api_status(request: HttpRequest) -> JsonResponse:
    return JsonResponse(engine_status())


@require_safe
def photo_thumbnail(request: HttpRequest, token: str) -> HttpResponse:
    """The thumbnail a photo search kept for ``token`` (an hour at most); 404 for any other token."""
    data = photo_thumbnail_get(token)
    if data is None:
        raise Http404("No such photo.")
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _api_or_default(default_view, message: str, status: int):
    """Error handlers: JSON under /api/, Django's pages elsewhere."""

    def handler(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        if request.path.startswith("/api/"):
            return api_error(message, status=status)
        return default_view(request, exception)

    return handler


not_found = _api_or_default(defaults.page_not_found, "No such endpoint or product.", 404)
bad_request = _api_or_default(defaults.bad_request, "The request is malformed.", 400)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: JSON under /api/ (what failed goes to the log, never to the client), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return api_error("The server failed to answer; try again later.", status=500)
    return defaults.server_error(request)
