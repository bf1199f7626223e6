"""Start services in their own process group and stop them by that group, leaving no orphans.

Airflow's LocalExecutor forks workers that survive a SIGTERM to their parent
(docs/architecture.md), so stopping a PID is not enough: every service is a session leader and
we signal the whole group, then check ``/proc`` until no live member of the group is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["start_group", "stop_group", "group_alive", "service_running", "pid_file", "read_pid", "group_members",
           "processes_using_home"]


def pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def read_pid(run_dir: Path, name: str) -> int | None:
    path = pid_file(run_dir, name)
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ... ; comm may contain spaces, so split after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def group_alive(run_dir: Path, name: str) -> bool:
    pid = read_pid(run_dir, name)
    return pid is not None and bool(group_members(pid))


def service_running(run_dir: Path, name: str) -> bool:
    """Whether the service's own process (the group's leader) runs. A group whose leader died
    (``kill -9`` of a scheduler leaves its executor's workers behind) is stopped here, so that
    the next start owns the whole group again and a stop still leaves no orphans."""
    pid = read_pid(run_dir, name)
    if pid is None:
        return False
    members = group_members(pid)
    if pid in members:
        return True
    if members:
        stop_group(run_dir, name)
    return False


def start_group(
    run_dir: Path,
    log_dir: Path,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` as a new session (so its group id is its pid) and record that pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file(run_dir, name).write_text(f"{proc.pid}\n")
    return proc.pid


def stop_group(run_dir: Path, name: str, timeout: float = 30.0) -> bool:
    """SIGTERM the group, wait, then SIGKILL what is left. Returns True if something was stopped."""
    pgid = read_pid(run_dir, name)
    if pgid is None:
        return False
    stopped = False
    if group_members(pgid):
        stopped = True
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_members(pgid):
            _signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
    pid_file(run_dir, name).unlink(missing_ok=True)
    return stopped


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _parent_pids() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def processes_using_home(home: Path, exclude_descendants_of: int | None = None) -> list[str]:
    """Every live process started for the stack in ``home``: its command line or environment names
    the home. How a stop is checked for orphans (zombies are dead and skipped). A caller that
    itself runs things under that home (a test session's Spark) excludes its own process tree."""
    marker = str(home).encode()
    parents = _parent_pids() if exclude_descendants_of is not None else {}

    def excluded(pid: int) -> bool:
        while exclude_descendants_of is not None and pid > 1:
            if pid == exclude_descendants_of:
                return True
            pid = parents.get(pid, 1)
        return False

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or excluded(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (marker in cmdline or b"LAKEHOUSE_HOME=" + marker + b"\0" in environ):
            command = cmdline.replace(b"\0", b" ")[:120].decode(errors="replace")
            found.append(f"{entry.name}: {command}")
    return found
