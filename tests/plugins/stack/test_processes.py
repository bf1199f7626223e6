"""Stopping by process group leaves no orphans, even children that ignore SIGTERM."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lakehouse.stack.processes import group_alive, group_members, start_group, stop_group

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
