"""Bring the local stack up and down: Postgres, SeaweedFS, the invoker, the pool of warm Spark
drivers, and Airflow's four components (api-server, scheduler, dag-processor, triggerer;
LocalExecutor on Postgres).

``up`` is idempotent: what already runs is left alone, so a second ``make demo`` is fast; a
service whose process died (a crash, ``kill -9``) is started again, after whatever it left
behind in its process group is stopped.
``down`` stops in reverse order by process group (Postgres by its postmaster pid through
``pg_ctl``), and then checks that nothing of the stack is left.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from lakehouse.config import Settings
from lakehouse.metadata.migrations import migrate
from lakehouse.stack import postgres
from lakehouse.stack.jars import iceberg_runtime, provision_jars
from lakehouse.stack.processes import group_members, read_pid, service_running, start_group, stop_group

__all__ = [
    "AIRFLOW_COMPONENTS",
    "SERVICE_NAMES",
    "airflow_component_environment",
    "down",
    "lineage_environment",
    "lineage_events_file",
    "stack_environment",
    "start_airflow_component",
    "status",
    "up",
]

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
SERVICE_NAMES = ("seaweedfs", "invoker", "spark-pool", *(f"airflow-{c}" for c in AIRFLOW_COMPONENTS))

#: How often the dag-processor re-parses the DAG file: a new flow row shows up within this.
DAG_REFRESH_SECONDS = 15

#: Database pool of each api-server worker: (pool_size, max_overflow). Airflow 3.3 checks every
#: request's JWT against ``revoked_token`` with a *blocking* query on the worker's event loop,
#: while the endpoints themselves (e.g. POST dagRuns) each hold a connection in one of anyio's 40
#: threads. With Airflow's default 5 + 10 connections, 16 or more requests in flight take the
#: whole pool, the event loop then blocks waiting for a connection that only the event loop
#: could free, and every request stalls until ``pool_timeout`` (30 s) — measured with
#: bench/airflow_trigger_rate.py: 1.4 runs/s at 32 concurrent clients instead of ~30. More
#: connections than threads (40 + the event loop) rule that out; idle ones are capped at 10.
API_SERVER_DB_POOL = (10, 40)


def _bin(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def _fernet_key(settings: Settings) -> str:
    # a Fernet key is 32 url-safe base64 bytes; derive it from a generated stack secret
    raw = settings.secret("fernet_seed").encode()[:32].ljust(32, b"0")
    return base64.urlsafe_b64encode(raw).decode()


def stack_environment(settings: Settings) -> dict[str, str]:
    """The one environment every process of the stack gets, so all read the same configuration."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "TMPDIR": str(settings.tmp_dir),
            # spark-submit's launcher is a JVM of its own: without this it leaves /tmp/hsperfdata_<user>
            "SPARK_LAUNCHER_OPTS": f"{env.get('SPARK_LAUNCHER_OPTS', '')} -XX:-UsePerfData".strip(),
            "LAKEHOUSE_ROOT": str(settings.root),
            "LAKEHOUSE_HOME": str(settings.home),
            "LAKEHOUSE_PG_HOST": settings.pg_host,
            "LAKEHOUSE_PG_PORT": str(settings.pg_port),
            "LAKEHOUSE_PG_USER": settings.pg_user,
            "LAKEHOUSE_PG_PASSWORD": settings.pg_password,
            "LAKEHOUSE_S3_ENDPOINT_URL": settings.s3_endpoint_url,
            "LAKEHOUSE_S3_ACCESS_KEY_ID": settings.s3_access_key_id,
            "LAKEHOUSE_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key,
            "LAKEHOUSE_LANDING_BUCKET": settings.landing_bucket,
            "LAKEHOUSE_INVOKER_PORT": str(settings.invoker_port),
            "LAKEHOUSE_AIRFLOW_PORT": str(settings.airflow_port),
            "LAKEHOUSE_AIRFLOW_URL": settings.airflow_url,
            "LAKEHOUSE_LAKE_URI": settings.lake_uri,
            "LAKEHOUSE_JARS_DIR": str(settings.jars_dir),
            "AIRFLOW_HOME": str(settings.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.airflow_home / "plugins"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(settings),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(settings.airflow_home / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{settings.airflow_port}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.airflow_sql_alchemy_conn,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(settings.airflow_port),
            "AIRFLOW__API__BASE_URL": settings.airflow_url,
            "AIRFLOW__API__WORKERS": str(settings.airflow_api_workers),
            "AIRFLOW__API__SECRET_KEY": settings.secret("api_secret_key"),
            "AIRFLOW__API_AUTH__JWT_SECRET": settings.secret("jwt_secret"),
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(DAG_REFRESH_SECONDS),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "60",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # the next task queued soon after its upstream ends: the scheduler's share of a 4-task
            # run fell from 1.8 s to 0.5 s against Airflow's 1 s (docs/benchmarks.md)
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.airflow_home / "logs"),
        }
    )
    for name, value in lineage_environment(settings, env).items():
        env.setdefault(name, value)  # a user's own OpenLineage settings win
    return env


