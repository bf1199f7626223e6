"""The invoker's HTTP endpoint: SeaweedFS filer webhooks and every AWS event shape as JSON.

Standard library only (it is a few routes). Every POST must prove it knows the shared secret,
either as ``Authorization: Bearer <secret>`` (what the SeaweedFS filer sends) or as
``X-Lakehouse-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`` (for senders that should not
put the secret itself on the wire); anything else gets 401 and triggers nothing. Bodies over
1 MiB get 413 before they are read.

The answer is sent as soon as the event is committed to the ledger — never before (the sender's
own retry covers that window), and never waiting for Airflow: the trigger calls go to a pool of
dispatcher threads (``LAKEHOUSE_INVOKER_WORKERS``, at least 1), so a slow or stopped Airflow
cannot slow down or time out the event source. A background loop re-queues
pending rows whose backoff has passed — including rows whose dispatch died with a previous
process, once their lease has run out. While the metadata database is unreachable, events are
written to a disk spool (fsynced) and answered 200, because some senders (SeaweedFS's webhook)
do not retry a 503; the loop moves them into the ledger once the database is back.

Routes: ``/events/seaweedfs`` (filer webhook), ``/events/s3`` (any AWS shape: S3 notification,
SNS envelope or SNS/SQS Lambda records, EventBridge) — :func:`decode_payload` tells them apart.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import queue
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg2

from lakehouse.invoker.core import Invoker, TriggerJob, TriggerOutcome
from lakehouse.invoker.events import EventError, decode_payload, from_seaweedfs_webhook
from lakehouse.invoker.spool import EventSpool

__all__ = ["MAX_BODY_BYTES", "SIGNATURE_HEADER", "InvokerServer", "sign_body"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
#: Seconds after start before the first reconciliation sweep (the stack is up by then).
STARTUP_SWEEP_DELAY = 30.0
SIGNATURE_HEADER = "X-Lakehouse-Signature"


def sign_body(secret: str, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER` a sender computes for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class InvokerServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: SeaweedFS alone opens 20 webhook connections at
    # once, and a full backlog makes the kernel reset new connections
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        invoker: Invoker,
        token: str,
        retry_interval: float = 1.0,
        dispatch_workers: int = 8,
        spool: EventSpool | None = None,
        sweep: Callable[[], list[TriggerJob]] | None = None,
        sweep_interval: float = 0.0,
    ) -> None:
        if not token:
            raise ValueError("LAKEHOUSE_INVOKER_TOKEN is empty: the webhook would accept anyone")
        if dispatch_workers < 1:
            raise ValueError(f"the invoker needs at least 1 dispatcher thread, got {dispatch_workers}")
        super().__init__(address, _Handler)
        self.invoker = invoker
        self.token = token
        self.dispatch_workers = dispatch_workers
        self.spool = spool
        # live events before retries: after an outage, fresh files are not queued behind the
        # backlog, which drains in the capacity they leave (ties: first in, first out)
        self._jobs: queue.PriorityQueue[tuple[int, int, TriggerJob]] = queue.PriorityQueue()
        self._sequence = itertools.count()
        self._stop = threading.Event()
        self._retry_interval = retry_interval
        self._batch_wanted = threading.Event()  # set when files of a batched flow were stored or a batch sent
        invoker.on_batch_sent = self._batch_wanted.set
        self._sweep = sweep
        self._sweep_interval = sweep_interval
        self._sweeps = 0
        self._workers = [
            threading.Thread(target=self._retry_loop, name="invoker-retry", daemon=True),
            threading.Thread(target=self._batch_loop, name="invoker-batcher", daemon=True),
        ]
        if sweep is not None and sweep_interval > 0:
            self._workers.append(threading.Thread(target=self._sweep_loop, name="invoker-reconcile", daemon=True))
        self._workers += [
            threading.Thread(target=self._dispatch_loop, name=f"invoker-dispatch-{i}", daemon=True)
            for i in range(dispatch_workers)
        ]

    def serve(self) -> None:
        for thread in self._workers:
            thread.start()
        try:
            self.serve_forever()
        finally:
            self._stop.set()

    def stop(self) -> None:
        """Stop serving and let the worker threads finish their current call. Queued jobs are not
        lost: their rows stay ``pending`` and leased, and whoever serves next retries them."""
        self.shutdown()
        self._stop.set()
        self._batch_wanted.set()  # wakes the batcher, which then sees the stop
        for thread in self._workers:
            if thread.is_alive():
                thread.join(timeout=15)
        self.server_close()

    def submit(self, jobs: list[TriggerJob], retry: bool = False) -> None:
        for job in jobs:
            self._jobs.put((1 if retry else 0, next(self._sequence), job))

    def handle_events(self, route: str, payload: dict[str, Any]) -> list[TriggerOutcome]:
        """Store, then dispatch in the background; raises if not stored (the sender retries)."""
        events = from_seaweedfs_webhook(payload) if route == "seaweedfs" else decode_payload(payload)
        try:
            outcomes, jobs = self.invoker.accept(events)
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:  # the database is away (a pooled
            if self.spool is None:  # connection it dropped says "already closed"): keep the event on disk
                raise
            path = self.spool.append(route, payload)
            log.warning("metadata database unavailable (%s); event spooled to %s", " ".join(str(exc).split()), path)
            return [
                TriggerOutcome(
                    "spooled", detail="metadata database unavailable; kept on disk, stored when it answers again"
                )
            ]
        self.submit(jobs)
        if any(o.status == "queued" for o in outcomes):
            self._batch_wanted.set()
        return outcomes

    def _batch_loop(self) -> None:
        """Gather batched flows' queued files into batches as soon as files arrive, when a batch
        was sent, and every retry interval (for a window that ran out). While a flow's batch is
        being sent only full batches are gathered, so the files of a flood accumulate into few,
        large batches instead of one run per trigger call's worth."""
        while not self._stop.is_set():
            self._batch_wanted.wait(timeout=self._retry_interval)
            self._batch_wanted.clear()
            if self.invoker.airflow_down:
                continue  # while Airflow is down the backlog waits
            try:
                self.submit(self.invoker.gather_batches())
            except Exception:
                log.exception("gathering batches failed; the files stay queued")

    def _sweep_loop(self) -> None:
        """Soon after start, then every ``sweep_interval`` seconds, list the flows' prefixes and
        record what no event announced (see lakehouse.invoker.reconcile); found files go on like
        events. The first sweep catches the events sent while no invoker ran: SeaweedFS's webhook
        does not retry a delivery that failed."""
        assert self._sweep is not None
        while not self._stop.wait(
            min(STARTUP_SWEEP_DELAY, self._sweep_interval) if self._sweeps == 0 else self._sweep_interval
        ):
            self._sweeps += 1
            try:
                self.submit(self._sweep())
                self._batch_wanted.set()
            except Exception:
                log.exception("reconciliation sweep failed; the next one tries again")

    def _store_spooled(self, route: str, payload: dict[str, Any]) -> None:
        events = from_seaweedfs_webhook(payload) if route == "seaweedfs" else decode_payload(payload)
        outcomes, jobs = self.invoker.accept(events)
        self.submit(jobs)
        if any(o.status == "queued" for o in outcomes):
            self._batch_wanted.set()

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                _, _, job = self._jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                outcome = self.invoker.dispatch(job)
                log.info(
                    "%s %s s3://%s/%s %s",
                    outcome.status,
                    outcome.dag_run_id,
                    outcome.bucket,
                    outcome.key,
                    outcome.detail,
                )
            except Exception:  # the row (or batch) stays pending and leased; the retry loop takes it up later
                log.exception(
                    "dispatch of %s failed",
                    f"batch {job.batch_id}" if job.batch_id is not None else f"ledger row {job.ledger_id}",
                )
            finally:
                self._jobs.task_done()

    def _retry_loop(self) -> None:
        """Every ``retry_interval`` seconds, hand the pending rows that are due to the dispatchers —
        all of them, batch after batch while the queue keeps up, so a backlog after an outage
        drains in parallel; while the circuit breaker is open nothing is claimed (no churn). Files
        held for a flow that could not run are released first, once it can."""
        batch = 100
        while not self._stop.wait(self._retry_interval):
            if self.spool is not None and self.spool.pending():
                try:  # events that came while the database was away, in arrival order
                    stored = self.spool.drain(self._store_spooled)
                    log.info("%d spooled event(s) stored in the ledger", stored)
                except Exception as exc:
                    log.warning("spooled events not stored yet: %s", " ".join(str(exc).split()))
                    continue
            try:
                self.invoker.release_held()  # files of flows fixed meanwhile become due
            except Exception:
                log.exception("release of held ledger rows failed")
            try:
                while not self._stop.is_set() and not self.invoker.airflow_down:
                    if self._jobs.qsize() > 2 * batch:
                        break  # the dispatchers are busy; claim more on the next tick
                    jobs = self.invoker.claim_due(limit=batch) + self.invoker.claim_due_batches(limit=batch)
                    self.submit(jobs, retry=True)
                    if len(jobs) < batch:
                        break
            except Exception:  # keep retrying; the ledger keeps the rows
                log.exception("retry of pending ledger rows failed")


