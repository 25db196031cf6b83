"""Index builds delivered to every node: published once to a store, served by each node from its own copy.

The test process is the worker that builds (``services.index_rebuild`` publishes to the store); the
nodes are real gunicorn processes, each with its own INDEX_DIR, fetching from one shared store: a
directory, or an S3 bucket on a local S3 server (moto in server mode, on a loopback port).
Nodes look at the store every 0.5 s here (INDEX_FETCH_INTERVAL_S); every wait below is a poll with
a generous deadline, never a timed assertion.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest

from recommender import delivery, runtime, services
from recommender.delivery import MANIFEST_NAME, DirStore, S3Store, StoreUnavailable, index_fetch
from recommender.index import BUILDS_DIR, INDEX_FILE, META_FILE, VECTORS_FILE, IndexCorrupt, published_version
from tests.support import ROOT
from tests.support.api import openapi_check
from tests.support.processes import free_port, process_group_stop, subprocess_env, wait_for

FETCH_INTERVAL_S = "0.5"
# Both nodes serve a new build within this of its publication (the bound the README states is one
# fetch interval plus the copy; on these loaded 2-core machines a start can take seconds).
DELIVERY_DEADLINE_S = 60
BUCKET = "gallery-index"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
}


# --- A local S3 server -------------------------------------------------------------------


class S3Server:
    """moto's S3 server in its own process on a loopback port: stoppable, to make the store unreachable."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=ROOT,
            env={**os.environ, **AWS_ENV},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._answers, timeout=60, what="the S3 server")
        self.client().create_bucket(Bucket=BUCKET)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):  # noqa: S310 - loopback
                return True
        except OSError:
            return False

    def client(self):  # noqa: ANN201
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def stop(self) -> None:
        if self.process is not None:
            process_group_stop(self.process)


@pytest.fixture
def s3_server(tmp_path: Path, monkeypatch) -> Iterator[S3Server]:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    server = S3Server(tmp_path / "s3.log")
    server.start()
    yield server
    server.stop()


def use_s3(server: S3Server, settings) -> dict[str, str]:  # noqa: ANN001 - pytest-django's settings
    """Point this process (the building worker) at the bucket; returns the same settings for nodes."""
    env = {
        "INDEX_STORE": "s3",
        "INDEX_S3_BUCKET": BUCKET,
        "INDEX_S3_ENDPOINT_URL": server.endpoint,
        "INDEX_S3_REGION": "us-east-1",
        "INDEX_S3_PREFIX": "index/",
        **AWS_ENV,
    }
    settings.INDEX_STORE = "s3"
    settings.INDEX_S3_BUCKET = BUCKET
    settings.INDEX_S3_ENDPOINT_URL = server.endpoint
    settings.INDEX_S3_REGION = "us-east-1"
    settings.INDEX_S3_PREFIX = "index/"
    runtime.reset()
    return env


def use_dir(store: Path, settings) -> dict[str, str]:  # noqa: ANN001 - pytest-django's settings
    settings.INDEX_STORE = f"dir:{store}"
    runtime.reset()
    return {"INDEX_STORE": f"dir:{store}"}


# --- Nodes: real web processes with their own INDEX_DIR ---------------------------------------


