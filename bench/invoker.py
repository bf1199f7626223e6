"""Invoker load benchmark against the real stack: SeaweedFS (S3 API + filer webhook), the invoker,
Postgres and Airflow 3's api-server. Up to four phases in one run, side by side:

* ``baseline`` — the naive per-event synchronous path, as the invoker was before this work: the
  webhook request itself calls Airflow, a Postgres connection per event, the flows re-read per
  event (``_CATALOGUE_TTL=0``). The package has no such mode: this file serves it
  (:class:`BaselineInvokerServer` with :class:`PerUseConnections`, ``--serve-baseline``);
* ``current`` — the defaults: answer once the event is in the ledger, trigger from 8 dispatcher
  threads, pooled connections, flows cached 5 s. One DAG run per file version.
* ``batched`` — the ``current`` invoker and the same plan, into a flow with ``max_files_per_run =
  --batch-size`` (200) and ``batch_window_seconds = --batch-window`` (1): micro-batched runs. With
  a window of 0 the invoker gathers files the moment they arrive, so a flood becomes hundreds of
  batches of 1-3 files queued for Airflow (p95 ~19 s here); 1 s gives full batches (p95 ~1 s).
* ``reconcile`` — events that never arrive, and the sweep that finds their files (see below).

The per-file phases and ``batched`` upload ``--objects`` new objects through the S3 API as fast as
it takes them (16 client threads), mixed with identical re-uploads (same file version: must not
start a run), changed re-uploads (a new version: must start one) and, for 10 % of the uploads,
the same version once more as an HMAC-signed S3 notification (a second transport). Airflow's
api-server is stopped (SIGTERM of its process group) after 40 % of the uploads, kept down
``--outage`` seconds, and started again; uploads go on meanwhile.

Reported per per-file phase: events accepted per second (ledger deliveries / time until the last
one was stored), upload → DAG run created (Airflow's own ``queued_at`` minus the moment the PUT
returned; p50/p95/max, split into "Airflow up" and "around the outage"), runs created in Airflow
versus distinct file versions uploaded (must be equal), events lost (versions without a run: must
be 0). Then, Airflow up, a burst of ``--burst`` filer-webhook events posted straight to the invoker
by 20 senders measures the invoker's own capacity (on a shared 2-CPU machine the S3 API, not the
invoker, limits the upload part): accepted/s and event sent → run created. Last, ``--paced-rate``
events per second for ``--paced-seconds``: below the rate at which Airflow creates runs, so the
latency is the invoker's share plus one run creation, not time spent queueing for Airflow.

Reported for ``batched`` (a column of the same table): upload → file in a created run (the PUT's
return → ``queued_at`` of the run whose batch holds that file version, same split), runs created,
files per run (min/median/max, from the manifests the runs' conf name), events lost (distinct
versions with no ledger row, or whose batch has no run in Airflow), and versions in zero or in two
or more runs (every run's manifest is read; the ledger's batch assignment must agree). Goal: p95 <
3 s while Airflow is up, 0 lost, every version in exactly one run. No burst/paced part.

``reconcile`` uses its own batched flow (``--batch-size`` files per run, ``--batch-window``). ``--arrived`` objects are
uploaded with the invoker up (their events arrive and start runs); then the invoker's process
group is stopped, ``--lost`` objects are uploaded, and the bench waits until SeaweedFS's webhook
has given up on them ("dead letter" lines in the filer's log; SeaweedFS 4.48 does so on the first
refused connection, whatever ``max_retries`` says) before it starts the invoker again and checks
that the ledger has none of them. ONE sweep, ``lakehouse
reconcile --flow bench_reconcile`` as a subprocess with the stack's environment: objects found
(must be all of the lost), duplicates for objects whose event had arrived (must be 0), runs
created, every version in exactly one run. Then the large listing: ``--sweep-objects`` (100,000)
objects are uploaded under the same prefix while a bench-owned receiver on the invoker's port
answers the webhook 200 and drops everything (events lost without 4 minutes of retries each);
the invoker is started again and a first sweep (records all of them: the worst case) and a second
sweep (all known: the periodic steady state) are timed, with the bare listing timed alone.

The invoker runs with ``LAKEHOUSE_RECONCILE_INTERVAL=0`` (only the explicit sweeps) and a lake
under the bench home (``LAKEHOUSE_LAKE_URI``) for the batch manifests.

The stack is started on its own home (``/tmp/lakehouse-bench-*``) and ports (47100-47108, never a
demo's or a test session's), and everything is stopped at the end and checked: no process whose
command line or environment names the bench home may survive. Airflow's scheduler is not
started, so the runs are created but never executed (the benchmark is about the front door).

    .venv/bin/python bench/invoker.py [--objects 2000] [--outage 5] [--burst 1000]
        [--phases baseline,current,batched,reconcile] [--batch-size 200] [--batch-window 1]
        [--arrived 100] [--lost 200] [--sweep-objects 100000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

# after the path: the baseline server below builds on the package's classes
import psycopg2  # noqa: E402 - grouped with the imports after sys.path
from psycopg2.extensions import connection as Connection  # noqa: E402 - grouped with the imports after sys.path

from lakehouse.invoker.core import (  # noqa: E402 - needs plugins/ on sys.path
    ConnectionPool,
    Invoker,
    TriggerOutcome,
    build_invoker,
)
from lakehouse.invoker.events import decode_payload, from_seaweedfs_webhook  # noqa: E402 - needs plugins/ on sys.path
from lakehouse.invoker.server import InvokerServer  # noqa: E402 - needs plugins/ on sys.path

BASE_PORT = 47100  # Postgres 47100, SeaweedFS 47101-47106, invoker 47107, Airflow 47108
TOKEN = "bench-token"
FLOW = "bench_flow"
FLOW_BATCHED = "bench_batched"  # files under batched/ (the batched phase)
FLOW_RECONCILE = "bench_reconcile"  # files under reconcile/ (the reconcile phase)

#: the invoker's configuration per phase (environment of the invoker process); the baseline's
#: synchronous calls and per-use connections are not settings but the bench's own server
PHASES: dict[str, dict[str, str]] = {
    "baseline": {"LAKEHOUSE_INVOKER_CATALOGUE_TTL": "0"},
    "current": {
        "LAKEHOUSE_INVOKER_WORKERS": "8",
        "LAKEHOUSE_INVOKER_DB_POOL": "8",
        "LAKEHOUSE_INVOKER_CATALOGUE_TTL": "5",
    },
}
PHASES["batched"] = PHASES["reconcile"] = PHASES["current"]  # today's invoker, into batched flows
PER_FILE_PHASES = ("baseline", "current")


def configure_environment(home: Path, base_port: int = BASE_PORT, extra: dict[str, str] | None = None) -> None:
    """Own home and ports before the package reads its configuration (also used by
    bench/airflow_trigger_rate.py, on its own ``base_port``)."""
    p = base_port
    os.environ.update(
        {
            "LAKEHOUSE_HOME": str(home),
            "LAKEHOUSE_PG_PORT": str(p),
            "LAKEHOUSE_SEAWEED_PORTS": ",".join(str(p + i) for i in range(1, 7)),
            "LAKEHOUSE_S3_ENDPOINT_URL": f"http://127.0.0.1:{p + 4}",
            "LAKEHOUSE_INVOKER_PORT": str(p + 7),
            "LAKEHOUSE_AIRFLOW_PORT": str(p + 8),
            "LAKEHOUSE_INVOKER_TOKEN": TOKEN,
            "AIRFLOW_HOME": str(home / "airflow"),
            **(extra or {}),
        }
    )
    for name in ("LAKEHOUSE_METADATA_DSN", "LAKEHOUSE_AIRFLOW_API", "LAKEHOUSE_AIRFLOW_URL", "LAKEHOUSE_PG_HOST"):
        os.environ.pop(name, None)


def install_bench_flow(metadata_dsn: str) -> None:
    """The flow both Airflow benchmarks trigger: files under ``bench/`` of the landing bucket."""
    import psycopg2

    conn = psycopg2.connect(metadata_dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO lakehouse.flows (flow_id, trigger_bucket, trigger_key_pattern) "
            "VALUES (%s, 'landing', 'bench/*') ON CONFLICT DO NOTHING",
            (FLOW,),
        )
        cur.execute(
            "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) VALUES "
            '(%s, \'a\', \'stage_to_presentation\', \'{"sql": "select 1", "target_table": "p.t"}\') '
            "ON CONFLICT DO NOTHING",
            (FLOW,),
        )
    conn.close()


def install_batched_flows(metadata_dsn: str, max_files: int, window: int) -> None:
    """The two batched flows of this benchmark (not of bench/airflow_trigger_rate.py): one per
    phase, each on its own prefix and DAG, so their runs are counted apart from the per-file ones."""
    import psycopg2

    conn = psycopg2.connect(metadata_dsn)
    with conn, conn.cursor() as cur:
        for flow_id, pattern in ((FLOW_BATCHED, "batched/*"), (FLOW_RECONCILE, "reconcile/*")):
            cur.execute(
                "INSERT INTO lakehouse.flows (flow_id, trigger_bucket, trigger_key_pattern, max_files_per_run, "
                "batch_window_seconds) VALUES (%s, 'landing', %s, %s, %s) ON CONFLICT (flow_id) DO UPDATE "
                "SET max_files_per_run = EXCLUDED.max_files_per_run, "
                "batch_window_seconds = EXCLUDED.batch_window_seconds",
                (flow_id, pattern, max_files, window),
            )
            cur.execute(
                "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) VALUES "
                '(%s, \'a\', \'stage_to_presentation\', \'{"sql": "select 1", "target_table": "p.t"}\') '
                "ON CONFLICT DO NOTHING",
                (flow_id,),
            )
    conn.close()


def prepare_bench_stack(settings: Any, env: dict[str, str]) -> bool:
    """Postgres, the metadata schema, the bench flow and Airflow's database, as both Airflow
    benchmarks need them before any component starts; True when this call started Postgres."""
    from lakehouse.metadata.migrations import migrate
    from lakehouse.stack import postgres, services

    started = postgres.start(settings)
    postgres.ensure_databases(settings)
    migrate(settings.metadata_dsn, ROOT / "metadata" / "migrations")
    install_bench_flow(settings.metadata_dsn)
    services._prepare_airflow(settings, env, print)
    return started


def start_airflow_component(settings: Any, env: dict[str, str], component: str) -> None:
    """One Airflow component in its own process group, as the stack starts it."""
    from lakehouse.stack.services import start_airflow_component as start

    start(settings, env, component)


def wait_airflow_healthy(airflow_url: str, timeout: float) -> float:
    """Poll the api-server's health until its metadatabase is healthy; returns that moment (epoch)."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            health = requests.get(f"{airflow_url}/api/v2/monitor/health", timeout=2).json()
            if health.get("metadatabase", {}).get("status") == "healthy":
                return time.time()
        except (requests.RequestException, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Airflow api-server not healthy after {timeout:.0f} s")
        time.sleep(0.2)


def wait_for_bench_dag(client: Any, log_dir: Path, timeout: float = 240, dag_id: str = FLOW) -> None:
    """Until the dag-processor has parsed the bench flow's DAG (or ``dag_id``)."""
    deadline = time.monotonic() + timeout
    while client.get_dag(dag_id) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"DAG {dag_id} not parsed after {timeout:.0f} s; see {log_dir}")
        time.sleep(1)


