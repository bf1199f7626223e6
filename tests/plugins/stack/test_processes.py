"""Stopping by process group leaves no orphans, even children that ignore SIGTERM."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lakehouse.stack.processes import (
    group_alive,
    group_members,
    processes_using_home,
    service_running,
    start_group,
    stop_group,
)

STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_stop_kills_the_whole_group(tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "log"
    pgid = start_group(run, log, "stubborn", [sys.executable, "-c", STUBBORN], dict(os.environ))
    deadline = time.monotonic() + 10
    while len(group_members(pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(group_members(pgid)) == 2 and group_alive(run, "stubborn")
    assert stop_group(run, "stubborn", timeout=1.0) is True
    assert group_members(pgid) == []
    assert not group_alive(run, "stubborn") and not (run / "stubborn.pid").exists()
    assert stop_group(run, "stubborn") is False


def test_processes_using_home_finds_a_process_by_its_environment(tmp_path: Path) -> None:
    """How a stop is checked for orphans: whatever runs with LAKEHOUSE_HOME=<home> counts."""
    import subprocess

    home = tmp_path / "home"
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "LAKEHOUSE_HOME": str(home)}
    )
    try:
        found = processes_using_home(home)
        assert any(line.startswith(f"{child.pid}: ") for line in found), found
        assert processes_using_home(home, exclude_descendants_of=os.getpid()) == []
        assert processes_using_home(tmp_path / "other") == []
    finally:
        child.kill()
        child.wait()
    assert processes_using_home(home) == []


def test_a_service_whose_own_process_died_is_not_running_and_its_leftovers_are_stopped(tmp_path: Path) -> None:
    """kill -9 of a service's main process leaves its children in the group; ``up`` must start the
    service again and must not leave those children orphaned."""
    import signal

    run, log = tmp_path / "run", tmp_path / "log"
    pgid = start_group(run, log, "stubborn", [sys.executable, "-c", STUBBORN], dict(os.environ))
    deadline = time.monotonic() + 10
    while len(group_members(pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service_running(run, "stubborn")
    os.kill(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pgid in group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(group_members(pgid)) == 1  # the child is left behind
    assert service_running(run, "stubborn") is False
    assert group_members(pgid) == [] and not (run / "stubborn.pid").exists()


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_processes_using_home_finds_the_command_line_and_excludes_only_the_given_tree(tmp_path: Path) -> None:
    """A process whose arguments name the home counts as well; excluding a tree excludes that
    process and its descendants (here a grandchild that inherited the home), not its parent."""
    import subprocess

    home = tmp_path / "home"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(home)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        found = {int(line.split(":")[0]) for line in processes_using_home(home)}
        assert found == {parent.pid}, found  # the grandchild's own command line and environment do not name it
        assert processes_using_home(home, exclude_descendants_of=parent.pid) == []
        assert {int(line.split(":")[0]) for line in processes_using_home(home, exclude_descendants_of=grandchild)} == {
            parent.pid
        }
    finally:
        parent.kill()
        parent.wait()


def test_zombies_count_neither_as_group_members_nor_as_using_the_home(tmp_path: Path) -> None:
    """A child that exited but was not reaped yet is dead: it must not hold up a stop."""
    import subprocess

    import psutil

    home = tmp_path / "home"
    child = subprocess.Popen(
        [sys.executable, "-c", "pass"], env={**os.environ, "LAKEHOUSE_HOME": str(home)}, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        assert group_members(child.pid) == []
        assert processes_using_home(home) == []
    finally:
        child.wait()


def test_processes_that_cannot_be_read_or_vanish_are_skipped(tmp_path: Path, monkeypatch) -> None:
    """Another user's process (psutil: AccessDenied) or one that exits during the listing
    (NoSuchProcess, or its group gone) is skipped, never an error, as an unreadable ``/proc``
    entry was before."""
    import subprocess

    import psutil

    home = tmp_path / "home"
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(home)],
        env={**os.environ, "LAKEHOUSE_HOME": str(home)},
        start_new_session=True,
    )
    try:
        assert group_members(child.pid) == [child.pid] and len(processes_using_home(home)) == 1
        environ, status, getpgid = psutil.Process.environ, psutil.Process.status, os.getpgid

        def denied(self: psutil.Process) -> dict[str, str]:
            if self.pid == child.pid:
                raise psutil.AccessDenied(self.pid)
            return environ(self)

        monkeypatch.setattr(psutil.Process, "environ", denied)
        assert processes_using_home(home) == []
        monkeypatch.undo()

        def vanished(self: psutil.Process) -> str:
            if self.pid == child.pid:
                raise psutil.NoSuchProcess(self.pid)
            return status(self)

        monkeypatch.setattr(psutil.Process, "status", vanished)
        assert group_members(child.pid) == [] and processes_using_home(home) == []
        monkeypatch.undo()

        def no_group(pid: int) -> int:
            if pid == child.pid:
                raise ProcessLookupError(pid)
            return getpgid(pid)

        monkeypatch.setattr(os, "getpgid", no_group)
        assert group_members(child.pid) == []
        monkeypatch.undo()
        assert group_members(child.pid) == [child.pid]
    finally:
        child.kill()
        child.wait()
