"""Helpers shared by the benchmarks: environment, machine description, timing, tables, data, processes.

Nothing here measures anything by itself. The sections (``bench/*_bench.py``) import what they need;
``bench/run.py`` sets the environment up with :func:`environment_prepare` *before* Django is imported, so
every benchmark runs against a throwaway SQLite file, media and index directories under a temporary
directory and Redis database 12, never a developer's ``var/``. Every benchmark starts the web server as the
Procfile runs it (:func:`web_start`), a Celery worker with :func:`worker_start`, and times HTTP requests with
:class:`HttpClient`: one client after another (:func:`one_client`) or several at once (:func:`many_clients`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, astuple, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
PYTHON = sys.executable
BENCH_REDIS_URL = "redis://127.0.0.1:6379/12"
ENCODER_NAME = "efficientnet-lite0"
DEMO_SEED = 7
SERVED_DIM = 1280  # the served encoder's (EfficientNet-Lite0) vectors
SERVED_TREES = 40  # INDEX_N_TREES default


# --- Environment --------------------------------------------------------------------------------------------


# Variables that would change the product's defaults: a benchmark measures the defaults unless it sets one.
PRODUCT_DEFAULTS = (
    "SECRET_KEY", "ENCODER_BF16", "ENCODER_THREADS", "INDEX_N_TREES", "INDEX_SEARCH_K", "EMBEDDING_HEAD",
)  # fmt: skip


def bench_env(*, var: Path, database_url: str, redis_url: str = BENCH_REDIS_URL, prefix: str = "gallery-bench",
              media: Path | None = None, index: Path | None = None, **extra: str) -> dict[str, str]:  # fmt: skip
    """The environment of a process running the product on throwaway state: this process's, less
    PRODUCT_DEFAULTS, with every variable that selects data overridden (never inherited: a developer's
    DATABASE_URL or MEDIA_ROOT in the shell cannot leak into a benchmark), media and index under ``var``
    unless given, and ``extra``."""
    env = {name: value for name, value in os.environ.items() if name not in PRODUCT_DEFAULTS}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "GALLERY_ENV": "local",
            "ENCODER": ENCODER_NAME,
            "REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": prefix,
            "GALLERY_VAR_DIR": str(var),
            "DATABASE_URL": database_url,
            "MEDIA_ROOT": str(media or var / "media"),
            "INDEX_DIR": str(index or var / "index"),
            "STATIC_ROOT": str(var / "staticfiles"),
            "LOG_LEVEL": "WARNING",
            "DEBUG": "0",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


def environment_prepare(tmp: Path) -> dict[str, str]:
    """Point this process (and every child it starts) at throwaway state under ``tmp`` (see bench_env): a
    SQLite file, media and index directories and Redis database 12; call before django.setup()."""
    var = tmp / "var"
    var.mkdir(parents=True, exist_ok=True)
    env = bench_env(var=var, database_url=f"sqlite:///{var / 'bench.sqlite3'}")
    for name in PRODUCT_DEFAULTS:
        os.environ.pop(name, None)
    os.environ.update(env)
    return env


def django_setup() -> None:
    """Import Django with the prepared environment and create the throwaway database's tables."""
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a worker, web server or probe process: this process's, plus ``extra``."""
    env = os.environ.copy()
    env.update(extra)
    return env


def redis_flush(url: str = BENCH_REDIS_URL) -> None:
    """Empty one Redis database (the benchmark's, 12, unless told) and nothing else."""
    import redis

    redis.Redis.from_url(url).flushdb()


def catalog_reset() -> None:
    """Drop every product, vector, stored image and index build, and the per-process singletons."""
    from django.conf import settings

    from gallery.models import Product
    from recommender import runtime
    from recommender.models import Embedding

    Embedding.objects.all().delete()
    Product.objects.all().delete()
    for directory in (Path(settings.MEDIA_ROOT), Path(settings.INDEX_DIR)):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
    runtime.reset()


@contextlib.contextmanager
def settings_set(**values: object) -> Iterator[None]:
    """Override Django settings for a block and reload the encoder and index singletons around it."""
    from django.conf import settings

    from recommender import runtime

    old = {name: getattr(settings, name) for name in values}
    for name, value in values.items():
        setattr(settings, name, value)
    runtime.reset()
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(settings, name, value)
        runtime.reset()


