"""Micro-batches of files: gathered from the ledger, assigned, and triggered as one run each.

A batched flow's files are stored ``queued``. Gathering takes up to ``max_files_per_run`` of them
(oldest first, ``FOR UPDATE SKIP LOCKED`` so concurrent invokers never take the same file), writes
the batch row with its ``dag_run_id`` and assigns the files to it, all in one transaction, before
Airflow is called. The batch row is then the outbox item of its files: it is triggered, retried
with backoff, held or failed exactly as a single file's ledger row is, and its files follow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2.extensions import connection as Connection

__all__ = [
    "BatchFile",
    "GatheredBatch",
    "batch_dag_run_id",
    "batch_files",
    "claim_due_batches",
    "defer_batch",
    "flows_with_queued_files",
    "gather_batch",
    "hold_batch",
    "mark_batch_attempt_failed",
    "mark_batch_triggered",
    "release_held_batches",
    "set_manifest",
]


@dataclass(frozen=True)
class BatchFile:
    ledger_id: int
    bucket: str
    key: str
    etag: str
    size: int | None
    event_time: datetime | None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "bucket": self.bucket,
            "key": self.key,
            "etag": self.etag,
            "size": self.size,
            "event_time": self.event_time.isoformat() if self.event_time else None,
            "ledger_id": self.ledger_id,
        }


@dataclass(frozen=True)
class GatheredBatch:
    batch_id: int
    flow_id: str
    dag_id: str
    dag_run_id: str
    manifest_uri: str | None = None


def batch_dag_run_id(flow_id: str, batch_id: int) -> str:
    """Derived from the stored batch, so every retry of its trigger names the same run."""
    return f"s3batch__{flow_id}__{batch_id:010d}"


def flows_with_queued_files(conn: Connection) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT flow_id FROM lakehouse.file_ledger WHERE status = 'queued'")
        return sorted(row[0] for row in cur.fetchall())


def gather_batch(
    conn: Connection,
    flow_id: str,
    dag_id: str,
    max_files: int,
    window_seconds: float,
    lease_seconds: float,
    full_only: bool = False,
) -> GatheredBatch | None:
    """One batch of the flow's queued files, assigned and leased to the caller in the caller's
    transaction; None when there is nothing to gather, or when fewer than ``max_files`` wait and
    (``full_only``) or the oldest has waited less than ``window_seconds``."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT ledger_id, received_at <= now() - make_interval(secs => %s) FROM lakehouse.file_ledger
               WHERE flow_id = %s AND status = 'queued' ORDER BY ledger_id LIMIT %s FOR UPDATE SKIP LOCKED""",
            (window_seconds, flow_id, max_files),
        )
        rows = cur.fetchall()
        waiting = full_only or (window_seconds > 0 and not any(due for _, due in rows))
        if not rows or (len(rows) < max_files and waiting):
            return None
        cur.execute("SELECT nextval(pg_get_serial_sequence('lakehouse.file_batches', 'batch_id'))")
        batch_id = int(cur.fetchone()[0])
        run_id = batch_dag_run_id(flow_id, batch_id)
        cur.execute(
            """INSERT INTO lakehouse.file_batches (batch_id, flow_id, dag_id, dag_run_id, files, next_attempt_at)
               VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s))""",
            (batch_id, flow_id, dag_id, run_id, len(rows), lease_seconds),
        )
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = 'pending', batch_id = %s, dag_run_id = %s, updated_at = now()
               WHERE ledger_id = ANY(%s)""",
            (batch_id, run_id, [ledger_id for ledger_id, _ in rows]),
        )
    return GatheredBatch(batch_id, flow_id, dag_id, run_id)


def batch_files(conn: Connection, batch_id: int) -> list[BatchFile]:
    with conn.cursor() as cur:
        cur.execute(
            """SELECT ledger_id, bucket, object_key, etag, size, event_time FROM lakehouse.file_ledger
                       WHERE batch_id = %s ORDER BY ledger_id""",
            (batch_id,),
        )
        return [BatchFile(*row) for row in cur.fetchall()]