#: OpenLineage configured by the user (a transport, a config file or connection, the legacy URL):
#: then the stack does not add its file transport.
_OPENLINEAGE_CONFIGURED = (
    "AIRFLOW__OPENLINEAGE__TRANSPORT",
    "AIRFLOW__OPENLINEAGE__CONFIG_PATH",
    "AIRFLOW__OPENLINEAGE__CONFIG_CONN_ID",
    "OPENLINEAGE_URL",
    "OPENLINEAGE_CONFIG",
)


def lineage_events_file(settings: Settings) -> Path:
    """Where the stack's OpenLineage events go: one JSON event a line (docs/operations.md)."""
    return settings.home / "lineage" / "events.jsonl"


def lineage_environment(settings: Settings, environ: dict[str, str]) -> dict[str, str]:
    """The OpenLineage provider's settings for every Airflow component: the namespace of the
    stack's jobs, and a file transport appending to :func:`lineage_events_file` unless ``environ``
    configures OpenLineage itself (e.g. an http transport to Marquez). The folder is made here:
    the file transport opens the file, it does not create folders."""
    env = {"AIRFLOW__OPENLINEAGE__NAMESPACE": "lakehouse"}
    if any(environ.get(name) for name in _OPENLINEAGE_CONFIGURED) or any(
        name.startswith("OPENLINEAGE__TRANSPORT") and value for name, value in environ.items()
    ):
        return env
    events = lineage_events_file(settings)
    events.parent.mkdir(parents=True, exist_ok=True)
    env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps({"type": "file", "log_file_path": str(events), "append": True})
    return env


def airflow_component_environment(env: dict[str, str], component: str) -> dict[str, str]:
    """The stack environment as one Airflow component gets it: the api-server gets the DB pool of
    :data:`API_SERVER_DB_POOL` unless the environment sets Airflow's pool variables itself."""
    if component != "api-server":
        return env
    pool_size, max_overflow = API_SERVER_DB_POOL
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": str(pool_size),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": str(max_overflow),
        **env,
    }


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    processes: int


def _wait(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.5)
    tail = ""
    if log and log.exists():
        tail = "\n--- " + str(log) + " ---\n" + log.read_text(errors="replace")[-3000:]
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s{tail}")


# -- SeaweedFS ----------------------------------------------------------------------------------
def seaweedfs_command(settings: Settings) -> list[str]:
    """``weed mini`` with every file it writes under the stack's home: its logs, its local sockets
    and its data; the WebDAV server (unused) is off, as its chunk cache would go to /tmp."""
    p = settings.seaweed_ports
    run = settings.run_dir
    return [
        _bin("weed"),
        f"-logdir={settings.log_dir}",  # glog's own files; by default in /tmp
        "mini",
        "-webdav=false",
        f"-s3.localSocket={run / 'seaweedfs-s3.sock'}",
        f"-filer.localSocket={run / 'seaweedfs-filer.sock'}",
        f"-dir={settings.home / 'seaweedfs' / 'data'}",
        f"-bucket={settings.landing_bucket}",
        "-ip=127.0.0.1",
        "-admin.ui=false",
        f"-master.port={p.master}",
        f"-volume.port={p.volume}",
        f"-filer.port={p.filer}",
        f"-s3.port={p.s3}",
        f"-webdav.port={p.webdav}",
        f"-s3.port.iceberg={p.iceberg}",
    ]


