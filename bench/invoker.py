"""Invoker load benchmark against the real stack: SeaweedFS (S3 API + filer webhook), the invoker,
Postgres and Airflow 3's api-server. Two phases in one run, side by side, on the same plan:

* ``baseline`` — the naive per-event synchronous path, as the invoker was before this work: the
  webhook request itself calls Airflow, a Postgres connection per event, the flows re-read per
  event (``LAKEHOUSE_INVOKER_WORKERS=0``, ``_DB_POOL=0``, ``_CATALOGUE_TTL=0``);
* ``current`` — the defaults: answer once the event is in the ledger, trigger from 8 dispatcher
  threads, pooled connections, flows cached 5 s.

Each phase uploads ``--objects`` new objects through the S3 API as fast as it takes them (16
client threads), mixed with identical re-uploads (same file version: must not start a run),
changed re-uploads (a new version: must start one) and, for 10 % of the uploads, the same
version once more as an HMAC-signed S3 notification (a second transport). Airflow's api-server
is stopped (SIGTERM of its process group) after 40 % of the uploads, kept down ``--outage``
seconds, and started again; uploads go on meanwhile.

Reported per phase: events accepted per second (ledger deliveries / time until the last one was
stored), upload → DAG run created (Airflow's own ``queued_at`` minus the moment the PUT returned;
p50/p95/max, split into "Airflow up" and "around the outage"), runs created in Airflow versus
distinct file versions uploaded (must be equal), events lost (versions without a run: must be 0).
Then, Airflow up, a burst of ``--burst`` filer-webhook events posted straight to the invoker by 20
senders measures the invoker's own capacity (on a shared 2-CPU machine the S3 API, not the
invoker, limits the upload part): accepted/s and event sent → run created. Last, ``--paced-rate``
events per second for ``--paced-seconds``: below the rate at which Airflow creates runs, so the
latency is the invoker's share plus one run creation, not time spent queueing for Airflow.

The stack is started on its own home (``/tmp/lakehouse-bench-*``) and ports (47100-47108, never a
demo's or a test session's), and everything is stopped at the end and checked: no process whose
command line or environment names the bench home may survive. Airflow's scheduler is not
started, so the runs are created but never executed (the benchmark is about the front door).

    .venv/bin/python bench/invoker.py [--objects 2000] [--outage 5] [--burst 1000] [--phases baseline,current]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

BASE_PORT = 47100  # Postgres 47100, SeaweedFS 47101-47106, invoker 47107, Airflow 47108
TOKEN = "bench-token"
FLOW = "bench_flow"

#: the invoker's configuration per phase (environment of the invoker process)
PHASES: dict[str, dict[str, str]] = {
    "baseline": {"LAKEHOUSE_INVOKER_WORKERS": "0", "LAKEHOUSE_INVOKER_DB_POOL": "0",
                 "LAKEHOUSE_INVOKER_CATALOGUE_TTL": "0"},
    "current": {"LAKEHOUSE_INVOKER_WORKERS": "8", "LAKEHOUSE_INVOKER_DB_POOL": "8",
                "LAKEHOUSE_INVOKER_CATALOGUE_TTL": "5"},
}


def configure_environment(home: Path, base_port: int = BASE_PORT, extra: dict[str, str] | None = None) -> None:
    """Own home and ports before the package reads its configuration (also used by
    bench/airflow_trigger_rate.py, on its own ``base_port``)."""
    p = base_port
    os.environ.update({
        "LAKEHOUSE_HOME": str(home),
        "LAKEHOUSE_PG_PORT": str(p),
        "LAKEHOUSE_SEAWEED_PORTS": ",".join(str(p + i) for i in range(1, 7)),
        "LAKEHOUSE_S3_ENDPOINT_URL": f"http://127.0.0.1:{p + 4}",
        "LAKEHOUSE_INVOKER_PORT": str(p + 7),
        "LAKEHOUSE_AIRFLOW_PORT": str(p + 8),
        "LAKEHOUSE_INVOKER_TOKEN": TOKEN,
        "AIRFLOW_HOME": str(home / "airflow"),
        **(extra or {}),
    })
    for name in ("LAKEHOUSE_METADATA_DSN", "LAKEHOUSE_AIRFLOW_API", "LAKEHOUSE_AIRFLOW_URL", "LAKEHOUSE_PG_HOST"):
        os.environ.pop(name, None)


def install_bench_flow(metadata_dsn: str) -> None:
    """The flow both Airflow benchmarks trigger: files under ``bench/`` of the landing bucket."""
    import psycopg2

    conn = psycopg2.connect(metadata_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO lakehouse.flows (flow_id, trigger_bucket, trigger_key_pattern) "
                    "VALUES (%s, 'landing', 'bench/*') ON CONFLICT DO NOTHING", (FLOW,))
        cur.execute("INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) VALUES "
                    "(%s, 'a', 'stage_to_presentation', '{\"sql\": \"select 1\", \"target_table\": \"p.t\"}') "
                    "ON CONFLICT DO NOTHING", (FLOW,))
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
    """One Airflow component in its own process group, with the environment the stack gives it."""
    from lakehouse.stack.processes import start_group
    from lakehouse.stack.services import _bin, airflow_component_environment

    start_group(settings.run_dir, settings.log_dir, f"airflow-{component}", [_bin("airflow"), component],
                airflow_component_environment(env, component))


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


def wait_for_bench_dag(client: Any, log_dir: Path, timeout: float = 240) -> None:
    """Until the dag-processor has parsed the bench flow's DAG."""
    deadline = time.monotonic() + timeout
    while client.get_dag(FLOW) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"DAG {FLOW} not parsed after {timeout:.0f} s; see {log_dir}")
        time.sleep(1)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


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
        for component in ("dag-processor", "api-server"):
            self.start_airflow_component(component)
        self.wait_airflow(timeout=240)
        wait_for_bench_dag(self.airflow(), s.log_dir)
        services._start_seaweedfs(s, self.env, print)

    def start_airflow_component(self, component: str) -> None:
        start_airflow_component(self.settings, self.env, component)

    def airflow(self) -> Any:
        from lakehouse.hooks.airflow_api import AirflowApiClient

        return AirflowApiClient(self.settings.airflow_url, self.settings.airflow_username,
                                self.settings.airflow_password, timeout=30)

    def wait_airflow(self, timeout: float) -> float:
        return wait_airflow_healthy(self.settings.airflow_url, timeout)

    def start_invoker(self, phase: str) -> None:
        from lakehouse.stack import services

        services._start_invoker(self.settings, dict(self.env, **PHASES[phase]), print)

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
                cur.execute("SELECT coalesce(sum(deliveries), 0), count(*) FILTER (WHERE status <> 'triggered') "
                            "FROM lakehouse.file_ledger WHERE object_key LIKE %s", (prefix + "/%",))
                deliveries, not_triggered = cur.fetchone()
            return int(deliveries), int(not_triggered)
        finally:
            conn.close()

    def airflow_runs(self) -> dict[str, float]:
        """run id → Airflow's queued_at (epoch seconds), for every run of the bench DAG."""
        from lakehouse.hooks.airflow_api import AirflowUnavailableError

        client = self.airflow()
        out: dict[str, float] = {}
        offset = 0
        while True:
            try:
                page = client.list_dag_runs(FLOW, limit=100, offset=offset)
            except AirflowUnavailableError:  # busy with the invoker's calls: ask again
                time.sleep(1)
                continue
            for run in page:
                out[run["dag_run_id"]] = datetime.fromisoformat(run["queued_at"].replace("Z", "+00:00")).timestamp()
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
            payload = {"event_type": "create", "key": f"/buckets/landing/{key}", "message": {"new_entry": {
                "name": key.rsplit("/", 1)[1],
                "attributes": {"file_size": 10, "mtime": int(time.time()),
                               "md5": base64.b64encode(bytes.fromhex(etag)).decode()},
                "extended": {"Seaweed-X-Amz-ETag": base64.b64encode(etag.encode()).decode()}}}}
            sent = time.time()
            for attempt in range(3):  # as a webhook sender does; a failed send is not an accepted event
                try:
                    response = session.post(url, json=payload, headers={"Authorization": f"Bearer {TOKEN}"},
                                            timeout=120)
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

    def run_phase(self, phase: str) -> PhaseResult:
        import boto3
        import requests
        from botocore.config import Config

        from lakehouse.invoker.core import file_dag_run_id
        from lakehouse.invoker.server import SIGNATURE_HEADER, sign_body
        from lakehouse.stack.processes import stop_group

        s = self.settings
        prefix = f"bench/{phase}"
        plan = self.plan(prefix)
        rnd = random.Random(11)
        cross = set(rnd.sample(range(len(plan)), len(plan) // 10))
        self.start_invoker(phase)
        s3 = boto3.client("s3", endpoint_url=s.s3_endpoint_url, aws_access_key_id=s.s3_access_key_id,
                          aws_secret_access_key=s.s3_secret_access_key, region_name="us-east-1",
                          config=Config(max_pool_connections=self.args.threads * 2, retries={"max_attempts": 5}))
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

                body = json.dumps({"Records": [{
                    "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                    "eventTime": datetime.now(timezone.utc).isoformat(),
                    "s3": {"bucket": {"name": "landing"},
                           "object": {"key": quote_plus(key, safe="/"), "size": len(plan[index][1]),
                                      "eTag": etag}}}]}).encode()
                response = http.post(f"{s.invoker_url}/events/s3", data=body, timeout=60,
                                     headers={SIGNATURE_HEADER: sign_body(TOKEN, body),
                                              "Content-Type": "application/json"})
                response.raise_for_status()

        # three stretches, each uploaded as fast as the S3 API takes it: Airflow up; Airflow's
        # api-server stopped (restarted --outage s after the stop, once this stretch is up);
        # Airflow healthy again. Between the last two the bench waits for Airflow's health.
        cut1, cut2 = int(len(plan) * 0.4), int(len(plan) * 0.7)
        stretches = [(0, cut1), (cut1, cut2), (cut2, len(plan))]
        print(f"[{phase}] {len(plan)} PUTs ({self.args.objects} objects, {len(plan) - self.args.objects} "
              f"re-uploads), {len(cross)} also as S3 notifications; Airflow's api-server stopped during "
              f"PUTs {cut1}..{cut2} and for at least {self.args.outage:.0f} s", flush=True)
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
                    notes.append(f"stretch {number + 1}: only {self.ledger_totals(prefix)[0]} of {expected} "
                                 f"deliveries stored after 120 s")
                active += time.time() - started
                if number == 1:
                    time.sleep(max(0.0, outage[0] + self.args.outage - time.time()))
                    self.start_airflow_component("api-server")
                    outage.append(self.wait_airflow(timeout=240))

        versions: dict[tuple[str, str], float] = {}
        for key, etag, at in sorted(uploads, key=lambda u: u[2]):
            versions.setdefault((key, etag), at)
        wanted = {file_dag_run_id(FLOW, "landing", key, etag): v for (key, etag), v in versions.items()}
        deadline = time.monotonic() + self.args.drain_timeout
        runs = self.airflow_runs()
        while set(wanted) - set(runs) and time.monotonic() < deadline:
            time.sleep(1)
            runs = self.airflow_runs()
        phase_runs = {r: at for r, at in runs.items() if r in wanted}
        margin = 1.0
        lat_up, lat_outage = [], []
        for run_id, put_at in wanted.items():
            if run_id in phase_runs:
                around = outage[0] - margin <= put_at <= outage[1] + margin
                (lat_outage if around else lat_up).append(phase_runs[run_id] - put_at)
        deliveries, not_triggered = self.ledger_totals(prefix)
        result = PhaseResult(
            name=phase, puts=len(uploads), put_seconds=put_seconds, deliveries=deliveries,
            accept_seconds=active, lat_up=lat_up, lat_outage=lat_outage, runs=len(phase_runs),
            distinct=len(wanted), lost=len(set(wanted) - set(runs)), s3_distinct=len(wanted), dag_runs_total=len(runs),
            not_triggered=not_triggered,
            outage=(outage[0] - t0, outage[1] - t0), notes=notes,
        )
        self.burst(phase, result)
        self.stop_invoker()
        return result


def report(results: list[PhaseResult], args: argparse.Namespace) -> None:
    def lat(values: list[float]) -> str:
        if not values:
            return "n=0"
        return f"p50 {pct(values, .5):6.2f}s  p95 {pct(values, .95):6.2f}s  max {max(values):6.2f}s  (n={len(values)})"

    cumulative: dict[str, int] = {}
    total = 0
    for r in results:
        total += r.distinct
        cumulative[r.name] = total
    print()
    print(f"=== invoker benchmark: {args.objects} objects per phase, real SeaweedFS + Airflow 3 api-server "
          f"({args.airflow_api_workers} worker{'s' if args.airflow_api_workers > 1 else ''}), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end ===")
    rows: list[tuple[str, Callable[[PhaseResult], str]]] = [
        ("PUTs through the S3 API", lambda r: f"{r.puts} in {r.put_seconds:.1f}s = {r.puts / r.put_seconds:.0f}/s"),
        ("events accepted (stored; while uploading)",
         lambda r: f"{r.deliveries} in {r.accept_seconds:.1f}s = {r.deliveries / r.accept_seconds:.0f}/s"),
        ("Airflow down (stop -> healthy again)", lambda r: f"{r.outage[0]:.1f}s .. {r.outage[1]:.1f}s "
                                                           f"({r.outage[1] - r.outage[0]:.1f}s)"),
        ("upload -> run created, Airflow up", lambda r: lat(r.lat_up)),
        ("upload -> run created, around the outage", lambda r: lat(r.lat_outage)),
        ("runs created / distinct file versions (S3)", lambda r: f"{r.runs} / {r.s3_distinct}  "
                                                                 f"{'EQUAL' if r.runs == r.s3_distinct else 'DIFFERENT'}"),
        ("events lost (versions without a run)", lambda r: str(r.lost)),
        ("burst: webhook events accepted", lambda r: f"{r.burst_events} in {r.burst_seconds:.1f}s = "
                                                     f"{r.burst_events / r.burst_seconds:.0f}/s" if r.burst_events else "-"),
        ("burst: event sent -> run created", lambda r: lat(r.burst_lat) if r.burst_events else "-"),
        ("burst: events lost", lambda r: str(r.burst_lost) if r.burst_events else "-"),
        (f"paced {args.paced_rate:.0f}/s: event sent -> run created", lambda r: lat(r.paced_lat) if r.paced_events else "-"),
        (f"paced {args.paced_rate:.0f}/s: events lost", lambda r: str(r.paced_lost) if r.paced_events else "-"),
        ("all runs of the DAG / all versions so far", lambda r: f"{r.dag_runs_total} / {cumulative[r.name]}  "
                                                                f"{'EQUAL' if r.dag_runs_total == cumulative[r.name] else 'EXTRA RUNS'}"),
        ("ledger rows not 'triggered' at the end", lambda r: str(r.not_triggered)),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'':{width}}  " + "  |  ".join(f"{r.name:^52}" for r in results))
    for label, fmt in rows:
        print(f"{label:{width}}  " + "  |  ".join(f"{fmt(r):52}" for r in results))
    for r in results:
        for note in r.notes:
            print(f"[{r.name}] NOTE: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=2000, help="new objects per phase")
    parser.add_argument("--threads", type=int, default=16, help="concurrent S3 clients")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds Airflow's api-server stays stopped")
    parser.add_argument("--phases", default="baseline,current", help="comma-separated: baseline, current")
    parser.add_argument("--burst", type=int, default=1000,
                        help="webhook events posted straight to the invoker per phase (0: none)")
    parser.add_argument("--paced-rate", type=float, default=20.0,
                        help="events/s of the paced part (below Airflow's run-creation rate)")
    parser.add_argument("--paced-seconds", type=float, default=20.0, help="length of the paced part (0: none)")
    parser.add_argument("--airflow-api-workers", type=int, default=None,
                        help="uvicorn workers of Airflow's api-server (default: what the stack runs, "
                             "LAKEHOUSE_AIRFLOW_API_WORKERS, 2)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="longest wait for the runs after the last upload")
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"--phases: unknown {unknown}; choose from {sorted(PHASES)}")
    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-"))
    home.chmod(0o755)  # the Postgres server runs as user postgres and must reach its data dir
    # a short backoff so the outbox drains within seconds of Airflow coming back
    configure_environment(home, extra={"LAKEHOUSE_INVOKER_RETRY_BASE": "0.5", "LAKEHOUSE_INVOKER_RETRY_MAX": "2"})
    bench = Bench(args, home)
    results: list[PhaseResult] = []
    completed = False
    try:
        print(f"bench home {home}: starting Postgres, Airflow (api-server, dag-processor), SeaweedFS ...", flush=True)
        bench.start()
        for phase in phases:
            results.append(bench.run_phase(phase))
        completed = True
    finally:
        left = bench.stop_all()
        print("stopped everything the bench started" if not left else "STILL RUNNING: " + "; ".join(left))
        if not left and completed:
            shutil.rmtree(home, ignore_errors=True)
        elif not completed:
            print(f"kept {home} for its logs ({home}/log)")
    report(results, args)
    ok = all(r.lost == 0 and r.burst_lost == 0 and r.paced_lost == 0 and r.runs == r.s3_distinct for r in results) and (
        not results or results[-1].dag_runs_total == sum(r.distinct for r in results))
    return 0 if ok and not left else 1


if __name__ == "__main__":
    sys.exit(main())
