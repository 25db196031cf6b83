from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import escape, format_html

from gallery import jobs, tasks
from gallery.bulk import BulkUploadRejected
from gallery.catalog import FIELDS
from gallery.middleware import megabytes
from gallery.models import ImportJob, ImportStatus, Product
from gallery.services import (
    ImageStoreFailed,
    StoredImage,
    image_files_guard,
    image_prepare_for_store,
    product_availability_set,
    product_save,
    products_delete,
)
from recommender import api
from recommender.errors import ImageRejected


def read_upload(upload, *, limit: int) -> bytes:
    """The uploaded file's bytes, refusing anything over ``limit`` before reading it all."""
    if upload.size is not None and upload.size > limit:
        raise forms.ValidationError(f"The file is {upload.size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.")
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise forms.ValidationError(f"The file is larger than the {limit / 1e6:.0f} MB limit.")
    return data


# The styles.csv columns beside id and name, as Product fields.
CATALOG_FIELDS = [field for field, _ in FIELDS.values() if field != "name"] + ["year"]


class ProductForm(forms.ModelForm):
    # Not the model's ImageField: the upload is validated, re-encoded and stored
    # under a random name by the service; its original bytes never reach the disk.
    image_upload = forms.FileField(
        label="Image",
        required=False,
        help_text="JPEG, PNG, WebP or GIF. It is re-encoded, stripped of EXIF and queued for embedding.",
    )

    class Meta:
        model = Product
        # ``active`` is changed by the list's actions (one service), never by a form that leaves a box unticked.
        fields = ["id", "name", *CATALOG_FIELDS, "stock"]

    # Set (on a subclass, by ProductAdmin.get_form) when the image of this very POST could not be stored.
    store_failure = ""

    def clean_image_upload(self) -> StoredImage | None:
        if self.store_failure:
            raise forms.ValidationError(self.store_failure)
        upload = self.cleaned_data.get("image_upload")
        if not upload:
            if self.instance._state.adding:
                raise forms.ValidationError("A new product needs an image.")
            return None
        data = read_upload(upload, limit=settings.IMAGE_MAX_BYTES)
        try:
            return image_prepare_for_store(data=data, max_pixels=settings.IMAGE_MAX_PIXELS)
        except ImageRejected as exc:
            raise forms.ValidationError(str(exc)) from exc


