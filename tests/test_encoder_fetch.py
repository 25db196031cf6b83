"""fetch_encoder_weights: ResNet50 weights fetched once into the torch cache, verified, atomic; offline it moves on.

Every download here is from a server this module starts on 127.0.0.1; anything else fails the test
(``no_network``). The torch hub directory points into tmp_path.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from django.core.management import CommandError, call_command

from gallery.models import Product
from gallery.services import catalog_import
from lab.heads import fit_pca
from recommender import runtime, services
from recommender.models import Embedding
from recommender.spaces import EFFICIENTNET_LITE0_ID, RESNET50_FILENAME, RESNET50_ID
from tests.support.catalog_files import write_catalog
from tests.support.images import jpeg_bytes

# Loopback only (the test Redis); every download function of torch and torchvision fails the test.
pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(autouse=True)
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings) -> Path:
    """A private, empty torch cache; ENCODER=auto with nothing configured, as a fresh install runs."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    settings.ENCODER = "auto"
    settings.RESNET50_WEIGHTS_FILE = ""
    settings.ENCODER_ALLOW_DOWNLOAD = False
    settings.RESNET50_FETCH = True
    settings.ENCODER_BF16 = "off"  # the bf16 agreement check would only add model passes here
    runtime.reset()
    return tmp_path / "torch" / "hub"


def checkpoints(hub: Path) -> list[str]:
    directory = hub / "checkpoints"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def checkpoint_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def published_name(payload: bytes) -> str:
    """torchvision's naming: the first 8 hex digits of the file's sha256 in its name."""
    return f"resnet50-{hashlib.sha256(payload).hexdigest()[:8]}.pth"


class FileServer:
    """An HTTP server on 127.0.0.1 serving ``routes``; ``midway`` runs when half of a body has been sent."""

    def __init__(self, routes: dict[str, bytes], *, midway: Callable[[], None] | None = None, stall: bool = False):
        self.requests: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                half = len(body) // 2
                self.wfile.write(body[:half])
                self.wfile.flush()
                if midway:
                    midway()
                if stall:  # a live connection that stops sending
                    server.release.wait()
                    return
                self.wfile.write(body[half:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., FileServer]]:
    servers: list[FileServer] = []

    def start(routes: dict[str, bytes], **options: object) -> FileServer:
        servers.append(FileServer(routes, **options))  # type: ignore[arg-type]
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def fetch(*args: str) -> str:
    out = io.StringIO()
    call_command("fetch_encoder_weights", *args, stdout=out, verbosity=0)
    return out.getvalue()


SHAPES = ("box", "disc")
SMALL = checkpoint_bytes({"weight": torch.arange(4096, dtype=torch.float32)})


def test_fetch_writes_the_verified_file_atomically_and_auto_then_picks_resnet50(settings, serve, hub):
    name = published_name(SMALL)
    seen_midway: list[list[str]] = []

    def midway() -> None:
        # The client makes its temporary file once the headers arrive; wait for it (bounded), then look.
        for _ in range(2000):
            if any(name.endswith(".part") for name in checkpoints(hub)):
                break
            threading.Event().wait(0.005)
        seen_midway.append(checkpoints(hub))

    server = serve({f"/models/{name}": SMALL}, midway=midway)
    settings.RESNET50_WEIGHTS_URL = server.url(f"/models/{name}")
    assert runtime.encoder_choice().space == EFFICIENTNET_LITE0_ID

    out = fetch()

    assert "ResNet50 weights saved" in out
    # Half-way through, only a hidden temporary file existed: the cache never held part of the file.
    assert len(seen_midway) == 1 and len(seen_midway[0]) == 1
    assert seen_midway[0][0].startswith(f".{RESNET50_FILENAME}.") and seen_midway[0][0].endswith(".part")
    assert checkpoints(hub) == [RESNET50_FILENAME]
    assert (hub / "checkpoints" / RESNET50_FILENAME).read_bytes() == SMALL
    assert runtime.encoder_choice() == runtime.EncoderChoice("resnet50", RESNET50_ID, None)
    # Once there, a later run does not ask the server again.
    assert "ResNet50 weights present" in fetch()
    assert server.requests == [f"/models/{name}"]


@pytest.mark.parametrize(
    ("body", "name", "reason"),
    [
        (SMALL, "resnet50-00000000.pth", "sha256 does not start with 00000000"),
        (b"<html>Sign in to the hotel wifi</html>", None, "not a PyTorch checkpoint"),
    ],
    ids=["wrong-hash", "not-a-checkpoint"],
)
def test_a_file_that_is_not_the_published_one_is_refused_and_nothing_is_kept(settings, serve, hub, body, name, reason):
    name = name or published_name(body)
    server = serve({f"/{name}": body})
    settings.RESNET50_WEIGHTS_URL = server.url(f"/{name}")
    with pytest.raises(CommandError, match=reason) as info:
        fetch()
    assert "nothing kept" in str(info.value)
    assert checkpoints(hub) == []
    assert runtime.encoder_choice().space == EFFICIENTNET_LITE0_ID


