"""A Postgres cluster owned by the stack: its own data directory, port and login.

A dedicated cluster (rather than Debian's ``main``) keeps the demo away from whatever else the
machine runs on 5432 and lets ``lakehouse down`` stop exactly what ``up`` started. As root the
server runs as the ``postgres`` user, because ``initdb`` refuses to run as root.

The cluster lives in ``$LAKEHOUSE_HOME/postgres`` when that user can reach it. A checkout in a
private directory (``/root``, ``mktemp -d``: mode 0700) cannot be reached by it, so as root the
cluster then goes to ``/var/lib/postgresql/lakehouse/<hash of the home>`` and the home keeps a
one-line record of that place, which ``status``, ``stop`` and the next ``up`` read.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import hashlib
import logging
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql

from lakehouse.config import Settings

__all__ = [
    "FALLBACK_ROOT",
    "Placement",
    "blocked_at",
    "choose_base",
    "cluster_base",
    "data_dir",
    "ensure_cluster",
    "ensure_databases",
    "fallback_base",
    "is_running",
    "postgres_bindir",
    "remove_cluster",
    "start",
    "stop",
]

log = logging.getLogger(__name__)

SERVER_USER = "postgres"
# under the postgres user's own home (Debian/Ubuntu), not /tmp: the cluster must survive a
# reboot, and a stop leaves nothing in /tmp
FALLBACK_ROOT = Path("/var/lib/postgresql/lakehouse")
RECORD_NAME = "location"  # $LAKEHOUSE_HOME/postgres/location: the cluster's directory, when not this one


def postgres_bindir() -> Path | None:
    """The newest installed server's bin directory, or None when no server is installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


# -- where the cluster lives ------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """The directory holding ``data/``, ``server.log`` and (during initdb) the pwfile, and why
    it is not the home's own ``postgres/`` (None when it is)."""

    base: Path
    reason: str | None = None


def _home_base(home: Path) -> Path:
    return home / "postgres"


def _record_path(home: Path) -> Path:
    return _home_base(home) / RECORD_NAME


def fallback_base(home: Path, root: Path | None = None) -> Path:
    """One directory per home path, so two checkouts on one machine never share a cluster."""
    return (root or FALLBACK_ROOT) / hashlib.sha256(str(home).encode()).hexdigest()[:12]


def traversable(mode: int, owner: int, group: int, uid: int, gids: Collection[int]) -> bool:
    """Whether ``uid`` (in groups ``gids``) may pass through a directory of this mode and owner;
    the classic permission bits only, as the kernel checks them without ACLs."""
    if uid == 0:
        return True
    if uid == owner:
        return bool(mode & stat.S_IXUSR)
    if group in gids:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def blocked_at(path: Path, uid: int, gids: Collection[int]) -> Path | None:
    """The first existing directory on the way to ``path`` that ``uid`` cannot pass, or None:
    what an error message tells the user to ``chmod o+x``."""
    for directory in [*reversed(path.parents), path]:
        try:
            info = directory.stat()
        except FileNotFoundError:
            return None  # what is missing is created by us, for the server
        if stat.S_ISDIR(info.st_mode) and not traversable(info.st_mode, info.st_uid, info.st_gid, uid, gids):
            return directory
    return None


def choose_base(
    home: Path,
    *,
    recorded: Path | None,
    home_cluster: bool,
    as_root: bool,
    server_reaches_home: Callable[[], bool],
    fallback_root: Path | None = None,
) -> Placement:
    """Where the cluster of ``home`` lives. A recorded place and an existing cluster in the home
    win, so nothing moves under a working install; otherwise the home, unless the server runs as
    ``postgres`` (we are root) and that user cannot reach it. The probe runs only then."""
    if recorded is not None:
        return Placement(recorded, f"recorded in {_record_path(home)}")
    if home_cluster or not as_root or server_reaches_home():
        return Placement(_home_base(home))
    return Placement(fallback_base(home, fallback_root), f"the {SERVER_USER} user cannot reach {_home_base(home)}")


