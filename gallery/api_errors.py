"""Every error under ``/api/`` reaches the client as JSON ``{"error": "..."}``.

The views answer their own errors in JSON; this catches the answers made
before or around them: 405 from the method decorators, a refused request body
from the size limit, a CSRF 403, the 500 page. Pages outside ``/api/`` keep
Django's HTML.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus

from django.http import HttpRequest, HttpResponse

API_PREFIX = "/api/"


def api_error_message(*, request: HttpRequest, response: HttpResponse) -> str:
    """The message for a non-JSON error answer: its own short text when it has one, else one per status."""
    status = response.status_code
    if status == 405:
        allowed = response.get("Allow", "")
        return f"{request.method[:20]} is not allowed here; use {allowed}." if allowed else "Method not allowed."
    content_type = response.get("Content-Type", "")
    if content_type.startswith("text/plain"):
        text = response.content.decode("utf-8", errors="replace").strip()
        if 0 < len(text) <= 300:
            return text
    if status >= 500:
        return "The server failed to answer; try again later."
    try:
        return f"{HTTPStatus(status).phrase}."
    except ValueError:
        return "The request failed."


class ApiErrorsAsJson:
    """Rewrites the body of non-JSON 4xx and 5xx answers under /api/ as a JSON error.

    The answer is changed in place, so its status and headers (Allow,
    Retry-After, the security headers set by inner middleware) stay as they were.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code < 400
            or not request.path.startswith(API_PREFIX)
            or response.get("Content-Type", "").startswith("application/json")
            or response.streaming  # no error answer here streams; a file download is left alone
        ):
            return response
        message = api_error_message(request=request, response=response)
        body = json.dumps({"error": message}).encode()
        response.content = body
        response["Content-Type"] = "application/json"
        if "Content-Length" in response:
            response["Content-Length"] = str(len(body))
        return response
