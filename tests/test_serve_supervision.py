"""`manage.py serve` supervises its children: a real serve process, its helpers killed with SIGKILL one at a time.

Each test starts `serve` (embedded Redis, worker, scheduler, web server) on a free
port, finds its children by the "started NAME (pid N)" lines it logs, checks them
against serve's process tree in /proc, and kills one. The dead child must come
back while the site keeps answering, and a product stored afterwards must still
be embedded (the scheduler's sweep queues it, the worker embeds it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gallery.services import catalog_import
from tests.support import ROOT
from tests.support.catalog_files import write_catalog
from tests.support.engine import embedded
from tests.support.images import jpeg_bytes
from tests.support.processes import free_port, subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

START_TIMEOUT_S = 90
STARTED = re.compile(r"serve: started (\w+) \(pid (\d+)\)")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgrp: int
    session: int
    state: str


def proc_table() -> dict[int, Proc]:
    """Every process on the machine, from /proc/<pid>/stat."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        # The command name may hold spaces and parentheses: the fields start after the last ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = Proc(int(entry.name), int(fields[1]), int(fields[2]), int(fields[3]), fields[0])
    return table


def descendants(root: int, table: dict[int, Proc] | None = None) -> set[int]:
    """The pids below ``root`` by parent links (not counting root), living ones only."""
    table = proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for pid in children.get(stack.pop(), []):
            if pid not in found and table[pid].state != "Z":
                found.add(pid)
                stack.append(pid)
    return found


def alive(pids: set[int], sessions: set[int]) -> list[Proc]:
    """Processes that are not zombies and are one of ``pids`` or belong to one of ``sessions``."""
    return [p for p in proc_table().values() if p.state != "Z" and (p.pid in pids or p.session in sessions)]


def get_json(url: str) -> dict | None:
    """The JSON body of a GET, error statuses included; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return None


@dataclass
class Serve:
    process: subprocess.Popen
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self, name: str) -> list[int]:
        """The pids serve logged for child ``name``, oldest first."""
        return [int(pid) for child, pid in STARTED.findall(self.output()) if child == name]

    def child(self, name: str) -> int:
        """The pid of the running ``name`` child, checked to be in serve's process tree."""
        pid = self.pids(name)[-1]
        assert pid in descendants(self.process.pid), (name, pid, self.output()[-3000:])
        return pid

    def healthy(self) -> bool:
        return (get_json(f"{self.base}/healthz") or {}).get("status") == "ok"

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """A real `manage.py serve` on a free port with an embedded Redis and a 2-second embedding sweep."""
    port = free_port()
    env = subprocess_env(
        DJANGO_SETTINGS_MODULE="config.settings",
        GALLERY_VAR_DIR=str(tmp_path / "var"),
        EMBED_SWEEP_INTERVAL_S="2",
        EMBED_STALE_AFTER_S="0",
    )
    env.pop("REDIS_URL")  # an embedded Redis, as the README's one-command stack runs
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port), "--web-workers", "1"],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Serve(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_for(running.healthy, timeout=START_TIMEOUT_S, what="the site to answer")
        wait_for(
            lambda: all(running.pids(n) for n in ("redis", "worker", "beat", "web")), timeout=10, what="4 children"
        )
        yield running
    finally:
        sessions = {process.pid} | {p.pid for p in proc_table().values() if p.pid in descendants(process.pid)}
        try:
            running.stop()
        except subprocess.TimeoutExpired:
            pass
        for proc in alive(set(), sessions):  # never leave a process behind, even when the test failed
            os.kill(proc.pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.wait()


def store_product(tmp_path: Path, product_id: int) -> None:
    """A product stored without a queue message: only the scheduler's sweep can get it embedded."""
    write_catalog(
        tmp_path / f"cat-{product_id}",
        [f"{product_id},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Tshirt {product_id}"],
        {product_id: jpeg_bytes(colour=(199, 31, 29), shape="disc")},
    )
    catalog_import(directory=tmp_path / f"cat-{product_id}", enqueue=False, workers=1)


def kill_and_wait_for_restart(serve: Serve, name: str, *, timeout: float = 60) -> tuple[int, int, list[bool]]:
    """SIGKILL child ``name``; returns its old and new pid and the /healthz answers polled meanwhile."""
    old = serve.child(name)
    os.kill(old, signal.SIGKILL)
    answers: list[bool] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and serve.pids(name)[-1] == old:
        assert serve.process.poll() is None, serve.output()[-3000:]
        answers.append(serve.healthy())
        time.sleep(0.2)
    new = serve.pids(name)[-1]
    assert new != old, f"{name} was not restarted: {serve.output()[-3000:]}"
    assert f"{name} (pid {old}) exited with code -9" in serve.output()
    return old, new, answers


def test_serve_restarts_a_killed_scheduler_and_the_site_keeps_answering(serve: Serve, tmp_path: Path):
    worker = serve.child("worker")
    web = serve.child("web")
    _old, new, answers = kill_and_wait_for_restart(serve, "beat")

    assert answers and all(answers), answers
    assert serve.child("beat") == new
    # Only the scheduler was restarted.
    assert (serve.child("worker"), serve.child("web")) == (worker, web)
    store_product(tmp_path, 8101)
    wait_for(lambda: embedded(8101), timeout=90, what="the restarted scheduler's sweep to get the product embedded")
    assert serve.healthy()


def test_serve_restarts_a_killed_worker_without_leaving_its_pool_behind(serve: Serve, tmp_path: Path):
    old = serve.child("worker")
    pool = wait_for(lambda: descendants(old), timeout=60, what="the worker's pool process")
    web = serve.child("web")
    _old, new, answers = kill_and_wait_for_restart(serve, "worker")

    assert all(answers), answers
    assert serve.child("web") == web
    # The dead worker's pool processes went with it (they were left running before).
    wait_for(lambda: not alive(pool, {old}), timeout=10, what="the dead worker's pool to be gone")
    store_product(tmp_path, 8102)
    wait_for(lambda: embedded(8102), timeout=90, what="the restarted worker to embed the product")
    assert serve.child("worker") == new


def test_serve_restarts_a_killed_redis_and_a_product_stored_meanwhile_is_embedded(serve: Serve, tmp_path: Path):
    web = serve.child("web")
    old = serve.child("redis")
    os.kill(old, signal.SIGKILL)
    store_product(tmp_path, 8103)  # stored while Redis is down

    wait_for(lambda: serve.pids("redis")[-1] != old, timeout=60, what="Redis to be restarted")
    assert f"redis (pid {old}) exited with code -9" in serve.output()
    assert serve.process.poll() is None
    ready = wait_for(
        lambda: (get_json(f"{serve.base}/readyz") or {}).get("checks", {}).get("redis") == "ok",
        timeout=30,
        what="the site to see Redis again",
    )
    assert ready
    assert serve.healthy()
    assert serve.child("web") == web  # the web server is not restarted for a dead helper
    wait_for(lambda: embedded(8103), timeout=120, what="the product stored while Redis was down to be embedded")


def test_sigterm_stops_serve_and_every_process_of_its_tree(serve: Serve):
    serve.child("worker")
    table = proc_table()
    tree = descendants(serve.process.pid, table)
    sessions = {table[pid].session for pid in tree} | {serve.process.pid}
    assert len(tree) >= 5, tree  # redis, worker and its pool, beat, web and its worker

    started = time.monotonic()
    code = serve.stop(timeout=60)

    assert code == 0, serve.output()[-3000:]
    assert time.monotonic() - started < 45
    assert "Stopping" in serve.output()
    assert alive(tree, sessions) == []
