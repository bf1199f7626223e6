"""How fast Airflow 3's api-server creates DAG runs here: ``--runs`` trigger POSTs
(``POST /api/v2/dags/{dag_id}/dagRuns`` with a JWT, exactly as the invoker sends them) fired by
``--concurrency`` clients, against the project's own Airflow started the way the stack starts it.

Each *variant* is one api-server configuration (extra ``AIRFLOW__*`` variables for the
api-server, or a client behaviour); every variant is measured in the same run, interleaved round
by round (``--rounds``), so a change in the machine's load hits all of them alike. Reported per
variant and concurrency: runs created per second (the answers' wall time), the POST's latency
(p50/p95/max), and the CPU seconds per 100 runs of the api-server, Postgres, the dag-processor
and the scheduler (when ``--scheduler`` starts one) and this client.

    .venv/bin/python bench/airflow_trigger_rate.py [--runs 1000] [--concurrency 8,16]
        [--variants before,stack,workers1:8] [--rounds 2] [--scheduler] [--profile VARIANT]

``--profile VARIANT`` records the api-server with py-spy (``--py-spy PATH``) during that
variant's first trial and writes a flame graph plus the top functions.

The stack lives in its own home (``/tmp/lakehouse-trigger-*``) and on its own ports
(47120-47128, never a demo's, a test session's or ``bench/invoker.py``'s); everything is
stopped at the end and checked: no process naming the bench home may survive.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "bench"))

BASE_PORT = 47120  # Postgres 47120, SeaweedFS 47121-47126 (not started), invoker 47127, Airflow 47128
from cpu_time import cpu_seconds as process_cpu_seconds  # noqa: E402 - bench/cpu_time.py
from cpu_time import stat_fields  # noqa: E402 - bench/cpu_time.py
from invoker import (  # noqa: E402 - bench/invoker.py
    FLOW,
    configure_environment,
    pct,
    prepare_bench_stack,
    start_airflow_component,
    wait_airflow_healthy,
    wait_for_bench_dag,
)


@dataclass(frozen=True)
class Variant:
    """One configuration of the api-server (its environment) and of the client."""

    env: dict[str, str] = field(default_factory=dict)
    keep_alive: bool = True  # a requests.Session per client thread; False: a new connection per POST
    description: str = ""


#: the variants: extra variables on top of what the stack's api-server gets
#: (``services.stack_environment`` + ``services.airflow_component_environment``)
_AIRFLOW_DEFAULT_POOL = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "5",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "10",
}
_QUIET = {"AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING", "AIRFLOW__LOGGING__UVICORN_LOGGING_LEVEL": "WARNING"}
_NO_PING = {"AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_PRE_PING": "False"}
VARIANTS: dict[str, Variant] = {
    "stack": Variant({}, description="the stack's api-server as services.py starts it"),
    "before": Variant(
        {"AIRFLOW__API__WORKERS": "1", **_AIRFLOW_DEFAULT_POOL},
        description="as the stack started it before: 1 worker, Airflow's default DB pool (5+10)",
    ),
    "no-keepalive": Variant({}, keep_alive=False, description="stack, a new TCP connection per POST"),
    "workers1": Variant({"AIRFLOW__API__WORKERS": "1"}, description="1 uvicorn worker"),
    "workers2": Variant({"AIRFLOW__API__WORKERS": "2"}, description="2 uvicorn workers"),
    "workers3": Variant({"AIRFLOW__API__WORKERS": "3"}, description="3 uvicorn workers"),
    "default-pool": Variant(dict(_AIRFLOW_DEFAULT_POOL), description="Airflow's default DB pool (5+10)"),
    "quiet-log": Variant(dict(_QUIET), description="no INFO log lines (access log) per request"),
    "no-preping": Variant(dict(_NO_PING), description="no SELECT 1 at each pool checkout"),
    "lean": Variant({**_QUIET, **_NO_PING}, description="quiet log and no pre-ping"),
}


# -- CPU accounting from /proc -------------------------------------------------------------------
def cpu_seconds(pids: list[int]) -> float:
    return sum(process_cpu_seconds(Path(f"/proc/{pid}/stat")) for pid in pids)


def children_of(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(entry / "stat")
            if fields and int(fields[1]) == parent:
                out.append(int(entry.name))
    return out


@dataclass
class Trial:
    variant: str
    concurrency: int
    runs: int
    seconds: float
    latencies: list[float]
    errors: dict[str, int]
    cpu: dict[str, float]
    load: float
    db: dict[str, int] = field(default_factory=dict)  # pg_stat_database deltas of Airflow's database


class TriggerBench:
    def __init__(self, args: argparse.Namespace, home: Path) -> None:
        from lakehouse.config import load_settings
        from lakehouse.stack import services

        self.args = args
        self.home = home
        self.settings = load_settings()
        self.env = services.stack_environment(self.settings)
        self.started_pg = False
        self.api_variant: str | None = None

    # -- stack -------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self.started_pg = prepare_bench_stack(s, self.env)
        self.start_component("dag-processor", self.env)
        if self.args.scheduler:
            self.start_component("scheduler", self.env)
        self.start_api_server("stack")
        client = self.client()
        wait_for_bench_dag(client, s.log_dir)
        if self.args.paused:
            client.set_paused(FLOW, True)

    def start_component(self, component: str, env: dict[str, str]) -> None:
        start_airflow_component(self.settings, env, component)

    def start_api_server(self, variant: str) -> None:
        """(Re)start the api-server with the variant's environment, unless it already runs so."""
        from lakehouse.stack.processes import stop_group

        wanted = VARIANTS[variant].env
        if self.api_variant is not None and VARIANTS[self.api_variant].env == wanted:
            return
        stop_group(self.settings.run_dir, "airflow-api-server")
        self.start_component("api-server", dict(self.env, **wanted))
        self.wait_airflow(240)
        self.api_variant = variant
        self.warm_up()

    def wait_airflow(self, timeout: float) -> None:
        wait_airflow_healthy(self.settings.airflow_url, timeout)

    def warm_up(self) -> None:
        """A few triggers per worker first, so every worker has imported, connected and cached the DAG."""
        workers = int(
            VARIANTS[self.api_variant or "stack"].env.get("AIRFLOW__API__WORKERS", self.env["AIRFLOW__API__WORKERS"])
        )
        self.fire(20 * workers, min(8, 4 * workers), keep_alive=True, tag="warmup")

    def client(self) -> Any:
        from lakehouse.hooks.airflow_api import AirflowApiClient

        return AirflowApiClient(
            self.settings.airflow_url, self.settings.airflow_username, self.settings.airflow_password, timeout=60
        )

    def token(self) -> str:
        client = self.client()
        return client._fetch_token()

    def stop_all(self) -> list[str]:
        from lakehouse.stack import postgres
        from lakehouse.stack.processes import processes_using_home, stop_group

        for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor"):
            stop_group(self.settings.run_dir, name)
        if self.started_pg:
            postgres.stop(self.settings)
        time.sleep(0.5)
        return processes_using_home(self.home)

    # -- measurement -------------------------------------------------------------------------
    def db_counters(self) -> dict[str, int]:
        import psycopg2

        conn = psycopg2.connect(self.settings.dsn(self.settings.airflow_db))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_stat_clear_snapshot()")
                cur.execute(
                    "SELECT xact_commit, tup_inserted, tup_updated, tup_returned + tup_fetched "
                    "FROM pg_stat_database WHERE datname = current_database()"
                )
                row = cur.fetchone()
            return dict(zip(("commits", "inserted", "updated", "read"), (int(v) for v in row), strict=True))
        finally:
            conn.close()

    def groups(self) -> dict[str, list[int]]:
        """The processes whose CPU is counted, by role (re-read per trial: workers may restart)."""
        from lakehouse.stack.processes import group_members, read_pid

        out: dict[str, list[int]] = {}
        for role in ("api-server", "dag-processor", "scheduler"):
            pid = read_pid(self.settings.run_dir, f"airflow-{role}")
            out[role] = group_members(pid) if pid else []
        postmaster_pid = self.home / "postgres" / "data" / "postmaster.pid"
        try:
            postmaster = int(postmaster_pid.read_text().split()[0])
            out["postgres"] = [postmaster, *children_of(postmaster)]
        except (OSError, ValueError, IndexError):
            out["postgres"] = []
        return out

    def fire(self, n: int, concurrency: int, keep_alive: bool, tag: str) -> tuple[float, list[float], dict[str, int]]:
        """``n`` trigger POSTs from ``concurrency`` threads; (wall seconds, latencies, errors by kind)."""
        import requests

        token = self.token()
        url = f"{self.settings.airflow_url}/api/v2/dags/{FLOW}/dagRuns"
        headers = {"Authorization": f"Bearer {token}"}
        prefix = f"rate__{tag}__{uuid.uuid4().hex[:8]}"
        latencies: list[float] = []
        errors: dict[str, int] = {}
        lock = threading.Lock()
        local = threading.local()
        conf = {
            "flow_id": FLOW,
            "file": {
                "bucket": "landing",
                "key": "bench/x.csv",
                "etag": "0" * 32,
                "size": 10,
                "uri": "s3://landing/bench/x.csv",
            },
            "event_time": None,
            "ledger_id": 1,
        }

        def post(i: int) -> None:
            body = {"dag_run_id": f"{prefix}__{i:06d}", "logical_date": None, "conf": conf}
            started = time.perf_counter()
            try:
                if keep_alive:
                    session = getattr(local, "session", None)
                    if session is None:
                        session = local.session = requests.Session()
                    response = session.post(url, json=body, headers=headers, timeout=120)
                else:
                    response = requests.post(url, json=body, headers=dict(headers, Connection="close"), timeout=120)
                kind = "" if response.status_code in (200, 201) else f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                kind = type(exc).__name__
            elapsed = time.perf_counter() - started
            with lock:
                if kind:
                    errors[kind] = errors.get(kind, 0) + 1
                else:
                    latencies.append(elapsed)

        t0 = time.perf_counter()
        pool = ThreadPoolExecutor(concurrency)
        try:
            for f in [pool.submit(post, i) for i in range(n)]:
                f.result()
        finally:  # on Ctrl-C, do not wait for the POSTs not sent yet
            pool.shutdown(wait=True, cancel_futures=True)
        return time.perf_counter() - t0, latencies, errors

    def trial(self, variant: str, concurrency: int, profile: bool) -> Trial:
        self.start_api_server(variant)
        before = {role: {pid: cpu_seconds([pid]) for pid in pids} for role, pids in self.groups().items()}
        client_before = sum(os.times()[:2])
        db_before = self.db_counters()
        spy = self.start_profile(variant, concurrency, list(before["api-server"])) if profile else None
        seconds, latencies, errors = self.fire(
            self.args.runs, concurrency, VARIANTS[variant].keep_alive, f"{variant}_c{concurrency}"
        )
        if spy is not None:
            self.stop_profile(spy)
        # per process: CPU now minus CPU at the start (a process started meanwhile counts in full;
        # one that ended meanwhile is not counted)
        cpu = {
            role: sum(cpu_seconds([pid]) - before[role].get(pid, 0.0) for pid in pids)
            for role, pids in self.groups().items()
        }
        cpu["client"] = sum(os.times()[:2]) - client_before
        time.sleep(0.6)  # the statistics collector reports at most every 500 ms
        db = {k: v - db_before[k] for k, v in self.db_counters().items()}
        return Trial(variant, concurrency, self.args.runs, seconds, latencies, errors, cpu, os.getloadavg()[0], db)

    # -- py-spy -----------------------------------------------------------------------------------
    def start_profile(self, variant: str, concurrency: int, pids: list[int]) -> list[subprocess.Popen[bytes]]:
        out = []
        # the worker processes (uvicorn's children) do the work; with one worker uvicorn runs in
        # the airflow process itself, so profile every python process of the group
        for pid in pids:
            stem = self.args.profile_dir / f"api-{variant}-c{concurrency}-{pid}"
            # --gil: only the thread holding the GIL, i.e. where the process's Python CPU goes
            # (threads waiting in psycopg2 for Postgres hold no GIL and are not sampled)
            out.append(
                subprocess.Popen(
                    [
                        self.args.py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "250",
                        "--nonblocking",
                        "--gil",
                        "--format",
                        "speedscope",
                        "--output",
                        str(stem) + ".json",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # py-spy attaches
        return out

    @staticmethod
    def stop_profile(spies: list[subprocess.Popen[bytes]]) -> None:
        import signal

        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def report(trials: list[Trial], args: argparse.Namespace) -> None:
    print()
    print(
        f"=== Airflow api-server run creation: {args.runs} trigger POSTs per trial, {os.cpu_count()} CPUs, "
        f"scheduler {'running' if args.scheduler else 'not started'}, DAG {'paused' if args.paused else 'unpaused'}, "
        f"load average {os.getloadavg()[0]:.1f} at the end ==="
    )
    roles = ["api-server", "postgres", "dag-processor", "scheduler", "client"]
    header = (
        f"{'variant':14} {'conc':>4} {'runs/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} "
        + " ".join(f"{r[:9]:>9}" for r in roles)
        + "  load  errors"
    )
    print("CPU columns: CPU seconds per 100 runs")
    print(header)
    db_rows: list[str] = []
    for t in trials:
        ok = len(t.latencies)
        db_rows.append(
            f"{t.variant:14} {t.concurrency:4d} " + " ".join(f"{v / max(1, ok):9.1f}" for v in t.db.values())
        )
        cpu = " ".join(f"{100 * t.cpu.get(r, 0.0) / max(1, ok):9.2f}" for r in roles)
        errors = ", ".join(f"{k}: {v}" for k, v in t.errors.items()) or "-"
        print(
            f"{t.variant:14} {t.concurrency:4d} {ok / t.seconds:7.1f} {1000 * pct(t.latencies, 0.5):7.0f} "
            f"{1000 * pct(t.latencies, 0.95):7.0f} {1000 * max(t.latencies, default=float('nan')):7.0f} {cpu}  "
            f"{t.load:4.1f}  {errors}"
        )
    print()
    print("Airflow's database per run created (pg_stat_database; includes the client's token request):")
    print(f"{'variant':14} {'conc':>4} " + " ".join(f"{k:>9}" for k in ("commits", "inserted", "updated", "read")))
    print("\n".join(db_rows))
    print()
    print("best of the rounds, runs/s:")
    best: dict[tuple[str, int], float] = {}
    for t in trials:
        key = (t.variant, t.concurrency)
        best[key] = max(best.get(key, 0.0), len(t.latencies) / t.seconds)
    concurrencies = sorted({c for _, c in best})
    print(f"{'variant':14} " + " ".join(f"{'c=' + str(c):>8}" for c in concurrencies))
    for variant in dict.fromkeys(v for v, _ in best):
        print(f"{variant:14} " + " ".join(f"{best.get((variant, c), float('nan')):8.1f}" for c in concurrencies))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="trigger POSTs per trial")
    parser.add_argument("--concurrency", default="8,16", help="comma-separated numbers of concurrent clients")
    parser.add_argument(
        "--variants",
        default="before,stack",
        help=f"comma-separated, from: {', '.join(VARIANTS)}; VARIANT:8+16 measures that "
        "variant at those concurrencies only",
    )
    parser.add_argument("--rounds", type=int, default=1, help="times every (variant, concurrency) is measured")
    parser.add_argument("--scheduler", action="store_true", help="also run Airflow's scheduler meanwhile")
    parser.add_argument("--paused", action="store_true", help="pause the DAG before measuring")
    parser.add_argument("--profile", default="", help="py-spy record the api-server during this variant")
    parser.add_argument("--py-spy", default="py-spy", help="path of the py-spy executable")
    parser.add_argument("--profile-dir", type=Path, default=Path("/tmp/trigger-profile"))
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    plan: list[tuple[str, list[int]]] = []
    for item in (v.strip() for v in args.variants.split(",") if v.strip()):
        name, _, only = item.partition(":")
        plan.append((name, [int(c) for c in only.split("+")] if only else concurrencies))
    variants = [name for name, _ in plan]
    unknown = [v for v in variants + ([args.profile] if args.profile else []) if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    if args.profile:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="lakehouse-trigger-"))
    home.chmod(0o755)  # the Postgres server runs as user postgres and must reach its data dir
    configure_environment(home, BASE_PORT)
    bench = TriggerBench(args, home)
    trials: list[Trial] = []
    completed = False
    profiled: set[str] = set()
    left: list[str] = []
    try:
        print(
            f"bench home {home}: starting Postgres, Airflow (api-server, dag-processor"
            f"{', scheduler' if args.scheduler else ''}) ...",
            flush=True,
        )
        bench.start()
        for round_number in range(args.rounds):
            for variant, variant_concurrencies in plan:
                for concurrency in variant_concurrencies:
                    profile = variant == args.profile and variant not in profiled
                    profiled.add(variant) if profile else None
                    trial = bench.trial(variant, concurrency, profile)
                    trials.append(trial)
                    print(
                        f"round {round_number + 1} {variant} c={concurrency}: "
                        f"{len(trial.latencies) / trial.seconds:.1f} runs/s, p95 "
                        f"{1000 * pct(trial.latencies, 0.95):.0f} ms, load {trial.load:.1f}",
                        flush=True,
                    )
        completed = True
    finally:
        left = bench.stop_all()
        print("stopped everything the bench started" if not left else "STILL RUNNING: " + "; ".join(left))
        if not left and completed:
            shutil.rmtree(home, ignore_errors=True)
        elif not completed:
            print(f"kept {home} for its logs ({home}/log)")
    report(trials, args)
    return 0 if completed and not left and not any(t.errors for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