def queued_at(run: dict[str, Any]) -> float:
    return datetime.fromisoformat(run["queued_at"].replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


@dataclass
class PhaseResult:
    name: str
    puts: int
    put_seconds: float
    deliveries: int
    accept_seconds: float
    lat_up: list[float]
    lat_outage: list[float]
    runs: int
    distinct: int
    lost: int
    s3_distinct: int
    dag_runs_total: int  # every run of the bench DAG in Airflow after this phase (all phases so far)
    not_triggered: int
    outage: tuple[float, float]
    burst_events: int = 0
    burst_seconds: float = 0.0
    burst_lat: list[float] = field(default_factory=list)
    burst_lost: int = 0
    paced_events: int = 0
    paced_lat: list[float] = field(default_factory=list)
    paced_lost: int = 0
    notes: list[str] = field(default_factory=list)
    # the batched phase: lat_* are upload -> the file's batch run created; runs = batch runs
    batched: bool = False
    files_per_run: list[int] = field(default_factory=list)
    in_zero: int = 0  # distinct versions in no run's manifest
    in_two: int = 0  # distinct versions in two or more runs' manifests
    batches_total: int = 0  # batch rows of the flow in the ledger (each must have its run)
    window: int = 0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)  # load average at the phase's end

    def goal_met(self) -> bool:
        """The issue's goal for the batched phase: p95 < 3 s while Airflow is up, 0 lost, every
        distinct version in exactly one run."""
        return (
            bool(self.lat_up)
            and pct(self.lat_up, 0.95) < 3.0
            and self.lost == 0
            and not self.in_zero
            and not self.in_two
        )


@dataclass
class ReconcileResult:
    arrived: int = 0  # objects uploaded with the invoker up
    arrived_in_ledger: int = 0  # ... whose event was in the ledger before the sweep
    lost: int = 0  # objects uploaded while the invoker was stopped
    dead_letters: int = 0  # SeaweedFS "dead letter" log lines naming them
    delivered_anyway: int = 0  # ... whose event reached the ledger all the same (must be 0)
    sweep_seconds: float = 0.0
    sweep_output: str = ""
    found: int = 0  # lost objects recorded by the sweep (source reconcile)
    duplicates: int = 0  # arrived objects the sweep recorded again, or in 2+ runs
    runs_created: int = 0
    in_zero: int = 0  # of arrived + lost, versions in no run
    in_two: int = 0
    large: int = 0  # objects of the large listing
    large_put_seconds: float = 0.0
    large_dropped: int = 0  # webhook events the bench's receiver answered and dropped
    listing_seconds: float = 0.0  # the bare listing of the flow's prefix (boto3, 1,000 keys a page)
    listed: int = 0
    first_seconds: float = 0.0  # first sweep: records every object of the large listing
    first_output: str = ""
    first_recorded: int = 0
    first_runs: int = 0
    first_drain_seconds: float = 0.0  # the sweep's start -> the last of its files in a created run
    large_lost: int = 0  # large-listing versions without a run once the runs were drained
    large_in_zero: int = 0
    large_in_two: int = 0
    second_seconds: float = 0.0  # second sweep: everything known
    second_output: str = ""
    second_recorded: int = 0
    notes: list[str] = field(default_factory=list)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def ok(self) -> bool:
        return (
            self.found == self.lost
            and not self.delivered_anyway
            and not self.duplicates
            and not self.in_zero
            and not self.in_two
            and not self.large_lost
            and not self.large_in_zero
            and not self.large_in_two
            and self.second_recorded == 0
            and self.first_recorded == self.large
        )


