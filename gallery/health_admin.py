"""The admin's Catalog health pages: the last scan, one page per finding kind, and the actions on findings.

Thin views: each validates its input, calls one function of ``gallery.catalog_health`` and renders or
redirects. A refused action answers with its status (400, 403, 404, 409) and a message, never a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse

from gallery import catalog_health, tasks
from gallery.catalog_health import HealthActionRefused
from gallery.models import FindingKind, HealthFinding, HealthScan, Product

PAGE_SIZE = 100
T = TypeVar("T")


def _refused(request: HttpRequest, message: str, *, status: int) -> HttpResponse:
    return render(
        request,
        "admin/gallery/healthscan/refused.html",
        {**admin.site.each_context(request), "title": "Catalog health", "message": message},
        status=status,
    )


@admin.register(HealthScan)
class HealthScanAdmin(admin.ModelAdmin):
    """Catalog health: scans are started and read here; findings are acted on from each kind's page."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: HealthScan | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: HealthScan | None = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: HealthScan | None = None) -> bool:
        # Whoever may read the catalog in the admin may read its health.
        return super().has_view_permission(request, obj) or request.user.has_perm("gallery.view_product")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("run/", view(self.run_view), name="gallery_healthscan_run"),
            path("kind/<str:kind>/", view(self.kind_view), name="gallery_healthscan_kind"),
            path("finding/<str:finding_id>/keep/", view(self.keep_view), name="gallery_healthscan_keep"),
            path("finding/<str:finding_id>/accept/", view(self.accept_view), name="gallery_healthscan_accept"),
            path("finding/<str:finding_id>/dismiss/", view(self.dismiss_view), name="gallery_healthscan_dismiss"),
            *super().get_urls(),
        ]

    def _context(self, request: HttpRequest, **extra: object) -> dict[str, object]:
        latest = catalog_health.health_scan_latest()
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "latest": latest,
            "pending": catalog_health.health_scan_pending(),
            "kinds": [
                (kind.value, kind.label, (latest.counts.get(kind.value, {}) if latest else {}).get("found", 0))
                for kind in FindingKind
            ],
            "may_run": request.user.has_perm("gallery.change_product"),
            **extra,
        }

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            return _refused(request, "You may not read the catalog's health.", status=403)
        context = self._context(request, title="Catalog health", recent=HealthScan.objects.all()[:5])
        return render(request, "admin/gallery/healthscan/overview.html", context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None) -> HttpResponse:  # noqa: ANN001
        return HttpResponseRedirect(reverse("admin:gallery_healthscan_changelist"))

    def run_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm("gallery.change_product"):
            return _refused(request, "Starting a scan needs the permission to change products.", status=403)
        scan, created = tasks.health_scan_submit(user=request.user)
        if created:
            self.message_user(request, f"Scan {scan.id} started in the background.", messages.SUCCESS)
        else:
            self.message_user(request, f"Scan {scan.id} is already {scan.get_status_display().lower()}.")
        return HttpResponseRedirect(reverse("admin:gallery_healthscan_changelist"))

    def kind_view(self, request: HttpRequest, kind: str) -> HttpResponse:
        if not self.has_view_permission(request):
            return _refused(request, "You may not read the catalog's health.", status=403)
        if kind not in FindingKind.values:
            return _refused(request, f"There is no finding kind {kind[:40]!r}.", status=404)
        latest = catalog_health.health_scan_latest()
        findings = catalog_health.findings_open(scan=latest, kind=kind, limit=PAGE_SIZE) if latest else []
        context = self._context(
            request,
            title=f"Catalog health: {FindingKind(kind).label.lower()}",
            kind=kind,
            kind_label=FindingKind(kind).label,
            findings=findings,
            retire_mode=catalog_health.duplicates_retire_mode(),
            may_change=request.user.has_perm("gallery.change_product"),
        )
        return render(request, "admin/gallery/healthscan/kind.html", context)

    def _action_input(self, request: HttpRequest, finding_id: str, *, perm: str) -> int | HttpResponse:
        """The finding's id, or the response refusing the request."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(perm):
            return _refused(request, "This action needs the permission to change products.", status=403)
        if not finding_id.isdigit() or len(finding_id) > 18:
            return _refused(request, "A finding is named by its number.", status=400)
        return int(finding_id)

    def _perform(
        self, request: HttpRequest, action: Callable[[], T], outcome: Callable[[T], tuple[str, str]]
    ) -> HttpResponse:
        """Run one action on a finding: a refusal answers with its status; success goes back to the kind's page
        with the message ``outcome`` makes of the result, as (kind, message).
        """
        try:
            result = action()
        except HealthActionRefused as exc:
            return _refused(request, str(exc), status=exc.status)
        kind, message = outcome(result)
        self.message_user(request, message, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:gallery_healthscan_kind", args=[kind]))

    def _finding_action(
        self,
        request: HttpRequest,
        finding_id: str,
        action: Callable[..., T],
        outcome: Callable[[T], tuple[str, str]],
    ) -> HttpResponse:
        """An action that needs only the permission to change products: the input checked, then
        ``action(finding_id=, user=)`` ``_perform``ed.
        """
        checked = self._action_input(request, finding_id, perm="gallery.change_product")
        if isinstance(checked, HttpResponse):
            return checked
        return self._perform(request, lambda: action(finding_id=checked, user=request.user), outcome)

    def keep_view(self, request: HttpRequest, finding_id: str) -> HttpResponse:
        mode = catalog_health.duplicates_retire_mode()
        perm = "gallery.delete_product" if mode == "delete" else "gallery.change_product"
        checked = self._action_input(request, finding_id, perm=perm)
        if isinstance(checked, HttpResponse):
            return checked
        keep = request.POST.get("keep", "")
        if not keep.isdigit() or len(keep) > 18:
            return _refused(request, "Say which product to keep (its id).", status=400)
        keep_id = int(keep)
        if mode == "delete" and request.POST.get("confirm") != "yes":
            finding = HealthFinding.objects.filter(id=checked, kind=FindingKind.DUPLICATE).first()
            if finding is None:
                return _refused(request, "No such duplicate group.", status=404)
            if keep_id not in finding.product_ids:
                return _refused(request, f"Product {keep_id} is not in this group.", status=400)
            others = Product.objects.filter(id__in=[pid for pid in finding.product_ids if pid != keep_id])
            keep_product = Product.objects.filter(id=keep_id).first()
            context = self._context(
                request, title="Delete the duplicates?", finding=finding, keep=keep_product, others=list(others)
            )
            return render(request, "admin/gallery/healthscan/confirm_keep.html", context)
        done = "taken off sale" if mode == "off sale" else "deleted"
        return self._perform(
            request,
            lambda: catalog_health.duplicate_keep_one(finding_id=checked, keep_id=keep_id, user=request.user),
            lambda others: (FindingKind.DUPLICATE, f"Kept {keep_id}; {len(others)} duplicates {done}."),
        )

    def accept_view(self, request: HttpRequest, finding_id: str) -> HttpResponse:
        def done(product: Product) -> tuple[str, str]:
            return FindingKind.LABEL, f"Relabelled {product}."

        return self._finding_action(request, finding_id, catalog_health.label_accept, done)

    def dismiss_view(self, request: HttpRequest, finding_id: str) -> HttpResponse:
        def done(finding: HealthFinding) -> tuple[str, str]:
            return finding.kind, "Dismissed; later scans will not raise it again."

        return self._finding_action(request, finding_id, catalog_health.finding_dismiss, done)
