"""Start services in their own process group and stop them by that group, leaving no orphans.

Airflow's LocalExecutor forks workers that survive a SIGTERM to their parent
(docs/architecture.md), so stopping a PID is not enough: every service is a session leader and
we signal the whole group, then check (psutil's process listing) until no live member is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

__all__ = [
    "group_alive",
    "group_members",
    "pid_file",
    "processes_using_home",
    "read_pid",
    "service_running",
    "start_group",
    "stop_group",
]


def pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def read_pid(run_dir: Path, name: str) -> int | None:
    path = pid_file(run_dir, name)
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``. psutil has no process-group
    query, so the group comes from ``os.getpgid``; a process that vanished meanwhile, or whose
    state cannot be read, is no member (it cannot be signalled as one either)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] in (None, psutil.STATUS_ZOMBIE):
            continue
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except OSError:  # gone since the listing
            continue
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
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def processes_using_home(home: Path, exclude_descendants_of: int | None = None) -> list[str]:
    """Every live process started for the stack in ``home``: its command line or environment names
    the home. How a stop is checked for orphans (zombies are dead and skipped). A caller that
    itself runs things under that home (a test session's Spark) excludes its own process tree.
    A process whose command line, environment or state cannot be read (another user's, or gone
    meanwhile) is skipped; the tree is taken from the same listing, so a child forked between two
    reads is never mistaken for an orphan."""
    marker = str(home)
    listing = [proc.info for proc in psutil.process_iter(["pid", "ppid", "status", "cmdline", "environ"])]
    parents = {info["pid"]: info["ppid"] for info in listing}

    def excluded(pid: int) -> bool:
        seen: set[int] = set()
        while exclude_descendants_of is not None and pid > 1 and pid not in seen:
            if pid == exclude_descendants_of:
                return True
            seen.add(pid)
            pid = parents.get(pid) or 1
        return False

    found = []
    for info in listing:
        pid, status, cmdline, environ = info["pid"], info["status"], info["cmdline"], info["environ"]
        if pid == os.getpid() or excluded(pid) or None in (status, cmdline, environ) or status == psutil.STATUS_ZOMBIE:
            continue
        command = " ".join(cmdline)
        if marker in command or environ.get("LAKEHOUSE_HOME") == marker:
            found.append(f"{pid}: {command[:120]}")
    return found