class BlackHole(ThreadingHTTPServer):
    """Stands in for the invoker on its port and answers every webhook POST 200 without storing
    anything: the events are lost as if the webhook were switched off, but SeaweedFS does not
    retry them for minutes. Counts what it dropped."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, port: int) -> None:
        self.count = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _DropHandler)


class _DropHandler(BaseHTTPRequestHandler):
    server: BlackHole
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.count += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, fmt: str, *args: Any) -> None:
        pass


class PerUseConnections(ConnectionPool):
    """The invoker's connections as they were before pooling: a new Postgres connection (TCP
    handshake + SCRAM) per use, closed after it. Only the baseline's cost model; the package's
    pool keeps at least one connection."""

    def __init__(self, dsn: str) -> None:  # no slots, no idle connections to keep
        self.dsn = dsn
        self.size = 0

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        conn = psycopg2.connect(self.dsn)
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        pass


class BaselineInvokerServer(InvokerServer):
    """The naive synchronous webhook: each request stores its events and calls Airflow before it
    answers (``Invoker.handle_events``, as the Lambda does), so the sender waits for Airflow and
    an outage slows every answer. No dispatcher or batcher threads; the retry loop calls Airflow
    itself. What the ``current`` phase is measured against; the package has no such mode."""

    def __init__(self, address: tuple[str, int], invoker: Invoker, token: str) -> None:
        super().__init__(address, invoker, token, dispatch_workers=1)
        self._workers = [t for t in self._workers if t.name == "invoker-retry"]  # not started: nothing queues

    def handle_events(self, route: str, payload: dict[str, Any]) -> list[TriggerOutcome]:
        events = from_seaweedfs_webhook(payload) if route == "seaweedfs" else decode_payload(payload)
        return self.invoker.handle_events(events)

    def _retry_loop(self) -> None:
        batch = 100
        while not self._stop.wait(self._retry_interval):
            try:
                self.invoker.release_held()
                while not self._stop.is_set() and not self.invoker.airflow_down:
                    if len(self.invoker.retry_pending(limit=batch)) < batch:
                        break
            except Exception:  # keep retrying; the ledger keeps the rows
                logging.getLogger("bench.invoker").exception("retry of pending ledger rows failed")


def serve_baseline() -> int:
    """The baseline invoker process (``--serve-baseline``), started by the bench in place of
    ``lakehouse invoker serve``: the stack's settings, the synchronous server, per-use connections."""
    from lakehouse.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    invoker = build_invoker(settings)
    invoker.pool = PerUseConnections(settings.metadata_dsn)
    server = BaselineInvokerServer((settings.invoker_bind, settings.invoker_port), invoker, settings.invoker_token)
    logging.getLogger("bench.invoker").info("baseline invoker listening on %s", settings.invoker_url)
    server.serve()
    return 0