# --- Machine ------------------------------------------------------------------------------------------------


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model, flags


def _meminfo_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return 0.0


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_describe() -> dict[str, Any]:
    """CPU model, cores, RAM, relevant CPU flags, load and library versions: what results depend on."""
    import torch

    model, flags = _cpuinfo()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_gib": _meminfo_gib(),
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "annoy": _version("annoy"),
        "faiss": _version("faiss-cpu"),
        "numpy": _version("numpy"),
        "scikit-learn": _version("scikit-learn"),
        "scipy": _version("scipy"),
        "pillow": _version("pillow"),
        "django": _version("django"),
        "gunicorn": _version("gunicorn"),
        "locust": _version("locust"),
        "celery": _version("celery"),
        "git_commit": commit,
    }


# --- Timing ---------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


@dataclass(frozen=True)
class Summary:
    """Order statistics of repeated timings, in the unit they were given in."""

    n: int
    median: float
    p90: float
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan)
        return cls(
            n=len(values),
            median=float(statistics.median(values)),
            p90=percentile(values, 90),
            p95=percentile(values, 95),
            p99=percentile(values, 99),
            mean=float(statistics.fmean(values)),
            max=float(max(values)),
        )


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str = "it") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# --- Tables and results -------------------------------------------------------------------------------------


