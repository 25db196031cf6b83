"""Keep `manage.py serve`'s children running: restart the dead with backoff; on exit, stop each one's whole group.

Each child is started in its own session (so its process group id is its pid):
Ctrl-C reaches `serve` only, and a child's own children (the worker's pool, the
web server's workers) can be found and stopped with it, even after the child
itself died and left them behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# A child that stayed up this long is healthy again: its next death waits BACKOFF_FIRST_S only.
STABLE_AFTER_S = 60.0


class ChildFailedAtStart(Exception):
    """A child marked fatal_at_start_s exited that soon after its first start (a port in use, a bad setting)."""


@dataclass
class Child:
    """One supervised process: how to start it (in its own session) and how it has fared."""

    name: str
    start: Callable[[], subprocess.Popen]
    stop_timeout_s: float = 10.0
    # Exiting within this many seconds of the first start is a configuration error, not a crash: stop serve.
    fatal_at_start_s: float | None = None
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0  # deaths in a row without a stable run, for the backoff
    restarts: int = 0
    restart_at: float | None = None


def backoff_delay(*, failures: int, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S) -> float:
    """Seconds to wait before restarting a child that died ``failures`` times in a row (1, 2, 4, ... up to max_s)."""
    return min(max_s, first_s * 2 ** max(0, failures - 1))


def group_signal(pgid: int, sig: int) -> None:
    """Send ``sig`` to a child's process group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Supervisor:
    """Starts children in order, restarts any that die, stops them all (reverse order) on stop_all()."""

    def __init__(
        self,
        children: list[Child],
        *,
        first_s: float = BACKOFF_FIRST_S,
        max_s: float = BACKOFF_MAX_S,
        stable_after_s: float = STABLE_AFTER_S,
    ) -> None:
        self.children = children
        self.first_s = first_s
        self.max_s = max_s
        self.stable_after_s = stable_after_s
        self._first_start: dict[str, bool] = {}

    def start_all(self) -> None:
        """Start every child in order; an exception from a first start propagates (serve cannot run)."""
        for child in self.children:
            self._start(child)
            self._first_start[child.name] = True

    def _start(self, child: Child) -> None:
        child.process = child.start()
        child.started_at = time.monotonic()
        child.restart_at = None
        logger.info("serve: started %s (pid %d)", child.name, child.process.pid)

    def check(self) -> None:
        """One pass: reap dead children (and what they left behind), restart those whose backoff has passed."""
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is not None:
                self._reap(child, now)
            if child.process is None and child.restart_at is not None and now >= child.restart_at:
                self._restart(child)

    def _reap(self, child: Child, now: float) -> None:
        process = child.process
        assert process is not None
        code = process.returncode
        up_s = now - child.started_at
        # A dead worker leaves its pool processes behind, still holding tasks: they go with it.
        group_signal(process.pid, signal.SIGKILL)
        child.process = None
        if child.fatal_at_start_s is not None and self._first_start.get(child.name) and up_s < child.fatal_at_start_s:
            raise ChildFailedAtStart(f"{child.name} exited with code {code} {up_s:.0f}s after it started")
        self._first_start[child.name] = False
        child.failures = 1 if up_s >= self.stable_after_s else child.failures + 1
        delay = backoff_delay(failures=child.failures, first_s=self.first_s, max_s=self.max_s)
        child.restart_at = now + delay
        logger.warning(
            "serve: %s (pid %d) exited with code %s after %.0fs; restarting it in %.0fs",
            child.name,
            process.pid,
            code,
            up_s,
            delay,
        )

    def _restart(self, child: Child) -> None:
        child.restarts += 1
        try:
            self._start(child)
        except Exception:  # a start that fails (Redis not answering) is one more death, retried with backoff
            child.failures += 1
            delay = backoff_delay(failures=child.failures, first_s=self.first_s, max_s=self.max_s)
            child.restart_at = time.monotonic() + delay
            logger.exception("serve: %s did not start; trying again in %.0fs", child.name, delay)
            return
        logger.warning("serve: restarted %s (restart %d)", child.name, child.restarts)

    def run(self, *, stopping: Callable[[], bool], interval_s: float = 0.2) -> None:
        """Supervise until ``stopping()`` is true."""
        while not stopping():
            self.check()
            time.sleep(interval_s)

    def stop_all(self) -> None:
        """Stop children in reverse start order: SIGTERM to each, then SIGKILL to its group after its timeout.

        SIGTERM goes to the child alone, which stops its own children in order (the worker
        finishes its task); the group SIGKILL afterwards removes whatever it left behind.
        """
        for child in reversed(self.children):
            process = child.process
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=child.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning("serve: %s did not stop in %.0fs; killing it", child.name, child.stop_timeout_s)
            group_signal(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            child.process = None
