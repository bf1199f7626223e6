"""How fast a healthy flow's file starts its run, without and with invalid flows beside it.

Before invalid flows became placeholder DAGs, one invalid row made Airflow's dag-processor mark
every DAG of the file stale: a healthy flow's file got 404s until the row was deleted. Now the
healthy flow must not notice. Phases, in one run on one stack, alternating:

* ``clean``: only the healthy flow;
* ``invalid``: the same plus ``--invalid`` flows with bad rows (missing, unknown and mistyped
  parameters, no tasks, a cycle, a bad schedule), after the dag-processor has parsed them.

Per phase ``--drops`` files are put one after another through the S3 API; reported: put → DAG run
created (Airflow's ``queued_at``) and put → run running (the scheduler took it up), median, p95
and max. The healthy flow's only task sits in an Airflow pool with no slot, so its run starts
but runs no Spark: the measure is the front door and the scheduler, not the job.

The stack (Postgres, SeaweedFS, invoker, Airflow's four components) runs on its own home and ports
(16200-16208; SeaweedFS gRPC 26201-26206) and is stopped at the end; nothing of it may be left.

    .venv/bin/python bench/flow_isolation.py [--drops 10] [--invalid 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "bench"))

from invoker import configure_environment, pct  # noqa: E402 - bench/invoker.py

BASE_PORT = 16200  # below the ephemeral range (32768+); SeaweedFS adds 10000 for gRPC
HEALTHY = "iso_healthy"
POOL = "iso_no_slots"
_PRESENT = {"sql": "SELECT 1 AS one", "target_table": "presentation.iso"}
#: bad rows, one kind per flow (cycled when --invalid is larger)
BAD: list[tuple[str | None, list[tuple[str, int, str, dict[str, Any], list[str] | None]]]] = [
    (None, [("a", 1, "stage_to_presentation", {"sql": "SELECT 1"}, None)]),
    (None, [("a", 1, "stage_to_presentation", {**_PRESENT, "colour": "red"}, None)]),
    (None, [("a", 1, "quality_check", {"table": "stage.x", "checks": [], "sample_size": "five"}, None)]),
    (None, []),
    (None, [("a", 1, "stage_to_presentation", _PRESENT, ["b"]), ("b", 2, "stage_to_presentation", _PRESENT, ["a"])]),
    ("every morning", [("a", 1, "stage_to_presentation", _PRESENT, None)]),
]


def _sql(dsn: str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    import psycopg2

    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        for statement, params in statements:
            cur.execute(statement, params)
    conn.close()


def install_healthy(dsn: str) -> None:
    _sql(
        dsn,
        [
            ("DELETE FROM lakehouse.flows WHERE flow_id = %s", (HEALTHY,)),
            # its runs never finish (their task waits in a pool without slots): no cap on how many are active
            (
                "INSERT INTO lakehouse.flows (flow_id, trigger_bucket, trigger_key_pattern, max_active_runs) "
                "VALUES (%s, 'landing', 'iso/*', 100000)",
                (HEALTHY,),
            ),
            (
                "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, task_order, template_id, parameters, pool) "
                "VALUES (%s, 'a', 1, 'stage_to_presentation', %s, %s)",
                (HEALTHY, json.dumps(_PRESENT), POOL),
            ),
        ],
    )


def set_invalid(dsn: str, count: int) -> list[str]:
    flows = [f"iso_bad_{i}" for i in range(count)]
    statements: list[tuple[str, tuple[Any, ...]]] = [
        ("DELETE FROM lakehouse.flows WHERE flow_id LIKE 'iso_bad_%%'", ())
    ]
    for i, flow_id in enumerate(flows):
        schedule, tasks = BAD[i % len(BAD)]
        statements.append(("INSERT INTO lakehouse.flows (flow_id, schedule) VALUES (%s, %s)", (flow_id, schedule)))
        for task_id, order, template, parameters, upstream in tasks:
            statements.append(
                (
                    "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, task_order, template_id, "
                    "parameters, upstream) VALUES (%s, %s, %s, %s, %s, %s)",
                    (flow_id, task_id, order, template, json.dumps(parameters), upstream),
                )
            )
    _sql(dsn, statements)
    return flows


def wait_until(what: str, check: Any, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f}s")
        time.sleep(1)


def _tags(dag: dict[str, Any] | None) -> set[str]:
    return {t["name"] for t in (dag or {}).get("tags") or ()}


def drop(settings: Any, client: Any, s3: Any, key: str) -> tuple[float, float]:
    """(put → run created, put → run running) in seconds, from Airflow's own timestamps."""
    from lakehouse.invoker.core import file_dag_run_id

    put_at = time.time()
    etag = s3.put_object(Bucket="landing", Key=key, Body=b"n\n1\n")["ETag"].strip('"')
    run_id = file_dag_run_id(HEALTHY, "landing", key, etag)
    deadline = time.monotonic() + 300
    while True:
        run = client.get_dag_run(HEALTHY, run_id)
        if run and run.get("start_date"):
            queued = datetime.fromisoformat(run["queued_at"]).timestamp()
            started = datetime.fromisoformat(run["start_date"]).timestamp()
            return queued - put_at, started - put_at
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} not running after 300 s: {run}")
        time.sleep(0.1)


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, p95 {pct(values, 0.95):.2f} s, max {max(values):.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drops", type=int, default=10, help="files per phase, one after another")
    parser.add_argument("--invalid", type=int, default=5, help="invalid flows in the 'invalid' phase")
    parser.add_argument("--rounds", type=int, default=2, help="clean/invalid pairs, alternating")
    args = parser.parse_args()
    # a TERM (timeout, kill) ends the run like Ctrl-C: the finally below stops the whole stack
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-"))
    home.chmod(0o755)  # the Postgres server runs as user postgres and must reach its data dir
    configure_environment(home, base_port=BASE_PORT)
    from lakehouse.config import load_settings
    from lakehouse.demo import airflow_client
    from lakehouse.hooks.s3 import landing_client
    from lakehouse.stack import services
    from lakehouse.stack.processes import processes_using_home

    settings = load_settings()
    results: list[tuple[str, list[float], list[float]]] = []
    left: list[str] = []
    try:
        print(f"bench home {home}: starting the stack", flush=True)
        services.up(settings)
        client = airflow_client(settings)
        s3 = landing_client(settings)
        client._request("POST", "/api/v2/pools", json={"name": POOL, "slots": 0, "description": "bench"})
        install_healthy(settings.metadata_dsn)
        wait_until("healthy DAG not parsed", lambda: client.get_dag(HEALTHY))
        n = 0
        for round_no in range(args.rounds):
            for phase in ("clean", "invalid"):
                bad = set_invalid(settings.metadata_dsn, args.invalid if phase == "invalid" else 0)
                wait_until(
                    f"{phase}: placeholders not parsed",
                    lambda bad=bad: all("invalid" in _tags(client.get_dag(f)) for f in bad),
                )
                if phase == "clean":
                    time.sleep(2 * 15)  # two parse intervals: the dropped flows' DAGs are gone from the parse
                created, running = [], []
                for _ in range(args.drops):
                    n += 1
                    q, r = drop(settings, client, s3, f"iso/f{n:04d}.csv")
                    created.append(q)
                    running.append(r)
                listed = client.list_dags(limit=100)["dags"]
                healthy = next(d for d in listed if d["dag_id"] == HEALTHY)
                assert not healthy["is_stale"], healthy
                print(
                    f"round {round_no + 1} {phase:7} ({len(bad)} invalid flows, {len(listed)} DAGs listed): "
                    f"put → run created {summary(created)}; put → running {summary(running)}",
                    flush=True,
                )
                results.append((phase, created, running))
    finally:
        services.down(settings)
        left = processes_using_home(home)
        print("stopped everything the bench started" if not left else "STILL RUNNING: " + "; ".join(left))
        if not left:
            shutil.rmtree(home, ignore_errors=True)
    for phase in ("clean", "invalid"):
        created = [v for p, c, _ in results if p == phase for v in c]
        running = [v for p, _, r in results if p == phase for v in r]
        if created:
            print(f"all {phase:7}: put → run created {summary(created)}; put → running {summary(running)}")
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