class _Handler(BaseHTTPRequestHandler):
    server: InvokerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": f"no route {self.path}"})

    def _bearer_ok(self) -> bool:
        header = self.headers.get("Authorization", "")
        return hmac.compare_digest(header.encode(), f"Bearer {self.server.token}".encode())

    def do_POST(self) -> None:
        bearer_ok = self._bearer_ok()
        signature = self.headers.get(SIGNATURE_HEADER)
        if not bearer_ok and not signature:
            self.close_connection = True
            self._reply(401, {"error": f"missing or wrong bearer token (or {SIGNATURE_HEADER})"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body must not be parsed as the next request
            self._reply(413, {"error": f"body larger than {MAX_BODY_BYTES} bytes (or no valid Content-Length)"})
            return
        body = self.rfile.read(length)
        if not bearer_ok and not hmac.compare_digest(
            (signature or "").encode(), sign_body(self.server.token, body).encode()
        ):
            self._reply(401, {"error": f"{SIGNATURE_HEADER} does not match the body"})
            return
        try:
            payload = json.loads(body or b"null")
        except json.JSONDecodeError as exc:
            self._reply(400, {"error": f"body is not JSON: {exc}"})
            return
        if not isinstance(payload, dict):
            self._reply(400, {"error": "body must be a JSON object"})
            return
        route = {"/events/seaweedfs": "seaweedfs", "/events/s3": "s3"}.get(self.path)
        if route is None:
            self._reply(404, {"error": f"no route {self.path}"})
            return
        try:
            outcomes = self.server.handle_events(route, payload)
        except EventError as exc:
            self._reply(400, {"error": str(exc)})
            return
        except Exception as exc:  # the event is not stored: make the sender retry
            log.exception("event handling failed")
            self._reply(503, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._reply(200, {"outcomes": [o.as_dict() for o in outcomes]})
