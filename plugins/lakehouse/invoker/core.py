"""Match object events to flows, write them to the ledger, start one DAG run per file version.

The ``dag_run_id`` is a hash of (flow, bucket, key, etag or version id): the same event delivered
twice, or by two transports, names the same run, and Airflow's 409 for an existing run id counts
as success. The event is committed to the ledger *before* Airflow is called, so an outage or a
crash between the two leaves a ``pending`` row that :meth:`Invoker.retry_pending` picks up later,
with exponential backoff. Callers answer their event source only after the row is stored.

Two ways to use it, one ledger: :meth:`Invoker.accept` stores the events and returns the trigger
calls still to make as :class:`TriggerJob` s, which the HTTP server hands to its dispatcher threads
and answers at once (the source waits for Postgres, never for Airflow); the ``handle_*`` methods
(Lambda, CLI, tests) accept and dispatch inline. Either way a job that is lost with its process
is a leased ``pending`` row that the retry loop claims once the lease has run out.

Matching: every active flow whose bucket equals the event's and whose pattern matches the key is
started (glob = ``fnmatch`` on the whole key, regex = full match). A flow with
``trigger_multi_match = false`` is started only when it is the only match; otherwise it gets a
``skipped`` ledger row naming the flows that won.

A file for a flow that cannot run now (its rows are invalid, so its DAG is a placeholder, or it
was deactivated) is held as ``flow_invalid`` with the reason instead of being sent into 404s or a
run that would fail; :meth:`Invoker.release_held` lets it go once Airflow has the fixed DAG.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal, Protocol

import psycopg2
from psycopg2.extensions import connection as Connection

from lakehouse.flows import INVALID_FLOW_TAG, Catalogue, Flow, validate_catalogue
from lakehouse.hooks.airflow_api import AirflowApiError, AirflowUnavailableError
from lakehouse.invoker.events import (
    IgnoredEvent,
    ObjectEvent,
    decode_payload,
    decode_sqs_batch,
    from_s3_notification,
    from_seaweedfs_webhook,
)
from lakehouse.metadata import batches, ledger
from lakehouse.metadata.catalogue import fetch_catalogue_document

__all__ = [
    "ConnectionPool",
    "DagRunTrigger",
    "Invoker",
    "TriggerCatalogue",
    "TriggerJob",
    "TriggerOutcome",
    "build_invoker",
    "file_dag_run_id",
    "load_trigger_catalogue",
    "scheduled_dag_run_id",
]

log = logging.getLogger(__name__)

#: 4xx answers that mean "not yet" rather than "never": the DAG is not parsed yet (404), the
#: credentials are wrong or expired (401/403: an operator fixes the secret, the outbox then drains),
#: throttled (429). Anything else (400, 422: Airflow refuses this request) is final: ``failed``.
_RETRYABLE_STATUSES = (401, 403, 404, 429)


class DagRunTrigger(Protocol):
    """What the invoker needs from Airflow: the REST client and the MWAA client both provide it."""

    def trigger_dag_run(
        self, dag_id: str, dag_run_id: str, conf: dict[str, Any] | None = None
    ) -> Literal["created", "exists"]: ...

    def get_dag(self, dag_id: str) -> dict[str, Any] | None: ...


def file_dag_run_id(flow_id: str, bucket: str, key: str, etag: str, run_suffix: str = "") -> str:
    digest = hashlib.sha256("\0".join((flow_id, bucket, key, etag)).encode()).hexdigest()[:24]
    return f"s3__{flow_id}__{digest}" + (f"__{run_suffix}" if run_suffix else "")


def scheduled_dag_run_id(flow_id: str, at: datetime) -> str:
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"invoked__{flow_id}__{stamp}"


@dataclass(frozen=True)
class TriggerOutcome:
    """What became of one event for one flow.

    ``created`` / ``exists`` (run started or already there), ``accepted`` (stored, the trigger call
    is queued: the HTTP server's answer), ``duplicate`` (ledger says triggered), ``pending``
    (stored, will be retried), ``failed`` (Airflow refused for good), ``flow_invalid`` (held until
    the flow can run), ``unmatched``, ``skipped`` (multi-match opt-out), ``ignored`` (test event,
    folder, delete ...), ``not_matching`` (replay: the object does not match the flow).
    """

    status: str
    bucket: str = ""
    key: str = ""
    flow_id: str | None = None
    dag_id: str | None = None
    dag_run_id: str | None = None
    detail: str = ""
    ledger_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TriggerCatalogue:
    """The flows as the invoker sees them: the catalogue plus who opted out of multi-match."""

    catalogue: Catalogue
    single_match_only: frozenset[str] = field(default_factory=frozenset)

    @cached_property
    def invalid(self) -> dict[str, str]:
        """flow_id -> its problems on one line, for the flows whose DAG is a placeholder: the same
        validation the DAG factory runs, so both sides agree on which flows can run."""
        return {
            flow_id: "; ".join(f"{p.field}: {p.message}" for p in found)
            for flow_id, found in validate_catalogue(self.catalogue).items()
            if found
        }

    def flows_to_start(self, bucket: str, key: str) -> tuple[list[Flow], list[tuple[Flow, str]]]:
        """(flows to start, [(flow skipped, why)]) for one object."""
        matched = self.catalogue.flows_for_object(bucket, key)
        if len(matched) <= 1:
            return matched, []
        start = [f for f in matched if f.flow_id not in self.single_match_only]
        others = ", ".join(sorted(f.flow_id for f in matched))
        skipped = [
            (f, f"trigger_multi_match=false and the key also matches: {others}")
            for f in matched
            if f.flow_id in self.single_match_only
        ]
        return start, skipped


def load_trigger_catalogue(dsn: str) -> TriggerCatalogue:
    """One query (the DAG factory's catalogue query); ``trigger_multi_match`` read from the same rows."""
    document = fetch_catalogue_document(dsn)
    solo = frozenset(f["flow_id"] for f in document.get("flows") or () if f.get("trigger_multi_match") is False)
    return TriggerCatalogue(Catalogue.from_document(document), solo)


class ConnectionPool:
    """A blocking pool of Postgres connections shared by the webhook's threads.

    Connecting costs a TCP handshake plus SCRAM authentication (several ms) — more than the two
    small statements an event needs — so connections are reused, at most ``size`` at once (a
    caller beyond that waits for one). A connection that errored is discarded.
    """

    def __init__(self, dsn: str, size: int) -> None:
        if size < 1:
            raise ValueError(f"a connection pool needs at least 1 connection, got {size}")
        self.dsn = dsn
        self.size = size
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        self._slots.acquire()
        conn: Connection | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = psycopg2.connect(self.dsn)
            if conn.closed:
                conn = psycopg2.connect(self.dsn)
            yield conn
            if conn.closed or conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                conn.close()
            else:
                self._idle.put(conn)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        finally:
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


@dataclass(frozen=True)
class TriggerJob:
    """One trigger call still to make: a stored ``pending`` ledger row, or a micro-batch of a flow's
    files (``batch_id``), leased to whoever holds this."""

    ledger_id: int | None
    outcome: TriggerOutcome  # bucket, key, flow, dag and run id; status filled in by the call
    conf: dict[str, Any]
    batch_id: int | None = None


class Invoker:
    """The trigger logic, shared by the HTTP endpoint, the Lambda handlers and the CLI."""

    def __init__(
        self,
        metadata_dsn: str,
        airflow: DagRunTrigger,
        catalogue_loader: Callable[[], Catalogue | TriggerCatalogue] | None = None,
        catalogue_ttl: float = 5.0,
        pool_size: int = 8,
        retry_base: float = 2.0,
        retry_max: float = 300.0,
        lease_seconds: float = ledger.LIVE_LEASE_SECONDS,
        lake_uri: str | None = None,
    ) -> None:
        self.metadata_dsn = metadata_dsn
        self.lake_uri = lake_uri  # where a micro-batch's manifest is written
        self.airflow = airflow
        self._load = catalogue_loader or (lambda: load_trigger_catalogue(metadata_dsn))
        self._ttl = catalogue_ttl
        self._rules: TriggerCatalogue | None = None
        self._loaded_at = 0.0
        self._catalogue_lock = threading.Lock()
        self.pool = ConnectionPool(metadata_dsn, pool_size)
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.lease_seconds = lease_seconds
        # Circuit breaker: after Airflow was found down, calls are skipped (rows deferred) until
        # then, so an outage costs one failed call per period instead of one per event; the
        # period doubles with every consecutive failure, like a row's own backoff.
        self._breaker_lock = threading.Lock()
        self._airflow_down_until = 0.0
        self._down_streak = 0
        # Flows seen invalid whose fixed DAG Airflow has not been seen to load yet: their files are
        # held until it has, or a run would start on the placeholder DAG and fail.
        self._unconfirmed: set[str] = set()
        # Batches of each flow handed out and not yet sent. While one is, only full batches are
        # gathered: a flood then accumulates into large batches instead of one run per trigger
        # call's worth of files. ``on_batch_sent`` lets a batcher gather again at once.
        self._in_flight: dict[str, int] = {}
        self._in_flight_lock = threading.Lock()
        self.on_batch_sent: Callable[[], None] | None = None

    def rules(self) -> TriggerCatalogue:
        """The flows, re-read at most every ``catalogue_ttl`` seconds (0: on every event)."""
        with self._catalogue_lock:
            if self._rules is None or time.monotonic() - self._loaded_at >= self._ttl:
                loaded = self._load()
                self._rules = loaded if isinstance(loaded, TriggerCatalogue) else TriggerCatalogue(loaded)
                self._loaded_at = time.monotonic()
                self._unconfirmed.update(self._rules.invalid)
            return self._rules

    def hold_reason(self, flow_id: str) -> str | None:
        """Why files of this flow must wait now, or None when it can run."""
        rules = self.rules()
        if flow_id in rules.invalid:
            return f"flow {flow_id!r} is invalid ({rules.invalid[flow_id]}); the file starts once the flow is fixed"
        if flow_id not in rules.catalogue.flows:
            return (
                f"flow {flow_id!r} is not active (deleted, or is_active = false); the file starts if it is active again"
            )
        if flow_id in self._unconfirmed:
            return f"flow {flow_id!r} was fixed; waiting for Airflow to load its DAG"
        return None

    def catalogue(self) -> Catalogue:
        return self.rules().catalogue

    def close(self) -> None:
        self.pool.close()

    @property
    def airflow_down(self) -> bool:
        """True while the circuit breaker is open (Airflow failed moments ago)."""
        return time.monotonic() < self._airflow_down_until

    # -- entry points per transport (store, then trigger inline) ----------------------------------
    def handle_s3_event(self, payload: Mapping[str, Any], source: str = "s3") -> list[TriggerOutcome]:
        return self.handle_events(from_s3_notification(payload, source=source))

    def handle_seaweedfs_event(self, payload: Mapping[str, Any]) -> list[TriggerOutcome]:
        return self.handle_events(from_seaweedfs_webhook(payload))

    def handle_payload(self, payload: Mapping[str, Any]) -> list[TriggerOutcome]:
        """Any supported shape (S3, SNS, SQS, EventBridge, SeaweedFS), recognised by its fields."""
        return self.handle_events(decode_payload(payload))

    def handle_sqs_batch(self, payload: Mapping[str, Any]) -> tuple[list[TriggerOutcome], list[str]]:
        """SQS → Lambda: (outcomes, message ids that could not be stored).

        A message counts as done once its events are in the ledger — whatever Airflow said, since
        the ledger retries. A message that cannot be decoded or stored is reported back so that
        SQS redelivers it (and, after the queue's maxReceiveCount, moves it to its dead-letter
        queue): nothing is acknowledged that is not written down.
        """
        outcomes: list[TriggerOutcome] = []
        failed: list[str] = []
        for message in decode_sqs_batch(payload):
            if message.error:
                log.error("SQS message %s refused: %s", message.message_id, message.error)
                failed.append(message.message_id)
                continue
            try:
                outcomes.extend(self.handle_events(message.events))
            except Exception:
                log.exception("SQS message %s not stored; reported for redelivery", message.message_id)
                failed.append(message.message_id)
        return outcomes, failed

    def handle_object_event(self, event: ObjectEvent) -> list[TriggerOutcome]:
        """Store one object event and make its trigger calls now (the synchronous path)."""
        return self.handle_events([event])

    def handle_events(self, events: Iterable[ObjectEvent | IgnoredEvent]) -> list[TriggerOutcome]:
        """Store decoded events, then make their trigger calls in this thread (Lambda, CLI)."""
        outcomes, jobs = self.accept(events)
        results = {job.ledger_id: self.dispatch(job) for job in jobs}
        if any(o.status == "queued" for o in outcomes):  # no batcher thread here: gather now
            for job in self.gather_batches():
                self.dispatch(job)
        return [results.get(o.ledger_id, o) if o.status == "accepted" and o.ledger_id else o for o in outcomes]

    # -- the core -----------------------------------------------------------------------------
    def accept(self, events: Iterable[ObjectEvent | IgnoredEvent]) -> tuple[list[TriggerOutcome], list[TriggerJob]]:
        """Write every event to the ledger (committed) and return what to call Airflow for.

        Outcomes are final for ignored, unmatched, skipped and duplicate events; a stored event
        that needs a trigger call is ``accepted`` and has a :class:`TriggerJob`. Raises (nothing
        acknowledged) when the ledger cannot be written.
        """
        outcomes: list[TriggerOutcome] = []
        jobs: list[TriggerJob] = []
        events = list(events)
        if not any(isinstance(e, ObjectEvent) for e in events):  # nothing to store: no connection
            return [self._ignored(e) for e in events if isinstance(e, IgnoredEvent)], jobs
        rules = self.rules()
        with self.pool.connection() as conn:
            for event in events:
                if isinstance(event, IgnoredEvent):
                    outcomes.append(self._ignored(event))
                    continue
                start, skipped = rules.flows_to_start(event.bucket, event.key)
                for flow, why in skipped:
                    with conn:
                        ledger.record_event(
                            conn,
                            **self._row_fields(event),
                            flow_id=flow.flow_id,
                            dag_id=flow.effective_dag_id,
                            dag_run_id=None,
                            status="skipped",
                            last_error=why,
                        )
                    log.info("s3://%s/%s: flow %s skipped (%s)", event.bucket, event.key, flow.flow_id, why)
                    outcomes.append(
                        TriggerOutcome(
                            "skipped", event.bucket, event.key, flow.flow_id, flow.effective_dag_id, None, why
                        )
                    )
                if not start and not skipped:
                    with conn:
                        ledger.record_event(conn, **self._row_fields(event), flow_id=None, dag_id=None, dag_run_id=None)
                    log.warning("no flow matches s3://%s/%s; recorded as unmatched", event.bucket, event.key)
                    outcomes.append(
                        TriggerOutcome("unmatched", event.bucket, event.key, detail="no flow matches this key")
                    )
                for flow in start:
                    outcome, job = self._store_for_flow(conn, event, flow)
                    outcomes.append(outcome)
                    if job is not None:
                        jobs.append(job)
        return outcomes, jobs

    @staticmethod
    def _ignored(event: IgnoredEvent) -> TriggerOutcome:
        log.info("ignored event: %s %s", event.reason, event.detail)
        return TriggerOutcome("ignored", detail=f"{event.reason} {event.detail}".strip())

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

    @staticmethod
    def _conf(
        flow_id: str, bucket: str, key: str, etag: str, size: int | None, event_time: datetime | None, ledger_id: int
    ) -> dict[str, Any]:
        return {
            "flow_id": flow_id,
            "file": {"bucket": bucket, "key": key, "etag": etag, "size": size, "uri": f"s3://{bucket}/{key}"},
            "event_time": event_time.isoformat() if event_time else None,
            "ledger_id": ledger_id,
        }

    def _store_for_flow(
        self, conn: Connection, event: ObjectEvent, flow: Flow, run_suffix: str = "", commit: bool = True
    ) -> tuple[TriggerOutcome, TriggerJob | None]:
        """Store one event for one flow. ``commit=False``: in the caller's transaction (a sweep
        stores a page of found files at once); the caller commits before any trigger call."""
        dag_id = flow.effective_dag_id
        transaction = conn if commit else nullcontext()
        if flow.batched:  # gathered into the flow's next micro-batch, which names the run
            with transaction:
                row = ledger.record_event(
                    conn,
                    **self._row_fields(event),
                    flow_id=flow.flow_id,
                    dag_id=dag_id,
                    dag_run_id=None,
                    status="queued",
                    run_suffix=run_suffix,
                )
            base = TriggerOutcome(
                "", event.bucket, event.key, flow.flow_id, dag_id, row.dag_run_id, ledger_id=row.ledger_id
            )
            if row.inserted:
                return _with(base, "queued", "stored; gathered into the flow's next batch"), None
            return _with(
                base,
                "duplicate" if row.status == "triggered" else row.status,
                f"already stored; delivery #{row.deliveries}",
            ), None
        run_id = file_dag_run_id(flow.flow_id, event.bucket, event.key, event.etag, run_suffix)
        with transaction:  # committed before Airflow is called: the ledger is the outbox
            row = ledger.record_event(
                conn,
                **self._row_fields(event),
                flow_id=flow.flow_id,
                dag_id=dag_id,
                dag_run_id=run_id,
                run_suffix=run_suffix,
                lease_seconds=self.lease_seconds,
            )
        base = TriggerOutcome("", event.bucket, event.key, flow.flow_id, dag_id, run_id, ledger_id=row.ledger_id)
        if row.status == "triggered":
            return _with(base, "duplicate", f"already triggered; delivery #{row.deliveries}"), None
        if row.status == "skipped":
            return _with(base, "skipped", "recorded as skipped for this file version"), None
        if not row.inserted:  # a redelivery of a pending or failed row: call only if nobody else is
            with transaction:
                claimed = ledger.claim_row(conn, row.ledger_id, self.lease_seconds)
            if not claimed:
                return _with(
                    base, "pending", f"already stored, trigger under way or scheduled; delivery #{row.deliveries}"
                ), None
        conf = self._conf(
            flow.flow_id, event.bucket, event.key, event.etag, event.size, event.event_time, row.ledger_id
        )
        return _with(base, "accepted", "stored; trigger queued"), TriggerJob(row.ledger_id, base, conf)

    def dispatch(self, job: TriggerJob, probe: bool = False) -> TriggerOutcome:
        """Make one trigger call and record its result, for a file or a micro-batch. Thread-safe;
        holds no connection while calling.

        While the circuit breaker is open the job is only deferred, unless ``probe``: a probe calls
        anyway, and its answer closes the breaker or keeps it open for longer.
        """
        if job.batch_id is None:
            return self._dispatch(job, probe)
        try:
            return self._dispatch(job, probe)
        finally:
            self._batch_sent(job.outcome.flow_id or "")

    def _dispatch(self, job: TriggerJob, probe: bool) -> TriggerOutcome:
        base = job.outcome
        assert base.dag_id and base.dag_run_id and base.flow_id
        record = _BatchRecord(job.batch_id) if job.batch_id is not None else _RowRecord(job.ledger_id or 0)
        reason = self.hold_reason(base.flow_id)
        if reason is not None:
            with self.pool.connection() as conn, conn:
                record.hold(conn, reason)
            log.warning("%s held: %s", _what(base, job), reason)
            return _with(base, "flow_invalid", reason)
        if self.airflow_down and not probe:
            delay = max(0.0, self._airflow_down_until - time.monotonic())
            with self.pool.connection() as conn, conn:
                record.defer(conn, "Airflow was unavailable moments ago; queued", delay)
            return _with(base, "pending", "Airflow unavailable; stored for retry")
        conf = self._batch_conf(job) if job.batch_id is not None else job.conf
        try:
            result = self.airflow.trigger_dag_run(base.dag_id, base.dag_run_id, conf)
        except AirflowUnavailableError as exc:
            with self._breaker_lock:
                self._down_streak += 1
                period = ledger.backoff_seconds(self._down_streak, self.retry_base, self.retry_max)
                self._airflow_down_until = max(self._airflow_down_until, time.monotonic() + period)
            with self.pool.connection() as conn, conn:
                record.failed(conn, str(exc), False, self.retry_base, self.retry_max)
            return _with(base, "pending", f"Airflow unavailable, will retry: {exc}")
        except AirflowApiError as exc:
            final = exc.status not in _RETRYABLE_STATUSES
            with self.pool.connection() as conn, conn:
                record.failed(conn, str(exc), final, self.retry_base, self.retry_max)
            return _with(base, "failed" if final else "pending", str(exc))
        with self._breaker_lock:
            self._down_streak = 0
            self._airflow_down_until = 0.0
        with self.pool.connection() as conn, conn:
            record.triggered(conn)
        return _with(base, result)

    # -- micro-batches ------------------------------------------------------------------------
    def gather_batches(self) -> list[TriggerJob]:
        """Gather every batched flow's queued files into batches (stored and assigned before any
        call to Airflow) and return their trigger calls. Files of a flow that cannot run now are
        held with the reason instead."""
        jobs: list[TriggerJob] = []
        with self.pool.connection() as conn:
            with conn:
                flow_ids = batches.flows_with_queued_files(conn)
            for flow_id in flow_ids:
                flow = self.rules().catalogue.flows.get(flow_id)
                reason = self.hold_reason(flow_id)
                if flow is None or reason is not None:
                    with conn:
                        ledger.hold_queued(conn, flow_id, reason or f"flow {flow_id!r} is not active")
                    continue
                while True:
                    with self._in_flight_lock:
                        busy = self._in_flight.get(flow_id, 0) > 0  # one being sent: full batches only
                    with conn:  # one transaction per batch: gathered, assigned and stored together
                        batch = batches.gather_batch(
                            conn,
                            flow_id,
                            flow.effective_dag_id,
                            flow.max_files_per_run,
                            flow.batch_window_seconds,
                            self.lease_seconds,
                            full_only=busy,
                        )
                    if batch is None:
                        break
                    jobs.append(self._batch_job(batch))
        return jobs

    def claim_due_batches(self, limit: int = 100) -> list[TriggerJob]:
        """Lease stored batches whose backoff has passed (or whose gatherer died) to the caller."""
        with self.pool.connection() as conn, conn:
            return [self._batch_job(b) for b in batches.claim_due_batches(conn, limit, self.lease_seconds)]

    def _batch_job(self, batch: batches.GatheredBatch) -> TriggerJob:
        """The trigger call of a stored batch, counted in flight until :meth:`dispatch` ends it."""
        with self._in_flight_lock:
            self._in_flight[batch.flow_id] = self._in_flight.get(batch.flow_id, 0) + 1
        outcome = TriggerOutcome(
            "",
            flow_id=batch.flow_id,
            dag_id=batch.dag_id,
            dag_run_id=batch.dag_run_id,
            detail=f"batch {batch.batch_id}",
        )
        return TriggerJob(
            None, outcome, {"manifest": batch.manifest_uri} if batch.manifest_uri else {}, batch_id=batch.batch_id
        )

    def _batch_sent(self, flow_id: str) -> None:
        with self._in_flight_lock:
            self._in_flight[flow_id] = max(0, self._in_flight.get(flow_id, 0) - 1)
        if self.on_batch_sent is not None:
            self.on_batch_sent()

    def _batch_conf(self, job: TriggerJob) -> dict[str, Any]:
        """The run's conf: the batch and its manifest in the lake (written now if it is not yet:
        the same files give the same document, so a retry rewrites it unchanged)."""
        assert job.batch_id is not None and job.outcome.flow_id and job.outcome.dag_run_id
        with self.pool.connection() as conn, conn:
            files = batches.batch_files(conn, job.batch_id)
        manifest = job.conf.get("manifest")
        if not manifest:
            if not self.lake_uri:
                raise RuntimeError("a batched flow needs the lake (LAKEHOUSE_LAKE_URI) for its manifests")
            from lakehouse.hooks.lake import write_json

            manifest = write_json(
                self.lake_uri,
                f"_manifests/{job.outcome.flow_id}/{job.outcome.dag_run_id}.json",
                {
                    "flow_id": job.outcome.flow_id,
                    "batch_id": job.batch_id,
                    "dag_run_id": job.outcome.dag_run_id,
                    "files": [f.as_dict() for f in files],
                },
            )
            with self.pool.connection() as conn, conn:
                batches.set_manifest(conn, job.batch_id, manifest)
        return {
            "flow_id": job.outcome.flow_id,
            "batch": {"batch_id": job.batch_id, "files": len(files), "manifest": manifest},
            "file": files[0].as_dict() if len(files) == 1 else None,
        }

    def claim_due(self, limit: int = 100) -> list[TriggerJob]:
        """Lease pending rows whose backoff has passed (or whose live lease ran out) to the caller."""
        with self.pool.connection() as conn, conn:
            rows = ledger.claim_due_rows(conn, limit, lease_seconds=self.lease_seconds)
        return [
            TriggerJob(
                row["ledger_id"],
                TriggerOutcome(
                    "",
                    row["bucket"],
                    row["object_key"],
                    row["flow_id"],
                    row["dag_id"],
                    row["dag_run_id"],
                    ledger_id=row["ledger_id"],
                ),
                self._conf(
                    row["flow_id"],
                    row["bucket"],
                    row["object_key"],
                    row["etag"],
                    row["size"],
                    row["event_time"],
                    row["ledger_id"],
                ),
            )
            for row in rows
        ]

    def release_held(self) -> dict[str, int]:
        """Let the files of flows that can run again go (``flow_invalid`` → ``pending``, due now);
        returns the rows released per flow. A flow counts as runnable once its rows are valid and
        active *and* Airflow serves its real DAG, not the placeholder: the dag-processor loads a
        fixed flow some seconds after its rows change."""
        with self.pool.connection() as conn, conn:
            held = ledger.held_flows(conn)
        released: dict[str, int] = {}
        for flow_id in sorted(set(held) | self._unconfirmed):
            flow = self.rules().catalogue.flows.get(flow_id)
            if flow is not None and flow_id not in self.rules().invalid and self._dag_loaded(flow.effective_dag_id):
                self._unconfirmed.discard(flow_id)
            if flow_id not in held:
                continue
            with self.pool.connection() as conn, conn:
                reason = self.hold_reason(flow_id)
                if reason is None:
                    batched = flow is not None and flow.batched
                    released[flow_id] = ledger.release_held_rows(conn, flow_id, batched) + batches.release_held_batches(
                        conn, flow_id
                    )
                    log.info("flow %s can run again: %d held file(s) or batch(es) released", flow_id, released[flow_id])
                else:
                    ledger.update_hold_reason(conn, flow_id, reason)
        return released

    def _dag_loaded(self, dag_id: str) -> bool:
        """Airflow serves this DAG and it is the flow's own (not the invalid flow's placeholder)."""
        try:
            dag = self.airflow.get_dag(dag_id)
        except (AirflowUnavailableError, AirflowApiError) as exc:
            log.info("cannot ask Airflow for DAG %s yet: %s", dag_id, exc)
            return False
        if dag is None or dag.get("is_stale"):
            return False
        tags = {t.get("name") if isinstance(t, dict) else t for t in dag.get("tags") or ()}
        return INVALID_FLOW_TAG not in tags

    def retry_pending(self, limit: int = 100) -> list[TriggerOutcome]:
        """Trigger ledger rows left ``pending`` whose backoff has passed (Airflow was down, DAG not parsed).

        The first row is a probe (called even while the breaker is open): an explicit retry, e.g.
        the scheduled Lambda, always asks Airflow at least once.
        """
        jobs = [*self.claim_due(limit), *self.gather_batches(), *self.claim_due_batches(limit)]
        return [self.dispatch(job, probe=index == 0) for index, job in enumerate(jobs)]

    def replay(self, flow_id: str, objects: Iterable[ObjectEvent], force: bool = False) -> list[TriggerOutcome]:
        """Send existing objects to one flow again (the backfill after fixing a flow).

        Without ``force`` the exactly-once rule holds: a file version this flow already ran is a
        ``duplicate``. With ``force`` every object gets a NEW run, its id suffixed ``force<UTC time>``,
        and its own ledger row — the earlier run and its row stay as they were.
        """
        flow = self.catalogue().flows.get(flow_id)
        if flow is None:
            raise LookupError(f"no active flow {flow_id!r}")
        suffix = "force" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") if force else ""
        outcomes = []
        for event in objects:
            if not flow.matches(event.bucket, event.key):
                outcomes.append(
                    TriggerOutcome(
                        "not_matching",
                        event.bucket,
                        event.key,
                        flow_id,
                        detail=f"key does not match {flow.trigger_key_pattern!r}",
                    )
                )
                continue
            with self.pool.connection() as conn:
                outcome, job = self._store_for_flow(conn, event, flow, run_suffix=suffix)
            outcomes.append(self.dispatch(job) if job is not None else outcome)
        if flow.batched:
            for job in self.gather_batches():
                self.dispatch(job)
        return outcomes

    def trigger_flow(
        self, flow_id: str, at: datetime | None = None, conf: dict[str, Any] | None = None
    ) -> TriggerOutcome:
        """The scheduled invoker: start a flow by id. ``at`` (the schedule's time) makes retries idempotent."""
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", flow_id):
            raise ValueError(f"invalid flow_id {flow_id!r}")
        flow = self.catalogue().flows.get(flow_id)
        if flow is None:
            raise LookupError(f"no active flow {flow_id!r}")
        if (reason := self.hold_reason(flow_id)) is not None:
            raise LookupError(f"not started: {reason}")
        run_id = scheduled_dag_run_id(flow_id, at or datetime.now(UTC))
        result = self.airflow.trigger_dag_run(flow.effective_dag_id, run_id, {"flow_id": flow_id, **(conf or {})})
        return TriggerOutcome(result, flow_id=flow_id, dag_id=flow.effective_dag_id, dag_run_id=run_id)


def _with(base: TriggerOutcome, status: str, detail: str = "") -> TriggerOutcome:
    return TriggerOutcome(
        status, base.bucket, base.key, base.flow_id, base.dag_id, base.dag_run_id, detail, base.ledger_id
    )


def build_invoker(settings: Any) -> Invoker:
    """The invoker as configured: REST client (URL + login) or MWAA (``LAKEHOUSE_AIRFLOW_API=mwaa``)."""
    airflow: DagRunTrigger
    if settings.airflow_api == "mwaa":
        from lakehouse.hooks.mwaa import MwaaTriggerClient

        airflow = MwaaTriggerClient(settings.mwaa_environment or "", settings.aws_region)
    else:
        from lakehouse.hooks.airflow_api import AirflowApiClient

        airflow = AirflowApiClient(settings.airflow_url, settings.airflow_username, settings.airflow_password)
    return Invoker(
        settings.metadata_dsn,
        airflow,
        catalogue_ttl=settings.invoker_catalogue_ttl,
        pool_size=settings.invoker_db_pool,
        retry_base=settings.invoker_retry_base,
        retry_max=settings.invoker_retry_max,
        lease_seconds=settings.invoker_lease,
        lake_uri=settings.lake_uri,
    )


def _what(base: TriggerOutcome, job: TriggerJob) -> str:
    return (
        f"batch {job.batch_id} of flow {base.flow_id}" if job.batch_id is not None else f"s3://{base.bucket}/{base.key}"
    )


@dataclass(frozen=True)
class _RowRecord:
    """Where a single file's trigger call is recorded: its ledger row."""

    ledger_id: int

    def hold(self, conn: Connection, reason: str) -> None:
        ledger.hold_row(conn, self.ledger_id, reason)

    def defer(self, conn: Connection, reason: str, delay: float) -> None:
        ledger.mark_deferred(conn, self.ledger_id, reason, delay)

    def failed(self, conn: Connection, error: str, final: bool, base: float, maximum: float) -> None:
        ledger.mark_attempt_failed(conn, self.ledger_id, error, final=final, base=base, maximum=maximum)

    def triggered(self, conn: Connection) -> None:
        ledger.mark_triggered(conn, self.ledger_id)


@dataclass(frozen=True)
class _BatchRecord:
    """Where a micro-batch's trigger call is recorded: its batch row and, with it, its files."""

    batch_id: int

    def hold(self, conn: Connection, reason: str) -> None:
        batches.hold_batch(conn, self.batch_id, reason)

    def defer(self, conn: Connection, reason: str, delay: float) -> None:
        batches.defer_batch(conn, self.batch_id, reason, delay)

    def failed(self, conn: Connection, error: str, final: bool, base: float, maximum: float) -> None:
        batches.mark_batch_attempt_failed(conn, self.batch_id, error, final, base, maximum)

    def triggered(self, conn: Connection) -> None:
        batches.mark_batch_triggered(conn, self.batch_id)
