"""Section ``ingest``: how fast catalogs import, and how long an admin upload takes to become findable.

* Import: ``manage.py import_catalog DIR --no-enqueue`` (a subprocess, as an operator runs it) on the demo
  catalog replicated to 2,000 rows (quick: 200), with --workers 2 (the default) and --workers 1 (on a
  quarter of the rows), into an empty throwaway database; rows/s as the command reports it, beside the
  re-encoding it cannot avoid (``image_prepare_for_store`` of the same images, one process).
* Upload to findable: a real Celery worker (``celery -A config worker --pool prefork --concurrency 1``,
  as tests/conftest.py starts one) on Redis database 12 and the throwaway database, which holds the demo
  catalog embedded and indexed. Each of 20 uploads (quick: 5) is a logged-in staff POST of a new product
  to the admin (the admin's real path: image_prepare_for_store, product_save, embedding queued on
  commit), whose image is a re-encoded copy of an anchor product's; then GET /api/similar/<anchor> is
  polled every 10 ms (Django test client, in this process) until the new product is in the results.
  One warm-up upload first (the worker loads the encoder on its first task) is not counted.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

from bench.common import (
    PYTHON,
    BenchContext,
    SectionResult,
    Summary,
    Table,
    catalog_replicate,
    child_env,
    command_run,
    worker_start,
)

POLL_S = 0.01
FINDABLE_TIMEOUT_S = 90
_SUMMARY = re.compile(r"(\d+) rows in ([\d.]+)s \((\d+) rows/s\)")


def _import(ctx: BenchContext, directory: Path, workers: int) -> dict[str, float]:
    """Run manage.py import_catalog on an empty catalog; its own rows/s and the command's wall time."""
    ctx.reset()
    started = time.perf_counter()
    command = [PYTHON, "manage.py", "import_catalog", str(directory), "--no-enqueue", "--workers", str(workers)]
    stdout = command_run([*command, "-v", "0"], env=child_env(), timeout=1800)
    wall = time.perf_counter() - started
    match = _SUMMARY.search(stdout)
    if not match:
        raise RuntimeError(f"import_catalog printed no summary: {stdout[-2000:]}")
    rows, seconds = int(match.group(1)), float(match.group(2))
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "command_wall_s": wall}


def _reencode_rate(directory: Path, count: int) -> float:
    """Images per second of the work import cannot skip: validate, re-encode, thumbnail (one process)."""
    from django.conf import settings

    from gallery.services import image_prepare_for_store

    paths = sorted((directory / "images").glob("*.jpg"))[:count]
    data = [p.read_bytes() for p in paths]
    started = time.perf_counter()
    for blob in data:
        image_prepare_for_store(data=blob, max_pixels=settings.IMAGE_MAX_PIXELS)
    return len(data) / (time.perf_counter() - started)


def _variant_of(path: Path) -> bytes:
    """The same photo re-encoded (other bytes, the same look): what a shop re-uploads."""
    from PIL import Image

    out = io.BytesIO()
    with Image.open(path) as img:
        img.convert("RGB").save(out, format="JPEG", quality=80)
    return out.getvalue()


def _admin_add(client, product_id: int, image: bytes) -> int:  # noqa: ANN001
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client.post(
        "/admin/gallery/product/add/",
        {
            "id": product_id,
            "name": f"New arrival {product_id}",
            "gender": "Men",
            "master_category": "Apparel",
            "sub_category": "Topwear",
            "article_type": "Tshirts",
            "base_colour": "Red",
            "season": "Summer",
            "year": 2013,
            "usage": "Casual",
            "image_upload": SimpleUploadedFile("photo.jpg", image, content_type="image/jpeg"),
        },
    )
    return response.status_code


def _upload_until_findable(client, anchor: int, product_id: int, image: bytes) -> dict[str, float | None]:  # noqa: ANN001
    """Seconds from the start of the admin POST to: its response, the vector stored, the product in the grid."""
    from recommender.models import EmbeddingState, EmbedStatus

    started = time.perf_counter()
    status = _admin_add(client, product_id, image)
    posted = time.perf_counter() - started
    if status != 302:
        raise RuntimeError(f"admin upload answered {status}")
    embedded = found = None
    while time.perf_counter() - started < FINDABLE_TIMEOUT_S:
        if embedded is None and EmbeddingState.objects.filter(product_id=product_id, status=EmbedStatus.DONE).exists():
            embedded = time.perf_counter() - started
        response = client.get(f"/api/similar/{anchor}")
        if response.status_code == 200 and product_id in {r["id"] for r in response.json()["results"]}:
            found = time.perf_counter() - started
            embedded = embedded or found  # stored by then, whether or not a poll saw it first
            break
        time.sleep(POLL_S)
    return {"post_s": posted, "embedded_s": embedded, "findable_s": found}


