"""Match object events to flows, write them to the ledger, start one DAG run per file version.

The ``dag_run_id`` is a hash of (flow, bucket, key, etag): the same event delivered twice, or by
two transports, names the same run, and Airflow's 409 for an existing run id counts as success.
The event is committed to the ledger *before* Airflow is called, so an outage or a crash between
the two leaves a ``pending`` row that :meth:`Invoker.retry_pending` picks up later.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg2

from lakehouse.flows import Catalogue, Flow
from lakehouse.hooks.airflow_api import AirflowApiClient, AirflowApiError, AirflowUnavailableError
from lakehouse.invoker.events import (
    IgnoredEvent,
    ObjectEvent,
    from_s3_notification,
    from_seaweedfs_webhook,
)
from lakehouse.metadata import ledger
from lakehouse.metadata.catalogue import load_catalogue

__all__ = ["TriggerOutcome", "Invoker", "file_dag_run_id", "scheduled_dag_run_id"]

log = logging.getLogger(__name__)

#: 4xx answers that mean "not yet" rather than "never": the DAG is not parsed yet.
_RETRYABLE_STATUSES = (404,)


def file_dag_run_id(flow_id: str, bucket: str, key: str, etag: str) -> str:
    digest = hashlib.sha256("\0".join((flow_id, bucket, key, etag)).encode()).hexdigest()[:24]
    return f"s3__{flow_id}__{digest}"


def scheduled_dag_run_id(flow_id: str, at: datetime) -> str:
    stamp = at.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"invoked__{flow_id}__{stamp}"


@dataclass(frozen=True)
class TriggerOutcome:
    """What became of one event for one flow: created, exists, duplicate, pending, failed, unmatched, ignored."""

    status: str
    bucket: str = ""
    key: str = ""
    flow_id: str | None = None
    dag_id: str | None = None
    dag_run_id: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Invoker:
    """The trigger logic, shared by the HTTP endpoint, the Lambda handlers and the CLI."""

    def __init__(
        self,
        metadata_dsn: str,
        airflow: AirflowApiClient,
        catalogue_loader: Callable[[], Catalogue] | None = None,
        catalogue_ttl: float = 5.0,
    ) -> None:
        self.metadata_dsn = metadata_dsn
        self.airflow = airflow
        self._load = catalogue_loader or (lambda: load_catalogue(metadata_dsn))
        self._ttl = catalogue_ttl
        self._catalogue: Catalogue | None = None
        self._loaded_at = 0.0

    def catalogue(self) -> Catalogue:
        if self._catalogue is None or time.monotonic() - self._loaded_at > self._ttl:
            self._catalogue = self._load()
            self._loaded_at = time.monotonic()
        return self._catalogue

    # -- entry points per transport ----------------------------------------------------------
    def handle_s3_event(self, payload: Mapping[str, Any], source: str = "s3") -> list[TriggerOutcome]:
        return self._handle_all(from_s3_notification(payload, source=source))

    def handle_seaweedfs_event(self, payload: Mapping[str, Any]) -> list[TriggerOutcome]:
        return self._handle_all(from_seaweedfs_webhook(payload))

    def _handle_all(self, events: list[ObjectEvent | IgnoredEvent]) -> list[TriggerOutcome]:
        outcomes: list[TriggerOutcome] = []
        for event in events:
            if isinstance(event, IgnoredEvent):
                log.info("ignored event: %s %s", event.reason, event.detail)
                outcomes.append(TriggerOutcome("ignored", detail=f"{event.reason} {event.detail}".strip()))
            else:
                outcomes.extend(self.handle_object_event(event))
        return outcomes

    # -- the core ---------------------------------------------------------------------------
    def handle_object_event(self, event: ObjectEvent) -> list[TriggerOutcome]:
        flows = self.catalogue().flows_for_object(event.bucket, event.key)
        conn = psycopg2.connect(self.metadata_dsn)
        try:
            if not flows:
                with conn:
                    ledger.record_event(conn, **self._row_fields(event), flow_id=None, dag_id=None, dag_run_id=None)
                log.warning("no flow matches s3://%s/%s; recorded as unmatched", event.bucket, event.key)
                return [TriggerOutcome("unmatched", event.bucket, event.key, detail="no flow matches this key")]
            return [self._trigger_for_flow(conn, event, flow) for flow in flows]
        finally:
            conn.close()

    @staticmethod
    def _row_fields(event: ObjectEvent) -> dict[str, Any]:
        return {
            "bucket": event.bucket,
            "key": event.key,
            "etag": event.etag,
            "size": event.size,
            "event_time": event.event_time,
            "source": event.source,
        }

    def _trigger_for_flow(self, conn: Any, event: ObjectEvent, flow: Flow) -> TriggerOutcome:
        dag_id = flow.effective_dag_id
        run_id = file_dag_run_id(flow.flow_id, event.bucket, event.key, event.etag)
        with conn:  # committed before Airflow is called: the ledger is the outbox
            row = ledger.record_event(
                conn, **self._row_fields(event), flow_id=flow.flow_id, dag_id=dag_id, dag_run_id=run_id
            )
        base = TriggerOutcome("", event.bucket, event.key, flow.flow_id, dag_id, run_id)
        if row.status == "triggered":
            return _with(base, "duplicate", f"already triggered; delivery #{row.deliveries}")
        conf = {
            "flow_id": flow.flow_id,
            "file": {
                "bucket": event.bucket,
                "key": event.key,
                "etag": event.etag,
                "size": event.size,
                "uri": f"s3://{event.bucket}/{event.key}",
            },
            "event_time": event.event_time.isoformat() if event.event_time else None,
            "ledger_id": row.ledger_id,
        }
        return self._trigger(conn, row.ledger_id, base, conf)

    def _trigger(self, conn: Any, ledger_id: int, base: TriggerOutcome, conf: dict[str, Any]) -> TriggerOutcome:
        assert base.dag_id and base.dag_run_id
        try:
            result = self.airflow.trigger_dag_run(base.dag_id, base.dag_run_id, conf)
        except AirflowUnavailableError as exc:
            with conn:
                ledger.mark_attempt_failed(conn, ledger_id, str(exc), final=False)
            return _with(base, "pending", f"Airflow unavailable, will retry: {exc}")
        except AirflowApiError as exc:
            final = exc.status not in _RETRYABLE_STATUSES
            with conn:
                ledger.mark_attempt_failed(conn, ledger_id, str(exc), final=final)
            return _with(base, "failed" if final else "pending", str(exc))
        with conn:
            ledger.mark_triggered(conn, ledger_id)
        return _with(base, result)

    def retry_pending(self, limit: int = 100) -> list[TriggerOutcome]:
        """Trigger ledger rows left ``pending`` (Airflow was down, or the DAG not parsed yet)."""
        conn = psycopg2.connect(self.metadata_dsn)
        outcomes = []
        try:
            with conn:
                rows = ledger.pending_rows(conn, limit)
            for row in rows:
                base = TriggerOutcome(
                    "", row["bucket"], row["object_key"], row["flow_id"], row["dag_id"], row["dag_run_id"]
                )
                conf = {
                    "flow_id": row["flow_id"],
                    "file": {
                        "bucket": row["bucket"],
                        "key": row["object_key"],
                        "etag": row["etag"],
                        "size": row["size"],
                        "uri": f"s3://{row['bucket']}/{row['object_key']}",
                    },
                    "event_time": row["event_time"].isoformat() if row["event_time"] else None,
                    "ledger_id": row["ledger_id"],
                }
                outcomes.append(self._trigger(conn, row["ledger_id"], base, conf))
        finally:
            conn.close()
        return outcomes

    def trigger_flow(self, flow_id: str, at: datetime | None = None, conf: dict[str, Any] | None = None) -> TriggerOutcome:
        """The scheduled invoker: start a flow by id. ``at`` (the schedule's time) makes retries idempotent."""
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", flow_id):
            raise ValueError(f"invalid flow_id {flow_id!r}")
        flow = self.catalogue().flows.get(flow_id)
        if flow is None:
            raise LookupError(f"no active flow {flow_id!r}")
        run_id = scheduled_dag_run_id(flow_id, at or datetime.now(timezone.utc))
        result = self.airflow.trigger_dag_run(flow.effective_dag_id, run_id, {"flow_id": flow_id, **(conf or {})})
        return TriggerOutcome(result, flow_id=flow_id, dag_id=flow.effective_dag_id, dag_run_id=run_id)


def _with(base: TriggerOutcome, status: str, detail: str = "") -> TriggerOutcome:
    return TriggerOutcome(status, base.bucket, base.key, base.flow_id, base.dag_id, base.dag_run_id, detail)
