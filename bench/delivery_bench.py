"""Index delivery: from a build's publication to every node serving it from its own copy.

Usage: ``.venv/bin/python bench/delivery_bench.py [--count 44446] [--dim 1280] [--store dir,s3] [--builds 3]``.

A worker builds an index of ``count`` random unit vectors (the product's ``index_build``) and publishes
it with ``recommender.delivery.build_publish`` to a store: a directory, or an S3 bucket on a local S3
server (moto in server mode on a loopback port, ``requirements-dev.txt``). Two node processes run the
product's fetch (``index_fetch``, every 0.5 s as INDEX_FETCH_INTERVAL_S would) into their own
directories and, once their pointer flips, load the build as a web process does (``IndexReader``:
mmap, the Annoy file's checksum) and answer one query. Reported per build: the publish time (files
and pointer), and from the pointer's write to each node answering from the new build. Needs no
Django; prints a table and writes ``bench/results/delivery.json``. Nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Service, free_port, http_status, wait_until  # noqa: E402
from recommender.delivery import DirStore, S3Store, build_publish, index_fetch  # noqa: E402
from recommender.index import IndexReader, index_build  # noqa: E402

SPACE = "bench-space"
INTERVAL_S = 0.5
BUCKET = "bench-index"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
}


def store_open(kind: str, where: str) -> DirStore | S3Store:
    if kind == "dir":
        return DirStore(Path(where))
    import boto3

    return S3Store(boto3.resource("s3", endpoint_url=where, region_name="us-east-1").Bucket(BUCKET), "index/")


def node_main(kind: str, where: str, local: str, builds: int) -> None:
    """A node: fetch every INTERVAL_S; on each new build, load it as a web process does and query it once."""
    store = store_open(kind, where)
    directory = Path(local) / SPACE
    reader = IndexReader(directory)
    seen: set[str] = set()
    while len(seen) < builds:
        state = index_fetch(store=store, space=SPACE, local=directory, keep=2)
        if state is not None and state.serving and state.serving not in seen:
            loaded = reader.current()
            loaded.query(np.ones(loaded.meta.dim, dtype=np.float32) / np.sqrt(loaded.meta.dim), n=25)
            seen.add(state.serving)
            print(json.dumps({"version": state.serving, "serving_at": time.time()}), flush=True)
        time.sleep(INTERVAL_S)


def s3_server_start(log: Path) -> tuple[Service, str]:
    import boto3

    port = free_port()
    server = Service("moto S3 server", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                     log=log, env={**os.environ, **AWS_ENV})  # fmt: skip
    wait_until(lambda: http_status(port, "/moto-api/", timeout=2) == 200, timeout=30, what="the S3 server")
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return server, endpoint


def run(kind: str, *, count: int, dim: int, builds: int, work: Path) -> list[dict[str, object]]:
    os.environ.update(AWS_ENV)
    server = None
    if kind == "s3":
        server, where = s3_server_start(work / "s3.log")
    else:
        where = str(work / "store")
        Path(where).mkdir()
    nodes = [
        subprocess.Popen(
            [sys.executable, __file__, "--node", kind, where, str(work / f"node-{n}"), str(builds)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )
        for n in range(2)
    ]
    store = store_open(kind, where)
    rng = np.random.default_rng(7)
    rows = []
    try:
        for b in range(builds):
            vectors = rng.standard_normal((count, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ids = np.arange(1, count + 1, dtype=np.int64)
            started = time.perf_counter()
            meta = index_build(
                directory=work / "worker" / SPACE,
                vectors=vectors,
                product_ids=ids,
                embedding_ids=ids + b * count,
                space=SPACE,
                n_trees=10,
                search_k=-1,
                watermark=int(ids[-1] + b * count),
            )
            built = time.perf_counter() - started
            started = time.perf_counter()
            build_publish(store=store, space=SPACE, local=work / "worker" / SPACE, version=meta.version, keep=2)
            published_at = time.time()
            publish_s = time.perf_counter() - started
            serving = []
            for node in nodes:
                line = json.loads(node.stdout.readline())
                assert line["version"] == meta.version, line
                serving.append(round(line["serving_at"] - published_at, 2))
            rows.append(
                {
                    "store": kind,
                    "count": count,
                    "dim": dim,
                    "build_bytes": sum(int(f["bytes"]) for f in meta.files.values()),
                    "build_s": round(built, 2),
                    "publish_s": round(publish_s, 2),
                    "pointer_to_node_serving_s": serving,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for node in nodes:
            node.kill()
            node.wait()
        if server is not None:
            server.stop()
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--node":
        node_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=44_446)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--store", default="dir,s3")
    parser.add_argument("--builds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for kind in args.store.split(","):
        with tempfile.TemporaryDirectory(prefix="delivery-bench-") as work:
            rows += run(kind, count=args.count, dim=args.dim, builds=args.builds, work=Path(work))
    out = ROOT / "bench" / "results" / "delivery.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
