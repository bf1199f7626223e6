"""One bad flow breaks only itself, in the Airflow that users run (dag-processor + api-server).

A DagBag in a unit test keeps the good DAGs beside an import error; the real dag-processor marks
every DAG of the file stale instead, so this is shown against the running stack. The invalid flows
stay in place afterwards on purpose: the e2e tests that follow run beside them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import psycopg2
import pytest

from lakehouse.cli import main as lakehouse
from lakehouse.config import Settings
from lakehouse.flows import INVALID_FLOW_TAG
from lakehouse.hooks.airflow_api import AirflowApiClient
from lakehouse.hooks.s3 import landing_client
from lakehouse.invoker.core import file_dag_run_id

pytestmark = pytest.mark.e2e

_PRESENT = {"sql": "SELECT 1 AS one", "target_table": "presentation.e2e_healthy"}

#: flow_id -> (its flows row, its flow_tasks rows, the row and field the problem must name)
INVALID = {
    "e2e_bad_missing": (
        {},
        [("a", 1, "stage_to_presentation", {"sql": "SELECT 1"}, None)],
        "flow_tasks[a].parameters.target_table",
    ),
    "e2e_bad_unknown": (
        {},
        [("a", 1, "stage_to_presentation", {**_PRESENT, "colour": "red"}, None)],
        "flow_tasks[a].parameters.colour",
    ),
    "e2e_bad_mistyped": (
        {},
        [("a", 1, "quality_check", {"table": "stage.x", "checks": [], "sample_size": "five"}, None)],
        "flow_tasks[a].parameters.sample_size",
    ),
    "e2e_bad_no_tasks": ({}, [], "flow_tasks"),  # a flow row whose tasks were never inserted
    "e2e_bad_cycle": (
        {},
        [("a", 1, "stage_to_presentation", _PRESENT, ["b"]), ("b", 2, "stage_to_presentation", _PRESENT, ["a"])],
        "flow_tasks.upstream",
    ),
    "e2e_bad_schedule": (
        {"schedule": "every morning"},
        [("a", 1, "stage_to_presentation", _PRESENT, None)],
        "flows.schedule",
    ),
}


def _insert_flow(dsn: str, flow_id: str, flow: dict, tasks: list, trigger: str | None = None) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = %s", (flow_id,))
            cur.execute(
                "INSERT INTO lakehouse.flows (flow_id, schedule, trigger_bucket, trigger_key_pattern, tags) "
                "VALUES (%s, %s, %s, %s, '{e2e}')",
                (flow_id, flow.get("schedule"), "landing" if trigger else None, trigger),
            )
            for task_id, order, template, parameters, upstream in tasks:
                cur.execute(
                    "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, task_order, template_id, parameters, "
                    "upstream) VALUES (%s, %s, %s, %s, %s, %s)",
                    (flow_id, task_id, order, template, json.dumps(parameters), upstream),
                )
    finally:
        conn.close()


def _wait(what: str, check: Callable[[], bool], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f}s")
        time.sleep(2)


def _tags(dag: dict | None) -> set[str]:
    return {t["name"] for t in (dag or {}).get("tags") or ()}


@pytest.fixture(scope="module")
def invalid_flows(stack: Settings, client: AirflowApiClient) -> dict[str, str]:
    _insert_flow(
        stack.metadata_dsn,
        "e2e_healthy",
        {},
        [("a", 1, "stage_to_presentation", _PRESENT, None)],
        trigger="healthy/*.csv",
    )
    for flow_id, (flow, tasks, _) in INVALID.items():
        _insert_flow(stack.metadata_dsn, flow_id, flow, tasks)
    _wait(
        "invalid flows not listed by Airflow as placeholders",
        lambda: all(INVALID_FLOW_TAG in _tags(client.get_dag(f)) for f in INVALID) and client.get_dag("e2e_healthy"),
    )
    return {flow_id: field for flow_id, (_, _, field) in INVALID.items()}


def test_invalid_flows_leave_every_healthy_dag_listed_active_and_runnable(
    stack: Settings, client: AirflowApiClient, invalid_flows: dict[str, str]
) -> None:
    listed = {d["dag_id"]: d for d in client.list_dags(limit=100)["dags"]}
    for healthy in ("invoices", "e2e_healthy"):
        dag = listed[healthy]
        assert not dag["is_stale"] and not dag["is_paused"] and INVALID_FLOW_TAG not in _tags(dag), dag
    assert not [e for e in client.import_errors() if "lakehouse_dags" in e.get("filename", "")]

    for flow_id, field in invalid_flows.items():  # each under its own name, saying what to fix
        details = client.get_dag_details(flow_id)
        assert details is not None and INVALID_FLOW_TAG in _tags(details), flow_id
        assert f"`{field}`" in details["doc_md"], (flow_id, details["doc_md"])
        assert client.list_dag_runs(flow_id) == []  # no schedule, nothing ran

    key = "healthy/one.csv"
    etag = landing_client(stack).put_object(Bucket="landing", Key=key, Body=b"x\n1\n")["ETag"].strip('"')
    run = client.wait_for_dag_run("e2e_healthy", file_dag_run_id("e2e_healthy", "landing", key, etag), timeout=600)
    assert run["state"] == "success", run


def test_a_file_for_an_invalid_flow_waits_and_starts_once_the_flow_is_fixed(
    stack: Settings, client: AirflowApiClient, invalid_flows: dict[str, str], scalar, capsys: pytest.CaptureFixture[str]
) -> None:
    _insert_flow(
        stack.metadata_dsn,
        "e2e_held",
        {},
        [("a", 1, "stage_to_presentation", {"sql": "SELECT 2 AS two"}, None)],
        trigger="held/*.csv",
    )
    _wait("e2e_held not a placeholder", lambda: INVALID_FLOW_TAG in _tags(client.get_dag("e2e_held")))
    assert lakehouse(["flow", "validate", "e2e_held"]) == 1
    assert "flow 'e2e_held': flow_tasks[a].parameters.target_table: required by template" in capsys.readouterr().out

    key = "held/a.csv"
    etag = landing_client(stack).put_object(Bucket="landing", Key=key, Body=b"y\n2\n")["ETag"].strip('"')

    def status() -> object:
        return scalar(
            stack.metadata_dsn,
            "SELECT status FROM lakehouse.file_ledger WHERE object_key = %s AND flow_id = 'e2e_held'",
            key,
        )

    _wait("the file never reached the ledger as flow_invalid", lambda: status() == "flow_invalid", timeout=60)
    reason = scalar(stack.metadata_dsn, "SELECT last_error FROM lakehouse.file_ledger WHERE object_key = %s", key)
    assert "flow_tasks[a].parameters.target_table" in reason
    time.sleep(5)  # a few retry-loop ticks: a held file is not sent to Airflow
    assert scalar(stack.metadata_dsn, "SELECT attempts FROM lakehouse.file_ledger WHERE object_key = %s", key) == 0
    assert client.list_dag_runs("e2e_held") == []

    conn = psycopg2.connect(stack.metadata_dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE lakehouse.flow_tasks SET parameters = parameters || "
            "'{\"target_table\": \"presentation.e2e_held\"}' WHERE flow_id = 'e2e_held'"
        )
    conn.close()
    run = client.wait_for_dag_run("e2e_held", file_dag_run_id("e2e_held", "landing", key, etag), timeout=600)
    assert run["state"] == "success", run
    assert status() == "triggered"
    assert INVALID_FLOW_TAG not in _tags(client.get_dag("e2e_held"))
