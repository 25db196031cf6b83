from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve

from gallery.health import healthz, readyz
from gallery.metrics import metrics

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    # Prometheus; only for the scrapers METRICS_TOKEN or METRICS_ALLOWED_NETWORKS let in (404 for others).
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("", include("gallery.urls")),
]
if settings.SERVE_MEDIA:
    # One-machine installs serve product images themselves; production puts a
    # front server or object storage in front of MEDIA_URL.
    urlpatterns += [re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT})]

handler404 = "gallery.views.not_found"
handler400 = "gallery.views.bad_request"
handler500 = "gallery.views.server_error"