def fmt(value: object, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant figures, everything else as str."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 10 ** (digits - 1):
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if magnitude >= 1e-3 else f"{value:.2e}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return str(value)


@dataclass
class Table:
    """One printed table: a title, column names and rows of raw values (formatted only when shown)."""

    title: str
    columns: list[str]
    rows: list[list[object]] = field(default_factory=list)
    note: str = ""

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def text(self) -> str:
        cells = [self.columns, *([fmt(c) for c in row] for row in self.rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title, "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells[1:]]
        if self.note:
            lines.append(f"  ({self.note})")
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in self.rows]
        if self.note:
            lines += ["", f"_{self.note}_"]
        return "\n".join(lines)


@dataclass
class Target:
    """A stated goal and whether this run met it (reported, never asserted)."""

    name: str
    goal: str
    measured: str
    met: bool | None  # None: could not be measured in this run


@dataclass
class SectionResult:
    """What a section hands back: tables to print, targets, notes, and raw numbers for the JSON file."""

    name: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def _tables_with_targets(self) -> list[Table]:
        if not self.targets:
            return list(self.tables)
        table = Table("Targets", ["target", "goal", "measured", "met"])
        for t in self.targets:
            table.add(t.name, t.goal, t.measured, "n/a" if t.met is None else t.met)
        return [*self.tables, table]

    def text(self) -> str:
        parts = [t.text() for t in self._tables_with_targets()] + [f"note: {n}" for n in self.notes]
        return "\n\n".join(parts)

    def markdown(self) -> str:
        parts = [t.markdown() for t in self._tables_with_targets()] + [f"- {n}" for n in self.notes]
        return "\n\n".join(parts)

    def write(self, directory: Path, *, quick: bool, machine: dict[str, Any], command: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        payload = {
            "section": self.name,
            "quick": quick,
            "command": command,
            "finished_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 1),
            "machine": machine,
            "tables": [asdict(t) for t in self.tables],
            "targets": [asdict(t) for t in self.targets],
            "notes": self.notes,
            "data": self.data,
        }
        path.write_text(json.dumps(payload, indent=2, default=_json_default))
        return path


def outputs_arguments(parser: argparse.ArgumentParser) -> None:
    """--json and --markdown: where a script writes every number and its tables, besides printing them."""
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here as Markdown")


def outputs_write(args: argparse.Namespace, *, tables: Sequence[Table], data: dict, started: float) -> None:
    """The run's time in ``data``, then the tables as Markdown (--markdown) and every number as JSON (--json)."""
    data["seconds"] = round(time.perf_counter() - started, 1)
    if args.markdown:
        args.markdown.write_text("\n\n".join(table.markdown() for table in tables) + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[arg-type]
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --- Context shared by the sections of one run --------------------------------------------------------------


@dataclass
class BenchContext:
    """One run: mode, the temporary directory, and data made once and reused by later sections."""

    quick: bool
    tmp: Path
    results_dir: Path
    # Index builds kept for later sections: (N, dim, n_trees) -> (index directory, IndexMeta).
    builds: dict[tuple[int, int, int], tuple[Path, Any]] = field(default_factory=dict)
    _catalogs: dict[int, Path] = field(default_factory=dict)
    _loaded: int | None = None  # the demo catalog the database holds, embedded and indexed, if any

    def demo_catalog(self, count: int) -> Path:
        """The demo catalog of ``count`` products (styles.csv + images/), drawn once per run."""
        if count not in self._catalogs:
            from lab.demo import demo_catalog_write

            directory = self.tmp / f"demo-{count}"
            demo_catalog_write(out_dir=directory, count=count, seed=DEMO_SEED)
            self._catalogs[count] = directory
        return self._catalogs[count]

    def demo_catalog_loaded(self, count: int) -> list[int]:
        """The database holding the demo catalog of ``count``, embedded and indexed (by product code).

        Reuses the state a previous section left when it is that catalog; returns the embedded ids.
        """
        from recommender import state
        from recommender.models import EmbedStatus

        if self._loaded != count:
            catalog_load(self.demo_catalog(count))
            self._loaded = count
        return state.states_ids(status=EmbedStatus.DONE)

    def reset(self) -> None:
        """An empty catalog (see catalog_reset)."""
        catalog_reset()
        self._loaded = None


def catalog_replicate(source: Path, target: Path, *, rows: int, id_offset: int = 100_000) -> Path:
    """A catalog of ``rows`` rows made by repeating ``source``'s rows under new ids (images hard-linked).

    Each copy of an image is a separate product, so import and embedding do all their work for it.
    """
    lines = (source / "styles.csv").read_text(encoding="utf-8").splitlines()
    header, body = lines[0], [line for line in lines[1:] if line.strip()]
    (target / "images").mkdir(parents=True, exist_ok=True)
    out = [header]
    for i in range(rows):
        line = body[i % len(body)]
        old_id, rest = line.split(",", 1)
        new_id = id_offset + i
        out.append(f"{new_id},{rest}")
        destination = target / "images" / f"{new_id}.jpg"
        if not destination.exists():
            try:
                os.link(source / "images" / f"{old_id}.jpg", destination)
            except OSError:
                shutil.copyfile(source / "images" / f"{old_id}.jpg", destination)
    (target / "styles.csv").write_text("\n".join(out) + "\n", encoding="utf-8")
    return target


def catalog_load(directory: Path) -> None:
    """Import ``directory`` into an emptied catalog, embed it and publish an index, all through product code."""
    from gallery.models import Product
    from gallery.services import catalog_import
    from recommender import services

    catalog_reset()
    catalog_import(directory=directory, enqueue=False, workers=2)
    services.products_embed(product_ids=list(Product.objects.values_list("id", flat=True)))
    services.index_rebuild()


def vectors_store(vectors: np.ndarray, *, first_id: int = 1, name: str = "Product {}",
                  colours: Sequence[str] | None = None, chunk: int = 2000) -> list[int]:  # fmt: skip
    """Products ``first_id``.. with one vector each (row i: ``vectors[i]``, colour ``colours[i]``), in bulk, as
    embed_catalog leaves them (embedded; a transaction per ``chunk``); returns their ids."""
    from django.db import transaction

    from gallery.models import Product
    from recommender import runtime
    from recommender.models import Embedding, EmbeddingState, EmbedStatus

    space = runtime.active_space()
    ids = list(range(first_id, first_id + len(vectors)))
    for start in range(0, len(ids), chunk):
        rows = range(start, min(len(ids), start + chunk))
        with transaction.atomic():
            Product.objects.bulk_create(
                [Product(id=ids[r], name=name.format(ids[r]), base_colour=colours[r] if colours is not None else "",
                         image_version=1) for r in rows]
            )  # fmt: skip
            EmbeddingState.objects.bulk_create(
                [EmbeddingState(product_id=ids[r], image_name=f"bench/{ids[r]}.jpg", image_version=1,
                                status=EmbedStatus.DONE) for r in rows]
            )  # fmt: skip
            Embedding.objects.bulk_create(
                [Embedding(product_id=ids[r], space=space, dim=vectors.shape[1],
                           vector=vectors[r].astype("<f4").tobytes(), image_version=1) for r in rows]
            )  # fmt: skip
    return ids


def multipart(field_name: str, filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body holding one JPEG file field, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# --- Processes -----------------------------------------------------------------------------------------------


def command_run(command: Sequence[str], *, env: dict[str, str], timeout: float | None = None, nice: bool = False,
                log: Callable[[str], None] | None = None) -> str:  # fmt: skip
    """Run a child command (``nice -n 10`` with ``nice``) in the repository to its end; its stdout.

    Raises RuntimeError with the tail of its output when it fails; ``log`` gets the last lines of its stderr.
    """
    argv = ["nice", "-n", "10", *command] if nice else list(command)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if log:
        for line in done.stderr.strip().splitlines()[-5:]:
            log(f"    {line}")
    if done.returncode != 0:
        shown = " ".join(Path(word).name if i < 2 else word for i, word in enumerate(command[:4]))
        raise RuntimeError(f"{shown} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def process_memory(pid: int, *, mapping: str = "vectors.ann") -> dict[str, Any]:
    """A process's memory in MB: every field of /proc/<pid>/smaps_rollup (``rollup``: Rss, Pss, Private_Clean,
    Anonymous, ...), the same fields summed over its mappings of files named ``*mapping`` (``mapping``: the
    index by default), and whether libtorch is mapped (``torch``). Empty when the process is gone."""
    rollup: dict[str, float] = {}
    mapped: dict[str, float] = {}
    torch = inside = False
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            head = line.split()
            if len(head) >= 2 and head[1].isdigit():
                rollup[head[0].rstrip(":")] = int(head[1]) / 1024
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                inside = line.rstrip().endswith(mapping)
                torch = torch or "libtorch" in line
            elif inside and len(head) >= 2 and head[1].isdigit():
                mapped[head[0].rstrip(":")] = mapped.get(head[0].rstrip(":"), 0.0) + int(head[1]) / 1024
    return {"rollup": rollup, "mapping": mapped, "torch": torch}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A child process in its own session (so it and its children stop together), logging to a file."""

    def __init__(self, name: str, command: list[str], *, log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("ab")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_log(self, marker: str, *, timeout: float) -> None:
        """Wait until ``marker`` appears in the log; raises with the log's tail if the process dies first."""

        def seen() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            return marker in self.log.read_text(errors="replace")

        wait_until(seen, timeout=timeout, interval=0.2, what=f"{self.name} to log {marker!r}")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM this service's own process group, SIGKILL it if it lingers."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._fh.close()


def web_command(port: int, **options: str | None) -> list[str]:
    """The Procfile's ``web`` command (gunicorn), bound to 127.0.0.1:``port`` instead of every interface.

    ``options`` replace its flags by name (``workers="2"`` for ``--workers 2``); None drops a flag (and its
    value): ``access_logfile=None`` serves without the access log.
    """
    line = next(ln for ln in (ROOT / "Procfile").read_text().splitlines() if ln.startswith("web:"))
    words = shlex.split(line.partition(":")[2].replace("${PORT:-8000}", str(port)))
    words[0] = str(Path(PYTHON).parent / words[0])
    flags = {"--" + name.replace("_", "-"): value for name, value in options.items()}
    out, i = words[:2], 2
    while i < len(words):
        flag, value = words[i], words[i + 1]
        i += 2
        flag = "--bind" if flag == "-b" else flag
        if flag == "--bind":
            value = f"127.0.0.1:{port}"
        value = flags.pop(flag, value)
        if value is not None:
            out += [flag, value]
    for flag, value in flags.items():
        if value is not None:
            out += [flag, value]
    return out


def web_start(*, log: Path, env: dict[str, str], name: str = "gunicorn", timeout: float = 120,
              **options: str | None) -> tuple[Service, int]:  # fmt: skip
    """Start :func:`web_command` on a free port and wait until /healthz answers 200: (the server, its port)."""
    port = free_port()
    server = Service(name, web_command(port, **options), log=log, env=env)
    wait_until(lambda: http_status(port, "/healthz") == 200 or not server.alive(), timeout=timeout, what=name)
    if not server.alive():
        raise RuntimeError(f"{name} exited: {server.log_tail()}")
    return server, port


def worker_start(*, log: Path, env: dict[str, str], hostname: str, loglevel: str = "INFO",
                 beat_schedule: Path | None = None) -> Service:  # fmt: skip
    """One Celery worker (prefork, concurrency 1, as the tests start it; with beat when ``beat_schedule``)."""
    command = [PYTHON, "-m", "celery", "-A", "config", "worker", "--pool", "prefork", "--concurrency", "1",
               "--hostname", hostname, "--loglevel", loglevel, "--without-gossip", "--without-mingle"]  # fmt: skip
    if beat_schedule is not None:
        command += ["--beat", "--schedule", str(beat_schedule)]
    return Service(f"celery worker ({hostname})", command, log=log, env=env)


# --- The HTTP client ------------------------------------------------------------------------------------------


def server_timing(header: str | None) -> dict[str, float]:
    """The stages of a ``Server-Timing`` header (``db;dur=1.204, index;dur=3.1``) as {name: ms}."""
    return {match[1]: float(match[2]) for match in re.finditer(r"(\w+);dur=([\d.]+)", header or "")}


# The stages a request's time is split into (config/timing.py), in the order a request passes them.
STAGES = ("parse", "search", "decode", "encode", "db", "vectors", "index", "rank", "cache", "cards", "render", "other")


def stages_ordered(seen: Iterable[str]) -> list[str]:
    """The stage names ``seen``, in the order of STAGES; any other a server names after them."""
    seen = set(seen)
    return [*[name for name in STAGES if name in seen], *sorted(seen - set(STAGES))]


def stages_mean(splits: list[dict[str, float]]) -> dict[str, float]:
    """Mean ms per stage over requests' splits (a stage a request did not name counts 0 in it)."""
    names = sorted({name for split in splits for name in split})
    return {name: sum(split.get(name, 0.0) for split in splits) / len(splits) for name in names}


class HttpClient:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:``port``, reopened when the server closes it.

    ``stages`` is the last answer's ``Server-Timing`` split (empty unless the server sends one: SERVER_TIMING).
    """

    def __init__(self, port: int, *, timeout: float = 120) -> None:
        self.port = port
        self.timeout = timeout
        self.reconnects = 0
        self.stages: dict[str, float] = {}
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: Iterable[tuple[str, str]] = ()) -> tuple[int, float, bytes]:  # fmt: skip
        """(status, wall ms, body); status 0 when the request failed twice."""
        self.stages = {}
        for attempt in (0, 1):
            started = time.perf_counter()
            try:
                self._connection.request(method, path, body=body, headers={"Host": "127.0.0.1", **dict(headers)})
                response = self._connection.getresponse()
                data = response.read()
                ms = (time.perf_counter() - started) * 1e3
                self.stages = server_timing(response.getheader("Server-Timing"))
                return response.status, ms, data
            except (OSError, http.client.HTTPException):
                self._connection.close()
                self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.reconnects += attempt == 0
        return 0, (time.perf_counter() - started) * 1e3, b""

    def close(self) -> None:
        self._connection.close()


@dataclass(frozen=True)
class Request:
    """One HTTP request as a benchmark sends it."""

    method: str
    path: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


def _results_count(body: bytes) -> int | None:
    with contextlib.suppress(ValueError, TypeError, KeyError):
        return len(json.loads(body)["results"])
    return None


def one_client(port: int, kind: Any, *, warm: int, count: int, seed: int) -> dict:
    """``warm`` requests, then ``count`` timed ones, one after another on one connection: wall ms each.

    ``kind`` draws each request (``kind.draw(rng) -> Request``); with ``kind.api`` the answers' JSON
    ``results`` are counted. ``stages``: the mean ms per stage of the answers' ``Server-Timing`` (empty
    when the server sends none).
    """
    rng = random.Random(seed)
    client = HttpClient(port)
    try:
        for _ in range(warm):
            client.send(*astuple(kind.draw(rng)))
        times, statuses, results, splits = [], Counter(), [], []
        for _ in range(count):
            status, ms, body = client.send(*astuple(kind.draw(rng)))
            times.append(ms)
            statuses[status] += 1
            if client.stages:
                splits.append(client.stages)
            if kind.api and status == 200:
                results.append(_results_count(body))
    finally:
        client.close()
    counted = [r for r in results if r is not None]
    return {
        "times": times,
        "summary": Summary.of(times),
        "statuses": dict(statuses),
        "errors": sum(n for status, n in statuses.items() if status == 0 or status >= 400),
        "results_median": sorted(counted)[len(counted) // 2] if counted else None,
        "reconnects": client.reconnects,
        "stages": stages_mean(splits) if splits else {},
    }


def many_clients(port: int, kind: Any, *, clients: int, seconds: float, seed: int) -> dict:
    """``clients`` threads, each on its own connection, sending ``kind.draw(rng)`` without pause for ``seconds``."""
    stop = time.perf_counter() + seconds
    records: list[list[tuple[int, float]]] = [[] for _ in range(clients)]
    reconnects = [0] * clients

    def loop(number: int) -> None:
        rng = random.Random(seed * 100 + number)
        client = HttpClient(port)
        try:
            client.send(*astuple(kind.draw(rng)))  # opens the connection, off the clock
            while time.perf_counter() < stop:
                status, ms, _ = client.send(*astuple(kind.draw(rng)))
                records[number].append((status, ms))
        finally:
            reconnects[number] = client.reconnects
            client.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done = [r for rows in records for r in rows]
    return {
        "times": [ms for _, ms in done],
        "summary": Summary.of([ms for _, ms in done]),
        "rate": len(done) / elapsed,
        "errors": sum(1 for status, _ in done if status == 0 or status >= 400),
        "statuses": dict(Counter(status for status, _ in done)),
        "reconnects": sum(reconnects),
        "seconds": elapsed,
    }


def http_status(port: int, path: str, *, method: str = "GET", body: bytes | None = None,
                headers: Iterable[tuple[str, str]] = (), timeout: float = 60) -> int:  # fmt: skip
    """The status of one request on a connection of its own; 0 when there was no answer."""
    client = HttpClient(port, timeout=timeout)
    try:
        return client.send(method, path, body, headers)[0]
    finally:
        client.close()


# --- Skewed traffic -----------------------------------------------------------------------------------------

# Real traffic is skewed: a few products draw most clicks. Anchors are drawn Zipf(s) over a fixed random order.
ZIPF_S = 1.1


def zipf_picker(items: Sequence[Any], *, s: float = ZIPF_S, seed: int = 3) -> Callable[[random.Random], Any]:
    """A draw from ``items`` with Zipf(``s``) popularity over a fixed (seeded) random order of them."""
    order = np.random.default_rng(seed).permutation(len(items))
    weights = 1.0 / np.arange(1, len(items) + 1) ** s
    cumulative = np.cumsum(weights / weights.sum())

    def draw(rng: random.Random) -> Any:  # noqa: ANN401 - one of the items
        rank = min(int(np.searchsorted(cumulative, rng.random())), len(items) - 1)
        return items[int(order[rank])]

    return draw


# --- Synthetic vectors ----------------------------------------------------------------------------------------

# Shape parameters of the synthetic catalogue, calibrated so that a 600-vector sample has the statistics of
# the served encoder's (EfficientNet-Lite0) vectors of the 600-product demo catalog: mean cosine of random
# pairs ~0.4, of the 1st / 25th neighbour ~0.9 / ~0.6, PCA participation ratio ~27, 10 components holding
# ~half the variance (the query section prints both side by side when the embed section's vectors exist).
SYNTHETIC_SHAPE = {
    "types": 40,  # top-level groups (article types)
    "per_cluster": 100,  # items per sub-cluster on average (styles within a type)
    "alpha": 1.0,  # per-dimension variance ~ rank^-alpha (a decaying spectrum, like CNN features)
    "mean_weight": 1.0,  # a shared mean direction (all CNN features are non-negative)
    "type_weight": 1.2,
    "sub_weight": 0.25,  # sub-clusters overlap: neighbours are often in other sub-clusters
    "item_weight": 0.6,  # within-cluster spread, larger than the spacing of sub-clusters
}


@dataclass(frozen=True)
class VectorSet:
    """Unit vectors of a synthetic catalogue plus held-out queries drawn from the same distribution."""

    vectors: np.ndarray  # (n, dim) float32, unit rows
    labels: np.ndarray  # sub-cluster of each vector
    queries: np.ndarray  # (q, dim) float32, unit rows, not in ``vectors``
    query_labels: np.ndarray


def synthetic_vectors(n: int, dim: int, *, queries: int = 200, seed: int = 0) -> VectorSet:
    """A clustered catalogue of ``n`` unit ``dim``-vectors (see SYNTHETIC_SHAPE) and ``queries`` held-out queries.

    x = mean + type centre + sub-cluster offset + item noise, every term scaled per dimension by a decaying
    spectrum, then normalised.
    """
    shape = SYNTHETIC_SHAPE
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, dim + 1, dtype=np.float64) ** -shape["alpha"]
    scale = np.sqrt(spectrum / spectrum.sum()).astype(np.float32)[rng.permutation(dim)]
    mean = np.abs(rng.standard_normal(dim)).astype(np.float32)
    mean /= np.linalg.norm(mean)
    types = rng.standard_normal((shape["types"], dim)).astype(np.float32) * scale
    total = n + queries
    n_sub = max(shape["types"], total // shape["per_cluster"])
    sub_type = rng.integers(0, shape["types"], n_sub)
    subs = types[sub_type] * shape["type_weight"]
    subs += rng.standard_normal((n_sub, dim)).astype(np.float32) * scale * shape["sub_weight"]
    labels = rng.integers(0, n_sub, total)
    out = np.empty((total, dim), dtype=np.float32)
    for start in range(0, total, 16_384):
        stop = min(total, start + 16_384)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * scale * shape["item_weight"]
        out[start:stop] = mean * shape["mean_weight"] + subs[labels[start:stop]] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return VectorSet(out[:n], labels[:n], out[n:], labels[n:])


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``vectors`` by inner product for each query, best first: (ids, scores).

    Batched matrix products, ``chunk`` queries at a time.
    """
    ids = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk] @ vectors.T
        part = np.argpartition(-block, k, axis=1)[:, :k]
        part_scores = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-part_scores, axis=1)
        ids[start : start + chunk] = np.take_along_axis(part, order, axis=1)
        scores[start : start + chunk] = np.take_along_axis(part_scores, order, axis=1)
    return ids, scores


def recall_at(found: Sequence[Sequence[int]], truth: np.ndarray, k: int) -> np.ndarray:
    """Per-query recall@k: the share of the exact top-k among the first k found."""
    return np.array([len(set(list(f)[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth, strict=True)])


def neighbour_structure(vectors: np.ndarray, *, sample: int = 600, seed: int = 0) -> dict[str, float]:
    """Statistics that say how hard a set is: random-pair and 1st/25th-neighbour cosines, the PCA spectrum.

    Computed on a random ``sample`` of the vectors (neighbours among the sample), as for the real vectors.
    """
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vectors), min(sample, len(vectors)), replace=False)
    x = vectors[pick]
    sims = x @ x.T
    np.fill_diagonal(sims, -2.0)
    ordered = -np.sort(-sims, axis=1)
    upper = sims[np.triu_indices(len(x), 1)]
    centred = x - x.mean(axis=0)
    variance = np.linalg.svd(centred, compute_uv=False) ** 2
    variance /= variance.sum()
    return {
        "random_pair_cos": float(upper.mean()),
        "nn1_cos": float(ordered[:, 0].mean()),
        "nn25_cos": float(ordered[:, 24].mean()) if len(x) > 25 else float("nan"),
        "participation_ratio": float(1.0 / np.sum(variance**2)),
        "variance_top10": float(variance[:10].sum()),
        "variance_top100": float(variance[:100].sum()),
    }
