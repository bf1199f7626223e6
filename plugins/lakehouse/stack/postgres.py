"""A Postgres cluster owned by the stack: its own data directory, port and login.

A dedicated cluster (rather than Debian's ``main``) keeps the demo away from whatever else the
machine runs on 5432 and lets ``lakehouse down`` stop exactly what ``up`` started. As root the
server runs as the ``postgres`` user, because ``initdb`` refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import psycopg2
from psycopg2 import sql

from lakehouse.config import Settings

__all__ = ["postgres_bindir", "ensure_cluster", "start", "stop", "is_running", "ensure_databases"]


def postgres_bindir() -> Path | None:
    """The newest installed server's bin directory, or None when no server is installed."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _data_dir(settings: Settings) -> Path:
    return settings.home / "postgres" / "data"


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _chown_for_server(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def ensure_cluster(settings: Settings) -> Path:
    """initdb once; a second call finds the cluster and returns at once."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("no Postgres server found (apt-get install postgresql)")
    data = _data_dir(settings)
    if (data / "PG_VERSION").exists():
        return data
    base = data.parent
    base.mkdir(parents=True, exist_ok=True)
    _chown_for_server(base)
    pwfile = base / "pwfile"
    pwfile.write_text(settings.pg_password + "\n")
    _chown_for_server(pwfile)
    try:
        subprocess.run(
            _as_server_user(
                [
                    str(bindir / "initdb"),
                    "-D", str(data),
                    "-U", settings.pg_user,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "-E", "UTF8",
                    "--no-locale",
                ]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"initdb failed: {exc.stderr.strip()}") from exc
    finally:
        pwfile.unlink(missing_ok=True)
    return data


def is_running(settings: Settings) -> bool:
    bindir = postgres_bindir()
    data = _data_dir(settings)
    if bindir is None or not (data / "PG_VERSION").exists():
        return False
    result = subprocess.run(
        _as_server_user([str(bindir / "pg_ctl"), "status", "-D", str(data)]),
        capture_output=True,
    )
    return result.returncode == 0


def start(settings: Settings) -> bool:
    """Start the cluster if needed; returns True when this call started it."""
    data = ensure_cluster(settings)
    if is_running(settings):
        return False
    bindir = postgres_bindir()
    assert bindir is not None
    log = settings.home / "postgres" / "server.log"
    # wal_level=minimal: no replica or WAL archive hangs off this cluster, and a table created and
    # filled in one transaction (the warehouse load's COPY) then writes no WAL at all
    options = (
        f"-p {settings.pg_port} -c listen_addresses={settings.pg_host} "
        "-c unix_socket_directories='' -c max_connections=300 -c shared_buffers=256MB "
        "-c wal_level=minimal -c max_wal_senders=0"
    )
    try:
        subprocess.run(
            _as_server_user(
                [str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"Postgres did not start: {exc.stderr.strip()}\n{tail}") from exc
    _wait_accepting(settings)
    return True


def stop(settings: Settings) -> bool:
    if not is_running(settings):
        return False
    bindir = postgres_bindir()
    assert bindir is not None
    subprocess.run(
        _as_server_user([str(bindir / "pg_ctl"), "stop", "-D", str(_data_dir(settings)), "-m", "fast", "-w"]),
        check=True,
        capture_output=True,
    )
    return True


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
