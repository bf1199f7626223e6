"""Invoker against the real ledger in Postgres: one run per file version, nothing lost."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from lakehouse.invoker.core import Invoker, file_dag_run_id, scheduled_dag_run_id
from lakehouse.invoker.events import ObjectEvent


def event(bucket: str, key: str, etag: str = "e1") -> ObjectEvent:
    return ObjectEvent(bucket, key, etag, 10, datetime.now(UTC), "test")


def test_same_event_twice_starts_one_run(invoker: Invoker, airflow, bucket: str, ledger_rows) -> None:
    first = invoker.handle_object_event(event(bucket, "in/a.txt"))
    second = invoker.handle_object_event(event(bucket, "in/a.txt"))
    assert [o.status for o in first] == ["created"]
    assert [o.status for o in second] == ["duplicate"]
    assert airflow.calls == 1 and len(airflow.runs) == 1
    (row,) = ledger_rows()
    assert row["status"] == "triggered" and row["deliveries"] == 2
    assert row["dag_run_id"] == file_dag_run_id("inv_a", bucket, "in/a.txt", "e1")
    conf = airflow.runs[("inv_a", row["dag_run_id"])]
    assert conf["file"] == {
        "bucket": bucket,
        "key": "in/a.txt",
        "etag": "e1",
        "size": 10,
        "uri": f"s3://{bucket}/in/a.txt",
    }


def test_new_version_of_same_key_starts_a_new_run(invoker: Invoker, airflow, bucket: str) -> None:
    invoker.handle_object_event(event(bucket, "in/a.txt", "e1"))
    invoker.handle_object_event(event(bucket, "in/a.txt", "e2"))
    assert len(airflow.runs) == 2


def test_run_exists_in_airflow_counts_as_success(invoker: Invoker, airflow, bucket: str, ledger_rows) -> None:
    run_id = file_dag_run_id("inv_a", bucket, "in/a.txt", "e1")
    airflow.runs[("inv_a", run_id)] = {}
    (outcome,) = invoker.handle_object_event(event(bucket, "in/a.txt"))
    assert outcome.status == "exists"
    assert ledger_rows()[0]["status"] == "triggered"


def test_unmatched_key_is_recorded_not_dropped(invoker: Invoker, airflow, bucket: str, ledger_rows) -> None:
    (outcome,) = invoker.handle_object_event(event(bucket, "elsewhere/a.csv"))
    assert outcome.status == "unmatched"
    (row,) = ledger_rows()
    assert row["status"] == "unmatched" and row["flow_id"] is None
    assert airflow.calls == 0


def test_key_matching_two_flows_starts_both(invoker: Invoker, airflow, bucket: str) -> None:
    outcomes = invoker.handle_object_event(event(bucket, "in/special/x.txt"))
    assert sorted(o.flow_id for o in outcomes) == ["inv_a", "inv_b"]
    assert {o.status for o in outcomes} == {"created"}


def test_airflow_down_keeps_event_pending_until_retry(invoker: Invoker, airflow, bucket: str, ledger_rows) -> None:
    airflow.down = True
    (outcome,) = invoker.handle_object_event(event(bucket, "in/a.txt"))
    assert outcome.status == "pending"
    assert ledger_rows()[0]["status"] == "pending" and "connection refused" in ledger_rows()[0]["last_error"]
    airflow.down = False
    assert [o for o in invoker.retry_pending() if o.bucket == bucket] == []  # backoff not yet over
    time.sleep(0.3)
    retried = [o for o in invoker.retry_pending() if o.bucket == bucket]
    assert [o.status for o in retried] == ["created"]
    (row,) = ledger_rows()
    assert row["status"] == "triggered" and row["attempts"] == 2
    assert [o for o in invoker.retry_pending() if o.bucket == bucket] == []


def test_dag_not_parsed_yet_is_retried_not_failed(invoker: Invoker, airflow, bucket: str, ledger_rows) -> None:
    airflow.missing_dags.add("inv_a")
    (outcome,) = invoker.handle_object_event(event(bucket, "in/a.txt"))
    assert outcome.status == "pending" and "404" in outcome.detail
    airflow.missing_dags.clear()
    time.sleep(0.3)
    invoker.retry_pending()
    assert ledger_rows()[0]["status"] == "triggered"


def test_s3_notification_entry_point(invoker: Invoker, airflow, bucket: str) -> None:
    payload = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": "in/a+b.txt", "size": 3, "eTag": "x"}},
            }
        ]
    }
    (outcome,) = invoker.handle_s3_event(payload)
    assert outcome.status == "created" and outcome.key == "in/a b.txt"


def test_scheduled_trigger_by_flow_id_is_idempotent_per_time(invoker: Invoker, airflow) -> None:
    at = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    assert invoker.trigger_flow("inv_a", at=at).status == "created"
    assert invoker.trigger_flow("inv_a", at=at).status == "exists"
    assert ("inv_a", scheduled_dag_run_id("inv_a", at)) in airflow.runs


def test_refused_request_fails_and_a_redelivery_tries_again(
    invoker: Invoker, airflow, bucket: str, ledger_rows
) -> None:
    airflow.refuse_with = 400
    (outcome,) = invoker.handle_object_event(event(bucket, "in/a.txt"))
    assert outcome.status == "failed" and ledger_rows()[0]["status"] == "failed"
    assert [o for o in invoker.retry_pending() if o.bucket == bucket] == []  # failed is not retried by itself
    airflow.refuse_with = None
    (again,) = invoker.handle_object_event(event(bucket, "in/a.txt"))  # the sender's retry, or a replay
    assert again.status == "created" and ledger_rows()[0]["status"] == "triggered"


def test_redelivery_while_a_trigger_is_under_way_makes_no_second_call(
    invoker: Invoker, airflow, bucket: str, ledger_rows
) -> None:
    outcomes, jobs = invoker.accept([event(bucket, "in/a.txt")])  # stored, call not yet made (leased)
    assert [o.status for o in outcomes] == ["accepted"] and len(jobs) == 1
    (redelivered,) = invoker.handle_object_event(event(bucket, "in/a.txt"))
    assert redelivered.status == "pending" and airflow.calls == 0
    assert invoker.dispatch(jobs[0]).status == "created" and airflow.calls == 1
    assert ledger_rows()[0]["deliveries"] == 2
