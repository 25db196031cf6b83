"""The seam between the shop and the vector engine: one direction, a small surface, no torch on the web path."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.images import jpeg_bytes
from tests.support.processes import subprocess_env

# What the shop may import of the engine: its public surface and its refusals.
ENGINE_SURFACE = {"recommender.api", "recommender.errors"}
# Lab code runs from commands only.
LAB = "lab"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from x import y`` also counts ``x.y``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _sources(package: str) -> list[Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts]


def test_the_engine_never_imports_the_shop_or_the_lab():
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports(path) if m.split(".")[0] in {"gallery", LAB})
        for path in _sources("recommender")
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_the_shop_calls_the_engine_only_through_its_public_surface():
    offenders = {}
    for path in _sources("gallery"):
        engine = {m for m in _imports(path) if m.split(".")[0] == "recommender"}
        # "from recommender import api" is the surface too.
        beyond = {m for m in engine if m != "recommender" and not any(m.startswith(s) for s in ENGINE_SURFACE)}
        lab = {m for m in _imports(path) if m.split(".")[0] == LAB}
        if beyond or lab:
            offenders[str(path.relative_to(ROOT))] = sorted(beyond | lab)
    assert offenders == {}


WEB_PROCESS = r"""
import json, sys
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
import numpy as np
from django.test import Client
from gallery.models import Product
from recommender import services
from recommender.models import Embedding, EmbeddingState, EmbedStatus
rng = np.random.default_rng(0)
for i in range(1, 41):
    Product.objects.create(id=i, name=f"Blue shirt {i}", article_type="Shirts", base_colour="Blue", image_version=1)
    EmbeddingState.objects.create(product_id=i, image_name=f"p/{i}.jpg", image_version=1, status=EmbedStatus.DONE)
    v = rng.standard_normal(1280).astype("<f4"); v /= np.linalg.norm(v)
    Embedding.objects.create(
        product_id=i, space="efficientnet-lite0-imagenet", dim=1280, vector=v.tobytes(), image_version=1
    )
services.index_rebuild()
client = Client()
answers = {path: client.get(path).status_code for path in
           ["/", "/?q=blue+shirt", "/similar/3/", "/similar/3/?trail=1,p2,n4,3&colour=Blue", "/api/similar/3",
            "/api/search?q=shirt", "/api/status", "/healthz"]}
before = "torch" in sys.modules
photo = client.post("/api/search-by-image", {"image": open(sys.argv[1], "rb")})
print(json.dumps({"answers": answers, "torch_before_photo": before, "photo": photo.status_code,
                  "torch_after_photo": "torch" in sys.modules}))
"""


@pytest.mark.django_db
def test_a_web_process_serves_text_and_clicks_without_importing_torch(tmp_path: Path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_bytes())
    env = subprocess_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'web.sqlite3'}",
        GALLERY_VAR_DIR=str(tmp_path / "var"),
        MEDIA_ROOT=str(tmp_path / "media"),
        INDEX_DIR=str(tmp_path / "index"),
        ALLOWED_HOSTS="testserver",  # the test client's host name
    )
    out = subprocess.run(
        [sys.executable, "-c", WEB_PROCESS, str(photo)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(report["answers"].values()) == {200}, report
    assert report["torch_before_photo"] is False
    # The first photo loads the encoder, once, lazily.
    assert report["photo"] == 200
    assert report["torch_after_photo"] is True