class Node:
    """One web node: gunicorn with its own local INDEX_DIR, fetching from the store."""

    def __init__(self, name: str, directory: Path, env: dict[str, str], *, workers: int = 1) -> None:
        self.name = name
        self.index_dir = directory
        self.port = free_port()
        self.log = directory.parent / f"{name}.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "config.wsgi",
                "-b",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            env=subprocess_env(INDEX_DIR=str(directory), INDEX_FETCH_INTERVAL_S=FETCH_INTERVAL_S, **env),
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._answers, timeout=90, what=f"node {name}")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"node {self.name} exited: {self.log.read_text(errors='replace')[-3000:]}")
        try:
            return bool(self.get("/healthz"))
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=20) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def status(self) -> dict:
        return self.get("/api/status")[1]

    def serves(self, version: str) -> bool:
        status = self.status()
        return status["index"] is not None and status["index"].get("version") == version

    def mapped_builds(self) -> set[Path]:
        """The Annoy files the node's web processes have memory-mapped, by path."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False)
        found = set()
        for pid in [self.process.pid, *map(int, out.stdout.split())]:
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            found |= {Path(line.split(None, 5)[5]) for line in maps.splitlines() if line.endswith(f"/{INDEX_FILE}")}
        return found

    def stop(self) -> None:
        process_group_stop(self.process)


@pytest.fixture
def start_nodes(tmp_path: Path) -> Iterator[Callable[..., list[Node]]]:
    nodes: list[Node] = []

    def start(env: dict[str, str]) -> list[Node]:
        # Node a runs two web processes: one fetches (the node's file lock), both switch.
        started = [Node("a", tmp_path / "node-a", env, workers=2), Node("b", tmp_path / "node-b", env)]
        nodes.extend(started)
        return started

    yield start
    for node in nodes:
        node.stop()


def space_dir(base: Path) -> Path:
    return base / runtime.active_space()


def assert_served_locally(node: Node, version: str, store_dirs: tuple[Path, ...] = ()) -> None:
    """The node serves ``version`` from its own INDEX_DIR: a whole local copy, and no file mapped from the store."""
    local = space_dir(node.index_dir)
    assert published_version(local) == version
    assert delivery._local_whole(local, version)
    mapped = node.mapped_builds()
    assert local / BUILDS_DIR / version / INDEX_FILE in mapped, mapped
    assert all(path.is_relative_to(node.index_dir) for path in mapped), mapped
    assert not any(path.is_relative_to(store) for path in mapped for store in store_dirs)


def a_click_answers(node: Node, product_id: int) -> None:
    code, body = node.get(f"/api/similar/{product_id}?k=5")
    assert code == 200, body
    assert len(body["results"]) == 5


# --- Both nodes serve a build published once ---------------------------------------------------


def deliver_twice_and_check(nodes: list[Node], product_id: int, store_dirs: tuple[Path, ...] = ()) -> None:
    first = services.index_rebuild().version
    for node in nodes:
        wait_for(lambda n=node: n.serves(first), timeout=DELIVERY_DEADLINE_S, what=f"node {node.name} on {first}")
        assert_served_locally(node, first, store_dirs)
        a_click_answers(node, product_id)

    second = services.index_rebuild().version  # published once; both nodes switch without a restart
    assert second > first
    for node in nodes:
        wait_for(lambda n=node: n.serves(second), timeout=DELIVERY_DEADLINE_S, what=f"node {node.name} on {second}")
        assert_served_locally(node, second, store_dirs)
        status = node.status()
        assert status["delivery"]["published"] == status["delivery"]["serving"] == second
        assert status["delivery"]["error"] is None and status["delivery"]["behind"] is False
        code, ready = node.get("/readyz")
        assert code == 200 and ready["checks"]["index_delivery"] == "ok", ready
        a_click_answers(node, product_id)


@pytest.mark.django_db(transaction=True)
def test_a_build_published_to_a_shared_directory_is_served_by_both_nodes_from_local_copies(
    settings, tmp_path, demo_catalog_db, start_nodes
):
    store = tmp_path / "store"
    store.mkdir()
    nodes = start_nodes(use_dir(store, settings))
    deliver_twice_and_check(nodes, demo_catalog_db[0], (store,))


@pytest.mark.django_db(transaction=True)
def test_a_build_published_to_s3_is_served_by_both_nodes_from_local_copies(
    settings, demo_catalog_db, s3_server, start_nodes
):
    nodes = start_nodes(use_s3(s3_server, settings))
    deliver_twice_and_check(nodes, demo_catalog_db[0])
    # In the bucket: the builds' files and one pointer naming the newest with every file's checksum.
    space = runtime.active_space()
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"index/{space}/")["Contents"]
    keys = {item["Key"] for item in listed}
    pointer = json.loads(
        s3_server.client().get_object(Bucket=BUCKET, Key=f"index/{space}/{MANIFEST_NAME}")["Body"].read()
    )
    assert pointer["version"] == published_version(runtime.index_dir(space))
    assert {f"index/{space}/{BUILDS_DIR}/{pointer['version']}/{name}" for name in pointer["files"]} <= keys
    assert set(pointer["files"]) >= {INDEX_FILE, VECTORS_FILE, META_FILE}


# --- A node that cannot fetch keeps serving ---------------------------------------------------


def wait_checked_after(node: Node, mark: str) -> dict:
    """The node's status once its fetcher has finished a look at the store begun after ``mark`` (an ISO time).

    A look that finds a newer build writes its status twice: "fetching" before the download, then
    the outcome; only the second says whether the build was switched to or refused.
    """
    return wait_for(
        lambda: (
            (s := node.status())["delivery"]["checked_at"]
            and s["delivery"]["checked_at"] > mark
            and not s["delivery"]["fetching"]
            and s
        ),
        timeout=DELIVERY_DEADLINE_S,
        what=f"node {node.name} to look at the store again",
    )


@pytest.mark.django_db(transaction=True)
def test_nodes_that_cannot_reach_the_store_keep_serving_and_say_so(settings, demo_catalog_db, s3_server, start_nodes):
    nodes = start_nodes(use_s3(s3_server, settings))
    first = services.index_rebuild().version
    for node in nodes:
        wait_for(lambda n=node: n.serves(first), timeout=DELIVERY_DEADLINE_S, what=f"node {node.name} on {first}")

    s3_server.stop()
    for node in nodes:
        wait_for(lambda n=node: n.status()["delivery"]["error"], timeout=DELIVERY_DEADLINE_S, what="the error reported")
        status = node.status()
        assert status["delivery"]["error"].startswith("cannot read the index store"), status["delivery"]
        assert status["delivery"]["serving"] == first and status["index"]["version"] == first
        code, ready = node.get("/readyz")
        # Still ready: the node serves its build; the check says why it cannot follow the store.
        assert code == 200, ready
        assert ready["checks"]["index"] == "ok"
        assert ready["checks"]["index_delivery"].startswith("error: cannot read the index store"), ready
        a_click_answers(node, demo_catalog_db[0])
        assert_served_locally(node, first)


@pytest.mark.django_db(transaction=True)
def test_a_build_whose_file_fails_its_checksum_is_never_switched_to(settings, tmp_path, demo_catalog_db, start_nodes):
    store = tmp_path / "store"
    store.mkdir()
    nodes = start_nodes(use_dir(store, settings))
    first = services.index_rebuild().version
    for node in nodes:
        wait_for(lambda n=node: n.serves(first), timeout=DELIVERY_DEADLINE_S, what=f"node {node.name} on {first}")

    # A newer build lands in the store with one file damaged in transit (same size, other bytes).
    space = runtime.active_space()
    settings.INDEX_STORE = ""
    runtime.reset()
    second = services.index_rebuild().version  # built here only, not published
    stored = store / space / BUILDS_DIR / second
    shutil.copytree(runtime.index_dir(space) / BUILDS_DIR / second, stored)
    vectors = bytearray((stored / VECTORS_FILE).read_bytes())
    vectors[-64:] = bytes(64)
    (stored / VECTORS_FILE).write_bytes(bytes(vectors))
    mark = delivery._now()
    (store / space / "CURRENT").write_text(second)

    for node in nodes:
        status = wait_checked_after(node, mark)
        assert status["delivery"]["error"] == f"index build {second}: {VECTORS_FILE} fails its checksum", status
        assert status["delivery"]["published"] == second and status["delivery"]["serving"] == first
        assert status["delivery"]["behind"] is True and status["index"]["version"] == first
        code, ready = node.get("/readyz")
        assert code == 200 and ready["checks"]["index_delivery"].startswith("error: index build"), ready
        a_click_answers(node, demo_catalog_db[0])
        local = space_dir(node.index_dir)
        assert published_version(local) == first
        assert not (local / BUILDS_DIR / second).exists()
        assert not list((local / BUILDS_DIR).glob(".fetch-*"))  # the damaged copy is not kept either


class CountingStore:
    """A store that counts the files downloaded from it."""

    def __init__(self, store: delivery.Store) -> None:
        self.store, self.kind, self.downloads = store, store.kind, 0

    def pointer_read(self, space: str) -> delivery.Manifest | None:
        return self.store.pointer_read(space)

    def download(self, space: str, version: str, name: str, dest: Path) -> None:
        self.downloads += 1
        self.store.download(space, version, name, dest)


# --- Publication is atomic from a reader's view (in-process: the same fetch the nodes run) ------------


@pytest.mark.django_db
def test_a_half_uploaded_build_is_never_switched_to(settings, tmp_path, demo_catalog_db, s3_server):
    use_s3(s3_server, settings)
    space = runtime.active_space()
    first = services.index_rebuild().version
    node = tmp_path / "node" / space
    assert index_fetch(store=runtime.index_store(), space=space, local=node, keep=2).serving == first

    # A publisher dies midway: some files of a newer build are in the bucket, the pointer is not moved.
    settings.INDEX_STORE = ""
    runtime.reset()
    second = services.index_rebuild().version
    client = s3_server.client()
    local_build = runtime.index_dir(space) / BUILDS_DIR / second
    client.upload_file(str(local_build / INDEX_FILE), BUCKET, f"index/{space}/{BUILDS_DIR}/{second}/{INDEX_FILE}")
    use_s3(s3_server, settings)
    state = index_fetch(store=runtime.index_store(), space=space, local=node, keep=2)
    assert (state.published, state.serving, state.error) == (first, first, None)

    # A pointer naming a build that is not all there (pruned, or written by hand too early): refused.
    manifest = delivery.manifest_of(local_build, second)
    pointer = {"version": second, "files": {n: {"bytes": b, "blake2b": d} for n, (b, d) in manifest.files.items()}}
    client.put_object(Bucket=BUCKET, Key=f"index/{space}/{MANIFEST_NAME}", Body=json.dumps(pointer).encode())
    state = index_fetch(store=runtime.index_store(), space=space, local=node, keep=2)
    assert state.serving == first and published_version(node) == first
    assert state.error.startswith(f"index build {second} is incomplete in the store: no ")
    assert not (node / BUILDS_DIR / second).exists() and not list((node / BUILDS_DIR).glob(".fetch-*"))

    # Refused builds are not downloaded again on every look; a whole build published later is taken.
    counting = CountingStore(runtime.index_store())
    state = index_fetch(store=counting, space=space, local=node, keep=2)
    assert (state.failures, state.serving, counting.downloads) == (2, first, 0)
    third = services.index_rebuild().version
    state = index_fetch(store=runtime.index_store(), space=space, local=node, keep=2)
    assert (state.serving, state.error) == (third, None) and published_version(node) == third


@pytest.mark.django_db
def test_a_node_keeps_the_newest_builds_and_drops_older_ones(tmp_path, demo_catalog_db, settings):
    settings.INDEX_KEEP_BUILDS = 1
    store = tmp_path / "store"
    store.mkdir()
    use_dir(store, settings)
    space = runtime.active_space()
    node = tmp_path / "node" / space
    versions = []
    for _ in range(4):
        versions.append(services.index_rebuild().version)
        assert index_fetch(store=runtime.index_store(), space=space, local=node, keep=1).serving == versions[-1]
    kept = sorted(p.name for p in (node / BUILDS_DIR).iterdir())
    assert kept == versions[-2:]  # the served build and one before it, for the processes still mapping it
    assert sorted(p.name for p in (store / space / BUILDS_DIR).iterdir()) == versions[-2:]


@pytest.mark.django_db
def test_a_damaged_local_copy_is_fetched_again(settings, tmp_path, demo_catalog_db):
    store = tmp_path / "store"
    store.mkdir()
    use_dir(store, settings)
    space = runtime.active_space()
    version = services.index_rebuild().version
    node = tmp_path / "node" / space
    index_fetch(store=runtime.index_store(), space=space, local=node, keep=2)
    with (node / BUILDS_DIR / version / VECTORS_FILE).open("r+b") as fh:
        fh.truncate(100)

    state = index_fetch(store=runtime.index_store(), space=space, local=node, keep=2)
    assert (state.serving, state.error) == (version, None)
    assert delivery._local_whole(node, version)


# --- The worker that builds -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_build_the_store_missed_is_published_by_the_next_sync(settings, tmp_path, demo_catalog_db):
    store = tmp_path / "store"
    use_dir(store, settings)  # not there yet: an unmounted share
    space = runtime.active_space()
    with pytest.raises(StoreUnavailable, match="not there"):
        services.index_rebuild()
    version = published_version(runtime.index_dir(space))  # built and served here all the same
    assert version is not None

    store.mkdir()
    state = services.index_sync(publish=True)
    assert published_version(store / space) == version
    assert (state.published, state.serving, state.error) == (version, version, None)
    # A node fetching from that store gets it whole.
    assert index_fetch(store=DirStore(store), space=space, local=tmp_path / "n" / space, keep=2).serving == version


@pytest.mark.django_db
def test_one_machine_copies_nothing(client, demo_catalog_db, settings):
    settings.INDEX_STORE = f"dir:{settings.INDEX_DIR}"
    runtime.reset()
    assert runtime.index_store() is None
    version = services.index_rebuild().version
    assert published_version(runtime.index_dir(runtime.active_space())) == version
    assert not list(settings.INDEX_DIR.rglob(delivery.STATUS_FILE))
    assert client.get("/api/status").json()["delivery"] is None
    assert "index_delivery" not in client.get("/readyz").json()["checks"]


def test_a_pointer_naming_paths_outside_a_build_is_refused():
    with pytest.raises(IndexCorrupt):
        delivery.manifest_check(delivery.Manifest("../../etc", {INDEX_FILE: (1, "x"), META_FILE: (1, "y")}))
    with pytest.raises(IndexCorrupt):
        delivery.manifest_check(delivery.Manifest("20260101T000000000000-abc", {"../x": (1, "x"), META_FILE: (1, "y")}))


def test_the_s3_store_reports_an_unreachable_endpoint(monkeypatch):
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    bucket = boto3.resource("s3", endpoint_url=endpoint, region_name="us-east-1").Bucket(BUCKET)
    with pytest.raises(StoreUnavailable, match="cannot read the index store"):
        S3Store(bucket, "index/").pointer_read("space")


@pytest.mark.django_db
def test_a_space_switch_published_to_the_store_is_followed_by_a_node(settings, tmp_path, client, demo_catalog_db):
    from django.core.management import call_command

    from lab.heads import fit_pca
    from recommender.models import Embedding

    store = tmp_path / "store"
    store.mkdir()
    use_dir(store, settings)
    worker_dir, node_dir = settings.INDEX_DIR, tmp_path / "node"
    raw = runtime.active_space()
    services.index_rebuild()

    def on(directory: Path) -> None:
        settings.INDEX_DIR = directory
        runtime.reset()

    on(node_dir)
    assert services.index_sync().serving == published_version(store / raw)

    # On the worker's machine: a PCA head is served (projected, indexed, published, switched).
    on(worker_dir)
    vectors = np.stack([row.as_array() for row in Embedding.objects.filter(space=raw)])
    head = fit_pca(vectors, dim=8, encoder_id=raw).save(runtime.heads_dir())
    call_command("use_projection", str(head), stdout=io.StringIO())
    projected = runtime.active_space()
    assert projected.startswith(raw + "+pca8-")

    on(node_dir)
    assert runtime.active_space() == raw  # until its fetcher looks
    state = services.index_sync()
    assert runtime.active_space() == projected
    assert (runtime.heads_dir() / head.name).read_bytes() == head.read_bytes()
    assert state.serving == published_version(store / projected) == published_version(node_dir / projected)
    response = client.get("/api/status")
    status = response.json()
    assert status["index"]["space"] == projected and status["delivery"]["serving"] == state.serving
    openapi_check(client.get("/api/openapi.json").json(), "/api/status", "get", response)  # as the API describes it
    assert client.get(f"/api/similar/{demo_catalog_db[0]}?k=5").status_code == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INDEX_STORE": "nfs"}, "INDEX_STORE must be empty, dir:/absolute/path or s3, not 'nfs'"),
        ({"INDEX_STORE": "dir:relative/path"}, "INDEX_STORE must be empty, dir:/absolute/path or s3"),
        ({"INDEX_STORE": "s3"}, "INDEX_STORE=s3 needs INDEX_S3_BUCKET"),
        ({"INDEX_FETCH_INTERVAL_S": "0"}, "INDEX_FETCH_INTERVAL_S must be positive"),
    ],
)
def test_bad_store_settings_stop_start_up_with_a_clear_message(env, message):
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
