"""AWS Lambda entry points: the triggered invoker, the outbox retrier and the scheduled invoker.

``handler`` takes every event shape a Lambda can be wired to: S3 notifications (direct), SNS
records, SQS batches (answering ``batchItemFailures`` with the ids of messages that could not be
stored, so only those are redelivered — enable ``ReportBatchItemFailures`` on the event source
mapping) and EventBridge "Object Created" events. An event that cannot be stored raises, so the
Lambda service retries it (async invocations) or redelivers it (SQS).

Lambdas have no background thread, so pending ledger rows (Airflow was down) are retried by
``retry_handler`` on an EventBridge schedule (e.g. ``rate(1 minute)``), and ``reconcile_handler``
(e.g. ``rate(15 minutes)``) records the files no notification announced.

Configuration comes from the Lambda's environment through :mod:`lakehouse.config`, exactly as
for the local invoker; with ``LAKEHOUSE_AIRFLOW_API=mwaa`` runs are started through
``mwaa.invoke_rest_api`` with the function's IAM role, otherwise the Airflow password should be
injected from Secrets Manager.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from lakehouse.config import load_settings
from lakehouse.invoker.core import Invoker, build_invoker
from lakehouse.invoker.events import is_sqs_batch

__all__ = ["handler", "reconcile_handler", "retry_handler", "scheduled_handler"]

log = logging.getLogger(__name__)

_cached: tuple[tuple[str, ...], Invoker] | None = None


def _invoker() -> Invoker:
    """One invoker per Lambda container (its connection pool and catalogue cache outlive an
    invocation), rebuilt only if the configuration it was built from changed."""
    global _cached
    settings = load_settings()
    key = (
        settings.metadata_dsn,
        settings.airflow_api,
        settings.airflow_url,
        settings.airflow_username,
        settings.airflow_password,
        settings.mwaa_environment or "",
    )
    if _cached is None or _cached[0] != key:
        if _cached is not None:
            _cached[1].close()
        _cached = (key, build_invoker(settings))
    return _cached[1]


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """S3 / SNS / SQS / EventBridge → Lambda."""
    invoker = _invoker()
    if is_sqs_batch(event):
        outcomes, failed = invoker.handle_sqs_batch(event)
        for outcome in outcomes:
            log.info(
                "%s s3://%s/%s flow=%s run=%s %s",
                outcome.status,
                outcome.bucket,
                outcome.key,
                outcome.flow_id,
                outcome.dag_run_id,
                outcome.detail,
            )
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}
    outcomes = invoker.handle_payload(event)
    return {"outcomes": [o.as_dict() for o in outcomes]}


def retry_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled: release the files of flows that can run again, then trigger pending ledger rows
    whose backoff has passed."""
    invoker = _invoker()
    invoker.release_held()
    outcomes = invoker.retry_pending(limit=int(event.get("limit", 200)) if isinstance(event, dict) else 200)
    return {"outcomes": [o.as_dict() for o in outcomes]}


def reconcile_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled (e.g. ``rate(15 minutes)``): list the flows' prefixes and start what no S3
    notification announced; ``{"flow_id": ...}`` sweeps one flow."""
    import boto3

    from lakehouse.invoker.reconcile import reconcile

    invoker = _invoker()
    flow_id = event.get("flow_id") if isinstance(event, dict) else None
    results, jobs = reconcile(invoker, boto3.client("s3"), flow_id)
    outcomes = [invoker.dispatch(job) for job in [*jobs, *invoker.gather_batches()]]
    return {"sweeps": [r.line() for r in results], "outcomes": [o.as_dict() for o in outcomes]}


def scheduled_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """EventBridge schedule → Lambda with ``{"flow_id": ...}``; the event's ``time`` keys the run."""
    at = datetime.fromisoformat(event["time"].replace("Z", "+00:00")) if event.get("time") else None
    return _invoker().trigger_flow(event["flow_id"], at=at, conf=event.get("conf")).as_dict()
