"""The sample flow end to end, as a user would do it: rows in, files dropped, SQL answer out.

Everything goes through the product's real doors: the flow is installed with SQL, the files are
uploaded with boto3 through SeaweedFS's S3 API, the invoker (called by SeaweedFS's webhook)
starts the DAG runs, and the answer is read from the warehouse with SQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

from lakehouse.config import Settings
from lakehouse.hooks.airflow_api import AirflowApiClient
from lakehouse.hooks.s3 import landing_client
from lakehouse.invoker.core import file_dag_run_id

__all__ = ["drop_file_and_wait", "install_sample_flow", "run_demo"]

SAMPLE_FLOW = "invoices"
SAMPLE_PREFIX = "invoices/"


def sample_dir(settings: Settings) -> Path:
    return settings.root / "metadata" / "samples" / "invoices"


def install_sample_flow(settings: Settings) -> None:
    conn = psycopg2.connect(settings.metadata_dsn)
    try:
        conn.autocommit = True  # the file has its own BEGIN/COMMIT
        with conn.cursor() as cur:
            cur.execute((sample_dir(settings) / "flow.sql").read_text())
    finally:
        conn.close()


def airflow_client(settings: Settings) -> AirflowApiClient:
    return AirflowApiClient(settings.airflow_url, settings.airflow_username, settings.airflow_password)


def wait_for_dag(client: AirflowApiClient, dag_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while client.get_dag(dag_id) is None:
        if time.monotonic() > deadline:
            errors = client.import_errors()
            raise TimeoutError(f"DAG {dag_id!r} not in Airflow after {timeout:.0f}s; import errors: {errors}")
        time.sleep(2)


def drop_file_and_wait(
    settings: Settings,
    client: AirflowApiClient,
    flow_id: str,
    path: Path,
    key: str,
    timeout: float = 900,
    rerun_failed: bool = False,
) -> dict[str, Any]:
    """Upload through the S3 API, then wait for the run the invoker started for this file version.

    Dropping a file version that was processed before starts no new run (that is the point); if
    that earlier run failed, its failed tasks are cleared and re-run, as a user would in the UI.
    """
    s3 = landing_client(settings)
    etag = s3.put_object(Bucket=settings.landing_bucket, Key=key, Body=path.read_bytes())["ETag"].strip('"')
    run_id = file_dag_run_id(flow_id, settings.landing_bucket, key, etag)
    run = client.wait_for_dag_run(flow_id, run_id, timeout=timeout)
    if run["state"] == "failed" and rerun_failed:
        client.clear_failed_tasks(flow_id, run_id)
        time.sleep(1)
        run = client.wait_for_dag_run(flow_id, run_id, timeout=timeout)
    return run | {"dag_run_id": run_id}


def _task_errors(settings: Settings, dag_run_id: str) -> str:
    conn = psycopg2.connect(settings.metadata_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT task_id, coalesce(error_summary, error) FROM lakehouse.task_runs "
                "WHERE dag_run_id = %s AND status <> 'success' "
                "ORDER BY task_run_id",
                (dag_run_id,),
            )
            return "\n".join(f"  {task}: {error}" for task, error in cur.fetchall())
    finally:
        conn.close()


def query(dsn: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return [d.name for d in cur.description], cur.fetchall()
    finally:
        conn.close()


def format_table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [columns] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *(line(r) for r in cells[1:])])


def stage_history(settings: Settings, invoice_id: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The stage table read with PyIceberg from the same catalog Spark wrote: one catalog, two engines."""
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import EqualTo, Reference
    from pyiceberg.expressions.literals import literal

    catalog = SqlCatalog(settings.catalog_name, uri=settings.catalog_dsn, warehouse=settings.catalog_warehouse_uri)
    table = catalog.load_table("stage.invoices")
    columns = ["invoice_id", "amount", "_valid_from", "_valid_to", "_is_current"]
    # EqualTo by keyword: pyiceberg's pydantic model hides its positional EqualTo(name, value) from type checkers
    arrow = table.scan(
        row_filter=EqualTo(term=Reference("invoice_id"), value=literal(invoice_id)), selected_fields=tuple(columns)
    ).to_arrow()
    rows = sorted(zip(*(arrow.column(c).to_pylist() for c in columns), strict=True), key=lambda r: r[2])
    return columns, rows


def run_demo(settings: Settings, echo: Callable[[str], None] = print) -> int:
    client = airflow_client(settings)
    install_sample_flow(settings)
    echo(f"flow {SAMPLE_FLOW!r} installed from {sample_dir(settings) / 'flow.sql'}; waiting for its DAG")
    wait_for_dag(client, SAMPLE_FLOW)
    for path in sorted(sample_dir(settings).glob("*.txt")):
        key = SAMPLE_PREFIX + path.name
        echo(f"uploading {path.name} -> s3://{settings.landing_bucket}/{key}")
        started = time.monotonic()
        run = drop_file_and_wait(settings, client, SAMPLE_FLOW, path, key, rerun_failed=True)
        echo(f"  DAG run {run['dag_run_id']}: {run['state']} in {time.monotonic() - started:.1f}s")
        if run["state"] != "success":
            echo("failed tasks:\n" + _task_errors(settings, run["dag_run_id"]))
            return 1

    columns, rows = query(settings.warehouse_dsn, "SELECT * FROM presentation.daily_expenses ORDER BY invoice_date")
    echo("\nWarehouse: SELECT * FROM presentation.daily_expenses ORDER BY invoice_date")
    echo(format_table(columns, rows))

    columns, rows = stage_history(settings, "INV-1003")
    echo("\nStage history of INV-1003 (Iceberg table stage.invoices, read with PyIceberg):")
    echo(format_table(columns, rows))

    columns, rows = query(
        settings.metadata_dsn,
        "SELECT task_id, rows_in, rows_out, rows_rejected FROM lakehouse.task_runs "
        "WHERE flow_id = 'invoices' AND status = 'success' AND task_id = 'landing_to_raw' "
        "AND dag_run_id IN (SELECT dag_run_id FROM lakehouse.file_ledger WHERE flow_id = 'invoices') "
        "ORDER BY task_run_id DESC LIMIT 2",
    )
    echo("\nLanding -> raw (rejected lines are kept under raw's rejects/ location):")
    echo(format_table(columns, rows))
    echo(
        f"\nAirflow UI: {settings.airflow_url}  login: {settings.airflow_username} / {settings.airflow_password}"
        "\nAll endpoints and credentials: .venv/bin/lakehouse info --json"
    )
    return 0
