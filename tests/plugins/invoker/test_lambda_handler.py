"""The Lambda entry points run the same invoker core, configured only by the environment."""

from __future__ import annotations

import json
import time

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.invoker import lambda_handler


@pytest.fixture
def lambda_flow(pg: Settings):
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = 'lambda_flow'")
        cur.execute(
            "INSERT INTO lakehouse.flows (flow_id, trigger_bucket, trigger_key_pattern) "
            "VALUES ('lambda_flow', 'lambda-bucket', 'drops/*.csv')"
        )
        cur.execute(
            "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) VALUES "
            "('lambda_flow', 'a', 'stage_to_presentation', '{\"sql\": \"select 1\", \"target_table\": \"p.t\"}')"
        )
    yield
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = 'lambda_flow'")
    conn.close()


def test_s3_notification_through_lambda_handler(pg: Settings, lambda_flow, fake_airflow, monkeypatch) -> None:
    url, state = fake_airflow
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_URL", url)
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PASSWORD", "pw")
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-23T10:00:00Z",
                "s3": {
                    "bucket": {"name": "lambda-bucket"},
                    "object": {"key": "drops/day+1.csv", "size": 9, "eTag": "e9"},
                },
            }
        ]
    }
    first = lambda_handler.handler(event, None)["outcomes"]
    again = lambda_handler.handler(event, None)["outcomes"]
    assert [o["status"] for o in first] == ["created"] and first[0]["key"] == "drops/day 1.csv"
    assert [o["status"] for o in again] == ["duplicate"]
    assert len(state.runs) == 1


def test_scheduled_handler_starts_flow_by_id(pg: Settings, lambda_flow, fake_airflow, monkeypatch) -> None:
    url, state = fake_airflow
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_URL", url)
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PASSWORD", "pw")
    event = {"flow_id": "lambda_flow", "time": "2026-11-23T06:00:00Z"}
    assert lambda_handler.scheduled_handler(event, None)["status"] == "created"
    assert lambda_handler.scheduled_handler(event, None)["status"] == "exists"
    assert ("lambda_flow", "invoked__lambda_flow__20261123T060000Z") in state.runs


def test_sqs_batch_through_lambda_answers_batch_item_failures(
    pg: Settings, lambda_flow, fake_airflow, monkeypatch
) -> None:
    url, state = fake_airflow
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_URL", url)
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PASSWORD", "pw")
    s3_event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-11-23T10:00:00Z",
                "s3": {
                    "bucket": {"name": "lambda-bucket"},
                    "object": {"key": "drops/sqs+1.csv", "size": 9, "eTag": "e-sqs"},
                },
            }
        ]
    }
    batch = {
        "Records": [
            {"messageId": "m-ok", "body": json.dumps(s3_event), "eventSource": "aws:sqs"},
            {"messageId": "m-dup", "body": json.dumps(s3_event), "eventSource": "aws:sqs"},
            {
                "messageId": "m-bad",
                "body": json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}),
                "eventSource": "aws:sqs",
            },
        ]
    }
    assert lambda_handler.handler(batch, None) == {"batchItemFailures": [{"itemIdentifier": "m-bad"}]}
    assert [dag_id for dag_id, _ in state.runs] == ["lambda_flow"]  # m-ok and m-dup: one run


def test_retry_handler_triggers_what_was_stored_during_an_outage(
    pg: Settings, lambda_flow, fake_airflow, monkeypatch
) -> None:
    url, state = fake_airflow
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_URL", url)
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PASSWORD", "pw")
    monkeypatch.setenv("LAKEHOUSE_INVOKER_RETRY_BASE", "0.1")
    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": "lambda-bucket"},
                    "object": {"key": "drops/late.csv", "size": 9, "eTag": "e-late"},
                },
            }
        ]
    }
    state.fail_with = 503
    assert [o["status"] for o in lambda_handler.handler(event, None)["outcomes"]] == ["pending"]
    state.fail_with = None
    time.sleep(0.3)
    retried = [o for o in lambda_handler.retry_handler({}, None)["outcomes"] if o["key"] == "drops/late.csv"]
    assert [o["status"] for o in retried] == ["created"] and len(state.runs) == 1