def _start_seaweedfs(settings: Settings, env: dict[str, str], echo: Callable[[str], None]) -> None:
    if service_running(settings.run_dir, "seaweedfs"):
        return
    workdir = settings.home / "seaweedfs"
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    # the filer reads notification.toml from its working directory
    (workdir / "notification.toml").write_text(
        "[notification.webhook]\n"
        "enabled = true\n"
        f'endpoint = "{settings.invoker_url}/events/seaweedfs"\n'
        f'bearer_token = "{settings.invoker_token}"\n'
        "max_retries = 10\n"
        "workers = 20\n"
        'event_types = ["create", "update"]\n'
        'path_prefixes = ["/buckets/"]\n'
    )
    weed_env = dict(
        env, AWS_ACCESS_KEY_ID=settings.s3_access_key_id, AWS_SECRET_ACCESS_KEY=settings.s3_secret_access_key
    )
    argv = seaweedfs_command(settings)
    echo(f"starting SeaweedFS (S3 on {settings.s3_endpoint_url})")
    start_group(settings.run_dir, settings.log_dir, "seaweedfs", argv, weed_env, cwd=workdir)
    _wait("SeaweedFS S3 API", lambda: _landing_bucket_ready(settings), 90, settings.log_dir / "seaweedfs.log")


def _landing_bucket_ready(settings: Settings) -> bool:
    from lakehouse.hooks.s3 import landing_client

    landing_client(settings).head_bucket(Bucket=settings.landing_bucket)
    return True


# -- invoker ------------------------------------------------------------------------------------
def _start_invoker(settings: Settings, env: dict[str, str], echo: Callable[[str], None]) -> None:
    if service_running(settings.run_dir, "invoker"):
        return
    echo(f"starting the invoker on {settings.invoker_url}")
    start_group(
        settings.run_dir, settings.log_dir, "invoker", [sys.executable, "-m", "lakehouse.cli", "invoker", "serve"], env
    )
    _wait(
        "invoker",
        lambda: requests.get(f"{settings.invoker_url}/healthz", timeout=2).ok,
        30,
        settings.log_dir / "invoker.log",
    )


# -- the pool of warm Spark drivers ----------------------------------------------------------------
def _start_spark_pool(settings: Settings, env: dict[str, str], echo: Callable[[str], None]) -> None:
    """Only where tasks run templates on this machine in warm mode; the drivers warm up in the
    background (a task that comes first waits for one)."""
    if settings.runner != "local" or settings.spark_mode != "warm" or service_running(settings.run_dir, "spark-pool"):
        return
    from lakehouse.runners.spark_pool import pool_socket

    echo(f"starting the Spark pool ({settings.spark_drivers} warm driver(s))")
    start_group(
        settings.run_dir,
        settings.log_dir,
        "spark-pool",
        [sys.executable, "-m", "lakehouse.cli", "spark-pool", "serve"],
        env,
    )
    _wait("Spark pool", lambda: pool_socket(settings).exists(), 30, settings.log_dir / "spark-pool.log")


