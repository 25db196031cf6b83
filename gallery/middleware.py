"""Refuse oversize request bodies before a byte of them is read."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size < 10e6 else f"{size / 1e6:.0f} MB"


class RequestSizeLimit:
    """413 for bodies larger than the endpoint accepts, judged from Content-Length.

    Django limits form fields but not file uploads; without this a client
    could make the server spool gigabytes to disk before any validation ran.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return HttpResponse("Bad Content-Length.", status=400, content_type="text/plain")
        limit = self.limit_for(request.path)
        if length > limit:
            message = f"The upload is too large: {megabytes(length)}, the limit is {megabytes(limit)}."
            if request.path.startswith("/api/"):
                return JsonResponse({"error": message}, status=413)
            return HttpResponse(message, status=413, content_type="text/plain")
        return self.get_response(request)

    @staticmethod
    def limit_for(path: str) -> int:
        if path.startswith("/admin/gallery/product/bulk-upload/"):
            return settings.BULK_UPLOAD_MAX_BYTES
        # One image plus the form around it.
        return settings.IMAGE_MAX_BYTES + 256 * 1024
