"""The Lambda entry points run the same invoker core, configured only by the environment."""

from __future__ import annotations

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.invoker import lambda_handler


@pytest.fixture
def lambda_flow(pg: Settings):
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = 'lambda_flow'")
        cur.execute("INSERT INTO lakehouse.flows (flow_id, trigger_bucket, trigger_key_pattern) "
                    "VALUES ('lambda_flow', 'lambda-bucket', 'drops/*.csv')")
        cur.execute("INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) VALUES "
                    "('lambda_flow', 'a', 'stage_to_presentation', '{\"sql\": \"select 1\", \"target_table\": \"p.t\"}')")
    yield
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = 'lambda_flow'")
    conn.close()


def test_s3_notification_through_lambda_handler(pg: Settings, lambda_flow, fake_airflow, monkeypatch) -> None:
    url, state = fake_airflow
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_URL", url)
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PASSWORD", "pw")
    event = {"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-11-23T10:00:00Z",
                          "s3": {"bucket": {"name": "lambda-bucket"},
                                 "object": {"key": "drops/day+1.csv", "size": 9, "eTag": "e9"}}}]}
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