def _silent_listener() -> socket.socket:
    """A port that accepts connections (the kernel completes them) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


@pytest.mark.parametrize("server_kind", ["never-answers", "stalls-mid-file", "refuses", "404"])
def test_without_the_file_the_fetch_says_offline_in_one_line_and_succeeds(settings, serve, hub, server_kind):
    name = published_name(SMALL)
    listener = None
    options = ["--connect-timeout", "0.5", "--read-timeout", "0.5"]
    if server_kind == "never-answers":
        listener = _silent_listener()
        # Each read could wait 60 s: it is the deadline on the whole opening that gives up.
        options = ["--connect-timeout", "0.3", "--read-timeout", "60"]
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/{name}"
        expected = "within 0.3 s"
    elif server_kind == "stalls-mid-file":
        url = serve({f"/{name}": SMALL}, stall=True).url(f"/{name}")
        expected = f"the download stopped after {len(SMALL) // 2} bytes"
    elif server_kind == "refuses":
        listener = _silent_listener()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/{name}"
        listener.close()  # nothing listens there any more
        expected = "could not be reached"
    else:
        url = serve({}).url(f"/{name}")
        expected = "HTTP 404"
    settings.RESNET50_WEIGHTS_URL = url
    try:
        out = fetch(*options)  # returns normally: exit status 0, run.sh goes on
    finally:
        if listener:
            listener.close()
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("offline: serving EfficientNet-Lite0; ResNet50 weights not fetched")
    assert expected in lines[0]
    assert checkpoints(hub) == []
    assert runtime.encoder_choice().space == EFFICIENTNET_LITE0_ID


@pytest.mark.parametrize("opt_out", ["ENCODER=efficientnet-lite0", "RESNET50_FETCH=0"])
def test_an_explicit_encoder_or_the_switch_off_means_no_request(settings, serve, hub, opt_out):
    name = published_name(SMALL)
    server = serve({f"/{name}": SMALL})
    settings.RESNET50_WEIGHTS_URL = server.url(f"/{name}")
    if opt_out.startswith("ENCODER"):
        settings.ENCODER = "efficientnet-lite0"
    else:
        settings.RESNET50_FETCH = False
    assert "not fetching ResNet50 weights" in fetch("--switch")
    assert server.requests == []
    assert checkpoints(hub) == []


def test_by_default_nothing_is_fetched_and_weights_already_placed_are_used(settings, serve, hub):
    name = published_name(SMALL)
    server = serve({f"/{name}": SMALL})
    settings.RESNET50_WEIGHTS_URL = server.url(f"/{name}")
    settings.RESNET50_FETCH = False  # the default: run.sh downloads nothing
    out = fetch()
    assert "RESNET50_FETCH is off: not fetching ResNet50 weights; serving EfficientNet-Lite0" in out
    assert server.requests == [] and checkpoints(hub) == []

    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / RESNET50_FILENAME).write_bytes(SMALL)  # an admin places the file
    assert "ResNet50 weights present" in fetch()
    assert server.requests == []


@pytest.mark.django_db
def test_a_site_switched_to_another_lite_variant_keeps_it(hub):
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / RESNET50_FILENAME).write_bytes(SMALL)
    runtime.space_switch_write("efficientnet-lite2-imagenet")
    out = fetch("--switch")
    assert "Still serving efficientnet-lite2-imagenet" in out
    assert runtime.active_space() == "efficientnet-lite2-imagenet"


@pytest.mark.django_db
def test_a_site_serving_a_lite0_head_moves_to_a_complete_resnet50_index(settings, serve, hub, client, tmp_path):
    # An install that ran offline: Lite0 vectors, a head over them served (as run.sh's training does).
    ids = [701, 702, 703, 704]
    write_catalog(
        tmp_path / "cat",
        [f"{i},Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Tshirt {i}" for i in ids],
        {i: jpeg_bytes(colour=(30 + 40 * n, 60, 200 - 30 * n), shape=SHAPES[n % 2]) for n, i in enumerate(ids)},
    )
    catalog_import(directory=tmp_path / "cat", enqueue=False, workers=1)
    services.products_embed(product_ids=ids)
    services.index_rebuild()
    lite0 = np.stack([row.as_array() for row in Embedding.objects.filter(space=EFFICIENTNET_LITE0_ID)])
    head = fit_pca(lite0, dim=3, encoder_id=EFFICIENTNET_LITE0_ID).save(runtime.heads_dir())
    call_command("use_projection", str(head), stdout=io.StringIO())
    served_before = runtime.active_space()
    assert served_before.startswith(EFFICIENTNET_LITE0_ID + "+pca3-")

    # Then the install goes online: the real architecture's weights arrive (random values will do).
    weights = checkpoint_bytes(torchvision.models.resnet50().state_dict())
    name = published_name(weights)
    settings.RESNET50_WEIGHTS_URL = serve({f"/{name}": weights}).url(f"/{name}")
    out = fetch("--switch")

    assert f"Moving the site from {served_before} to {RESNET50_ID}" in out
    assert runtime.active_space() == RESNET50_ID
    status = client.get("/api/status").json()
    assert status["encoder"]["space"] == RESNET50_ID
    assert (status["index"]["space"], status["index"]["count"]) == (RESNET50_ID, len(ids))
    assert Embedding.objects.filter(space=RESNET50_ID, dim=2048).count() == len(ids)
    page = client.get(f"/similar/{ids[0]}/")
    assert page.status_code == 200
    for other in ids[1:]:
        assert f"/similar/{other}/" in page.content.decode()
    similar = client.get(f"/api/similar/{ids[0]}").json()
    assert sorted(hit["id"] for hit in similar["results"]) == ids[1:]
    # The served Lite0 head's index stays for a switch back.
    assert (runtime.index_dir(served_before) / "CURRENT").exists()
    # run.sh's next step trains a head for ResNet50: the Lite0 head does not count as one.
    with pytest.raises(CommandError, match=f"Only {len(ids)} stored vectors in {RESNET50_ID}"):
        call_command("train_embedding_head", "--unless-trained", stdout=io.StringIO(), verbosity=0)
    assert Product.objects.count() == len(ids)
