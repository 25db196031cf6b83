"""Validation of what shoppers and shops send: queries, k, trails, filters."""

from __future__ import annotations

from django import forms
from django.conf import settings

from gallery.selectors import ProductFilters, query_normalise
from gallery.trail import Trail, TrailError


class SearchForm(forms.Form):
    """The text query (capped, never rejected for its content), k and filters."""

    q = forms.CharField(required=False, strip=False)
    k = forms.IntegerField(required=False, min_value=1)
    gender = forms.CharField(required=False)
    category = forms.CharField(required=False)
    type = forms.CharField(required=False)
    colour = forms.CharField(required=False)

    def clean_q(self) -> str:
        # Long queries are cut, not refused: a pasted paragraph still searches.
        return query_normalise(self.cleaned_data.get("q") or "")

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


def form_errors_text(form: forms.Form) -> str:
    """All of a form's errors as one sentence for a page or a JSON body."""
    return " ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())