def _read_record(home: Path) -> Path | None:
    try:
        text = _record_path(home).read_text().strip()
    except FileNotFoundError:
        return None
    return Path(text) if text else None


def _write_record(home: Path, base: Path) -> None:
    record = _record_path(home)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(f"{base}\n")
    tmp.replace(record)


def cluster_base(settings: Settings) -> Path:
    """The cluster's directory as things stand; creates nothing, so ``status`` and ``stop`` of a
    home that never ran ``up`` stay read-only."""
    return _read_record(settings.home) or _home_base(settings.home)


def data_dir(settings: Settings) -> Path:
    """The one place that knows the data directory: every caller goes through here."""
    return cluster_base(settings) / "data"


# -- running things as the server's user -------------------------------------------------------
def _server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root needs the {SERVER_USER!r} user to run the server "
            "(apt-get install postgresql), or run as a non-root user"
        ) from None


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *argv]
    return argv


def _run_as_server(argv: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
    """cwd "/": initdb and pg_ctl return to the caller's directory, which the ``postgres`` user
    may not be allowed to enter (the very case of a private checkout)."""
    return subprocess.run(_as_server_user(argv), cwd="/", check=check, capture_output=True, text=True)


def _chown_for_server(path: Path) -> None:
    if os.geteuid() == 0:
        entry = _server_user()
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _server_reaches(directory: Path) -> bool:
    """Ask the kernel as the server's user (ACLs and groups included), not the mode bits."""
    if os.geteuid() != 0:
        return True
    _server_user()
    probe = ["test", "-d", str(directory), "-a", "-w", str(directory), "-a", "-x", str(directory)]
    return _run_as_server(probe).returncode == 0


def _what_to_change(directory: Path) -> str:
    entry = _server_user()
    gids = {entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if SERVER_USER in g.gr_mem)}
    blocked = blocked_at(directory, entry.pw_uid, gids)
    fix = f"chmod o+x {blocked}" if blocked else f"let user {SERVER_USER} reach {directory}"
    return f"{fix}, or set LAKEHOUSE_HOME to a directory user {SERVER_USER} can reach"


def _data_status(data: Path) -> int:
    """pg_ctl status: 0 running, 3 not running, 4 no accessible data directory."""
    bindir = postgres_bindir()
    if bindir is None or not (data / "PG_VERSION").exists():
        return 3
    return _run_as_server([str(bindir / "pg_ctl"), "status", "-D", str(data)]).returncode


def _prepare_base(settings: Settings) -> Path:
    """Decide where a new cluster goes, make that directory the server's and, when it is not in
    the home, record it there. Called only when no cluster exists yet."""
    home = settings.home
    home_base = _home_base(home)
    recorded = _read_record(home)

    def reaches_home() -> bool:
        home_base.mkdir(parents=True, exist_ok=True)
        _chown_for_server(home_base)
        return _server_reaches(home_base)

    placement = choose_base(
        home, recorded=recorded, home_cluster=False, as_root=os.geteuid() == 0, server_reaches_home=reaches_home
    )
    base = placement.base
    if base == home_base:
        base.mkdir(parents=True, exist_ok=True)
        _chown_for_server(base)
        return base
    if recorded is None and (base / "data").exists():
        # a cluster made for this home path whose record went with the home (``rm -rf var``):
        # its data is not ours to delete, and reusing it would pair old tables with a new lake
        raise RuntimeError(
            f"{base / 'data'} holds the Postgres cluster of an earlier {home} whose record "
            f"{_record_path(home)} is gone: delete it (rm -rf {base}) to start afresh, or write "
            f"{base} into {_record_path(home)} to keep it"
        )
    try:
        for directory in (base.parent, base):
            directory.mkdir(parents=True, exist_ok=True)
            _chown_for_server(directory)
            directory.chmod(0o700)
    except OSError as exc:
        raise RuntimeError(f"cannot create {base} for Postgres ({exc.strerror}): {_what_to_change(home_base)}") from exc
    if not _server_reaches(base):
        raise RuntimeError(f"user {SERVER_USER} can reach neither {home_base} nor {base}: {_what_to_change(home_base)}")
    home_base.mkdir(parents=True, exist_ok=True)
    _write_record(home, base)
    log.warning(
        "Postgres data of %s lives in %s: %s (recorded in %s)", home, base, placement.reason, _record_path(home)
    )
    return base


