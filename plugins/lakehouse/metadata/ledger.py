"""The file ledger: every object event is written down before anything else happens.

One row per (bucket, key, etag, flow). A duplicate delivery finds its row and only counts itself,
an unmatched key is kept as ``unmatched``, and a trigger that failed stays ``pending`` until a
retry succeeds: the ledger doubles as the invoker's outbox, so a crash or an Airflow outage
loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2.extensions import connection as Connection

__all__ = ["LedgerRow", "record_event", "mark_triggered", "mark_attempt_failed", "pending_rows"]


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
) -> LedgerRow:
    status = "pending" if flow_id else "unmatched"
    with conn.cursor() as cur:
        cur.execute(
            f"""INSERT INTO lakehouse.file_ledger
                    (bucket, object_key, etag, size, event_time, source, flow_id, dag_id, dag_run_id, status)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (bucket, object_key, etag, coalesce(flow_id, ''))
                DO UPDATE SET deliveries = lakehouse.file_ledger.deliveries + 1, updated_at = now()
                RETURNING {_COLUMNS}, (xmax = 0) AS inserted""",
            (bucket, key, etag, size, event_time, source, flow_id, dag_id, dag_run_id, status),
        )
        return LedgerRow(*cur.fetchone())


def mark_triggered(conn: Connection, ledger_id: int) -> None:
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = 'triggered', attempts = attempts + 1,
                   last_error = NULL, updated_at = now() WHERE ledger_id = %s""",
            (ledger_id,),
        )


def mark_attempt_failed(conn: Connection, ledger_id: int, error: str, final: bool) -> None:
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = %s, attempts = attempts + 1,
                   last_error = %s, updated_at = now() WHERE ledger_id = %s""",
            ("failed" if final else "pending", error[:2000], ledger_id),
        )


def pending_rows(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    """Rows still waiting for a successful trigger, oldest first; locked so two retriers never share one."""
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT {_COLUMNS}, event_time FROM lakehouse.file_ledger WHERE status = 'pending'
                ORDER BY ledger_id LIMIT %s FOR UPDATE SKIP LOCKED""",
            (limit,),
        )
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
