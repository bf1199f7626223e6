"""AWS Lambda entry points: the triggered invoker (S3 notifications) and the scheduled one.

Configuration comes from the Lambda's environment through :mod:`lakehouse.config`, exactly as
for the local invoker; the Airflow password should be injected from Secrets Manager.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lakehouse.config import load_settings
from lakehouse.hooks.airflow_api import AirflowApiClient
from lakehouse.invoker.core import Invoker

__all__ = ["handler", "scheduled_handler"]


def _invoker() -> Invoker:
    settings = load_settings()
    client = AirflowApiClient(settings.airflow_url, settings.airflow_username, settings.airflow_password)
    return Invoker(settings.metadata_dsn, client)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """S3 → Lambda: one notification with one or more records."""
    outcomes = _invoker().handle_s3_event(event, source="lambda")
    return {"outcomes": [o.as_dict() for o in outcomes]}


def scheduled_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """EventBridge schedule → Lambda with ``{"flow_id": ...}``; the event's ``time`` keys the run."""
    at = datetime.fromisoformat(event["time"].replace("Z", "+00:00")) if event.get("time") else None
    return _invoker().trigger_flow(event["flow_id"], at=at, conf=event.get("conf")).as_dict()
