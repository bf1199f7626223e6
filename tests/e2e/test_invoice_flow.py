"""End to end through every real part: file dropped in SeaweedFS -> webhook -> invoker -> Airflow
REST API -> DAG run -> spark-submit templates -> Iceberg stage/presentation -> Postgres warehouse.
Then the stack is stopped with the project's own stop code, and nothing of it may be left."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.demo import drop_file_and_wait, query, sample_dir, stage_history, wait_for_dag
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
    while (
        scalar(
            stack.metadata_dsn,
            "SELECT max(deliveries) FROM lakehouse.file_ledger WHERE object_key = %s",
            f"invoices/{first.name}",
        )
        < 2
    ):
        assert time.monotonic() < deadline, "second delivery never reached the invoker"
        time.sleep(0.5)
    assert len(client.list_dag_runs("invoices")) == 1

    run2 = drop_file_and_wait(stack, client, "invoices", second, f"invoices/{second.name}")
    assert run2["state"] == "success", run2
    assert len(client.list_dag_runs("invoices")) == 2

    _, rows = query(
        stack.warehouse_dsn,
        "SELECT invoice_date::text, invoice_count, total_amount::text "
        "FROM presentation.daily_expenses ORDER BY invoice_date",
    )
    assert rows == [("2026-11-01", 3, "1225.90"), ("2026-11-02", 2, "485.40"), ("2026-11-03", 2, "890.00")]

    _, history = stage_history(stack, "INV-1003")
    assert [(str(amount), current) for _, amount, _, _, current in history] == [("420.00", False), ("380.00", True)]
    assert history[0][3] == history[1][2]  # closed exactly when the new version opened

    # the line the regex cannot parse is counted and kept, not lost
    rejected = scalar(
        stack.metadata_dsn,
        "SELECT rows_rejected FROM lakehouse.task_runs WHERE dag_run_id = %s "
        "AND task_id = 'landing_to_raw' AND status = 'success'",
        run2["dag_run_id"],
    )
    assert rejected == 1
    rejects_dir = Path(stack.lake_uri.removeprefix("file://")) / "rejects" / "invoices"
    kept = [p for p in rejects_dir.rglob("*") if p.is_file() and p.suffix in (".parquet", ".json")]
    assert kept, f"no rejects under {rejects_dir}"

    audit = scalar(
        stack.metadata_dsn, "SELECT count(*) FROM lakehouse.task_runs WHERE flow_id = 'invoices' AND status = 'success'"
    )
    assert audit == 8  # 4 tasks x 2 runs


def test_a_failing_task_retries_then_alerts_once(stack: Settings, client: AirflowApiClient) -> None:
    """A flow applied from a document appears in Airflow without a restart; its task fails, is
    retried by Airflow, and only the final failure alerts, naming the error and the log of try 2."""
    from lakehouse.metadata.flow_documents import apply_flow_document

    apply_flow_document(
        stack.metadata_dsn,
        {
            "flow_id": "e2e_failing",
            "tags": ["e2e"],
            "tasks": [
                {
                    "task_id": "build",
                    "template": "stage_to_presentation",
                    "retries": 1,
                    "retry_delay_seconds": 1,
                    "parameters": {"sql": "SELECT * FROM stage.no_such_table", "target_table": "presentation.never"},
                }
            ],
        },
    )
    wait_for_dag(client, "e2e_failing")
    assert client.trigger_dag_run("e2e_failing", "manual__e2e_failing_1") == "created"
    run = client.wait_for_dag_run("e2e_failing", "manual__e2e_failing_1", timeout=600)
    assert run["state"] == "failed", run

    conn = psycopg2.connect(stack.metadata_dsn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT try_number, status, error_summary FROM lakehouse.task_runs "
            "WHERE dag_run_id = 'manual__e2e_failing_1' ORDER BY try_number"
        )
        tries = cur.fetchall()
        cur.execute(
            "SELECT task_id, error_summary, log_url FROM lakehouse.notifications "
            "WHERE dag_run_id = 'manual__e2e_failing_1'"
        )
        alerts = cur.fetchall()
    conn.close()
    assert [(n, status) for n, status, _ in tries] == [(1, "failed"), (2, "failed")]
    for _, _, why in tries:  # Spark's own first line, no plan, no JVM stack trace
        assert why.startswith("AnalysisException: [TABLE_OR_VIEW_NOT_FOUND]") and "no_such_table" in why, why
        assert "\n" not in why and "JVM stacktrace" not in why
    ((task_id, why, log_url),) = alerts
    assert task_id == "build" and why == tries[-1][2] and log_url.endswith("try_number=2")


def test_a_rejected_file_fails_in_one_line_keeps_its_rejects_and_leaves_no_raw(
    stack: Settings, client: AirflowApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's own example: a CSV with 3 bad lines of 5 and max_reject_ratio 0. The try's
    audit row has the counts and the job's sentence; raw has nothing of the file; its rejects are
    kept; `lakehouse runs` and `lakehouse trace` say so without SQL."""
    from lakehouse.cli import main as lakehouse
    from lakehouse.hooks.s3 import landing_client
    from lakehouse.invoker.core import file_dag_run_id
    from lakehouse.metadata.flow_documents import apply_flow_document

    apply_flow_document(
        stack.metadata_dsn,
        {
            "flow_id": "e2e_customers",
            "tags": ["e2e"],
            "trigger": {"bucket": "landing", "key_pattern": "customers/*"},
            "tasks": [
                {
                    "task_id": "to_raw",
                    "template": "landing_to_raw",
                    "parameters": {
                        "dataset": "e2e_customers",
                        "format": "csv",
                        "schema": {"customer_id": "int", "name": "string", "since": "date"},
                    },
                }
            ],
        },
    )
    wait_for_dag(client, "e2e_customers")
    key = "customers/bad/malformed.csv"
    body = (
        b"customer_id,name,since\n1,Acme,2026-01-01\nx,Globex,2026-01-02\n3,Initech,never\n4,Umbrella,2026-01-04\n"
        b"5,Hooli,2026-13-40\n"
    )
    etag = landing_client(stack).put_object(Bucket="landing", Key=key, Body=body)["ETag"].strip('"')
    run_id = file_dag_run_id("e2e_customers", "landing", key, etag)
    assert client.wait_for_dag_run("e2e_customers", run_id, timeout=600)["state"] == "failed"

    conn = psycopg2.connect(stack.metadata_dsn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT rows_in, rows_out, rows_rejected, error_summary FROM lakehouse.task_runs WHERE dag_run_id = %s",
            (run_id,),
        )
        ((rows_in, rows_out, rejected, why),) = cur.fetchall()
    conn.close()
    assert (rows_in, rows_out, rejected) == (5, 0, 3)
    assert (
        why.startswith(
            f"landing file s3://landing/{key}: 3 of 5 lines rejected (60.0%), more than max_reject_ratio 0.0"
        )
        and "\n" not in why
    ), why
    lake = Path(stack.lake_uri.removeprefix("file://"))
    assert not list((lake / "raw" / "e2e_customers").glob("_batch_id=*")), "a rejected file reached raw"
    rejects = [p for p in (lake / "rejects" / "e2e_customers").rglob("*.json")]
    assert sum(len(p.read_text().splitlines()) for p in rejects) == 3

    assert lakehouse(["runs", "--flow", "e2e_customers", "--failed"]) == 0
    out = capsys.readouterr().out
    assert f"    why: {why}" in out and "in 5, out 0, rejected 3" in out
    assert lakehouse(["trace", f"s3://landing/{key}"]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}: failed" in out and f"rejects_path: {stack.lake_uri}" in out