# -- Airflow ------------------------------------------------------------------------------------
def _prepare_airflow(settings: Settings, env: dict[str, str], echo: Callable[[str], None]) -> None:
    import subprocess

    home = settings.airflow_home
    (home / "plugins").mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({settings.airflow_username: settings.airflow_password}))
    passwords.chmod(0o600)
    from importlib.metadata import version

    stamp = home / f".db-migrated-{version('apache-airflow-core')}"
    if not stamp.exists():
        echo("migrating Airflow's database")
        result = subprocess.run([_bin("airflow"), "db", "migrate"], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        stamp.touch()


def _airflow_healthy(settings: Settings) -> bool:
    health = requests.get(f"{settings.airflow_url}/api/v2/monitor/health", timeout=3).json()
    return all(
        health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler", "dag_processor")
    )


def start_airflow_component(settings: Settings, env: dict[str, str], component: str) -> None:
    """One Airflow component in its own process group, with the environment the stack gives it."""
    start_group(
        settings.run_dir,
        settings.log_dir,
        f"airflow-{component}",
        [_bin("airflow"), component],
        airflow_component_environment(env, component),
    )


def _start_airflow(settings: Settings, env: dict[str, str], echo: Callable[[str], None]) -> None:
    missing = [c for c in AIRFLOW_COMPONENTS if not service_running(settings.run_dir, f"airflow-{c}")]
    if not missing:
        return
    _prepare_airflow(settings, env, echo)
    for component in missing:
        echo(f"starting airflow {component}")
        start_airflow_component(settings, env, component)
    _wait(
        "Airflow (api-server, scheduler, dag-processor)",
        lambda: _airflow_healthy(settings),
        180,
        settings.log_dir / "airflow-api-server.log",
    )


# -- public -------------------------------------------------------------------------------------
def up(settings: Settings, echo: Callable[[str], None] = print) -> None:
    provision_jars(settings.jars_dir, iceberg_runtime(settings.iceberg_version))
    if settings.pg_managed:
        if postgres.start(settings):
            echo(f"started Postgres on {settings.pg_host}:{settings.pg_port}")
        postgres.ensure_databases(settings)
    applied = migrate(settings.metadata_dsn, settings.root / "metadata" / "migrations")
    if applied:
        echo("metadata migrations applied: " + ", ".join(applied))
    env = stack_environment(settings)
    _start_invoker(settings, env, echo)
    _start_spark_pool(settings, env, echo)
    _start_seaweedfs(settings, env, echo)
    _start_airflow(settings, env, echo)


def down(settings: Settings, echo: Callable[[str], None] = print) -> list[str]:
    """Stop everything ``up`` started; returns what was stopped. Raises if anything survived."""
    stopped = []
    for name in reversed(SERVICE_NAMES):
        if stop_group(settings.run_dir, name):
            stopped.append(name)
            echo(f"stopped {name}")
    if settings.pg_managed and postgres.stop(settings):
        stopped.append("postgres")
        echo("stopped postgres")
    left = [s for s in status(settings) if s.running]
    if left:
        raise RuntimeError("still running after stop: " + ", ".join(s.name for s in left))
    shutil.rmtree(settings.tmp_dir, ignore_errors=True)  # what killed processes could not clean up
    remove_stale_seaweedfs_sockets(settings)
    return stopped


#: ``weed mini`` puts its gRPC servers' local sockets in /tmp whatever its flags say (its source
#: hard-codes the folder); one killed before it could remove them leaves them behind
SEAWEEDFS_GRPC_SOCKETS = ("master", "volume", "filer", "s3", "admin")
SEAWEEDFS_ADMIN_GRPC_PORT = 33646  # weed mini's admin server (UI off, gRPC still on): 23646 + 10000


def remove_stale_seaweedfs_sockets(settings: Settings, folder: Path = Path("/tmp")) -> list[Path]:
    """The local sockets of this stack's SeaweedFS that no process listens on any more."""
    p = settings.seaweed_ports
    grpc_ports = {"master": p.master, "volume": p.volume, "filer": p.filer, "s3": p.s3}
    ports = {name: port + 10000 for name, port in grpc_ports.items()} | {"admin": SEAWEEDFS_ADMIN_GRPC_PORT}
    removed = []
    for name in SEAWEEDFS_GRPC_SOCKETS:
        path = folder / f"seaweedfs-{name}-grpc-{ports[name]}.sock"
        if not path.is_socket():
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                continue  # another stack's SeaweedFS still serves on it
            except OSError:
                pass
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def status(settings: Settings) -> list[ServiceStatus]:
    out = []
    if settings.pg_managed:
        out.append(ServiceStatus("postgres", postgres.is_running(settings), None, 0))
    for name in SERVICE_NAMES:
        pid = read_pid(settings.run_dir, name)
        members = group_members(pid) if pid else []
        out.append(ServiceStatus(name, pid in members, pid, len(members)))  # its own process runs
    return out