class BulkUploadForm(forms.Form):
    archive = forms.FileField(
        label="Catalog zip",
        # Django renders help text as HTML: escaped, "<id>" is text, not a tag.
        help_text=escape("A zip holding styles.csv and images/<id>.jpg, the layout import_catalog reads."),
    )


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    form = ProductForm
    list_display = ["id", "preview", "name", "article_type", "base_colour", "gender", "active", "stock", "embedding"]
    # The embedding state is the vector engine's (recommender.models.EmbeddingState), read through the relation.
    list_select_related = ["embedding_state"]
    list_display_links = ["id", "name"]
    list_filter = [
        ("embedding_state__status", admin.ChoicesFieldListFilter),
        "active",
        "gender",
        "master_category",
        "article_type",
        "base_colour",
        "season",
    ]
    search_fields = ["name", "=id"]
    readonly_fields = [
        "preview",
        "active",
        "embedding",
        "embedding_error",
        "image_version",
        "embedding_requested_at",
        "updated_at",
    ]
    actions = ["retry_embedding", "take_off_sale", "put_on_sale"]
    list_per_page = 50
    change_list_template = "admin/gallery/product/change_list.html"
    fieldsets = [
        (None, {"fields": ["id", "name", "image_upload", "preview"]}),
        ("Availability", {"fields": ["active", "stock"]}),
        (
            "Catalog",
            {
                "fields": [
                    "gender",
                    "master_category",
                    "sub_category",
                    "article_type",
                    "base_colour",
                    "season",
                    "year",
                    "usage",
                ]
            },
        ),
        (
            "Embedding",
            {"fields": ["embedding", "embedding_error", "image_version", "embedding_requested_at", "updated_at"]},
        ),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Product | None = None) -> list[str]:
        # The id is the dataset's id, used in URLs and index sidecars: fixed once created.
        return [*self.readonly_fields, "id"] if obj else self.readonly_fields

    @admin.display(description="Image")
    def preview(self, obj: Product) -> str:
        if not obj.thumbnail:
            return "-"
        return format_html('<img src="{}" alt="" class="gallery-thumb">', obj.thumbnail.url)

    def changeform_view(
        self, request: HttpRequest, object_id: str | None = None, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        # The guard encloses the admin's own transaction (ModelAdmin.changeform_view opens it): only once that has
        # ended is it known whether the save committed, and the files of one that did not are removed.
        try:
            with image_files_guard():
                return super().changeform_view(request, object_id, form_url, extra_context)
        except ImageStoreFailed as exc:
            # Nothing was saved and no file of it is left. Show the form again with why, keeping what was typed
            # (this second pass only validates: the failure is a form error); 503, as the server failed, not the form.
            request._image_store_failure = (
                f"The image could not be stored ({exc.strerror or 'storage error'}). Nothing was saved; "
                "try again, and tell an operator if it happens again."
            )
            response = super().changeform_view(request, object_id, form_url, extra_context)
            response.status_code = 503
            return response

    def get_form(self, request: HttpRequest, obj: Product | None = None, change: bool = False, **kwargs) -> type:
        form = super().get_form(request, obj, change, **kwargs)
        failure = getattr(request, "_image_store_failure", "")
        return type(form.__name__, (form,), {"store_failure": failure}) if failure else form

    def save_model(self, request: HttpRequest, obj: Product, form: ProductForm, change: bool) -> None:
        product_save(product=obj, stored=form.cleaned_data.get("image_upload"))

    def render_change_form(self, request: HttpRequest, context: dict, *args, **kwargs) -> HttpResponse:
        response = super().render_change_form(request, context, *args, **kwargs)
        # A refused upload or field is a client error: say so in the status too.
        if request.method == "POST" and context.get("errors"):
            response.status_code = 400
        return response

    @staticmethod
    def _state(obj: Product) -> object | None:
        try:
            return obj.embedding_state
        except ObjectDoesNotExist:  # no image yet: nothing to embed
            return None

    @admin.display(description="embedding", ordering="embedding_state__status")
    def embedding(self, obj: Product) -> str:
        state = self._state(obj)
        return state.get_status_display() if state else "no image"

    @admin.display(description="embedding error")
    def embedding_error(self, obj: Product) -> str:
        state = self._state(obj)
        return state.error if state else ""

    @admin.display(description="embedding requested at")
    def embedding_requested_at(self, obj: Product) -> object:
        state = self._state(obj)
        return state.requested_at if state else None

    # Re-queues work for the whole selection: only for staff who may change products.
    @admin.action(description="Retry embedding of the selected products", permissions=["change"])
    def retry_embedding(self, request: HttpRequest, queryset) -> None:
        ids = list(queryset.values_list("id", flat=True))
        with transaction.atomic():
            count = api.embedding_retry(product_ids=ids)
        self.message_user(request, f"{count} products queued for embedding.", messages.SUCCESS)

    # Availability: one action for the whole selection, through the one service (no image or vector is touched).
    @admin.action(description="Take the selected products off sale", permissions=["change"])
    def take_off_sale(self, request: HttpRequest, queryset) -> None:
        count = product_availability_set(product_ids=queryset.values_list("id", flat=True), active=False)
        self.message_user(request, f"{count} products taken off sale; no grid shows them now.", messages.SUCCESS)

    @admin.action(description="Put the selected products on sale", permissions=["change"])
    def put_on_sale(self, request: HttpRequest, queryset) -> None:
        count = product_availability_set(product_ids=queryset.values_list("id", flat=True), active=True)
        self.message_user(request, f"{count} products put on sale.", messages.SUCCESS)

    def delete_model(self, request: HttpRequest, obj: Product) -> None:
        products_delete(product_ids=[obj.id])

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        products_delete(product_ids=list(queryset.values_list("id", flat=True)))

    def get_urls(self):
        return [
            path("bulk-upload/", self.admin_site.admin_view(self.bulk_upload_view), name="gallery_product_bulk_upload"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        context = {
            **(extra_context or {}),
            "embedding": _embedding_context(),
            "may_bulk_upload": jobs.bulk_upload_allowed(user=request.user),
        }
        return super().changelist_view(request, extra_context=context)

    def bulk_upload_view(self, request: HttpRequest) -> HttpResponse:
        # A bulk upload creates and updates products: it needs both permissions.
        if not jobs.bulk_upload_allowed(user=request.user):
            return HttpResponse(
                "Bulk upload needs the permissions to add and to change products.",
                status=403,
                content_type="text/plain",
            )
        form = BulkUploadForm(request.POST or None, request.FILES or None)
        status = 200
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["archive"]
            limit = settings.BULK_UPLOAD_MAX_BYTES
            try:
                if upload.size > limit:
                    raise BulkUploadRejected(f"The zip is {megabytes(upload.size)}; the limit is {megabytes(limit)}.")
                job = tasks.import_job_submit(upload=upload, user=request.user)
            except BulkUploadRejected as exc:
                form.add_error("archive", str(exc))
                status = 400
            else:
                self.message_user(
                    request,
                    f"Received {upload.name}: its {job.rows_total} rows are being imported in the background.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:gallery_importjob_change", args=[job.id]))
        elif request.method == "POST":
            status = 400
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "opts": self.model._meta,
            "title": "Bulk upload",
            "max_bytes": megabytes(settings.BULK_UPLOAD_MAX_BYTES),
            "recent_jobs": ImportJob.objects.select_related("created_by")[:5],
        }
        return render(request, "admin/gallery/product/bulk_upload.html", context, status=status)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _embedding_context(*, job: ImportJob | None = None) -> dict[str, object]:
    """The embedding panel; it keeps polling while products await embedding or ``job`` may still add some."""
    progress = jobs.embedding_progress()
    return {
        "progress": progress,
        "job_id": job.id if job else None,
        "poll": bool(progress.awaiting) or (job is not None and job.status not in jobs.FINISHED),
        "percent": round(100 * progress.done / progress.total) if progress.total else 100,
        "per_minute": round(progress.per_second * 60),
        "eta": _duration(progress.eta_seconds) if progress.awaiting else "",
    }


def _job_context(job: ImportJob) -> dict[str, object]:
    fraction = jobs.import_job_fraction(job=job)
    rate = job.rows_read / job.seconds if job.seconds else None
    left = (job.rows_total or 0) - job.rows_read
    return {
        "job": job,
        "finished": job.status in jobs.FINISHED,
        "percent": round(100 * fraction),
        "rate": round(rate) if rate else None,
        "eta": _duration(left / rate) if rate and left > 0 and job.status == ImportStatus.RUNNING else "",
        "elapsed": _duration(job.seconds) if job.seconds else "",
        "more_skipped": max(0, job.skipped - len(job.reasons)),
    }


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    """Catalog imports: read-only, kept for later reading; each one's page follows it live."""

    list_display = [
        "id",
        "status",
        "what",
        "progress",
        "created",
        "updated",
        "unchanged",
        "skipped",
        "images_queued",
        "created_by",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "source"]
    list_select_related = ["created_by"]
    actions = None  # one job at a time, and only a finished one, may be deleted
    list_per_page = 50

    @admin.display(description="file or folder")
    def what(self, obj: ImportJob) -> str:
        return obj.original_name or "-"

    @admin.display(description="progress")
    def progress(self, obj: ImportJob) -> str:
        total = f" / {obj.rows_total:,}" if obj.rows_total is not None else ""
        return f"{obj.rows_read:,}{total} rows ({round(100 * jobs.import_job_fraction(job=obj))}%)"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ImportJob | None = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: ImportJob | None = None) -> bool:
        # Whoever may upload a catalog may follow the imports.
        return super().has_view_permission(request, obj) or jobs.bulk_upload_allowed(user=request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or jobs.bulk_upload_allowed(user=request.user)

    def has_delete_permission(self, request: HttpRequest, obj: ImportJob | None = None) -> bool:
        # A running job is never deleted from under its worker.
        return super().has_delete_permission(request, obj) and (obj is None or obj.status in jobs.FINISHED)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:job_id>/progress/", view(self.progress_view), name="gallery_importjob_progress"),
            path("embedding-progress/", view(self.embedding_view), name="gallery_importjob_embedding"),
            *super().get_urls(),
        ]

    def _job_or_404(self, request: HttpRequest, job_id: object) -> ImportJob:
        if not self.has_view_permission(request):
            raise PermissionDenied
        job = (
            ImportJob.objects.select_related("created_by").filter(pk=str(job_id)).first()
            if str(job_id).isdigit()
            else None
        )
        if job is None:
            raise Http404("No such import.")
        return job

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None) -> HttpResponse:  # noqa: ANN001
        job = self._job_or_404(request, object_id)
        context = {
            **self.admin_site.each_context(request),
            **_job_context(job),
            "opts": self.model._meta,
            "title": f"Catalog import {job.id}",
            "embedding": _embedding_context(job=job),
            "may_delete": self.has_delete_permission(request, job),
        }
        return TemplateResponse(request, "admin/gallery/importjob/detail.html", context)

    def progress_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        """The job's progress block alone, polled by htmx while the job runs."""
        job = self._job_or_404(request, job_id)
        return TemplateResponse(request, "admin/gallery/importjob/_progress.html", _job_context(job))

    def embedding_view(self, request: HttpRequest) -> HttpResponse:
        """The embedding panel alone, polled by htmx while products await embedding (any staff may read it).

        ``?job=<id>``: the panel of that job's page, which polls until the job has ended too.
        """
        raw = request.GET.get("job", "")
        job = ImportJob.objects.filter(id=int(raw)).first() if raw.isdigit() and len(raw) < 19 else None
        context = {"embedding": _embedding_context(job=job)}
        return TemplateResponse(request, "admin/gallery/importjob/_embedding.html", context)


admin.site.site_header = "Visual gallery admin"
admin.site.site_title = "Visual gallery admin"

# The Catalog health pages register themselves (gallery/health_admin.py), as do the shopper events and their
# dashboard (gallery/dashboard.py).
from gallery import dashboard, health_admin  # noqa: E402, F401
