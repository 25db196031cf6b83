"""Locust shoppers for the http section (run by bench/http_bench.py, one scenario per locust run).

Environment: BENCH_DATA (JSON: ids, trails, search queries, photo files, the trivial path), BENCH_SCENARIO
(trivial, status, search, click, trail or photo), BENCH_TIMES (where each
request's name, latency in ms, status and error flag are written as JSON when locust quits: exact
latencies, where locust's own CSV rounds them). Users never wait between requests.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from urllib.parse import urlencode

from locust import FastHttpUser, constant, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import multipart  # noqa: E402

DATA = json.loads(Path(os.environ["BENCH_DATA"]).read_text())
SCENARIO = os.environ["BENCH_SCENARIO"]
PHOTOS = [Path(p).read_bytes() for p in DATA["photos"]]
_records: list[tuple[str, float, int, bool]] = []


@events.request.add_listener
def _record(name: str, response_time: float, exception: object = None, response: object = None, **_: object) -> None:
    status = getattr(response, "status_code", 0) or 0
    _records.append((name, float(response_time), int(status), exception is not None))


@events.quitting.add_listener
def _dump(**_: object) -> None:
    Path(os.environ["BENCH_TIMES"]).write_text(json.dumps(_records))


class Shopper(FastHttpUser):
    wait_time = constant(0)

    def trivial(self) -> None:
        self.client.get(DATA["trivial_path"], name="trivial")

    def status(self) -> None:
        self.client.get("/api/status", name="status")

    def search(self) -> None:
        self.client.get("/api/search?" + urlencode({"q": random.choice(DATA["queries"])}), name="search")

    def click(self) -> None:
        self.client.get(f"/api/similar/{random.choice(DATA['ids'])}", name="click")

    def trail(self) -> None:
        a, b, c, d = random.choice(DATA["trails"])
        self.client.get(f"/api/similar/{a}?" + urlencode({"trail": f"{a},p{b},p{c},n{d}"}), name="trail")

    def photo(self) -> None:
        body, content_type = multipart("image", "photo.jpg", random.choice(PHOTOS))
        self.client.post("/api/search-by-image", data=body, headers={"Content-Type": content_type}, name="photo")

    @task
    def one(self) -> None:
        getattr(self, SCENARIO)()
