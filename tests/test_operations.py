"""Operations: health endpoints, re-embedding with a new encoder without downtime, index checks, scale-out."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from gallery.models import Product
from gallery.services import catalog_import
from recommender import runtime, services, tasks
from recommender.index import BUILDS_DIR, INDEX_FILE
from recommender.models import Embedding, EmbeddingState, EmbedStatus
from tests.support import ROOT
from tests.support.catalog_files import write_catalog
from tests.support.engine import embed_status, engine_knows
from tests.support.images import SHAPES, jpeg_bytes
from tests.support.processes import free_port, subprocess_env, task_reports, wait_for


@pytest.fixture
def imaged_catalog(tmp_path: Path) -> list[int]:
    """Twelve products with real image files, embedded with the active encoder and indexed."""
    ids = list(range(100, 112))
    lines = [f"{i},Men,Apparel,Topwear,Tshirts,C{i},Summer,2012,Casual,Tshirt {i}" for i in ids]
    images = {i: jpeg_bytes(colour=((i * 37) % 255, (i * 91) % 255, (i * 53) % 255), shape=SHAPES[i % 3]) for i in ids}
    write_catalog(tmp_path / "cat", lines, images)
    catalog_import(directory=tmp_path / "cat", enqueue=False, workers=1)
    services.products_embed(product_ids=list(Product.objects.values_list("id", flat=True)))
    services.index_rebuild()
    return ids


@pytest.mark.django_db
def test_healthz_and_readyz(client, imaged_catalog, redis_db):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "index": "ok"}


@pytest.mark.django_db
def test_readyz_fails_on_a_corrupt_index(client, imaged_catalog):
    directory = runtime.index_dir(runtime.active_space())
    version = (directory / "CURRENT").read_text()
    (directory / BUILDS_DIR / version / INDEX_FILE).write_bytes(b"garbage")
    runtime.reset()

    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["index"] == "error: corrupt"
    assert client.get("/healthz").status_code == 200


@pytest.mark.django_db
def test_reembed_builds_the_new_space_beside_the_old_and_switches(client, imaged_catalog, redis_db):
    old_space = runtime.active_space()
    old_index = runtime.index_reader().current().meta.version
    anchor = imaged_catalog[0]
    before = client.get(f"/api/similar/{anchor}").json()["results"]

    out = io.StringIO()
    call_command("reembed_catalog", "efficientnet-lite0-random", "--no-switch", stdout=out, verbosity=0)
    new_space = runtime.ENCODER_SPACES["efficientnet-lite0-random"]
    # Built beside: all vectors in both spaces, the old space still served.
    assert Embedding.objects.filter(space=new_space).count() == len(imaged_catalog)
    assert Embedding.objects.filter(space=old_space).count() == len(imaged_catalog)
    assert runtime.active_space() == old_space
    assert client.get(f"/api/similar/{anchor}").json()["results"] == before

    call_command("reembed_catalog", "efficientnet-lite0-random", stdout=out, verbosity=0)
    assert "Switched to" in out.getvalue()
    assert runtime.active_space() == new_space
    status = client.get("/api/status").json()
    assert status["encoder"]["space"] == new_space
    assert status["index"]["space"] == new_space and status["index"]["count"] == len(imaged_catalog)
    assert client.get(f"/api/similar/{anchor}").status_code == 200
    # The old space's index is still there for a switch back.
    assert (runtime.index_dir(old_space) / "CURRENT").read_text() == old_index


@pytest.mark.django_db
def test_after_a_switch_the_sweep_queues_products_missing_from_the_new_space(imaged_catalog, redis_db):
    call_command("reembed_catalog", "efficientnet-lite0-random", verbosity=0, stdout=io.StringIO())
    # A product embedded by an old-space worker while the new space was being built.
    Embedding.objects.filter(product_id=imaged_catalog[3], space=runtime.active_space()).delete()

    assert tasks.embed_sweep() == 1
    assert embed_status(imaged_catalog[3]) == EmbedStatus.PENDING


@pytest.mark.django_db
def test_verify_index_reports_consistency_missing_and_corruption(imaged_catalog):
    out = io.StringIO()
    call_command("verify_index", stdout=out)
    assert "consistent" in out.getvalue()
    assert "12/12 sampled vectors identical" in out.getvalue()

    vector = Embedding.objects.get(product_id=imaged_catalog[0], space=runtime.active_space()).as_array()
    Product.objects.create(id=9999, name="New", image_version=1)
    engine_knows(9999)
    services.embedding_store(product_id=9999, image_version=1, space=runtime.active_space(), vector=vector)
    out = io.StringIO()
    call_command("verify_index", stdout=out)
    assert "1 stored vectors not in the index" in out.getvalue()

    directory = runtime.index_dir(runtime.active_space())
    (directory / BUILDS_DIR / (directory / "CURRENT").read_text() / INDEX_FILE).write_bytes(b"x")
    runtime.reset()
    with pytest.raises(CommandError, match="unusable"):
        call_command("verify_index", stdout=io.StringIO())


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


@pytest.mark.django_db(transaction=True)
def test_two_web_processes_switch_to_a_new_build_without_restart(imaged_catalog, tmp_path):
    ports = [free_port(), free_port()]
    webs = [
        subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "--workers", "1"],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=(tmp_path / f"web{port}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for port in ports
    ]
    try:
        first = runtime.index_reader().current().meta.version
        for port in ports:
            wait_for(lambda p=port: _try_status(p), timeout=60, what=f"web on {port}")
            assert _status(port)["index"]["version"] == first

        new = services.index_rebuild().version
        assert new != first
        assert [_status(port)["index"]["version"] for port in ports] == [new, new]
    finally:
        for web in webs:
            web.terminate()
            web.wait(timeout=20)


def _try_status(port: int) -> bool:
    try:
        return bool(_status(port))
    except OSError:
        return False


@pytest.mark.django_db(transaction=True)
def test_two_workers_share_the_work_and_racing_on_one_product_leaves_one_embedding(tmp_path, start_worker):
    ids = list(range(300, 332))
    lines = [f"{i},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Tshirt {i}" for i in ids]
    write_catalog(tmp_path / "c", lines, {i: jpeg_bytes(colour=(i % 255, 90, 40)) for i in ids})
    catalog_import(directory=tmp_path / "c", enqueue=False, workers=1)
    workers = [start_worker(name="alpha"), start_worker(name="beta")]

    for start in range(0, len(ids), 4):
        tasks.embed_products.apply_async(args=[ids[start : start + 4]])
    # The same product queued many times at once: both workers race for it.
    for _ in range(6):
        tasks.embed_products.apply_async(args=[[ids[0]]])

    wait_for(
        lambda: EmbeddingState.objects.filter(product_id__in=ids, status=EmbedStatus.DONE).count() == len(ids),
        timeout=120,
        what="all products embedded",
    )
    assert Embedding.objects.filter(product_id__in=ids, space=runtime.active_space()).count() == len(ids)
    busy = [w for w in workers if re.search(r"embed_products\[.*\] succeeded", w.log.read_text())]
    assert len(busy) == 2  # both workers took tasks
    # 8 batches and 6 duplicates: the claim let exactly one of the 7 deliveries holding ids[0] embed it.
    wait_for(lambda: sum(len(task_reports(w)) for w in workers) == 14, what="every delivery to finish")
    reports = [report for w in workers for report in task_reports(w)]
    assert sum(report["embedded"] for report in reports) == len(ids), reports
