"""OpenLineage end to end: a file dropped into the landing bucket runs the sample flow, and the
events its four tasks sent through the provider are read back from the file the stack writes
them to (``$LAKEHOUSE_HOME/lineage/events.jsonl``), as a user would read them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import Settings
from lakehouse.demo import drop_file_and_wait, sample_dir
from lakehouse.hooks.airflow_api import AirflowApiClient
from lakehouse.stack.services import lineage_events_file

pytestmark = pytest.mark.e2e

TASKS = ("landing_to_raw", "raw_to_stage_scd2", "stage_to_presentation", "presentation_to_warehouse")


def run_events(path: Path, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The task events of one DAG run, in the order they were written."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        airflow = (event.get("run", {}).get("facets") or {}).get("airflow") or {}
        if event["job"]["name"].startswith(f"{dag_id}.") and (airflow.get("dagRun") or {}).get("run_id") == run_id:
            found.append(event)
    return found


def datasets(event: dict[str, Any], side: str) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in event.get(side) or []]


def test_every_task_reports_what_it_read_and_wrote(
    stack: Settings, client: AirflowApiClient, scalar: Callable[..., object]
) -> None:
    first = sorted(sample_dir(stack).glob("*.txt"))[0]
    key = f"invoices/{first.name}"
    run = drop_file_and_wait(stack, client, "invoices", first, key)  # the same file version: the same run
    assert run["state"] == "success", run
    run_id = run["dag_run_id"]

    # a task's COMPLETE is written by its worker just after it reported success: wait for all four
    path = lineage_events_file(stack)
    deadline = time.monotonic() + 120
    while True:
        events = run_events(path, "invoices", run_id)
        complete = {e["job"]["name"].split(".", 1)[1]: e for e in events if e["eventType"] == "COMPLETE"}
        if set(TASKS) <= set(complete) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(TASKS) <= set(complete), f"COMPLETE events in {path}: {sorted(complete)}"
    started = {e["job"]["name"].split(".", 1)[1] for e in events if e["eventType"] == "START"}
    assert set(TASKS) <= started
    assert all(e["job"]["namespace"] == "lakehouse" for e in events)

    lake = Path(stack.lake_uri.removeprefix("file://")).resolve()
    raw = ("file", str(lake / "raw" / "invoices"))
    stage = ("iceberg://lake", f"{stack.catalog_name}.stage.invoices")
    presentation = ("iceberg://lake", f"{stack.catalog_name}.presentation.daily_expenses")
    warehouse = (f"postgres://{stack.pg_host}:{stack.pg_port}", f"{stack.warehouse_db}.presentation.daily_expenses")

    landing = complete["landing_to_raw"]
    assert datasets(landing, "inputs") == [(f"s3://{stack.landing_bucket}", key)]
    assert datasets(landing, "outputs")[0] == raw
    rows_out = scalar(
        stack.metadata_dsn,
        "SELECT rows_out FROM lakehouse.task_runs WHERE dag_run_id = %s AND "
        "task_id = 'landing_to_raw' AND status = 'success'",
        run_id,
    )
    assert landing["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == rows_out

    scd2 = complete["raw_to_stage_scd2"]
    assert (datasets(scd2, "inputs"), datasets(scd2, "outputs")) == ([raw], [stage])
    assert scd2["outputs"][0]["facets"]["catalog"]["framework"] == "iceberg"

    presentation_event = complete["stage_to_presentation"]
    assert (datasets(presentation_event, "inputs"), datasets(presentation_event, "outputs")) == (
        [stage],
        [presentation],
    )

    load = complete["presentation_to_warehouse"]
    assert (datasets(load, "inputs"), datasets(load, "outputs")) == ([presentation], [warehouse])
