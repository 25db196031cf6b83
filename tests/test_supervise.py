"""The supervisor of `manage.py serve` (gallery/supervise.py) on `sh` processes: backoff, groups, start failures."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

import pytest

from gallery.supervise import Child, ChildFailedAtStart, Supervisor, backoff_delay
from tests.support.processes import wait_for


def sh(script: str) -> subprocess.Popen:
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def group_members(pgid: int) -> list[int]:
    """Living (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_backoff_doubles_from_one_second_up_to_thirty():
    assert [backoff_delay(failures=n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_dead_child_is_restarted_with_backoff_and_what_it_left_behind_is_killed(caplog):
    child = Child("helper", lambda: sh("sleep 60 & exec sleep 60"))
    supervisor = Supervisor([child], first_s=0.2, max_s=0.4)
    supervisor.start_all()
    try:
        first = child.process.pid
        wait_for(lambda: len(group_members(first)) == 2, timeout=5, what="the helper and its own child")
        with caplog.at_level(logging.INFO, logger="gallery.supervise"):
            os.kill(first, signal.SIGKILL)
            wait_for(
                lambda: (supervisor.check(), child.process is not None and child.process.pid != first)[1], timeout=5
            )
        assert group_members(first) == []  # its orphaned child went with it
        assert f"helper (pid {first}) exited with code -9" in caplog.text
        # Dying again at once doubles the wait; the delay never passes max_s.
        os.kill(child.process.pid, signal.SIGKILL)
        wait_for(lambda: (supervisor.check(), child.process is None)[1], timeout=5)
        assert child.failures == 2 and child.restart_at - time.monotonic() == pytest.approx(0.4, abs=0.1)
    finally:
        supervisor.stop_all()


def test_a_child_that_stayed_up_long_enough_is_restarted_after_the_first_delay_again():
    child = Child("helper", lambda: sh("exec sleep 60"))
    supervisor = Supervisor([child], first_s=0.2, max_s=10, stable_after_s=0.3)
    supervisor.start_all()
    try:
        child.failures = 5  # many deaths before
        time.sleep(0.4)
        os.kill(child.process.pid, signal.SIGKILL)
        wait_for(lambda: (supervisor.check(), child.process is None)[1], timeout=5)
        assert child.failures == 1 and child.restart_at - time.monotonic() <= 0.2
    finally:
        supervisor.stop_all()


def test_a_web_server_that_exits_at_once_on_its_first_start_stops_the_supervisor():
    child = Child("web", lambda: sh("exit 3"), fatal_at_start_s=10)
    supervisor = Supervisor([child])
    supervisor.start_all()
    with pytest.raises(ChildFailedAtStart, match="web exited with code 3"):
        wait_for(lambda: supervisor.check(), timeout=5)


def test_stop_all_terminates_each_group_and_kills_a_child_that_ignores_sigterm():
    stubborn = Child("stubborn", lambda: sh("trap '' TERM; sleep 60 & wait"), stop_timeout_s=0.5)
    polite = Child("polite", lambda: sh("exec sleep 60"))
    supervisor = Supervisor([stubborn, polite])
    supervisor.start_all()
    groups = [stubborn.process.pid, polite.process.pid]
    wait_for(lambda: len(group_members(groups[0])) == 2, timeout=5, what="the stubborn child's own child")
    started = time.monotonic()
    supervisor.stop_all()
    assert time.monotonic() - started < 5
    assert [group_members(g) for g in groups] == [[], []]
