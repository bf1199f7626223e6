"""``lakehouse trace`` and ``lakehouse runs``: a file's story and each try's reason, without SQL."""

from __future__ import annotations

import json
import uuid

import psycopg2
import pytest

from lakehouse.cli import main as lakehouse
from lakehouse.config import Settings
from lakehouse.metadata.trace import format_runs, list_task_runs, parse_object_uri, trace_object

WHY = (
    "landing file s3://landing/customers/bad/malformed.csv: 3 of 5 lines rejected (60.0%), more than "
    "max_reject_ratio 0.0; nothing written to raw, rejects written to file:///lake/rejects/customers/_batch_id=r"
)


@pytest.fixture
def recorded(pg: Settings) -> dict[str, str]:
    """One object in two versions: the first ran and failed at landing_to_raw (then a retry passed
    and the flow went on), the second waits for its invalid flow."""
    u = uuid.uuid4().hex[:8]
    bucket, key, flow, run = f"trace{u}", "customers/bad/malformed.csv", f"cust_{u}", f"s3__cust_{u}__abc"
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO lakehouse.file_ledger (bucket, object_key, etag, size, flow_id, dag_id, dag_run_id,
                           status, deliveries, attempts, source)
                       VALUES (%s, %s, 'e1', 120, %s, %s, %s, 'triggered', 2, 1, 'seaweedfs'),
                              (%s, %s, 'e2', 130, %s, %s, %s, 'flow_invalid', 1, 0, 'seaweedfs')""",
            (bucket, key, flow, flow, run, bucket, key, flow, flow, run + "x"),
        )
        cur.execute(
            "UPDATE lakehouse.file_ledger SET last_error = %s WHERE bucket = %s AND etag = 'e2'",
            (f"flow '{flow}' is invalid (flows.schedule: bad)", bucket),
        )
        tries = [
            (
                "to_raw",
                "landing_to_raw",
                1,
                "failed",
                5,
                0,
                3,
                WHY,
                {"rows_in": 5, "rows_out": 0, "rows_rejected": 3, "rejects_path": "file:///lake/rejects/customers/x"},
            ),
            (
                "to_raw",
                "landing_to_raw",
                2,
                "success",
                5,
                5,
                0,
                None,
                {"rows_in": 5, "rows_out": 5, "raw_path": "file:///lake/raw/customers/_batch_id=x"},
            ),
            (
                "to_stage",
                "raw_to_stage_scd2",
                1,
                "success",
                5,
                5,
                0,
                None,
                {"target_table": "stage.customers", "snapshot_id": 8812, "committed": True},
            ),
        ]
        for task, template, try_number, status, rin, rout, rej, why, metrics in tries:
            cur.execute(
                """INSERT INTO lakehouse.task_runs (flow_id, task_id, template_id, dag_id, dag_run_id,
                               try_number, batch_id, status, ended_at, rows_in, rows_out, rows_rejected,
                               error_summary, error, metrics)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now(), %s, %s, %s, %s, %s, %s)""",
                (
                    flow,
                    task,
                    template,
                    flow,
                    run,
                    try_number,
                    run,
                    status,
                    rin,
                    rout,
                    rej,
                    why,
                    why and why + "\n--- last lines of the job's output ---\nINFO stopped",
                    json.dumps(metrics),
                ),
            )
    conn.close()
    return {"uri": f"s3://{bucket}/{key}", "flow": flow, "run": run}


def test_trace_tells_every_version_run_try_and_output(pg: Settings, recorded: dict[str, str]) -> None:
    trace = trace_object(pg.metadata_dsn, recorded["uri"], lambda dag_id, run_id: "success")
    first, second = trace["versions"]
    assert (first["etag"], first["status"], first["deliveries"], first["run"]["state"]) == (
        "e1",
        "triggered",
        2,
        "success",
    )
    assert [(t["task_id"], t["try_number"], t["status"]) for t in first["tasks"]] == [
        ("to_raw", 1, "failed"),
        ("to_raw", 2, "success"),
        ("to_stage", 1, "success"),
    ]
    assert first["tasks"][0]["error_summary"] == WHY
    assert first["tasks"][0]["outputs"] == {"rejects_path": "file:///lake/rejects/customers/x"}
    assert first["tasks"][2]["outputs"] == {"target_table": "stage.customers", "snapshot_id": 8812, "committed": True}
    assert (second["status"], second["run"], second["tasks"]) == ("flow_invalid", None, [])


def test_trace_and_runs_on_the_command_line(
    pg: Settings, recorded: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert lakehouse(["trace", "--no-airflow", recorded["uri"]]) == 0
    text = capsys.readouterr().out
    assert f"-> flow {recorded['flow']}: triggered, 2 deliveries, 1 trigger call(s)" in text
    assert f"    why: flow '{recorded['flow']}' is invalid (flows.schedule: bad)" in text
    assert f"        why: {WHY}" in text  # whole, on its own line, not cut
    assert "        raw_path: file:///lake/raw/customers/_batch_id=x" in text
    assert "        snapshot_id: 8812" in text

    assert lakehouse(["trace", "--no-airflow", "--json", recorded["uri"]]) == 0
    assert json.loads(capsys.readouterr().out)["versions"][0]["tasks"][0]["rows_rejected"] == 3

    assert lakehouse(["runs", "--flow", recorded["flow"], "--failed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "to_raw  try 1  failed" in lines[0] and "in 5, out 0, rejected 3" in lines[0]
    assert lines[1] == f"    why: {WHY}"

    assert lakehouse(["trace", "--no-airflow", "s3://nobody/never.csv"]) == 1
    assert "never seen by the invoker" in capsys.readouterr().out


def test_an_object_uri_is_checked() -> None:
    assert parse_object_uri("s3://landing/a/b.csv") == ("landing", "a/b.csv")
    with pytest.raises(ValueError, match="give s3://<bucket>/<key>"):
        parse_object_uri("landing/a/b.csv")


def test_runs_without_rows(pg: Settings) -> None:
    assert format_runs(list_task_runs(pg.metadata_dsn, flow_id="no_such_flow_at_all")) == "no task runs"


def test_trace_and_runs_show_the_batch_a_file_belongs_to(pg: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    u = uuid.uuid4().hex[:8]
    bucket, flow, run = f"tb{u}", f"batched_{u}", f"s3batch__batched_{u}__0000000001"
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO lakehouse.file_batches (flow_id, dag_id, dag_run_id, files, manifest_uri, status) "
            "VALUES (%s, %s, %s, 2, 'file:///lake/_manifests/m.json', 'triggered') RETURNING batch_id",
            (flow, flow, run),
        )
        (batch_id,) = cur.fetchone()
        for key in ("in/a.csv", "in/b.csv"):
            cur.execute(
                "INSERT INTO lakehouse.file_ledger (bucket, object_key, etag, flow_id, dag_id, dag_run_id, "
                "status, batch_id) VALUES (%s, %s, 'e', %s, %s, %s, 'triggered', %s)",
                (bucket, key, flow, flow, run, batch_id),
            )
        cur.execute(
            "INSERT INTO lakehouse.task_runs (flow_id, task_id, template_id, dag_id, dag_run_id, status, "
            "rows_in) VALUES (%s, 'to_raw', 'landing_to_raw', %s, %s, 'success', 10)",
            (flow, flow, run),
        )
    conn.close()
    assert lakehouse(["trace", "--no-airflow", f"s3://{bucket}/in/b.csv"]) == 0
    assert f"    in batch {batch_id} of 2 files (manifest file:///lake/_manifests/m.json)" in capsys.readouterr().out
    assert lakehouse(["runs", "--flow", flow]) == 0
    assert f"{run} (batch {batch_id}: 2 files)" in capsys.readouterr().out
