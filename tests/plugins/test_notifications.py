"""A failure is recorded and sent, naming flow, task, file and error; a broken channel is recorded too."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer

import boto3
import psycopg2
import pytest
from moto import mock_aws

from lakehouse.config import Settings
from lakehouse.notifications import TaskFailure, notify_failure

FAILURE = TaskFailure(
    flow_id="invoices",
    task_id="landing_to_raw",
    dag_id="invoices",
    dag_run_id="s3__invoices__n1",
    error="ValueError: 3 of 10 lines rejected",
    file_uri="s3://landing/invoices/a.txt",
    log_url="http://127.0.0.1:8080/dags/invoices/runs/x/tasks/landing_to_raw?try_number=1",
)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    server.shutdown()


def notification_rows(settings: Settings, run_id: str) -> list[tuple]:
    conn = psycopg2.connect(settings.metadata_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT flow_id, task_id, file_uri, error, channels FROM lakehouse.notifications WHERE dag_run_id = %s",
                (run_id,),
            )
            return cur.fetchall()
    finally:
        conn.close()


def test_webhook_target_gets_flow_task_file_and_error(pg: Settings, webhook) -> None:
    url, received = webhook
    failure = replace(FAILURE, dag_run_id="s3__invoices__n1", alert_target=url)
    assert notify_failure(pg, failure) == {f"webhook:{url}": "sent"}
    (body,) = received
    assert (body["flow_id"], body["task_id"], body["file_uri"]) == ("invoices", "landing_to_raw", failure.file_uri)
    assert "3 of 10 lines rejected" in body["error"]
    ((flow, task, file_uri, _error, channels),) = notification_rows(pg, "s3__invoices__n1")
    assert (flow, task, file_uri) == ("invoices", "landing_to_raw", failure.file_uri)
    assert channels == {f"webhook:{url}": "sent"}


def test_unreachable_channel_is_recorded_not_fatal(pg: Settings) -> None:
    failure = replace(FAILURE, dag_run_id="s3__invoices__n2", alert_target="http://127.0.0.1:1/none")
    results = notify_failure(pg, failure)
    assert "ConnectionError" in results["webhook:http://127.0.0.1:1/none"]
    (row,) = notification_rows(pg, "s3__invoices__n2")
    assert "ConnectionError" in row[4]["webhook:http://127.0.0.1:1/none"]


def test_sns_target_on_aws(pg: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        sns = boto3.client("sns", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        topic = sns.create_topic(Name="lakehouse-alerts")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="alerts")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        failure = replace(FAILURE, dag_run_id="s3__invoices__n3", alert_target=topic)
        assert notify_failure(pg, failure) == {f"sns:{topic}": "sent"}
        (message,) = sqs.receive_message(QueueUrl=queue_url)["Messages"]
        text = json.loads(message["Body"])["Message"]
        assert "Flow:  invoices" in text and "Task:  landing_to_raw" in text
        assert "s3://landing/invoices/a.txt" in text and "3 of 10 lines rejected" in text
