"""Validation of what shoppers and shops send: queries, k, trails, filters."""

from __future__ import annotations

from django import forms
from django.conf import settings

from gallery.filters import FILTERS, ProductFilters
from gallery.selectors import query_normalise
from gallery.similarity import photo_token_valid
from gallery.trail import Trail, TrailError

# One optional text field per filter of the registry (gallery.filters), inherited by every form below.
_FilterFields = type("_FilterFields", (forms.Form,), {f.name: forms.CharField(required=False) for f in FILTERS})


class SearchForm(_FilterFields):
    """The text query (capped, never rejected for its content), k and filters."""

    q = forms.CharField(required=False, strip=False)
    k = forms.IntegerField(required=False, min_value=1)
    photo = forms.CharField(required=False)

    def clean_q(self) -> str:
        # Long queries are cut, not refused: a pasted paragraph still searches.
        return query_normalise(self.cleaned_data.get("q") or "")

    def clean_photo(self) -> str:
        # The shopper's photo thumbnail, carried in links; anything else is dropped.
        token = self.cleaned_data.get("photo") or ""
        return token if photo_token_valid(token) else ""

    def clean_k(self) -> int:
        k = self.cleaned_data.get("k") or settings.GRID_SIZE
        if k > settings.API_MAX_K:
            raise forms.ValidationError(f"k must be at most {settings.API_MAX_K}.")
        return k

    @property
    def filters(self) -> ProductFilters:
        return ProductFilters.from_mapping(self.cleaned_data)


class SimilarForm(SearchForm):
    """A similar-products request: the refinement trail on top of the search fields."""

    trail = forms.CharField(required=False)

    def clean_trail(self) -> Trail:
        try:
            return Trail.parse(self.cleaned_data.get("trail") or "")
        except TrailError as exc:
            raise forms.ValidationError(str(exc)) from exc


class PhotoSearchForm(SearchForm):
    """A photo upload (multipart field ``image``), with k and filters."""

    image = forms.FileField(required=True, error_messages={"required": "Choose a photo to search with."})

    def clean_image(self) -> bytes:
        upload = self.cleaned_data["image"]
        limit = settings.IMAGE_MAX_BYTES
        if upload.size is not None and upload.size > limit:
            raise forms.ValidationError(f"The photo is {upload.size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.")
        data = upload.read(limit + 1)
        if not data:
            raise forms.ValidationError("The file is empty.")
        if len(data) > limit:
            raise forms.ValidationError(f"The photo is larger than the {limit / 1e6:.0f} MB limit.")
        return data


def form_errors_text(form: forms.Form) -> str:
    """All of a form's errors as one sentence for a page or a JSON body."""
    # A photo's errors read as sentences on their own; other fields are named.
    return " ".join(
        " ".join(errors) if name == "image" else f"{name}: {' '.join(errors)}" for name, errors in form.errors.items()
    )
