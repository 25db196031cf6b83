"""A published build damaged under the running site: never read, answered, and rebuilt by the sweep.

Reading a page past the end of a mapped file that shrank kills the process with SIGBUS, so these
tests never let the code under test touch a cut mapping in this process: they assert it is refused
before use, and run the one click that would fault in a subprocess, which must exit normally.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from django.core.cache import cache

from recommender import api, runtime, selectors, services, tasks
from recommender import index as index_module
from recommender.index import (
    BUILDS_DIR,
    COLOURS_FILE,
    INDEX_FILE,
    META_FILE,
    SKETCH_BASIS_FILE,
    SKETCH_FILE,
    VECTORS_FILE,
    IndexCorrupt,
    IndexReader,
    LoadedIndex,
    index_build,
    index_files_verify,
    published_version,
)
from tests.support import ROOT
from tests.support.engine import clustered, demo_rows_store
from tests.support.processes import subprocess_env

MAPPED = [INDEX_FILE, VECTORS_FILE, COLOURS_FILE]
# Every LoadedIndex method that reads a memory mapping.
MAPPING_READS = ["query_items", "scores_of", "vectors_of", "colours_of", "item_vector"]


def cut(path: Path, keep: float = 0.5) -> None:
    """Truncate ``path`` in place (the same file, as a damaged disk or a copy over it would)."""
    os.truncate(path, int(path.stat().st_size * keep))


def small_build(directory: Path, n: int = 300, dim: int = 32):
    vectors = clustered(n, dim)
    colours = np.abs(clustered(n, 8, seed=1))
    meta = index_build(
        directory=directory,
        vectors=vectors,
        product_ids=np.arange(1000, 1000 + n),
        embedding_ids=np.arange(1, n + 1),
        space="test-space",
        n_trees=5,
        search_k=-1,
        watermark=n,
        colours=colours,
    )
    return meta, vectors


def build_file(directory: Path, name: str) -> Path:
    return directory / BUILDS_DIR / published_version(directory) / name


def never_read_mappings(monkeypatch) -> list[str]:
    """Make every mapping read fail the test loudly; returns the list the reads would be recorded in."""
    calls: list[str] = []
    for name in MAPPING_READS:

        def forbidden(self, *args, _name=name, **kwargs):
            calls.append(_name)
            raise AssertionError(f"{_name} read a mapping of a damaged build")

        monkeypatch.setattr(LoadedIndex, name, forbidden)
    return calls


# --- The reader -------------------------------------------------------------------------


def test_publish_records_every_files_size_and_checksum(tmp_path: Path):
    meta, _ = small_build(tmp_path)
    raw = json.loads((tmp_path / BUILDS_DIR / meta.version / META_FILE).read_text())
    assert set(raw["files"]) == {INDEX_FILE, "items.npy", VECTORS_FILE, COLOURS_FILE}
    for name, info in raw["files"].items():
        assert info["bytes"] == build_file(tmp_path, name).stat().st_size
        assert len(info["blake2b"]) == 32
    assert index_files_verify(tmp_path, meta.version, checksum=True)


@pytest.mark.parametrize("name", MAPPED)
@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_file_cut_under_a_running_reader_is_refused_before_its_mapping_is_read(
    tmp_path: Path, monkeypatch, name: str, keep: float
):
    meta, vectors = small_build(tmp_path)
    reader = IndexReader(tmp_path)
    served = reader.current()
    assert served.query(vectors[0], n=5)[0].product_id == 1000
    assert served.damage() is None

    cut(build_file(tmp_path, name), keep)
    reads = never_read_mappings(monkeypatch)

    assert served.damage() and name in served.damage()
    with pytest.raises(IndexCorrupt, match=name):
        reader.current()
    with pytest.raises(IndexCorrupt):
        reader.current()  # refused again, from the files' unchanged signature
    assert reader._loaded is None
    assert reads == []
    with pytest.raises(IndexCorrupt, match=name):
        index_files_verify(tmp_path, meta.version, checksum=False)


def test_a_refused_build_is_not_read_again_on_every_query(tmp_path: Path, monkeypatch):
    small_build(tmp_path)
    reader = IndexReader(tmp_path)
    reader.current()
    cut(build_file(tmp_path, VECTORS_FILE))
    loads: list[str] = []
    real_init = LoadedIndex.__init__

    def counting_init(self, *args, **kwargs):
        loads.append("load")
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(LoadedIndex, "__init__", counting_init)
    for _ in range(5):
        with pytest.raises(IndexCorrupt):
            reader.current()
    assert loads == ["load"]


def test_a_build_restored_in_place_is_served_again(tmp_path: Path):
    _, vectors = small_build(tmp_path)
    reader = IndexReader(tmp_path)
    reader.current()
    path = build_file(tmp_path, INDEX_FILE)
    whole = path.read_bytes()
    cut(path)
    with pytest.raises(IndexCorrupt):
        reader.current()
    path.write_bytes(whole)
    assert reader.current().query(vectors[3], n=1)[0].product_id == 1003


def test_a_same_size_change_is_caught_by_the_checksum_of_the_files(tmp_path: Path):
    meta, _ = small_build(tmp_path)
    path = build_file(tmp_path, VECTORS_FILE)
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF
    path.write_bytes(bytes(data))
    index_files_verify(tmp_path, meta.version, checksum=False)  # sizes alone cannot see it
    with pytest.raises(IndexCorrupt, match="checksum"):
        index_files_verify(tmp_path, meta.version, checksum=True)


def test_the_per_query_check_stats_each_mapped_file_once_and_reads_none(tmp_path: Path, monkeypatch):
    small_build(tmp_path)
    reader = IndexReader(tmp_path)
    loaded = reader.current()
    mapped = len(loaded._mapped)
    stats: list[int] = []
    real_fstat = os.fstat
    monkeypatch.setattr(index_module.os, "fstat", lambda fd: stats.append(fd) or real_fstat(fd))

    def no_digest(*args: object) -> str:
        raise AssertionError("the per-query check read a whole file")

    monkeypatch.setattr(index_module, "_stream_digest", no_digest)
    monkeypatch.setattr(index_module, "_file_digest", no_digest)
    assert loaded.damage() is None
    assert len(stats) == mapped  # one fstat per mapped file: bounded work, whatever the build's size
    stats.clear()
    assert reader.current() is loaded  # the served build, checked, not loaded again
    assert len(stats) == mapped


# --- A click --------------------------------------------------------------------------


def published_file(name: str) -> Path:
    return build_file(runtime.index_dir(runtime.active_space()), name)


@pytest.mark.django_db
@pytest.mark.parametrize("name", MAPPED)
def test_a_click_after_a_build_file_is_cut_is_answered_without_reading_the_build(
    client, demo_catalog_db, demo_vectors, monkeypatch, name: str
):
    pid = demo_catalog_db[20]
    before = client.get(f"/api/similar/{pid}", {"k": "10"})
    assert before.status_code == 200
    assert runtime.index_reader().current() is not None  # this process has the build mapped

    cut(published_file(name))
    reads = never_read_mappings(monkeypatch)

    # A catalog small enough for the exact fallback: the same grid, from the stored vectors.
    after = client.get(f"/api/similar/{pid}", {"k": "10"})
    assert after.status_code == 200
    assert [r["id"] for r in after.json()["results"]] == [r["id"] for r in before.json()["results"]]
    assert client.get(f"/similar/{pid}/").status_code == 200

    # One too large for it: 503 with Retry-After, never a dropped connection.
    monkeypatch.setattr(selectors, "EXACT_FALLBACK_MAX", 5)
    refused = client.get(f"/api/similar/{pid}")
    assert refused.status_code == 503
    assert refused["Retry-After"]
    assert "try again in a minute" in refused.json()["error"]
    assert client.get(f"/similar/{pid}/").status_code == 503
    assert reads == []


CLICK_AFTER_CUT = """
import os, sys
import django
django.setup()
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()  # ALLOWED_HOSTS takes the test client's host
from recommender import runtime

