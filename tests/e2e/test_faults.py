"""Faults against the real processes: the scheduler killed mid-run, Postgres restarted while the
invoker receives events. In each, no event may be lost, no table half-written, and the run (or a
re-run, as a user would clear it) must finish with exactly the right rows. The third fault, a
Spark job killed in the middle of an SCD2 commit, is in tests/glue_templates/test_scd2_faults.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.demo import query, sample_dir, wait_for_dag
from lakehouse.hooks.airflow_api import AirflowApiClient
from lakehouse.hooks.s3 import landing_client
from lakehouse.invoker.core import file_dag_run_id
from lakehouse.stack import postgres, services
from lakehouse.stack.processes import read_pid

pytestmark = pytest.mark.e2e


def _install(dsn: str, sql: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _wait(what: str, check: Callable[[], object], timeout: float = 300, every: float = 1.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except Exception:  # a service restarting answers errors for a while
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f}s")
        time.sleep(every)


def test_scheduler_killed_mid_run_then_started_again(stack: Settings, client: AirflowApiClient, scalar) -> None:
    """kill -9 of the scheduler while a run's SCD2 task runs; `lakehouse up` starts it again, and
    the run finishes (clearing its failed task if Airflow failed it), with each row exactly once."""
    flow_sql = (sample_dir(stack) / "flow.sql").read_text()
    _install(
        stack.metadata_dsn,
        flow_sql.replace("invoices", "fault_invoices").replace("daily_expenses", "fault_daily_expenses"),
    )
    wait_for_dag(client, "fault_invoices")
    first = sorted(sample_dir(stack).glob("*.txt"))[0]
    key = f"fault_invoices/{first.name}"
    etag = landing_client(stack).put_object(Bucket="landing", Key=key, Body=first.read_bytes())["ETag"].strip('"')
    run_id = file_dag_run_id("fault_invoices", "landing", key, etag)

    def scd2_running() -> bool:
        tasks = {t["task_id"]: t["state"] for t in client.list_task_instances("fault_invoices", run_id)}
        return tasks.get("raw_to_stage_scd2") == "running"

    _wait("raw_to_stage_scd2 never ran", scd2_running, timeout=600, every=0.5)
    scheduler = read_pid(stack.run_dir, "airflow-scheduler")
    assert scheduler is not None
    os.kill(scheduler, signal.SIGKILL)
    services.up(stack)  # what the user runs: starts what is not running
    assert read_pid(stack.run_dir, "airflow-scheduler") != scheduler

    killed_at = time.monotonic()
    run = client.wait_for_dag_run("fault_invoices", run_id, timeout=900)
    cleared = run["state"] == "failed"
    if cleared:  # the user's next step: clear the failed tasks (same batch, idempotent)
        client.clear_failed_tasks("fault_invoices", run_id)
        time.sleep(2)
        run = client.wait_for_dag_run("fault_invoices", run_id, timeout=900)
    print(
        f"scheduler killed: run {run['state']} {time.monotonic() - killed_at:.0f} s after the kill"
        f"{', after clearing its failed task' if cleared else ', by itself'}"
    )
    assert run["state"] == "success", run
    assert len(client.list_dag_runs("fault_invoices")) == 1

    _, rows = query(
        stack.warehouse_dsn,
        "SELECT invoice_date::text, invoice_count, total_amount::text "
        "FROM presentation.fault_daily_expenses ORDER BY 1",
    )
    assert rows == [("2026-11-01", 3, "1265.90"), ("2026-11-02", 2, "485.40")]
    # the audit tells what the kill cost: which tries ran, how they ended
    _, tries = query(
        stack.metadata_dsn,
        "SELECT task_id, try_number, status FROM lakehouse.task_runs "
        f"WHERE dag_run_id = '{run_id}' ORDER BY task_run_id",
    )
    print("tries:", tries)
    assert {task for task, _, status in tries if status == "success"} == {
        "landing_to_raw",
        "raw_to_stage_scd2",
        "stage_to_presentation",
        "presentation_to_warehouse",
    }
    from pyiceberg.catalog.sql import SqlCatalog

    table = SqlCatalog(stack.catalog_name, uri=stack.catalog_dsn, warehouse=stack.catalog_warehouse_uri).load_table(
        "stage.fault_invoices"
    )
    rows = table.scan(selected_fields=("invoice_id", "_is_current")).to_arrow().to_pylist()
    assert sorted(r["invoice_id"] for r in rows) == [f"INV-100{i}" for i in range(1, 6)]  # once each
    assert all(r["_is_current"] for r in rows)


def test_postgres_restarted_while_the_invoker_receives_events(
    stack: Settings, client: AirflowApiClient, scalar
) -> None:
    """Uploads keep coming while the metadata database restarts: every file version ends up in the
    ledger once and starts exactly one run (the DAG is paused, so the runs are only created)."""
    _install(
        stack.metadata_dsn,
        """
        DELETE FROM lakehouse.flows WHERE flow_id = 'e2e_pg_restart';
        INSERT INTO lakehouse.flows (flow_id, trigger_bucket, trigger_key_pattern, tags)
        VALUES ('e2e_pg_restart', 'landing', 'pgrestart/*.csv', '{e2e}');
        INSERT INTO lakehouse.flow_tasks (flow_id, task_id, task_order, template_id, parameters) VALUES
        ('e2e_pg_restart', 'a', 1, 'stage_to_presentation',
         '{"sql": "SELECT 1 AS one", "target_table": "presentation.e2e_pg_restart"}');""",
    )
    wait_for_dag(client, "e2e_pg_restart")
    client.set_paused("e2e_pg_restart", True)

    s3 = landing_client(stack)
    count = 60
    uploaded: dict[str, str] = {}
    failures: list[str] = []

    def upload() -> None:
        for i in range(count):
            key = f"pgrestart/f{i:03d}.csv"
            for _attempt in range(30):  # SeaweedFS keeps its own metadata: uploads go on during the restart
                try:
                    uploaded[key] = s3.put_object(Bucket="landing", Key=key, Body=f"n\n{i}\n".encode())["ETag"]
                    break
                except Exception as exc:  # pragma: no cover - only if SeaweedFS itself hiccups
                    failures.append(f"{key}: {exc}")
                    time.sleep(0.5)
            time.sleep(0.1)

    uploader = threading.Thread(target=upload)
    uploader.start()
    time.sleep(1.5)
    postgres.stop(stack)
    time.sleep(2)
    postgres.start(stack)
    uploader.join()
    assert len(uploaded) == count, failures
    services.up(stack)  # any Airflow component the outage took down is started again

    expected = {file_dag_run_id("e2e_pg_restart", "landing", key, etag.strip('"')) for key, etag in uploaded.items()}
    _wait(
        "not every file version reached the ledger and Airflow",
        lambda: (
            scalar(
                stack.metadata_dsn,
                "SELECT count(*) FROM lakehouse.file_ledger WHERE flow_id = 'e2e_pg_restart' AND status = 'triggered'",
            )
            == count
        ),
        timeout=600,
        every=2,
    )
    assert (
        scalar(stack.metadata_dsn, "SELECT count(*) FROM lakehouse.file_ledger WHERE flow_id = 'e2e_pg_restart'")
        == count
    )  # one row per version: none lost, none twice
    runs = client.list_dag_runs("e2e_pg_restart", limit=100)
    assert {r["dag_run_id"] for r in runs} == expected and len(runs) == count