def set_manifest(conn: Connection, batch_id: int, uri: str) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE lakehouse.file_batches SET manifest_uri = %s WHERE batch_id = %s", (uri, batch_id))


def claim_due_batches(conn: Connection, limit: int, lease_seconds: float) -> list[GatheredBatch]:
    """Pending batches whose retry time has come (or whose gatherer died), leased to the caller."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_batches SET next_attempt_at = now() + make_interval(secs => %s)
               WHERE batch_id IN (SELECT batch_id FROM lakehouse.file_batches
                                  WHERE status = 'pending' AND next_attempt_at <= now()
                                  ORDER BY next_attempt_at, batch_id LIMIT %s FOR UPDATE SKIP LOCKED)
               RETURNING batch_id, flow_id, dag_id, dag_run_id, manifest_uri""",
            (lease_seconds, limit),
        )
        return sorted((GatheredBatch(*row) for row in cur.fetchall()), key=lambda b: b.batch_id)


def mark_batch_triggered(conn: Connection, batch_id: int) -> None:
    """The run exists: the batch and every file of it are ``triggered``."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")  # a lost update only repeats a 409 (see ledger)
        cur.execute(
            """UPDATE lakehouse.file_batches SET status = 'triggered', attempts = attempts + 1,
                           last_error = NULL, updated_at = now() WHERE batch_id = %s""",
            (batch_id,),
        )
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = 'triggered', attempts = attempts + 1,
                           last_error = NULL, updated_at = now() WHERE batch_id = %s""",
            (batch_id,),
        )


def mark_batch_attempt_failed(
    conn: Connection, batch_id: int, error: str, final: bool, base: float, maximum: float
) -> None:
    status = "failed" if final else "pending"
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_batches SET status = %s, attempts = attempts + 1, last_error = %s,
                   next_attempt_at = now() + make_interval(secs => least(%s, %s * power(2, attempts))),
                   updated_at = now() WHERE batch_id = %s""",
            (status, error[:2000], maximum, base, batch_id),
        )
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = %s, attempts = attempts + 1, last_error = %s,
                           updated_at = now() WHERE batch_id = %s""",
            (status, error[:2000], batch_id),
        )


def defer_batch(conn: Connection, batch_id: int, reason: str, delay_seconds: float) -> None:
    """Leave the batch pending without a call (Airflow is known to be down): due after the delay."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_batches SET last_error = %s, updated_at = now(),
                           next_attempt_at = now() + make_interval(secs => %s)
                       WHERE batch_id = %s AND status = 'pending'""",
            (reason[:2000], delay_seconds, batch_id),
        )


def hold_batch(conn: Connection, batch_id: int, reason: str) -> None:
    """The flow cannot run now: the batch and its files wait as ``flow_invalid`` with the reason."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_batches SET status = 'flow_invalid', last_error = %s, updated_at = now()
                       WHERE batch_id = %s AND status = 'pending'""",
            (reason[:2000], batch_id),
        )
        cur.execute(
            """UPDATE lakehouse.file_ledger SET status = 'flow_invalid', last_error = %s, updated_at = now()
                       WHERE batch_id = %s""",
            (reason[:2000], batch_id),
        )


def release_held_batches(conn: Connection, flow_id: str) -> int:
    """The flow can run again: its held batches are due now, their files pending with them."""
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE lakehouse.file_batches SET status = 'pending', next_attempt_at = now(),
                           last_error = NULL, updated_at = now()
                       WHERE flow_id = %s AND status = 'flow_invalid' RETURNING batch_id""",
            (flow_id,),
        )
        released = [row[0] for row in cur.fetchall()]
        if released:
            cur.execute(
                """UPDATE lakehouse.file_ledger SET status = 'pending', last_error = NULL, updated_at = now()
                           WHERE batch_id = ANY(%s)""",
                (released,),
            )
        return len(released)
