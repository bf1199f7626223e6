"""Failure notifications naming flow, task, file and error.

The ``lakehouse.notifications`` row is always written (the local channel, queryable with SQL);
a webhook, an e-mail (through Airflow's SMTP settings) and an SNS topic (AWS) are added when the
flow's ``alert_target`` or the configuration names one. Each channel's result is kept in the row,
so a notification that could not be delivered is itself visible.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import psycopg2
import requests

from lakehouse.config import Settings

__all__ = ["TaskFailure", "notify_failure"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskFailure:
    flow_id: str
    task_id: str
    dag_id: str
    dag_run_id: str
    error: str  # the one-line reason the alert leads with
    file_uri: str | None = None
    log_url: str | None = None
    alert_target: str | None = None
    details: str = ""  # the full text (with the end of the job's output), kept in the row
    rejected_files: int = 0  # a task that went on without some files of its batch (it did not fail)

    @property
    def subject(self) -> str:
        if self.rejected_files:
            return f"[lakehouse] flow {self.flow_id}: task {self.task_id} rejected {self.rejected_files} file(s)"
        return f"[lakehouse] flow {self.flow_id} failed at task {self.task_id}"

    @property
    def text(self) -> str:
        return (
            f"Flow:  {self.flow_id} (DAG {self.dag_id}, run {self.dag_run_id})\n"
            f"Task:  {self.task_id}\n"
            f"File:  {self.file_uri or '(none: not a file-triggered run)'}\n"
            f"Error: {self.error}\n"
            f"Log:   {self.log_url or '(unknown)'}\n"
        )


def _webhook(url: str, failure: TaskFailure) -> None:
    response = requests.post(url, json={"subject": failure.subject, **asdict(failure)}, timeout=10)
    response.raise_for_status()


def _sns(topic_arn: str, failure: TaskFailure, region: str) -> None:
    import boto3

    boto3.client("sns", region_name=region).publish(
        TopicArn=topic_arn, Subject=failure.subject[:100], Message=failure.text
    )


def _email(address: str, failure: TaskFailure) -> None:
    from airflow.utils.email import send_email

    send_email(to=address, subject=failure.subject, html_content=f"<pre>{failure.text}</pre>")


def _channels(settings: Settings, failure: TaskFailure) -> list[tuple[str, Any]]:
    channels: list[tuple[str, Any]] = []
    target = failure.alert_target or ""
    if settings.alert_webhook_url:
        channels.append(
            (f"webhook:{settings.alert_webhook_url}", lambda: _webhook(settings.alert_webhook_url, failure))
        )
    if target.startswith(("http://", "https://")):
        channels.append((f"webhook:{target}", lambda: _webhook(target, failure)))
    elif target.startswith("arn:aws:sns:"):
        channels.append((f"sns:{target}", lambda: _sns(target, failure, settings.aws_region)))
    elif "@" in target:
        channels.append((f"email:{target}", lambda: _email(target, failure)))
    if settings.alert_sns_topic_arn and settings.alert_sns_topic_arn != target:
        topic = settings.alert_sns_topic_arn
        channels.append((f"sns:{topic}", lambda: _sns(topic, failure, settings.aws_region)))
    return channels


def notify_failure(settings: Settings, failure: TaskFailure) -> dict[str, str]:
    """Send on every configured channel, then record the failure and each channel's result."""
    results: dict[str, str] = {}
    for name, send in _channels(settings, failure):
        try:
            send()
            results[name] = "sent"
        except Exception as exc:  # one broken channel must not hide the others or the row
            log.warning("alert channel %s failed: %s", name, exc)
            results[name] = f"{type(exc).__name__}: {exc}"
    conn = psycopg2.connect(settings.metadata_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """INSERT INTO lakehouse.notifications (flow_id, task_id, dag_run_id, file_uri, error, error_summary,
                                                        log_url, channels)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                (
                    failure.flow_id,
                    failure.task_id,
                    failure.dag_run_id,
                    failure.file_uri,
                    (failure.details or failure.error)[:8000],
                    failure.error,
                    failure.log_url,
                    json.dumps(results),
                ),
            )
    finally:
        conn.close()
    log.error("%s\n%s", failure.subject, failure.text)
    return results
