"""End to end through every real part: file dropped in SeaweedFS -> webhook -> invoker -> Airflow
REST API -> DAG run -> spark-submit templates -> Iceberg stage/presentation -> Postgres warehouse.
Then the stack is stopped with the project's own stop code, and nothing of it may be left."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.demo import drop_file_and_wait, sample_dir, stage_history, wait_for_dag
from lakehouse.hooks.airflow_api import AirflowApiClient

pytestmark = pytest.mark.e2e


def test_invoice_files_reach_the_warehouse_with_history(stack: Settings, client: AirflowApiClient, scalar) -> None:
    first, second = sorted(sample_dir(stack).glob("*.txt"))
    run1 = drop_file_and_wait(stack, client, "invoices", first, f"invoices/{first.name}")
    assert run1["state"] == "success", run1

    # the same file dropped again is the same file version: no second run
    run1_again = drop_file_and_wait(stack, client, "invoices", first, f"invoices/{first.name}")
    assert run1_again["dag_run_id"] == run1["dag_run_id"]
    deadline = time.monotonic() + 30
    while scalar(stack.metadata_dsn, "SELECT max(deliveries) FROM lakehouse.file_ledger WHERE object_key = %s",
                 f"invoices/{first.name}") < 2:
        assert time.monotonic() < deadline, "second delivery never reached the invoker"
        time.sleep(0.5)
    assert len(client.list_dag_runs("invoices")) == 1

    run2 = drop_file_and_wait(stack, client, "invoices", second, f"invoices/{second.name}")
    assert run2["state"] == "success", run2
    assert len(client.list_dag_runs("invoices")) == 2

    conn = psycopg2.connect(stack.warehouse_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT invoice_date::text, invoice_count, total_amount::text "
                    "FROM presentation.daily_expenses ORDER BY invoice_date")
        rows = cur.fetchall()
    conn.close()
    assert rows == [("2026-11-01", 3, "1225.90"), ("2026-11-02", 2, "485.40"), ("2026-11-03", 2, "890.00")]

    _, history = stage_history(stack, "INV-1003")
    assert [(str(amount), current) for _, amount, _, _, current in history] == [("420.00", False), ("380.00", True)]
    assert history[0][3] == history[1][2]  # closed exactly when the new version opened

    # the line the regex cannot parse is counted and kept, not lost
    rejected = scalar(stack.metadata_dsn, "SELECT rows_rejected FROM lakehouse.task_runs WHERE dag_run_id = %s "
                      "AND task_id = 'landing_to_raw' AND status = 'success'", run2["dag_run_id"])
    assert rejected == 1
    rejects_dir = Path(stack.lake_uri.removeprefix("file://")) / "rejects" / "invoices"
    kept = [p for p in rejects_dir.rglob("*") if p.is_file() and p.suffix in (".parquet", ".json")]
    assert kept, f"no rejects under {rejects_dir}"

    audit = scalar(stack.metadata_dsn, "SELECT count(*) FROM lakehouse.task_runs WHERE flow_id = 'invoices' "
                   "AND status = 'success'")
    assert audit == 8  # 4 tasks x 2 runs


def test_a_failing_task_retries_then_alerts_once(stack: Settings, client: AirflowApiClient) -> None:
    """A flow applied from a document appears in Airflow without a restart; its task fails, is
    retried by Airflow, and only the final failure alerts, naming the error and the log of try 2."""
    from lakehouse.metadata.flow_documents import apply_flow_document

    apply_flow_document(stack.metadata_dsn, {
        "flow_id": "e2e_failing", "tags": ["e2e"],
        "tasks": [{"task_id": "build", "template": "stage_to_presentation", "retries": 1, "retry_delay_seconds": 1,
                   "parameters": {"sql": "SELECT * FROM stage.no_such_table", "target_table": "presentation.never"}}],
    })
    wait_for_dag(client, "e2e_failing")
    assert client.trigger_dag_run("e2e_failing", "manual__e2e_failing_1") == "created"
    run = client.wait_for_dag_run("e2e_failing", "manual__e2e_failing_1", timeout=600)
    assert run["state"] == "failed", run

    conn = psycopg2.connect(stack.metadata_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT try_number, status, error FROM lakehouse.task_runs "
                    "WHERE dag_run_id = 'manual__e2e_failing_1' ORDER BY try_number")
        tries = cur.fetchall()
        cur.execute("SELECT task_id, error, log_url FROM lakehouse.notifications "
                    "WHERE dag_run_id = 'manual__e2e_failing_1'")
        alerts = cur.fetchall()
    conn.close()
    assert [(n, status) for n, status, _ in tries] == [(1, "failed"), (2, "failed")]
    assert all("no_such_table" in error for _, _, error in tries)
    ((task_id, error, log_url),) = alerts
    assert task_id == "build" and "no_such_table" in error and log_url.endswith("try_number=2")