pid, name = int(sys.argv[1]), sys.argv[2]
client = Client()
print("before", client.get(f"/api/similar/{pid}").status_code, flush=True)
directory = runtime.index_dir(runtime.active_space())
version = (directory / "CURRENT").read_text().strip()
path = directory / "builds" / version / name
os.truncate(path, 4096)  # under this process's mapping, as a damaged disk would
for _ in range(3):
    print("after", client.get(f"/api/similar/{pid}").status_code, flush=True)
"""


@pytest.fixture
def committed_catalog(transactional_db, demo_dir, demo_vectors, demo_colours) -> list[int]:
    """The demo catalog committed (other processes see it), with an index built."""
    from gallery.catalog import styles_read

    rows = [row for row in styles_read(demo_dir / "styles.csv") if hasattr(row, "fields")]
    ids = demo_rows_store(rows, demo_vectors, demo_colours)
    services.index_rebuild()
    return ids


@pytest.mark.parametrize("name", [INDEX_FILE, VECTORS_FILE])
def test_a_process_whose_build_is_cut_while_serving_answers_every_click_and_lives(committed_catalog, name: str):
    pid = committed_catalog[20]
    done = subprocess.run(
        [sys.executable, "-c", CLICK_AFTER_CUT, str(pid), name],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    killed = f" (killed by {signal.Signals(-done.returncode).name})" if done.returncode < 0 else ""
    assert done.returncode == 0, f"exit {done.returncode}{killed}: {done.stderr[-3000:]}"
    lines = done.stdout.split()
    assert lines[:2] == ["before", "200"]
    # A small catalog: answered exactly from the database while the build is damaged.
    assert lines[2:] == ["after", "200"] * 3, done.stdout


# --- The sweep repairs ----------------------------------------------------------------


@pytest.fixture
def worker_runs_builds(monkeypatch) -> list[str]:
    """Run a requested build_index at once, as a worker would on receiving it; returns the reasons."""
    reasons: list[str] = []

    def deliver(*args, kwargs=None, **options):
        reasons.append(kwargs["reason"])
        tasks.build_index(**kwargs)

    monkeypatch.setattr(tasks.build_index, "apply_async", deliver)
    return reasons


@pytest.mark.django_db
@pytest.mark.parametrize("name", MAPPED)
def test_the_sweep_rebuilds_a_build_cut_under_it_and_clicks_come_back(
    client, demo_catalog_db, redis_db, worker_runs_builds, monkeypatch, name: str
):
    pid = demo_catalog_db[20]
    monkeypatch.setattr(selectors, "EXACT_FALLBACK_MAX", 5)  # too large to search exactly: 503 until repaired
    assert client.get(f"/api/similar/{pid}").status_code == 200
    damaged = runtime.index_reader().current().meta.version  # the sweep's process holds the build too
    tasks.embed_sweep()
    assert worker_runs_builds == []  # a sound build is left alone

    cut(published_file(name))
    with pytest.raises(IndexCorrupt):
        runtime.index_reader().current()  # refused here, never read (a click would answer 503 meanwhile)
    cache.delete(tasks.BUILD_REQUESTED)
    tasks.embed_sweep()  # as beat runs it, every EMBED_SWEEP_INTERVAL_S

    assert worker_runs_builds == ["published index unusable"]
    assert runtime.index_reader().current().meta.version != damaged
    restored = client.get(f"/api/similar/{pid}")
    assert restored.status_code == 200
    assert restored.json()["results"]


@pytest.mark.django_db
def test_the_sweep_finds_a_same_size_change_by_checksum_and_rebuilds(
    demo_catalog_db, redis_db, worker_runs_builds, monkeypatch
):
    tasks._index_checksummed.clear()
    digests: list[str] = []
    real_digest = index_module._file_digest
    monkeypatch.setattr(index_module, "_file_digest", lambda path: digests.append(path.name) or real_digest(path))
    tasks.embed_sweep()
    assert sorted(digests) == sorted(
        ["items.npy", INDEX_FILE, VECTORS_FILE, COLOURS_FILE, SKETCH_FILE, SKETCH_BASIS_FILE]
    )
    digests.clear()
    tasks.embed_sweep()
    assert digests == []  # files unchanged since their checksums passed: sizes only

    path = published_file(VECTORS_FILE)
    damaged = published_version(path.parent.parent.parent)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    time.sleep(0.01)  # a new mtime even on coarse clocks
    path.write_bytes(bytes(data))
    tasks.embed_sweep()

    assert worker_runs_builds == ["published index unusable"]
    assert published_version(path.parent.parent.parent) != damaged


def test_a_real_worker_with_beat_rebuilds_a_build_cut_under_it_without_an_operator(
    client, committed_catalog, start_worker
):
    from tests.support.processes import wait_for

    directory = runtime.index_dir(runtime.active_space())
    damaged = published_version(directory)
    worker = start_worker(name="repairer", EMBED_SWEEP_INTERVAL_S="2", beat=True)
    wait_for(
        lambda: "recommender.embed_sweep" in worker.log.read_text() and "succeeded" in worker.log.read_text(),
        timeout=60,
        what="a first sweep over the sound build",
    )
    assert published_version(directory) == damaged

    cut(directory / BUILDS_DIR / damaged / VECTORS_FILE)
    wait_for(lambda: published_version(directory) != damaged, timeout=120, what="the sweep to rebuild the build")

    restored = client.get(f"/api/similar/{committed_catalog[20]}")
    assert restored.status_code == 200
    assert restored.json()["results"]
    assert "published index unusable" in worker.log.read_text()


@pytest.mark.django_db
def test_a_build_holding_another_spaces_vectors_is_refused_by_the_one_reader():
    """Vectors of two encoders are never compared: the one reader refuses such a build, and every caller
    says so its own way (statuses name the build's space, queries and metrics count it as none)."""
    space = runtime.active_space()
    vectors = clustered(40, 16)
    index_build(
        directory=runtime.index_dir(space),
        vectors=vectors,
        product_ids=np.arange(1, 41),
        embedding_ids=np.arange(1, 41),
        space=f"not-{space}",
        n_trees=2,
        search_k=-1,
        watermark=40,
    )
    with pytest.raises(selectors.IndexOfAnotherSpace, match=f"holds not-{space} vectors"):
        selectors.published_index()
    assert api.index_health() == f"error: built for not-{space}"
    assert api.engine_metrics().index_vectors == 0
    assert selectors.index_status()["index"]["matches_active_space"] is False
    assert selectors.searchable_index(space) is None
    assert tasks.vectors_outside_index() == -1