class Bench:
    def __init__(self, args: argparse.Namespace, home: Path) -> None:
        from lakehouse.config import load_settings
        from lakehouse.stack import services

        self.args = args
        self.home = home
        self.settings = load_settings()
        self.env = services.stack_environment(self.settings)
        if args.airflow_api_workers is None:
            args.airflow_api_workers = self.settings.airflow_api_workers
        self.env["AIRFLOW__API__WORKERS"] = str(args.airflow_api_workers)
        self.started_pg = False

    # -- stack ---------------------------------------------------------------------------------
    def start(self) -> None:
        from lakehouse.stack import services

        s = self.settings
        self.started_pg = prepare_bench_stack(s, self.env)
        install_batched_flows(s.metadata_dsn, self.args.batch_size, self.args.batch_window)
        for component in ("dag-processor", "api-server"):
            self.start_airflow_component(component)
        self.wait_airflow(timeout=240)
        for dag_id in (FLOW, FLOW_BATCHED, FLOW_RECONCILE):
            wait_for_bench_dag(self.airflow(), s.log_dir, dag_id=dag_id)
        services._start_seaweedfs(s, self.env, print)

    def start_airflow_component(self, component: str) -> None:
        start_airflow_component(self.settings, self.env, component)

    def airflow(self) -> Any:
        from lakehouse.hooks.airflow_api import AirflowApiClient

        return AirflowApiClient(
            self.settings.airflow_url, self.settings.airflow_username, self.settings.airflow_password, timeout=30
        )

    def wait_airflow(self, timeout: float) -> float:
        return wait_airflow_healthy(self.settings.airflow_url, timeout)

    def start_invoker(self, phase: str) -> None:
        """The package's invoker (``lakehouse invoker serve``), or for ``baseline`` this file's
        synchronous one, under the same service name, so stopping and the orphan check are the same."""
        import requests

        from lakehouse.stack import services
        from lakehouse.stack.processes import service_running, start_group

        env = dict(self.env, **PHASES[phase])
        if phase != "baseline":
            services._start_invoker(self.settings, env, print)
            return
        s = self.settings
        if service_running(s.run_dir, "invoker"):
            return
        print(f"starting the baseline invoker (synchronous, a connection per use) on {s.invoker_url}")
        start_group(
            s.run_dir, s.log_dir, "invoker", [sys.executable, str(Path(__file__).resolve()), "--serve-baseline"], env
        )
        services._wait(
            "baseline invoker",
            lambda: requests.get(f"{s.invoker_url}/healthz", timeout=2).ok,
            30,
            s.log_dir / "invoker.log",
        )

    def stop_invoker(self) -> None:
        from lakehouse.stack.processes import stop_group

        stop_group(self.settings.run_dir, "invoker")

    def stop_all(self) -> list[str]:
        from lakehouse.stack import postgres
        from lakehouse.stack.processes import stop_group

        for name in ("seaweedfs", "invoker", "airflow-api-server", "airflow-dag-processor"):
            stop_group(self.settings.run_dir, name)
        if self.started_pg:
            postgres.stop(self.settings)
        time.sleep(0.5)
        from lakehouse.stack.processes import processes_using_home

        return processes_using_home(self.home)

    # -- one phase ---------------------------------------------------------------------------------
    def plan(self, prefix: str) -> list[tuple[str, bytes]]:
        """New objects first-come, with repeats (same content) and new versions spread in."""
        rnd = random.Random(7)
        n = self.args.objects
        new = [(f"{prefix}/f{i:05d} v+1.csv", f"id,value\n{i},{rnd.random()}\n".encode()) for i in range(n)]
        repeats = [new[i] for i in rnd.sample(range(n), n // 10)]
        versions = [(new[i][0], new[i][1] + b"corrected\n") for i in rnd.sample(range(n), n // 20)]
        tail = repeats + versions
        rnd.shuffle(tail)
        merged: list[tuple[str, bytes]] = []
        step = max(1, n // max(1, len(tail)))
        for index, item in enumerate(new):
            merged.append(item)
            # a repeat only after its original went up: repeats come from the part already uploaded
            if index % step == step - 1 and tail:
                candidates = [j for j, t in enumerate(tail) if t[0] <= item[0]]
                if candidates:
                    merged.append(tail.pop(candidates[0]))
        merged.extend(tail)
        return merged

    def ledger_totals(self, prefix: str) -> tuple[int, int]:
        import psycopg2

        conn = psycopg2.connect(self.settings.metadata_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT coalesce(sum(deliveries), 0), count(*) FILTER (WHERE status <> 'triggered') "
                    "FROM lakehouse.file_ledger WHERE object_key LIKE %s",
                    (prefix + "/%",),
                )
                deliveries, not_triggered = cur.fetchone()
            return int(deliveries), int(not_triggered)
        finally:
            conn.close()

    def airflow_runs(self, dag_id: str = FLOW) -> dict[str, float]:
        """run id → Airflow's queued_at (epoch seconds), for every run of the bench DAG (or ``dag_id``)."""
        return {run_id: queued_at(run) for run_id, run in self.airflow_run_list(dag_id).items()}

    def airflow_run_list(self, dag_id: str) -> dict[str, dict[str, Any]]:
        """run id → the run as Airflow's REST API lists it (``queued_at``, ``conf`` ...)."""
        from lakehouse.hooks.airflow_api import AirflowUnavailableError

        client = self.airflow()
        out: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            try:
                page = client.list_dag_runs(dag_id, limit=100, offset=offset)
            except AirflowUnavailableError:  # busy with the invoker's calls: ask again
                time.sleep(1)
                continue
            for run in page:
                out[run["dag_run_id"]] = run
            if len(page) < 100:
                return out
            offset += 100

    def burst(self, phase: str, result: PhaseResult) -> None:
        """The invoker's own capacity, which the S3 API on this machine cannot saturate: ``--burst``
        filer-webhook events posted straight to the invoker by 20 threads (SeaweedFS's webhook
        ``workers``), Airflow up. Accepted/s = events / time until the last answer; latency = the
        run's ``queued_at`` minus the moment its POST was sent."""
        import base64
        import hashlib

        import requests

        from lakehouse.invoker.core import file_dag_run_id

        n = self.args.burst
        if n <= 0:
            return
        url = f"{self.settings.invoker_url}/events/seaweedfs"
        answered: dict[str, float] = {}
        lock = threading.Lock()
        local = threading.local()

        def post(i: int) -> None:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            key = f"bench/{phase}/burst/b{i:05d}.csv"
            etag = hashlib.md5(key.encode()).hexdigest()
            payload: dict[str, Any] = {
                "event_type": "create",
                "key": f"/buckets/landing/{key}",
                "message": {
                    "new_entry": {
                        "name": key.rsplit("/", 1)[1],
                        "attributes": {
                            "file_size": 10,
                            "mtime": int(time.time()),
                            "md5": base64.b64encode(bytes.fromhex(etag)).decode(),
                        },
                        "extended": {"Seaweed-X-Amz-ETag": base64.b64encode(etag.encode()).decode()},
                    }
                },
            }
            sent = time.time()
            for attempt in range(3):  # as a webhook sender does; a failed send is not an accepted event
                try:
                    response = session.post(
                        url, json=payload, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
                    )
                    response.raise_for_status()
                    break
                except requests.ConnectionError:
                    if attempt == 2:
                        raise
                    time.sleep(0.5)
            with lock:
                answered[file_dag_run_id(FLOW, "landing", key, etag)] = sent

        print(f"[{phase}] burst: {n} webhook events straight to the invoker, 20 senders, Airflow up", flush=True)
        t0 = time.time()
        with ThreadPoolExecutor(20) as pool:
            for f in [pool.submit(post, i) for i in range(n)]:
                f.result()
        result.burst_seconds = time.time() - t0
        result.burst_events = n
        burst = dict(answered)
        runs = self.wait_for_runs(set(burst))
        result.burst_lat = [runs[r] - at for r, at in burst.items() if r in runs]
        result.burst_lost = len(set(burst) - set(runs))

        # paced: events arrive at --paced-rate per second, below what Airflow creates per second,
        # so the latency is the invoker's (and Airflow's per-run) share, not a queue's
        rate, count = self.args.paced_rate, int(self.args.paced_rate * self.args.paced_seconds)
        if count > 0:
            print(f"[{phase}] paced: {count} webhook events at {rate:.0f}/s, Airflow up", flush=True)
            answered.clear()
            start = time.time()
            with ThreadPoolExecutor(20) as pool:
                futures = []
                for i in range(count):
                    time.sleep(max(0.0, start + i / rate - time.time()))
                    futures.append(pool.submit(post, n + i))
                for f in futures:
                    f.result()
            paced = dict(answered)
            runs = self.wait_for_runs(set(paced))
            result.paced_lat = [runs[r] - at for r, at in paced.items() if r in runs]
            result.paced_lost = len(set(paced) - set(runs))
            result.paced_events = count
        result.dag_runs_total = len(runs)
        result.distinct += n + count  # the direct events' versions count towards "all versions so far"

    def wait_for_runs(self, wanted: set[str]) -> dict[str, float]:
        deadline = time.monotonic() + self.args.drain_timeout
        runs = self.airflow_runs()
        while wanted - set(runs) and time.monotonic() < deadline:
            time.sleep(1)
            runs = self.airflow_runs()
        return runs

    def s3_client(self, threads: int) -> Any:
        import boto3
        from botocore.config import Config

        s = self.settings
        return boto3.client(
            "s3",
            endpoint_url=s.s3_endpoint_url,
            aws_access_key_id=s.s3_access_key_id,
            aws_secret_access_key=s.s3_secret_access_key,
            region_name="us-east-1",
            config=Config(max_pool_connections=threads * 2, retries={"max_attempts": 5}),
        )

    def upload_with_outage(self, phase: str, prefix: str) -> dict[str, Any]:
        """The plan of the per-file and batched phases: uploads (with repeats, new versions and a
        second transport for 10 %) in three stretches, Airflow's api-server stopped in the middle
        one. Returns the uploads (key, etag, PUT returned), the outage and the timings."""
        import requests

        from lakehouse.invoker.server import SIGNATURE_HEADER, sign_body
        from lakehouse.stack.processes import stop_group

        s = self.settings
        plan = self.plan(prefix)
        rnd = random.Random(11)
        cross = set(rnd.sample(range(len(plan)), len(plan) // 10))
        s3 = self.s3_client(self.args.threads)
        http = requests.Session()
        uploads: list[tuple[str, str, float]] = []
        lock = threading.Lock()
        notes: list[str] = []

        def put(index: int) -> None:
            key, body = plan[index]
            etag = s3.put_object(Bucket="landing", Key=key, Body=body)["ETag"].strip('"')
            done = time.time()
            with lock:
                uploads.append((key, etag, done))
            if index in cross:  # the same version again, through a second transport
                from urllib.parse import quote_plus

                body = json.dumps(
                    {
                        "Records": [
                            {
                                "eventSource": "aws:s3",
                                "eventName": "ObjectCreated:Put",
                                "eventTime": datetime.now(UTC).isoformat(),
                                "s3": {
                                    "bucket": {"name": "landing"},
                                    "object": {
                                        "key": quote_plus(key, safe="/"),
                                        "size": len(plan[index][1]),
                                        "eTag": etag,
                                    },
                                },
                            }
                        ]
                    }
                ).encode()
                response = http.post(
                    f"{s.invoker_url}/events/s3",
                    data=body,
                    timeout=60,
                    headers={SIGNATURE_HEADER: sign_body(TOKEN, body), "Content-Type": "application/json"},
                )
                response.raise_for_status()

        # three stretches, each uploaded as fast as the S3 API takes it: Airflow up; Airflow's
        # api-server stopped (restarted --outage s after the stop, once this stretch is up);
        # Airflow healthy again. Between the last two the bench waits for Airflow's health.
        cut1, cut2 = int(len(plan) * 0.4), int(len(plan) * 0.7)
        stretches = [(0, cut1), (cut1, cut2), (cut2, len(plan))]
        print(
            f"[{phase}] {len(plan)} PUTs ({self.args.objects} objects, {len(plan) - self.args.objects} "
            f"re-uploads), {len(cross)} also as S3 notifications; Airflow's api-server stopped during "
            f"PUTs {cut1}..{cut2} and for at least {self.args.outage:.0f} s",
            flush=True,
        )
        outage: list[float] = []
        active = 0.0  # seconds from each stretch's start until its last delivery was stored
        put_seconds = 0.0
        expected = 0
        t0 = time.time()
        with ThreadPoolExecutor(self.args.threads) as pool:
            for number, (first, last) in enumerate(stretches):
                started = time.time()
                if number == 1:
                    outage.append(started)
                    stop_group(s.run_dir, "airflow-api-server")
                for f in [pool.submit(put, i) for i in range(first, last)]:
                    f.result()
                put_seconds += time.time() - started
                expected += (last - first) + len([i for i in cross if first <= i < last])
                deadline = time.monotonic() + 120
                while self.ledger_totals(prefix)[0] < expected and time.monotonic() < deadline:
                    time.sleep(0.05)
                if self.ledger_totals(prefix)[0] < expected:
                    notes.append(
                        f"stretch {number + 1}: only {self.ledger_totals(prefix)[0]} of {expected} "
                        f"deliveries stored after 120 s"
                    )
                active += time.time() - started
                if number == 1:
                    time.sleep(max(0.0, outage[0] + self.args.outage - time.time()))
                    self.start_airflow_component("api-server")
                    outage.append(self.wait_airflow(timeout=240))
        versions: dict[tuple[str, str], float] = {}
        for key, etag, at in sorted(uploads, key=lambda u: u[2]):
            versions.setdefault((key, etag), at)  # a version's latency counts from its first PUT
        return {
            "uploads": uploads,
            "versions": versions,
            "outage": outage,
            "t0": t0,
            "active": active,
            "put_seconds": put_seconds,
            "notes": notes,
        }

    def run_phase(self, phase: str) -> PhaseResult:
        from lakehouse.invoker.core import file_dag_run_id

        prefix = f"bench/{phase}"
        self.start_invoker(phase)
        up = self.upload_with_outage(phase, prefix)
        outage, t0 = up["outage"], up["t0"]
        wanted = {file_dag_run_id(FLOW, "landing", key, etag): v for (key, etag), v in up["versions"].items()}
        deadline = time.monotonic() + self.args.drain_timeout
        runs = self.airflow_runs()
        while set(wanted) - set(runs) and time.monotonic() < deadline:
            time.sleep(1)
            runs = self.airflow_runs()
        phase_runs = {r: at for r, at in runs.items() if r in wanted}
        margin = 1.0
        lat_up: list[float] = []
        lat_outage: list[float] = []
        for run_id, put_at in wanted.items():
            if run_id in phase_runs:
                around = outage[0] - margin <= put_at <= outage[1] + margin
                (lat_outage if around else lat_up).append(phase_runs[run_id] - put_at)
        deliveries, not_triggered = self.ledger_totals(prefix)
        result = PhaseResult(
            name=phase,
            puts=len(up["uploads"]),
            put_seconds=up["put_seconds"],
            deliveries=deliveries,
            accept_seconds=up["active"],
            lat_up=lat_up,
            lat_outage=lat_outage,
            runs=len(phase_runs),
            distinct=len(wanted),
            lost=len(set(wanted) - set(runs)),
            s3_distinct=len(wanted),
            dag_runs_total=len(runs),
            not_triggered=not_triggered,
            outage=(outage[0] - t0, outage[1] - t0),
            notes=up["notes"],
        )
        self.burst(phase, result)
        self.stop_invoker()
        return result

    # -- micro-batches ---------------------------------------------------------------------------
    def ledger_versions(self, flow_id: str, prefix: str) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
        """(key, etag) → its ledger rows for the flow: (status, batch_id, dag_run_id, source)."""
        import psycopg2

        conn = psycopg2.connect(self.settings.metadata_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT object_key, etag, status, batch_id, dag_run_id, source FROM lakehouse.file_ledger "
                    "WHERE flow_id = %s AND object_key LIKE %s",
                    (flow_id, prefix + "%"),
                )
                out: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
                for key, etag, *rest in cur.fetchall():
                    out.setdefault((key, etag), []).append(tuple(rest))
                return out
        finally:
            conn.close()

    def batch_count(self, flow_id: str) -> int:
        import psycopg2

        conn = psycopg2.connect(self.settings.metadata_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM lakehouse.file_batches WHERE flow_id = %s", (flow_id,))
                return int(cur.fetchone()[0])
        finally:
            conn.close()

    @staticmethod
    def manifest_files(run: dict[str, Any]) -> list[tuple[str, str]] | None:
        """(key, etag) of every file of a batch run, read from the manifest its conf names (None:
        the run names no readable manifest)."""
        manifest = ((run.get("conf") or {}).get("batch") or {}).get("manifest")
        if not manifest:
            return None
        parsed = urlparse(manifest)
        if parsed.scheme != "file":
            return None
        try:
            document = json.loads(Path(unquote(parsed.path)).read_text())
        except (OSError, ValueError):
            return None
        return [(f["key"], f["etag"]) for f in document.get("files", ())]

    def wait_batched(
        self, flow_id: str, prefix: str, versions: set[tuple[str, str]], timeout: float
    ) -> tuple[dict[tuple[str, str], list[tuple[Any, ...]]], dict[str, dict[str, Any]]]:
        """Until every version has a ledger row whose batch's run exists in Airflow (or the timeout);
        returns the ledger rows and the flow's runs."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.ledger_versions(flow_id, prefix)
            runs = self.airflow_run_list(flow_id)
            missing = [v for v in versions if not any(r[2] in runs for r in rows.get(v, ()))]
            if not missing or time.monotonic() > deadline:
                return rows, runs
            time.sleep(1)

    @classmethod
    def run_membership(cls, runs: dict[str, dict[str, Any]], notes: list[str]) -> dict[tuple[str, str], list[str]]:
        """(key, etag) → the runs whose manifests list it."""
        member: dict[tuple[str, str], list[str]] = {}
        unreadable = 0
        for run_id, run in runs.items():
            files = cls.manifest_files(run)
            if files is None:
                unreadable += 1
                continue
            for version in files:
                member.setdefault(version, []).append(run_id)
        if unreadable:
            notes.append(f"{unreadable} run(s) name no readable manifest in their conf")
        return member

    def run_batched(self) -> PhaseResult:
        phase, prefix = "batched", "batched/run"
        self.start_invoker(phase)
        up = self.upload_with_outage(phase, prefix)
        outage, t0, notes = up["outage"], up["t0"], up["notes"]
        versions: dict[tuple[str, str], float] = up["versions"]
        rows, runs = self.wait_batched(FLOW_BATCHED, prefix, set(versions), self.args.drain_timeout)
        member = self.run_membership(runs, notes)
        margin = 1.0
        lat_up: list[float] = []
        lat_outage: list[float] = []
        lost = in_zero = in_two = disagree = 0
        for version, put_at in versions.items():
            in_runs = member.get(version, [])
            in_zero += not in_runs
            in_two += len(in_runs) > 1
            ledger_rows = rows.get(version, [])
            run_id = ledger_rows[0][2] if len(ledger_rows) == 1 else None
            if len(ledger_rows) > 1:
                notes.append(f"{version[0]} {version[1]}: {len(ledger_rows)} ledger rows")
            if run_id not in runs:
                lost += 1
                continue
            if in_runs and in_runs != [run_id]:
                disagree += 1
            around = outage[0] - margin <= put_at <= outage[1] + margin
            (lat_outage if around else lat_up).append(queued_at(runs[run_id]) - put_at)
        if disagree:
            notes.append(f"{disagree} version(s) whose ledger batch is not the run whose manifest lists them")
        extra = set(member) - set(versions)
        if extra:
            notes.append(f"{len(extra)} file version(s) in the runs' manifests that the bench never uploaded")
        deliveries, not_triggered = self.ledger_totals(prefix)
        files_per_run = sorted(len(self.manifest_files(r) or ()) for r in runs.values())
        result = PhaseResult(
            name=phase,
            puts=len(up["uploads"]),
            put_seconds=up["put_seconds"],
            deliveries=deliveries,
            accept_seconds=up["active"],
            lat_up=lat_up,
            lat_outage=lat_outage,
            runs=len(runs),
            distinct=len(versions),
            lost=lost,
            s3_distinct=len(versions),
            dag_runs_total=len(runs),
            not_triggered=not_triggered,
            outage=(outage[0] - t0, outage[1] - t0),
            notes=notes,
            batched=True,
            files_per_run=files_per_run,
            in_zero=in_zero,
            in_two=in_two,
            batches_total=self.batch_count(FLOW_BATCHED),
            window=self.args.batch_window,
        )
        self.stop_invoker()
        return result

    # -- reconciliation ------------------------------------------------------------------------
    def put_many(self, keys: list[str], threads: int) -> tuple[dict[tuple[str, str], float], float]:
        """New objects (one version each) through the S3 API, as fast as it takes them."""
        s3 = self.s3_client(threads)
        out: dict[tuple[str, str], float] = {}
        lock = threading.Lock()

        def put(key: str) -> None:
            etag = s3.put_object(Bucket="landing", Key=key, Body=f"id,key\n1,{key}\n".encode())["ETag"].strip('"')
            with lock:
                out[(key, etag)] = time.time()

        started = time.time()
        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(put, k) for k in keys]:
                f.result()
        return out, time.time() - started

    def dead_letters(self, needle: str) -> int:
        """SeaweedFS's filer logs every event its webhook gave up on: "received dead letter message"."""
        path = self.settings.log_dir / "seaweedfs.log"
        try:
            with open(path, "rb") as log:
                return sum(1 for line in log if b"dead letter" in line and needle.encode() in line)
        except OSError:
            return 0

    def sweep(self, label: str) -> tuple[float, str, int]:
        """One ``lakehouse reconcile --flow`` run with the stack's environment: (wall seconds,
        its summary line, objects it recorded)."""
        started = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "lakehouse.cli", "reconcile", "--flow", FLOW_RECONCILE, "--show", "0"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        seconds = time.time() - started
        out = proc.stdout.strip()
        if proc.returncode != 0:
            raise RuntimeError(f"{label}: lakehouse reconcile exited {proc.returncode}\n{out}\n{proc.stderr[-3000:]}")
        line = next((ln for ln in out.splitlines() if ln.startswith(f"flow {FLOW_RECONCILE}:")), out)
        found = re.search(r"(\d+) recorded now", line)
        print(f"[reconcile] {label}: {seconds:.1f}s: {line}", flush=True)
        return seconds, line, int(found.group(1)) if found else -1

    def run_reconcile(self) -> ReconcileResult:
        a = self.args
        r = ReconcileResult()
        self.start_invoker("reconcile")
        # 1. objects whose events arrive: their runs exist before the sweep
        arrived, _ = self.put_many([f"reconcile/arrived/a{i:05d}.csv" for i in range(a.arrived)], a.threads)
        rows, _ = self.wait_batched(FLOW_RECONCILE, "reconcile/arrived/", set(arrived), a.drain_timeout)
        r.arrived = len(arrived)
        r.arrived_in_ledger = sum(1 for v in arrived if v in rows)
        print(
            f"[reconcile] {r.arrived} objects uploaded with the invoker up; {r.arrived_in_ledger} in the ledger",
            flush=True,
        )

        # 2. objects whose events are lost: the invoker's process group is stopped, so SeaweedFS's
        # webhook fails and gives up (a "dead letter"; 4.48 does not retry a refused connection)
        self.stop_invoker()
        lost, _ = self.put_many([f"reconcile/lost/l{i:05d}.csv" for i in range(a.lost)], a.threads)
        r.lost = len(lost)
        print(
            f"[reconcile] {r.lost} objects uploaded with the invoker stopped; waiting until SeaweedFS's webhook "
            f"gives up on them (up to {a.dead_letter_timeout:.0f} s)",
            flush=True,
        )
        deadline = time.monotonic() + a.dead_letter_timeout
        while self.dead_letters("reconcile/lost/") < r.lost and time.monotonic() < deadline:
            time.sleep(2)
        r.dead_letters = self.dead_letters("reconcile/lost/")
        if r.dead_letters < r.lost:
            r.notes.append(
                f"only {r.dead_letters} of {r.lost} dead-letter lines in seaweedfs.log after "
                f"{a.dead_letter_timeout:.0f} s"
            )
        self.start_invoker("reconcile")
        time.sleep(5)  # a webhook retry still under way would land now
        rows = self.ledger_versions(FLOW_RECONCILE, "reconcile/lost/")
        r.delivered_anyway = sum(1 for v in lost if v in rows)
        print(
            f"[reconcile] invoker started again; {r.dead_letters} dead letters, {r.delivered_anyway} of the "
            f"{r.lost} in the ledger before the sweep",
            flush=True,
        )

        # 3. ONE sweep
        runs_before = set(self.airflow_run_list(FLOW_RECONCILE))
        r.sweep_seconds, r.sweep_output, _ = self.sweep("sweep")
        both = {**arrived, **lost}
        rows, runs = self.wait_batched(FLOW_RECONCILE, "reconcile/", set(both), a.drain_timeout)
        r.found = sum(1 for v in lost if any(row[3] == "reconcile" for row in rows.get(v, ())))
        member = self.run_membership(runs, r.notes)
        r.duplicates = sum(
            1
            for v in arrived
            if len(rows.get(v, ())) != 1 or rows[v][0][3] == "reconcile" or len(member.get(v, ())) > 1
        )
        r.in_zero = sum(1 for v in both if not member.get(v))
        r.in_two = sum(1 for v in both if len(member.get(v, ())) > 1)
        r.runs_created = len(set(runs) - runs_before)

        # 4. the large listing: its events are answered and dropped by the bench's own receiver on
        # the invoker's port (a webhook "switched off" without each event's 4 minutes of retries)
        n = a.sweep_objects
        if n > 0:
            self.stop_invoker()
            hole = BlackHole(self.settings.invoker_port)
            threading.Thread(target=hole.serve_forever, daemon=True).start()
            try:
                print(
                    f"[reconcile] uploading {n} objects under reconcile/large/ ({a.sweep_threads} clients), "
                    f"webhook events dropped",
                    flush=True,
                )
                large, r.large_put_seconds = self.put_many(
                    [f"reconcile/large/o{i:06d}.csv" for i in range(n)], a.sweep_threads
                )
                settle = time.monotonic() + 60
                while hole.count < n and time.monotonic() < settle:
                    time.sleep(0.5)
                r.large_dropped = hole.count
            finally:
                hole.shutdown()
                hole.server_close()
            r.large = len(large)
            print(
                f"[reconcile] {r.large} objects in {r.large_put_seconds:.0f}s "
                f"({r.large / r.large_put_seconds:.0f} PUT/s); {r.large_dropped} webhook events dropped",
                flush=True,
            )
            self.start_invoker("reconcile")
            s3 = self.s3_client(1)
            started = time.time()
            r.listed = sum(
                page.get("KeyCount", 0)
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket="landing", Prefix="reconcile/")
            )
            r.listing_seconds = time.time() - started
            print(f"[reconcile] bare listing of reconcile/: {r.listed} keys in {r.listing_seconds:.1f}s", flush=True)
            runs_before = set(self.airflow_run_list(FLOW_RECONCILE))
            started = time.time()
            r.first_seconds, r.first_output, r.first_recorded = self.sweep("first sweep of the large listing")
            rows, runs = self.wait_batched(FLOW_RECONCILE, "reconcile/large/", set(large), a.drain_timeout)
            r.first_drain_seconds = time.time() - started
            r.large_lost = sum(1 for v in large if not any(row[2] in runs for row in rows.get(v, ())))
            r.first_runs = len(set(runs) - runs_before)
            member = self.run_membership(runs, r.notes)
            r.large_in_zero = sum(1 for v in large if not member.get(v))
            r.large_in_two = sum(1 for v in large if len(member.get(v, ())) > 1)
            r.second_seconds, r.second_output, r.second_recorded = self.sweep("second sweep (all known)")
        self.stop_invoker()
        return r


def report(results: list[PhaseResult], args: argparse.Namespace, reconciled: ReconcileResult | None = None) -> None:
    def lat(values: list[float]) -> str:
        if not values:
            return "n=0"
        return (
            f"p50 {pct(values, 0.5):6.2f}s  p95 {pct(values, 0.95):6.2f}s  max {max(values):6.2f}s  (n={len(values)})"
        )

    cumulative: dict[str, int] = {}
    total = 0
    for r in results:
        if not r.batched:  # the per-file phases share the bench DAG; the batched phase has its own
            total += r.distinct
            cumulative[r.name] = total

    def all_runs(r: PhaseResult) -> str:
        if r.batched:
            return (
                f"{r.dag_runs_total} / {r.batches_total} batches stored  "
                f"{'EQUAL' if r.dag_runs_total == r.batches_total else 'DIFFERENT'}"
            )
        return (
            f"{r.dag_runs_total} / {cumulative[r.name]}  "
            f"{'EQUAL' if r.dag_runs_total == cumulative[r.name] else 'EXTRA RUNS'}"
        )

    def files_per_run(r: PhaseResult) -> str:
        f = r.files_per_run
        return f"{f[0]} / {statistics.median(f):g} / {f[-1]}  (limit {args.batch_size})" if f else "n=0"

    def goal(r: PhaseResult) -> str:
        p95 = f"{pct(r.lat_up, 0.95):.2f}s" if r.lat_up else "n/a"
        return (
            f"{'MET' if r.goal_met() else 'NOT MET'}: p95 up {p95}, lost {r.lost}, in 0/2+ runs {r.in_zero}/{r.in_two}"
        )

    print()
    print(
        f"=== invoker benchmark: {args.objects} objects per phase, real SeaweedFS + Airflow 3 api-server "
        f"({args.airflow_api_workers} worker{'s' if args.airflow_api_workers > 1 else ''}), {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end ==="
    )
    batched = any(r.batched for r in results)
    rows: list[tuple[str, Callable[[PhaseResult], str]]] = [
        ("PUTs through the S3 API", lambda r: f"{r.puts} in {r.put_seconds:.1f}s = {r.puts / r.put_seconds:.0f}/s"),
        (
            "events accepted (stored; while uploading)",
            lambda r: f"{r.deliveries} in {r.accept_seconds:.1f}s = {r.deliveries / r.accept_seconds:.0f}/s",
        ),
        (
            "Airflow down (stop -> healthy again)",
            lambda r: f"{r.outage[0]:.1f}s .. {r.outage[1]:.1f}s ({r.outage[1] - r.outage[0]:.1f}s)",
        ),
        ("upload -> run created, Airflow up", lambda r: lat(r.lat_up)),
        ("upload -> run created, around the outage", lambda r: lat(r.lat_outage)),
        (
            "runs created / distinct file versions (S3)",
            lambda r: (
                f"{r.runs} runs for {r.s3_distinct} versions"
                if r.batched
                else f"{r.runs} / {r.s3_distinct}  {'EQUAL' if r.runs == r.s3_distinct else 'DIFFERENT'}"
            ),
        ),
        ("events lost (versions without a run)", lambda r: str(r.lost)),
        *(
            [
                ("files per run (min / median / max)", lambda r: files_per_run(r) if r.batched else "1"),
                (
                    "versions in 0 runs / in 2+ runs (manifests)",
                    lambda r: f"{r.in_zero} / {r.in_two}" if r.batched else "-",
                ),
            ]
            if batched
            else []
        ),
        (
            "burst: webhook events accepted",
            lambda r: (
                f"{r.burst_events} in {r.burst_seconds:.1f}s = {r.burst_events / r.burst_seconds:.0f}/s"
                if r.burst_events
                else "-"
            ),
        ),
        ("burst: event sent -> run created", lambda r: lat(r.burst_lat) if r.burst_events else "-"),
        ("burst: events lost", lambda r: str(r.burst_lost) if r.burst_events else "-"),
        (
            f"paced {args.paced_rate:.0f}/s: event sent -> run created",
            lambda r: lat(r.paced_lat) if r.paced_events else "-",
        ),
        (f"paced {args.paced_rate:.0f}/s: events lost", lambda r: str(r.paced_lost) if r.paced_events else "-"),
        ("all runs of the DAG / all versions so far", all_runs),
        ("ledger rows not 'triggered' at the end", lambda r: str(r.not_triggered)),
        ("load average 1/5/15 min at the phase's end", lambda r: "{:.1f} / {:.1f} / {:.1f}".format(*r.load)),
        *(
            [("goal: p95 < 3 s up, 0 lost, 1 run per version", lambda r: goal(r) if r.batched else "-")]
            if batched
            else []
        ),
    ]
    if results:
        width = max(len(label) for label, _ in rows)
        names = [
            f"{r.name} ({args.batch_size} files/run, window {r.window} s)" if r.batched else r.name for r in results
        ]
        print(f"{'':{width}}  " + "  |  ".join(f"{name:^52}" for name in names))
        for label, fmt in rows:
            print(f"{label:{width}}  " + "  |  ".join(f"{fmt(r):52}" for r in results))
        if batched:
            print(
                '(batched: "run created" = the Airflow queued_at of the run whose batch holds the file version; '
                '"all runs" = the batched DAG\'s runs / batch rows in the ledger)'
            )
    for r in results:
        for note in r.notes:
            print(f"[{r.name}] NOTE: {note}")
    if reconciled is not None:
        report_reconcile(reconciled, args)


def report_reconcile(r: ReconcileResult, args: argparse.Namespace) -> None:
    def check(ok: bool) -> str:
        return "ok" if ok else "FAILED"

    print()
    print(
        f"=== reconciliation (flow {FLOW_RECONCILE}, {args.batch_size} files per run, window {args.batch_window} s, "
        f"load average {'{:.1f} / {:.1f} / {:.1f}'.format(*r.load)} at its end) ==="
    )
    lines = [
        (
            "objects uploaded, invoker up (events arrived)",
            f"{r.arrived} ({r.arrived_in_ledger} in the ledger before the sweep)",
        ),
        (
            "objects uploaded, invoker stopped (events lost)",
            f"{r.lost}: {r.dead_letters} dead-letter lines in "
            f"seaweedfs.log; {r.delivered_anyway} reached the ledger "
            f"anyway  {check(not r.delivered_anyway)}",
        ),
        ("ONE sweep (lakehouse reconcile --flow)", f"{r.sweep_seconds:.1f}s wall: {r.sweep_output}"),
        ("lost objects found by the sweep", f"{r.found} / {r.lost}  {check(r.found == r.lost)}"),
        ("duplicates for objects whose event arrived", f"{r.duplicates}  {check(not r.duplicates)}"),
        ("runs created by the sweep", str(r.runs_created)),
        (
            "versions in 0 runs / in 2+ runs (manifests)",
            f"{r.in_zero} / {r.in_two}  {check(not r.in_zero and not r.in_two)}",
        ),
    ]
    if r.large:
        lines += [
            (
                "large listing: objects uploaded, webhook dropped",
                f"{r.large} in {r.large_put_seconds:.0f}s = {r.large / r.large_put_seconds:.0f} PUT/s "
                f"({args.sweep_threads} clients); {r.large_dropped} events dropped",
            ),
            ("bare listing of the flow's prefix (boto3)", f"{r.listed} keys in {r.listing_seconds:.1f}s"),
            ("first sweep (records every object)", f"{r.first_seconds:.1f}s wall: {r.first_output}"),
            (
                "  ... until its files are in created runs",
                f"{r.first_drain_seconds:.1f}s, {r.first_runs} runs; "
                f"{r.large_lost} lost, in 0/2+ runs "
                f"{r.large_in_zero}/{r.large_in_two}  "
                f"{check(not r.large_lost and not r.large_in_zero and not r.large_in_two)}",
            ),
            ("second sweep (everything known: steady state)", f"{r.second_seconds:.1f}s wall: {r.second_output}"),
        ]
        if r.large < 100_000:
            per = r.large_put_seconds / r.large
            lines.append(
                (
                    "100,000 objects, extrapolated linearly",
                    f"upload ~{per * 100_000:.0f}s; first sweep ~{r.first_seconds / r.large * 100_000:.0f}s; "
                    f"second sweep ~{r.second_seconds / r.listed * 100_300:.0f}s (from {r.large})",
                )
            )
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        print(f"{label:{width}}  {text}")
    for note in r.notes:
        print(f"[reconcile] NOTE: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=2000, help="new objects per per-file and batched phase")
    parser.add_argument("--threads", type=int, default=16, help="concurrent S3 clients")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds Airflow's api-server stays stopped")
    parser.add_argument(
        "--phases",
        default="baseline,current,batched,reconcile",
        help="comma-separated, run in the order given: baseline, current, batched, reconcile",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=1000,
        help="webhook events posted straight to the invoker per per-file phase (0: none)",
    )
    parser.add_argument(
        "--paced-rate", type=float, default=20.0, help="events/s of the paced part (below Airflow's run-creation rate)"
    )
    parser.add_argument("--paced-seconds", type=float, default=20.0, help="length of the paced part (0: none)")
    parser.add_argument(
        "--airflow-api-workers",
        type=int,
        default=None,
        help="uvicorn workers of Airflow's api-server (default: what the stack runs, LAKEHOUSE_AIRFLOW_API_WORKERS, 2)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="longest wait for the runs after the last upload"
    )
    parser.add_argument(
        "--batch-size", type=int, default=200, help="max_files_per_run of the batched and reconcile phases' flows"
    )
    parser.add_argument(
        "--batch-window",
        type=int,
        default=1,
        help="batch_window_seconds of the batched and reconcile phases' flows (0: gather at once)",
    )
    parser.add_argument(
        "--arrived", type=int, default=100, help="reconcile: objects uploaded with the invoker up before the lost ones"
    )
    parser.add_argument(
        "--lost",
        type=int,
        default=200,
        help="reconcile: objects uploaded while the invoker is stopped (their events dead-lettered)",
    )
    parser.add_argument(
        "--dead-letter-timeout",
        type=float,
        default=480.0,
        help="reconcile: longest wait for SeaweedFS's webhook to give up on the lost objects' events",
    )
    parser.add_argument(
        "--sweep-objects",
        type=int,
        default=100_000,
        help="reconcile: objects of the large listing the sweeps are timed on (0: none)",
    )
    parser.add_argument(
        "--sweep-threads", type=int, default=32, help="reconcile: S3 clients uploading the large listing"
    )
    parser.add_argument(
        "--keep-home", action="store_true", help="keep the bench home (its log/ folder) even when every check passed"
    )
    parser.add_argument(
        "--serve-baseline",
        action="store_true",
        help="internal: run the baseline phase's invoker in this process (the bench starts it)",
    )
    args = parser.parse_args()
    if args.serve_baseline:
        return serve_baseline()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"--phases: unknown {unknown}; choose from {sorted(PHASES)}")
    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-"))
    home.chmod(0o755)  # the Postgres server runs as user postgres and must reach its data dir
    # a short backoff so the outbox drains within seconds of Airflow coming back; no automatic
    # reconciliation sweeps (only the reconcile phase's explicit ones); the lake (batch manifests)
    # under the bench home
    configure_environment(
        home,
        extra={
            "LAKEHOUSE_INVOKER_RETRY_BASE": "0.5",
            "LAKEHOUSE_INVOKER_RETRY_MAX": "2",
            "LAKEHOUSE_RECONCILE_INTERVAL": "0",
            "LAKEHOUSE_LAKE_URI": (home / "lake").as_uri(),
        },
    )
    bench = Bench(args, home)
    results: list[PhaseResult] = []
    reconciled: ReconcileResult | None = None
    completed = False
    ok = False
    left: list[str] = []
    print(f"load average at the start: {'{:.1f} / {:.1f} / {:.1f}'.format(*os.getloadavg())}", flush=True)
    try:
        print(f"bench home {home}: starting Postgres, Airflow (api-server, dag-processor), SeaweedFS ...", flush=True)
        bench.start()
        for phase in phases:
            if phase == "reconcile":
                reconciled = bench.run_reconcile()
                reconciled.load = os.getloadavg()
                continue
            results.append(bench.run_batched() if phase == "batched" else bench.run_phase(phase))
            results[-1].load = os.getloadavg()
        completed = True
        per_file = [r for r in results if not r.batched]
        ok = (
            all(r.lost == 0 and r.burst_lost == 0 and r.paced_lost == 0 for r in results)
            and all(r.runs == r.s3_distinct for r in per_file)
            and (not per_file or per_file[-1].dag_runs_total == sum(r.distinct for r in per_file))
            and all(r.goal_met() and r.dag_runs_total == r.batches_total for r in results if r.batched)
            and (reconciled is None or reconciled.ok())
        )
    finally:
        left = bench.stop_all()
        print("stopped everything the bench started" if not left else "STILL RUNNING: " + "; ".join(left))
        if not left and completed and ok and not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"kept {home} for its logs ({home}/log)")
    report(results, args, reconciled)
    return 0 if ok and not left else 1


if __name__ == "__main__":
    sys.exit(main())