def _findable(ctx: BenchContext, uploads: int) -> tuple[Table, dict]:
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.files.storage import default_storage
    from django.test import Client

    from gallery.models import Product

    ids = ctx.demo_catalog_loaded(120 if ctx.quick else 400)
    user = User.objects.create_superuser("bench-admin", "bench@example.com", None)
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    anchors = ids[:: max(1, len(ids) // (uploads + 1))][: uploads + 1]
    images = {
        anchor: _variant_of(Path(default_storage.path(name)))
        for anchor, name in Product.objects.filter(id__in=anchors).values_list("id", "image")
    }
    worker = worker_start(log=ctx.tmp / "worker.log", env=child_env(LOG_LEVEL="INFO"), hostname="bench@%h")
    try:
        worker.wait_log("ready.", timeout=120)
        runs = []
        for number, anchor in enumerate(anchors):
            run = _upload_until_findable(client, anchor, 900_000 + number, images[anchor])
            if number > 0:  # the first one is the warm-up
                runs.append(run)
    finally:
        worker.stop()
    found = [r["findable_s"] for r in runs if r["findable_s"] is not None]
    embedded = [r["embedded_s"] for r in runs if r["embedded_s"] is not None]
    table = Table(
        f"Admin upload to findable ({len(runs)} uploads, catalog of {len(ids)}, one worker, "
        f"ENCODER_BF16={settings.ENCODER_BF16})",
        ["stage (seconds from the start of the POST)", "median", "p90", "max", "uploads"],
    )
    for name, values in (
        ("admin POST answered (302)", [r["post_s"] for r in runs]),
        ("vector stored (status done)", embedded),
        ("in GET /api/similar/<anchor>", found),
    ):
        s = Summary.of(values)
        table.add(name, s.median, s.p90, s.max, s.n)
    table.note = (
        f"polled every {POLL_S * 1000:.0f} ms; {len(runs) - len(found)} never found within {FINDABLE_TIMEOUT_S}s"
    )
    return table, {"runs": runs, "findable": Summary.of(found), "missed": len(runs) - len(found)}


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("ingest")
    rows = 200 if ctx.quick else 2000
    source = ctx.demo_catalog(120 if ctx.quick else 400)
    full = catalog_replicate(source, ctx.tmp / f"replicated-{rows}", rows=rows)
    quarter = catalog_replicate(source, ctx.tmp / f"replicated-{rows // 4}", rows=rows // 4)
    findable_table, findable = _findable(ctx, 5 if ctx.quick else 20)  # first: reuses the http section's catalog
    sample = 50 if ctx.quick else 150
    before = _reencode_rate(source, sample)
    imports = {"workers 2": _import(ctx, full, 2), "workers 1": _import(ctx, quarter, 1)}
    after = _reencode_rate(source, sample)
    reencode = (before + after) / 2
    table = Table(
        f"manage.py import_catalog --no-enqueue (demo catalog of {len(list((source / 'images').glob('*.jpg')))} "
        "images replicated under new ids)",
        ["run", "rows", "rows/s (command's own count)", "command wall s (with start-up)", "x re-encode alone"],
    )
    for name, r in imports.items():
        table.add(name, r["rows"], r["rows_per_s"], r["command_wall_s"], r["rows_per_s"] / reencode)
    table.add("re-encode alone (image_prepare_for_store, one process)", "-", reencode, "-", 1.0)
    table.note = (
        "x re-encode alone: import rows/s over the bare validation + re-encoding rate of one process (measured "
        f"before and after the imports: {before:.0f} and {after:.0f} images/s)"
    )
    result.tables.append(table)

    result.tables.append(findable_table)
    result.notes.append(
        "upload to findable: the new product is served at once through the exact pass over vectors the index "
        "lacks; no index rebuild is involved"
    )
    result.data = {
        "reencode_images_per_s": {"before": before, "after": after},
        "imports": imports,
        "findable": findable,
    }
    ctx.reset()
    return result
