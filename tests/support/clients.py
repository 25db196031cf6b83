"""Requests as shoppers and staff make them: the photo search, the admin forms, the bulk upload."""

from __future__ import annotations

import io
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client


def admin_product_form(product_id: int, image: bytes | None = None, **fields: object) -> dict[str, object]:
    """The admin's add/change form for a product, with an image upload when ``image`` is given."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    form: dict[str, object] = {
        "id": product_id,
        "name": "Uploaded product",
        "gender": "Men",
        "master_category": "Apparel",
        "sub_category": "Topwear",
        "article_type": "Tshirts",
        "base_colour": "Red",
        "season": "Summer",
        "year": 2013,
        "usage": "Casual",
    }
    form.update(fields)
    if image is not None:
        name = str(form.pop("filename", "photo.jpg"))
        content_type = str(form.pop("content_type", "image/jpeg"))
        form["image_upload"] = SimpleUploadedFile(name, image, content_type=content_type)
    return form


def staff_user(*, superuser: bool = True, staff: bool = True, username: str = "admin") -> User:
    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.com", "pw-admin-123")
    return User.objects.create_user(username, f"{username}@example.com", "pw-user-123", is_staff=staff)


def media_files() -> set[str]:
    root = Path(settings.MEDIA_ROOT)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def photo_api(client: Client, data: bytes, *, name: str = "photo.jpg", content_type: str = "image/jpeg", **fields):
    """POST to the photo API; upper-case keywords (REMOTE_ADDR, HTTP_...) go to the WSGI environ, others are fields."""
    environ = {key: value for key, value in fields.items() if key.isupper()}
    form = {key: value for key, value in fields.items() if not key.isupper()}
    return client.post(
        "/api/search-by-image", {"image": SimpleUploadedFile(name, data, content_type=content_type), **form}, **environ
    )


def photo_page(client: Client, data: bytes, *, name: str = "photo.jpg", content_type: str = "image/jpeg", **extra):
    return client.post(
        "/search-by-image", {"image": SimpleUploadedFile(name, data, content_type=content_type)}, **extra
    )


ADMIN_ADD = "/admin/gallery/product/add/"
BULK = "/admin/gallery/product/bulk-upload/"


def admin_add(client: Client, product_id: int, data: bytes, *, name: str = "photo.jpg", content_type="image/jpeg"):
    return client.post(ADMIN_ADD, admin_product_form(product_id, data, filename=name, content_type=content_type))


def bulk_upload(client: Client, data: bytes, *, name: str = "catalog.zip"):
    return client.post(BULK, {"archive": SimpleUploadedFile(name, data, content_type="application/zip")})


class CountingInput(io.BytesIO):
    """A wsgi.input that counts what the application read from it."""

    read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = super().readline(size)
        self.read_bytes += len(data)
        return data


def wsgi_post(
    path: str, *, content_length: str, body: bytes = b"--x\r\n", cookie: str = ""
) -> tuple[str, dict, bytes, CountingInput]:
    """A multipart POST claiming ``content_length`` straight into the WSGI handler (the test client would set
    the real length): (status, headers, answer body, the input, which counts what was read)."""
    stream = CountingInput(body)
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "multipart/form-data; boundary=x",
        "CONTENT_LENGTH": content_length,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": stream,
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    answer: dict[str, object] = {}

    def start_response(status, headers, exc_info=None):  # noqa: ANN001, ANN202
        answer["status"] = status
        answer["headers"] = dict(headers)

    body_out = b"".join(WSGIHandler()(environ, start_response))
    return str(answer["status"]), answer["headers"], body_out, stream
