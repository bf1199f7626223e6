"""Stopping by process group leaves no orphans, even children that ignore SIGTERM."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lakehouse.stack.processes import (group_alive, group_members, processes_using_home, service_running,
                                      start_group, stop_group)

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
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, "LAKEHOUSE_HOME": str(home)})
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