def ensure_cluster(settings: Settings) -> Path:
    """initdb once; a second call finds the cluster and returns at once."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("no Postgres server found (apt-get install postgresql)")
    data = data_dir(settings)
    if (data / "PG_VERSION").exists():
        return data
    base = _prepare_base(settings)
    data = base / "data"
    pwfile = base / "pwfile"
    pwfile.write_text(settings.pg_password + "\n")
    _chown_for_server(pwfile)
    try:
        _run_as_server(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                settings.pg_user,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"initdb failed: {exc.stderr.strip()}") from exc
    finally:
        pwfile.unlink(missing_ok=True)
    return data


def is_running(settings: Settings) -> bool:
    return _data_status(data_dir(settings)) == 0


def start(settings: Settings) -> bool:
    """Start the cluster if needed; returns True when this call started it."""
    data = ensure_cluster(settings)
    if is_running(settings):
        return False
    bindir = postgres_bindir()
    assert bindir is not None
    server_log = data.parent / "server.log"
    # wal_level=minimal: no replica or WAL archive hangs off this cluster, and a table created and
    # filled in one transaction (the warehouse load's COPY) then writes no WAL at all.
    # lakehouse.home (an inert custom setting): the server's command line names its home even
    # when its data lives outside it, so a check for leftover processes of a home finds it.
    options = (
        f"-p {settings.pg_port} -c listen_addresses={settings.pg_host} "
        "-c unix_socket_directories='' -c max_connections=300 -c shared_buffers=256MB "
        f"-c wal_level=minimal -c max_wal_senders=0 -c {shlex.quote(f'lakehouse.home={settings.home}')}"
    )
    try:
        _run_as_server(
            [str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(server_log), "-w", "-t", "60", "-o", options],
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        tail = server_log.read_text()[-2000:] if server_log.exists() else ""
        hint = ""
        if os.geteuid() == 0 and not _server_reaches(data.parent):
            hint = f" (user {SERVER_USER} cannot reach {data.parent}: {_what_to_change(data.parent)})"
        raise RuntimeError(f"Postgres did not start: {exc.stderr.strip()}{hint}\n{tail}") from exc
    _wait_accepting(settings)
    return True


def stop(settings: Settings) -> bool:
    """Stop the server; its data stays (``up`` starts the same cluster again)."""
    if not is_running(settings):
        return False
    bindir = postgres_bindir()
    assert bindir is not None
    _run_as_server(
        [str(bindir / "pg_ctl"), "stop", "-D", str(data_dir(settings)), "-m", "fast", "-w"],
        check=True,
    )
    return True


def remove_cluster(settings: Settings) -> bool:
    """Stop the server and delete its cluster and the record of where it was; True if anything
    was there. Needed where the cluster lives outside the home, which removing the home misses."""
    stop(settings)
    base = cluster_base(settings)
    record = _record_path(settings.home)
    found = base.exists() or record.exists()
    shutil.rmtree(base, ignore_errors=True)
    record.unlink(missing_ok=True)
    if base.parent == FALLBACK_ROOT:
        with contextlib.suppress(OSError):
            FALLBACK_ROOT.rmdir()  # only when no other home has a cluster there
    return found


def _wait_accepting(settings: Settings, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(settings.dsn("postgres"), connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def ensure_databases(settings: Settings) -> None:
    """The four databases of the stack: metadata, Airflow, Iceberg catalog, warehouse."""
    conn = psycopg2.connect(settings.dsn("postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in (settings.metadata_db, settings.airflow_db, settings.catalog_db, settings.warehouse_db):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
