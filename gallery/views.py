"""Shopper-facing pages and the JSON API. Views validate, call one selector, render."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from gallery.forms import SearchForm, SimilarForm, form_errors_text
from gallery.models import Product
from gallery.selectors import filter_choices, product_search
from gallery.similarity import GridItem, similar_grid
from gallery.trail import Step, Trail
from recommender.selectors import SimilarityUnavailable, index_status


def _query_string(**params: object) -> str:
    return urlencode({key: value for key, value in params.items() if value not in ("", None)})


def _context_params(form: SearchForm) -> dict[str, str]:
    """Parameters every link carries on: the text query and the filters."""
    return {"q": form.cleaned_data.get("q", ""), **form.filters.as_dict()}


def similar_url(product_id: int, trail: Trail, params: dict[str, str]) -> str:
    """The page for ``trail`` anchored at ``product_id``; a one-step trail is just the path."""
    query = _query_string(trail=str(trail) if str(trail) != str(product_id) else "", **params)
    base = reverse("gallery:similar", args=[product_id])
    return f"{base}?{query}" if query else base


def _trail_url(trail: Trail, anchor_id: int, params: dict[str, str]) -> str:
    """Where an edited trail leads: the same anchor while it is still liked, else the newest liked step."""
    liked = [step.product_id for step in trail.steps if not step.disliked]
    if anchor_id in liked:
        return similar_url(anchor_id, trail, params)
    if trail.anchor is not None:
        return similar_url(trail.anchor.product_id, trail, params)
    query = _query_string(**params)
    return reverse("gallery:home") + (f"?{query}" if query else "")


@dataclass(frozen=True)
class TrailStep:
    step: Step
    product: Product | None
    current: bool
    url: str
    remove_url: str
    dislike_url: str
    pin_url: str


def _trail_steps(trail: Trail, anchor_id: int, products: dict[int, Product], params: dict[str, str]) -> list[TrailStep]:
    return [
        TrailStep(
            step=step,
            product=products.get(step.product_id),
            current=step.product_id == anchor_id,
            url=similar_url(step.product_id, Trail(trail.steps[: index + 1]), params),
            remove_url=_trail_url(trail.without(index), anchor_id, params),
            dislike_url=_trail_url(trail.marked(index, "n"), anchor_id, params),
            pin_url=_trail_url(trail.marked(index, "p"), anchor_id, params),
        )
        for index, step in enumerate(trail.steps)
    ]


def _render(request: HttpRequest, template: str, context: dict, status: int = 200) -> HttpResponse:
    # htmx swaps only the results; a plain request (JavaScript off) gets the page.
    if request.htmx and not request.htmx.boosted:
        template = "gallery/_results.html"
    return render(request, template, context, status=status)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    form = SearchForm(request.GET)
    if not form.is_valid():
        return _render(request, "gallery/home.html", {"form": form, "error": form_errors_text(form)}, status=400)
    params = _context_params(form)
    products = product_search(query=form.cleaned_data["q"], k=settings.GRID_SIZE, filters=form.filters)
    items = [GridItem(product, None, similar_url(product.id, Trail().then(product.id), params)) for product in products]
    context = {
        "form": form,
        "items": items,
        "query": form.cleaned_data["q"],
        "choices": filter_choices(),
        "params": params,
    }
    return _render(request, "gallery/home.html", context)


@require_GET
def similar(request: HttpRequest, product_id: int) -> HttpResponse:
    product = get_object_or_404(Product, id=product_id)
    form = SimilarForm(request.GET)
    if not form.is_valid():
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
    context = {"form": form, "product": product, "choices": filter_choices(), "params": params, "query": params["q"]}
    try:
        grid = similar_grid(
            anchor=product,
            trail=trail,
            k=settings.GRID_SIZE,
            filters=form.filters,
            link=lambda pid, t: similar_url(pid, t, params),
        )
    except SimilarityUnavailable as exc:
        return _render(request, "gallery/similar.html", {**context, "error": str(exc)}, status=503)
    steps = _trail_steps(trail, product.id, grid.trail_products, params)
    return _render(
        request, "gallery/similar.html", {**context, "items": grid.items, "notice": grid.notice, "trail_steps": steps}
    )


# --- JSON API -----------------------------------------------------------------------------


def _product_json(request: HttpRequest, product: Product, score: float | None = None) -> dict[str, object]:
    data: dict[str, object] = {
        "id": product.id,
        "name": product.name,
        "image_url": request.build_absolute_uri(product.image.url) if product.image else None,
        "thumbnail_url": request.build_absolute_uri(product.thumbnail.url) if product.thumbnail else None,
        "gender": product.gender,
        "master_category": product.master_category,
        "sub_category": product.sub_category,
        "article_type": product.article_type,
        "base_colour": product.base_colour,
        "season": product.season,
        "year": product.year,
        "usage": product.usage,
        "url": request.build_absolute_uri(reverse("gallery:similar", args=[product.id])),
    }
    if score is not None:
        data["score"] = round(score, 6)
    return data


def api_error(message: str, *, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@require_GET
def api_search(request: HttpRequest) -> JsonResponse:
    form = SearchForm(request.GET)
    if not form.is_valid():
        return api_error(form_errors_text(form), status=400)
    products = product_search(query=form.cleaned_data["q"], k=form.cleaned_data["k"], filters=form.filters)
    return JsonResponse(
        {
            "query": form.cleaned_data["q"],
            "filters": form.filters.as_dict(),
            "results": [_product_json(request, p) for p in products],
        }
    )


@require_GET
def api_similar(request: HttpRequest, product_id: int) -> JsonResponse:
    form = SimilarForm(request.GET)
    if not form.is_valid():
        return api_error(form_errors_text(form), status=400)
    product = Product.objects.filter(id=product_id).first()
    if product is None:
        return api_error(f"No product has id {product_id}.", status=404)
    trail = form.cleaned_data["trail"]
    if product.id not in trail.product_ids:
        trail = trail.then(product.id)
    try:
        grid = similar_grid(anchor=product, trail=trail, k=form.cleaned_data["k"], filters=form.filters)
    except SimilarityUnavailable as exc:
        return api_error(str(exc), status=503)
    if grid.notice and not grid.items:
        return api_error(grid.notice, status=409)
    return JsonResponse(
        {
            "query": product.id,
            "trail": str(trail),
            "filters": form.filters.as_dict(),
            "results": [_product_json(request, item.product, item.score) for item in grid.items],
        }
    )


@require_GET
def api_status(request: HttpRequest) -> JsonResponse:
    return JsonResponse(index_status())
