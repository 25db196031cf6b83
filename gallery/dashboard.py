"""The admin's shopper dashboard: what shoppers searched, clicked and viewed, and the ranking experiment.

An admin page (``/admin/gallery/shopperevent/dashboard/``) for staff who may view shopper events. It reads
``gallery.insights`` and draws with Chart.js, vendored in ``static/vendor/`` (no CDN; the figures travel in
a ``json_script`` block, so the page needs no inline code under the Content-Security-Policy).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from gallery import events, insights
from gallery.experiments import experiment_arms
from gallery.models import ShopperEvent

WINDOWS = (1, 7, 30, 90)


def _window(request: HttpRequest) -> int:
    value = request.GET.get("days", "")
    return int(value) if value.isdigit() and int(value) in WINDOWS else 30


@admin.register(ShopperEvent)
class ShopperEventAdmin(admin.ModelAdmin):
    """Shopper events, read only (the dashboard links here for the raw rows)."""

    list_display = ["at", "kind", "session", "arm", "grid", "query", "count", "product_id", "position"]
    list_filter = ["kind", "arm", "grid"]
    search_fields = ["=session", "query", "=product_id"]
    date_hierarchy = "at"
    list_per_page = 100
    change_list_template = "admin/gallery/shopperevent/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ShopperEvent | None = None) -> bool:
        return False

    def get_urls(self):
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="gallery_shopperevent_dashboard"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        days = _window(request)
        since = timezone.now() - timedelta(days=days)
        per_day = insights.searches_per_day(since=since)
        positions = insights.click_through_by_position(since=since, positions=settings.GRID_SIZE)
        before = insights.clicks_before_conversion(since=since)
        conversions = insights.conversions_per_100_sessions(since=since)
        arms = [arm.strategy for arm in experiment_arms()]
        results, comparisons = insights.experiment_results(since=since, arms=arms) if arms else ([], [])
        session = request.GET.get("session", "")
        charts = {
            "searches": {"labels": [d.isoformat() for d, _ in per_day], "values": [n for _, n in per_day]},
            "positions": {
                "labels": [p.position for p in positions],
                "values": [round(100 * p.rate, 2) for p in positions],
            },
            "before": {"labels": [n for n, _ in before], "values": [s for _, s in before]},
            "conversions": {
                "labels": [d.isoformat() for d, *_ in conversions],
                "values": [round(rate, 2) for *_, rate in conversions],
            },
        }
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Shopper dashboard",
            "days": days,
            "windows": WINDOWS,
            "totals": insights.totals(since=since),
            "top_queries": insights.top_queries(since=since),
            "zero_queries": insights.top_queries(since=since, zero_results=True),
            "positions": positions,
            "before": before,
            "conversions": conversions,
            "charts": charts,
            "experiment": settings.REFINE_EXPERIMENT,
            "arm_results": results,
            "arm_comparisons": comparisons,
            "session": session if events.session_valid(session) else "",
            "session_events": insights.session_events(session=session) if events.session_valid(session) else [],
            "buffered": events.events_buffered(),
            "dropped": events.events_dropped(),
            "retention_days": settings.EVENTS_RETENTION_DAYS,
            "events_enabled": settings.EVENTS_ENABLED,
        }
        return TemplateResponse(request, "admin/gallery/shopperevent/dashboard.html", context)
