"""The outbox on the real ledger: backoff, restart-loses-nothing, multi-match opt-out, replay, SQS."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.invoker.core import Invoker, file_dag_run_id, load_trigger_catalogue
from lakehouse.invoker.events import ObjectEvent

from .conftest import RecordingAirflow, catalogue_for

SAMPLES = Path(__file__).parent / "samples"


def event(bucket: str, key: str, etag: str = "e1") -> ObjectEvent:
    return ObjectEvent(bucket, key, etag, 10, datetime.now(UTC), "test")


def next_attempt_in(pg: Settings, bucket: str, key: str) -> float:
    conn = psycopg2.connect(pg.metadata_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT extract(epoch FROM next_attempt_at - now()) FROM lakehouse.file_ledger "
                "WHERE bucket = %s AND object_key = %s",
                (bucket, key),
            )
            return float(cur.fetchone()[0])
    finally:
        conn.close()


def test_retries_back_off_exponentially(pg: Settings, bucket: str, airflow: RecordingAirflow, ledger_rows) -> None:
    invoker = Invoker(
        pg.metadata_dsn,
        airflow,
        catalogue_loader=lambda: catalogue_for(bucket, ("f", "*")),
        retry_base=10,
        retry_max=25,
    )
    airflow.down = True
    invoker.handle_object_event(event(bucket, "a.txt"))
    assert 9 < next_attempt_in(pg, bucket, "a.txt") <= 10  # 1st failure: base
    assert invoker.retry_pending() == [] or all(o.bucket != bucket for o in invoker.retry_pending())
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn, conn.cursor() as cur:  # let the clock run out instead of sleeping 10 s
        cur.execute("UPDATE lakehouse.file_ledger SET next_attempt_at = now() WHERE bucket = %s", (bucket,))
    conn.close()
    assert [o.status for o in invoker.retry_pending() if o.bucket == bucket] == ["pending"]
    assert 19 < next_attempt_in(pg, bucket, "a.txt") <= 20  # 2nd failure: 2 x base
    (row,) = ledger_rows()
    assert row["attempts"] == 2 and row["status"] == "pending"


def test_events_during_an_outage_are_stored_without_calling_airflow(
    invoker: Invoker, airflow: RecordingAirflow, bucket: str, ledger_rows
) -> None:
    airflow.down = True
    invoker.handle_object_event(event(bucket, "in/1.txt"))
    calls = airflow.calls
    outcomes = [invoker.handle_object_event(event(bucket, f"in/{i}.txt"))[0] for i in range(2, 6)]
    assert {o.status for o in outcomes} == {"pending"} and airflow.calls == calls  # breaker: no call, no wait
    assert {r["status"] for r in ledger_rows()} == {"pending"} and len(ledger_rows()) == 5


def test_restart_loses_nothing(pg: Settings, bucket: str, airflow: RecordingAirflow, ledger_rows) -> None:
    """Stored while Airflow is down, the process goes away; a NEW invoker's retry starts the run."""
    catalogue = catalogue_for(bucket, ("inv_a", "in/*.txt"))
    first = Invoker(pg.metadata_dsn, airflow, catalogue_loader=lambda: catalogue, retry_base=0.1)
    airflow.down = True
    assert [o.status for o in first.handle_object_event(event(bucket, "in/a.txt"))] == ["pending"]
    first.close()
    del first
    airflow.down = False
    second = Invoker(pg.metadata_dsn, airflow, catalogue_loader=lambda: catalogue, retry_base=0.1)
    time.sleep(0.2)
    assert [o.status for o in second.retry_pending() if o.bucket == bucket] == ["created"]
    assert ("inv_a", file_dag_run_id("inv_a", bucket, "in/a.txt", "e1")) in airflow.runs
    assert ledger_rows()[0]["status"] == "triggered"


def test_a_claimed_row_is_not_claimed_twice(pg: Settings, bucket: str, ledger_rows) -> None:
    """Two retriers (two invoker processes) never call Airflow for the same row at once."""
    slow = RecordingAirflow()
    slow.down = True
    catalogue = catalogue_for(bucket, ("f", "*"))
    invoker = Invoker(pg.metadata_dsn, slow, catalogue_loader=lambda: catalogue, retry_base=0.05)
    invoker.handle_object_event(event(bucket, "x.txt"))
    time.sleep(0.1)
    from lakehouse.metadata import ledger

    a, b = psycopg2.connect(pg.metadata_dsn), psycopg2.connect(pg.metadata_dsn)
    try:
        with a:
            mine = [r for r in ledger.claim_due_rows(a, 1000) if r["bucket"] == bucket]
        with b:
            theirs = [r for r in ledger.claim_due_rows(b, 1000) if r["bucket"] == bucket]
    finally:
        a.close()
        b.close()
    assert len(mine) == 1 and theirs == []


