from __future__ import annotations

import tempfile
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils.html import format_html

from gallery.bulk import BulkUploadRejected, zip_extract_catalog
from gallery.catalog import FIELDS, CatalogError
from gallery.models import Product
from gallery.services import (
    StoredImage,
    catalog_import,
    image_prepare_for_store,
    product_image_set,
    products_embed_enqueue_on_commit,
)
from recommender.preprocess import ImageRejected
from recommender.services import products_mark_pending


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
        fields = ["id", "name", *CATALOG_FIELDS]

    def clean_image_upload(self) -> StoredImage | None:
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
        help_text="A zip holding styles.csv and images/<id>.jpg, the layout import_catalog reads.",
    )


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    form = ProductForm
    list_display = ["id", "preview", "name", "article_type", "base_colour", "gender", "embed_status"]
    list_display_links = ["id", "name"]
    list_filter = ["embed_status", "gender", "master_category", "article_type", "base_colour", "season"]
    search_fields = ["name", "=id"]
    readonly_fields = ["preview", "embed_status", "embed_error", "image_version", "embed_requested_at", "updated_at"]
    actions = ["retry_embedding"]
    list_per_page = 50
    change_list_template = "admin/gallery/product/change_list.html"
    fieldsets = [
        (None, {"fields": ["id", "name", "image_upload", "preview"]}),
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
        ("Embedding", {"fields": ["embed_status", "embed_error", "image_version", "embed_requested_at", "updated_at"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Product | None = None) -> list[str]:
        # The id is the dataset's id, used in URLs and index sidecars: fixed once created.
        return [*self.readonly_fields, "id"] if obj else self.readonly_fields

    @admin.display(description="Image")
    def preview(self, obj: Product) -> str:
        if not obj.thumbnail:
            return "-"
        return format_html('<img src="{}" alt="" style="height:64px;width:auto">', obj.thumbnail.url)

    def save_model(self, request: HttpRequest, obj: Product, form: ProductForm, change: bool) -> None:
        stored = form.cleaned_data.get("image_upload")
        with transaction.atomic():
            changed = stored is not None and product_image_set(product=obj, stored=stored)
            obj.save()
            if changed:
                products_embed_enqueue_on_commit([obj.id])

    def render_change_form(self, request: HttpRequest, context: dict, *args, **kwargs) -> HttpResponse:
        response = super().render_change_form(request, context, *args, **kwargs)
        # A refused upload or field is a client error: say so in the status too.
        if request.method == "POST" and context.get("errors"):
            response.status_code = 400
        return response

    @admin.action(description="Retry embedding of the selected products")
    def retry_embedding(self, request: HttpRequest, queryset) -> None:
        ids = list(queryset.values_list("id", flat=True))
        with transaction.atomic():
            count = products_mark_pending(product_ids=ids)
            products_embed_enqueue_on_commit(ids)
        self.message_user(request, f"{count} products queued for embedding.", messages.SUCCESS)

    def get_urls(self):
        return [
            path("bulk-upload/", self.admin_site.admin_view(self.bulk_upload_view), name="gallery_product_bulk_upload"),
            *super().get_urls(),
        ]

    def bulk_upload_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            return HttpResponse("You may not add products.", status=403)
        form = BulkUploadForm(request.POST or None, request.FILES or None)
        status = 200
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["archive"]
            try:
                if upload.size > settings.BULK_UPLOAD_MAX_BYTES:
                    raise BulkUploadRejected(f"The zip is larger than {settings.BULK_UPLOAD_MAX_BYTES / 1e6:.0f} MB.")
                with tempfile.TemporaryDirectory(prefix="bulk-") as tmp:
                    directory = zip_extract_catalog(upload, destination=Path(tmp))
                    summary = catalog_import(directory=directory, workers=1)
            except (BulkUploadRejected, CatalogError) as exc:
                form.add_error("archive", str(exc))
                status = 400
            else:
                level = messages.WARNING if summary.skipped else messages.SUCCESS
                for line in summary.lines():
                    self.message_user(request, line, level)
                return HttpResponseRedirect(reverse("admin:gallery_product_changelist"))
        elif request.method == "POST":
            status = 400
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "opts": self.model._meta,
            "title": "Bulk upload",
        }
        return render(request, "admin/gallery/product/bulk_upload.html", context, status=status)


admin.site.site_header = "Visual gallery admin"
admin.site.site_title = "Visual gallery admin"
