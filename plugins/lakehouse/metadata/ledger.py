"""The file ledger: every object event is written down before anything else happens.

One row per (bucket, key, etag, flow, run suffix). A duplicate delivery finds its row and only
counts itself, an unmatched key is kept as ``unmatched``, and a trigger that failed stays
``pending`` until a retry succeeds: the ledger doubles as the invoker's outbox, so a crash or an
Airflow outage loses nothing.

Retries back off exponentially through ``next_attempt_at``; the live path holds a short lease on
the row it is triggering (``next_attempt_at`` in the future) so the retry loop never races it, and
a process that dies mid-call simply lets the lease run out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2.extensions import connection as Connection

__all__ = [
    "LIVE_LEASE_SECONDS",
    "LedgerRow",
    "backoff_seconds",
    "claim_due_rows",
    "claim_row",
    "held_flows",
    "hold_queued",
    "hold_row",
    "mark_attempt_failed",
    "mark_deferred",
    "mark_triggered",
    "record_event",
    "release_held_rows",
    "update_hold_reason",
]

#: How long the live path may hold a fresh row before the retry loop considers it abandoned.
LIVE_LEASE_SECONDS = 30.0


@dataclass(frozen=True)
class LedgerRow:
    ledger_id: int
    bucket: str
    object_key: str
    etag: str
    size: int | None
    flow_id: str | None
    dag_id: str | None
    dag_run_id: str | None
    status: str
    deliveries: int
    attempts: int
    inserted: bool  # False: this event was already known (a duplicate delivery)


_COLUMNS = "ledger_id, bucket, object_key, etag, size, flow_id, dag_id, dag_run_id, status, deliveries, attempts"


def backoff_seconds(attempts: int, base: float, maximum: float) -> float:
    """Exponential backoff after ``attempts`` failed calls: base, 2·base, 4·base … capped at maximum."""
    return min(maximum, base * (2 ** max(0, attempts - 1)))


def record_event(
    conn: Connection,
    *,
    bucket: str,
    key: str,
    etag: str,
    size: int | None,
    event_time: datetime | None,
    source: str,
    flow_id: str | None,
    dag_id: str | None,
    dag_run_id: str | None,
    status: str | None = None,
    run_suffix: str = "",
    last_error: str | None = None,
    lease_seconds: float = LIVE_LEASE_SECONDS,
) -> LedgerRow:
    """Insert the row (or count a duplicate delivery of it). A new pending row is leased to the caller."""
    status = status or ("pending" if flow_id else "unmatched")
    with conn.cursor() as cur:
        cur.execute(
            f"""INSERT INTO lakehouse.file_ledger
                    (bucket, object_key, etag, size, event_time, source, flow_id, dag_id, dag_run_id, status,
                     run_suffix, last_error, next_attempt_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))
                ON CONFLICT (bucket, object_key, etag, coalesce(flow_id, ''), run_suffix)
                DO UPDATE SET deliveries = lakehouse.file_ledger.deliveries + 1, updated_at = now()
                RETURNING {_COLUMNS}, (xmax = 0) AS inserted""",
            (
                bucket,
                key,
                etag,
                size,
                event_time,
                source,
                flow_id,
                dag_id,
                dag_run_id,
                status,
                run_suffix,
                last_error,
                lease_seconds,
            ),
        )
        return LedgerRow(*cur.fetchone())


def claim_row(conn: Connection, ledger_id: int, lease_seconds: float = LIVE_LEASE_SECONDS) -> bool:
    """Lease a known row to a redelivery of its event, if nobody holds it: a ``pending`` row whose
    lease or backoff has run out, or a ``failed`` one (the sender's retry is a request to try again).
    False while someone else is calling Airflow for it or its backoff still runs."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = 'pending', next_attempt_at = now() + make_interval(secs => %s),
                   updated_at = now()
               WHERE ledger_id = %s AND (status = 'failed' OR (status = 'pending' AND next_attempt_at <= now()))
               RETURNING ledger_id""",
            (lease_seconds, ledger_id),
        )
        return cur.fetchone() is not None


def mark_triggered(conn: Connection, ledger_id: int) -> None:
    """Record success. Committed without waiting for the WAL flush: if a crash loses this update the
    row is still ``pending``, the retry calls Airflow again and gets 409 (= exists) — harmless, and
    it saves one fsync per event (only the event itself, in :func:`record_event`, must be durable)."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = 'triggered', attempts = attempts + 1,
                   last_error = NULL, updated_at = now() WHERE ledger_id = %s""",
            (ledger_id,),
        )


def mark_attempt_failed(
    conn: Connection, ledger_id: int, error: str, final: bool, base: float = 2.0, maximum: float = 300.0
) -> None:
    """Count a failed call; a non-final failure schedules the next try after an exponential backoff."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = %s, attempts = attempts + 1, last_error = %s,
                   next_attempt_at = now() + make_interval(secs => least(%s, %s * power(2, attempts))),
                   updated_at = now()
               WHERE ledger_id = %s""",
            ("failed" if final else "pending", error[:2000], maximum, base, ledger_id),
        )


def mark_deferred(conn: Connection, ledger_id: int, reason: str, delay_seconds: float) -> None:
    """Leave the row pending without a call (Airflow is known to be down): due again after the delay."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_ledger SET last_error = %s,
                   next_attempt_at = now() + make_interval(secs => %s), updated_at = now()
               WHERE ledger_id = %s AND status = 'pending'""",
            (reason[:2000], delay_seconds, ledger_id),
        )


def claim_due_rows(
    conn: Connection, limit: int = 100, lease_seconds: float = LIVE_LEASE_SECONDS
) -> list[dict[str, Any]]:
    """Pending rows whose retry time has come, oldest due first, leased to the caller.

    The lease (``next_attempt_at`` pushed ahead in the same statement) is what keeps two retriers,
    or a retrier and the live path, from calling Airflow for the same row at the same time; a
    retrier that dies lets the lease run out and the row becomes due again.
    """
    with conn.cursor() as cur:
        cur.execute(
            f"""UPDATE lakehouse.file_ledger SET next_attempt_at = now() + make_interval(secs => %s)
                WHERE ledger_id IN (
                    SELECT ledger_id FROM lakehouse.file_ledger
                    WHERE status = 'pending' AND next_attempt_at <= now() AND batch_id IS NULL
                    ORDER BY next_attempt_at, ledger_id LIMIT %s FOR UPDATE SKIP LOCKED)
                RETURNING {_COLUMNS}, event_time, run_suffix""",
            (lease_seconds, limit),
        )
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return sorted(rows, key=lambda r: r["ledger_id"])


def hold_row(conn: Connection, ledger_id: int, reason: str) -> bool:
    """Park a pending row whose flow cannot run now (invalid rows, not active): ``flow_invalid``,
    with the reason, until :func:`release_held_rows`. False if the row was no longer pending."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = 'flow_invalid', last_error = %s, updated_at = now()
               WHERE ledger_id = %s AND status IN ('pending', 'queued') RETURNING ledger_id""",
            (reason[:2000], ledger_id),
        )
        return cur.fetchone() is not None


def hold_queued(conn: Connection, flow_id: str, reason: str) -> int:
    """A batched flow that cannot run now: its files waiting to be gathered wait as ``flow_invalid``."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = 'flow_invalid', last_error = %s, updated_at = now()
                       WHERE flow_id = %s AND status = 'queued'""",
            (reason[:2000], flow_id),
        )
        return cur.rowcount


def held_flows(conn: Connection) -> list[str]:
    """Flows with files waiting in ``flow_invalid``."""
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT flow_id FROM lakehouse.file_ledger WHERE status = 'flow_invalid'")
        return sorted(row[0] for row in cur.fetchall())


def update_hold_reason(conn: Connection, flow_id: str, reason: str) -> int:
    """Keep the held rows' reason current when the flow's problems change while it stays invalid."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_ledger SET last_error = %s, updated_at = now()
               WHERE flow_id = %s AND status = 'flow_invalid' AND last_error IS DISTINCT FROM %s""",
            (reason[:2000], flow_id, reason[:2000]),
        )
        return cur.rowcount


def release_held_rows(conn: Connection, flow_id: str, batched: bool = False) -> int:
    """The flow can run again: its held files become due now (``pending``; ``queued`` for a flow
    that gathers files into batches). Files held inside a batch go with their batch."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = %s, next_attempt_at = now(), last_error = NULL,
                   updated_at = now()
               WHERE flow_id = %s AND status = 'flow_invalid' AND batch_id IS NULL""",
            ("queued" if batched else "pending", flow_id),
        )
        return cur.rowcount