@pytest.fixture
def opt_out_flows(pg: Settings, bucket: str) -> Iterator[None]:
    conn = psycopg2.connect(pg.metadata_dsn)
    task = '{"sql": "select 1", "target_table": "p.t"}'
    with conn, conn.cursor() as cur:
        for flow_id, pattern, multi in (("mm_orders", "orders/*.csv", True), ("mm_archive", "*", False)):
            cur.execute(
                "INSERT INTO lakehouse.flows (flow_id, trigger_bucket, trigger_key_pattern, trigger_multi_match) "
                "VALUES (%s, %s, %s, %s)",
                (f"{flow_id}_{bucket}", bucket, pattern, multi),
            )
            cur.execute(
                "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) "
                "VALUES (%s, 'a', 'stage_to_presentation', %s)",
                (f"{flow_id}_{bucket}", task),
            )
    yield
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE trigger_bucket = %s", (bucket,))
    conn.close()


def test_flow_opted_out_of_multi_match_only_runs_alone(pg: Settings, bucket: str, opt_out_flows, ledger_rows) -> None:
    airflow = RecordingAirflow()
    invoker = Invoker(pg.metadata_dsn, airflow)  # the real catalogue query, trigger_multi_match from the rows
    assert f"mm_archive_{bucket}" in load_trigger_catalogue(pg.metadata_dsn).single_match_only
    both = invoker.handle_object_event(event(bucket, "orders/1.csv"))
    alone = invoker.handle_object_event(event(bucket, "misc/readme.txt"))
    assert sorted((o.flow_id, o.status) for o in both) == [
        (f"mm_archive_{bucket}", "skipped"),
        (f"mm_orders_{bucket}", "created"),
    ]
    assert [(o.flow_id, o.status) for o in alone] == [(f"mm_archive_{bucket}", "created")]
    skipped = [r for r in ledger_rows() if r["status"] == "skipped"]
    assert len(skipped) == 1 and f"mm_orders_{bucket}" in skipped[0]["last_error"]
    assert {dag for dag, _ in airflow.runs} == {f"mm_orders_{bucket}", f"mm_archive_{bucket}"} and len(
        airflow.runs
    ) == 2
    # a redelivery of the first event stays skipped for the archive flow and starts nothing new
    again = invoker.handle_object_event(event(bucket, "orders/1.csv"))
    assert sorted(o.status for o in again) == ["duplicate", "skipped"] and len(airflow.runs) == 2


def test_replay_respects_exactly_once_unless_forced(
    invoker: Invoker, airflow: RecordingAirflow, bucket: str, ledger_rows
) -> None:
    invoker.handle_object_event(event(bucket, "in/a.txt"))
    objects = [event(bucket, "in/a.txt"), event(bucket, "in/b.txt"), event(bucket, "other/c.bin")]
    plain = invoker.replay("inv_a", objects)
    assert [o.status for o in plain] == ["duplicate", "created", "not_matching"]
    assert len(airflow.runs) == 2
    forced = invoker.replay("inv_a", objects[:2], force=True)
    assert [o.status for o in forced] == ["created", "created"]
    assert all(o.dag_run_id and "__force" in o.dag_run_id for o in forced)
    assert forced[0].dag_run_id.startswith(file_dag_run_id("inv_a", bucket, "in/a.txt", "e1") + "__force")
    assert len(airflow.runs) == 4
    rows = [r for r in ledger_rows() if r["object_key"] == "in/a.txt"]
    assert len(rows) == 2 and {r["status"] for r in rows} == {"triggered"}  # the first run's row is kept
    with pytest.raises(LookupError):
        invoker.replay("no_such_flow", objects)


def test_sqs_batch_reports_only_messages_that_were_not_stored(pg: Settings, airflow: RecordingAirflow) -> None:
    payload = json.loads((SAMPLES / "sqs_batch.json").read_text())
    catalogue = catalogue_for("landing", ("inv_sqs", "invoices/**"))
    invoker = Invoker(pg.metadata_dsn, airflow, catalogue_loader=lambda: catalogue)
    airflow.down = True  # Airflow's state does not matter: stored is done
    outcomes, failed = invoker.handle_sqs_batch(payload)
    assert failed == ["bad00000-0000-4000-8000-000000000001"]
    assert sorted(o.status for o in outcomes) == ["ignored", "pending", "pending", "pending"]
    # message 2 (via SNS) and 3 (via EventBridge) are the same file version: one ledger row, 2 deliveries
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT deliveries, status, source FROM lakehouse.file_ledger WHERE bucket = 'landing' "
            "AND object_key = %s AND flow_id = 'inv_sqs'",
            ("invoices/2026/Nov 23/inv+1 (copy).txt",),
        )
        assert cur.fetchall() == [(2, "pending", "sqs")]
        cur.execute("DELETE FROM lakehouse.file_ledger WHERE flow_id = 'inv_sqs'")
    conn.close()
    airflow.down = False
    unreachable = Invoker(
        "postgresql://lakehouse:wrong@127.0.0.1:1/lakehouse", airflow, catalogue_loader=lambda: catalogue
    )
    _, failed = unreachable.handle_sqs_batch(payload)
    # nothing could be stored: every message with an object is redelivered; the test event needs no store
    assert set(failed) == {r["messageId"] for r in payload["Records"]} - {"4d3c2b1a-0f9e-4d8c-9b7a-6f5e4d3c2b1a"}
    assert airflow.runs == {}
