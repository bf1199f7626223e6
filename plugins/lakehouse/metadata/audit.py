"""The task-run audit: one row per task try, written at start and completed at the end.

Written from the task itself (not from a callback), so the row exists even when the worker is
killed afterwards. The task closes its own row on success, failure, timeout and termination; a
try killed too hard to do so (SIGKILL, lost heartbeat) is closed as ``killed`` by Airflow's failure
callback, which the scheduler runs for such tries as well.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2

__all__ = ["close_unfinished_task_run", "finish_task_run", "start_task_run"]


def start_task_run(
    dsn: str,
    *,
    flow_id: str,
    task_id: str,
    template_id: str,
    dag_id: str,
    dag_run_id: str,
    try_number: int,
    batch_id: str,
    runner: str,
) -> int:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """INSERT INTO lakehouse.task_runs
                       (flow_id, task_id, template_id, dag_id, dag_run_id, try_number, batch_id, runner, status)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'running')
                   ON CONFLICT (dag_id, dag_run_id, task_id, try_number) DO UPDATE SET
                       status = 'running', started_at = now(), ended_at = NULL, error = NULL, error_summary = NULL,
                       rows_in = NULL, rows_out = NULL, rows_rejected = NULL, metrics = NULL
                   RETURNING task_run_id""",
                (flow_id, task_id, template_id, dag_id, dag_run_id, try_number, batch_id, runner),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def finish_task_run(
    dsn: str,
    task_run_id: int,
    *,
    status: str,
    metrics: dict[str, Any] | None = None,
    error: str | None = None,
    error_summary: str | None = None,
    external_run_id: str | None = None,
) -> None:
    """Close a try: its counts whatever the outcome (a failed job reports what it counted), the
    one-line reason, and the full error text with the end of the job's output."""
    metrics = metrics or {}

    def count(name: str) -> int | None:
        value = metrics.get(name)
        return int(value) if isinstance(value, (int, float)) else None

    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """UPDATE lakehouse.task_runs SET status = %s, ended_at = now(), rows_in = %s, rows_out = %s,
                       rows_rejected = %s, metrics = %s, error = %s, error_summary = %s, external_run_id = %s
                   WHERE task_run_id = %s""",
                (
                    status,
                    count("rows_in"),
                    count("rows_out"),
                    count("rows_rejected"),
                    json.dumps(metrics) if metrics else None,
                    error[:8000] if error else None,
                    error_summary,
                    external_run_id,
                    task_run_id,
                ),
            )
    finally:
        conn.close()


def close_unfinished_task_run(
    dsn: str, *, dag_id: str, dag_run_id: str, task_id: str, try_number: int, error: str, error_summary: str
) -> bool:
    """Mark a try still ``running`` as ``killed``; a row the task closed itself is left as is."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """UPDATE lakehouse.task_runs SET status = 'killed', ended_at = now(), error = %s, error_summary = %s
                   WHERE dag_id = %s AND dag_run_id = %s AND task_id = %s AND try_number = %s
                     AND status = 'running'""",
                (error[:8000], error_summary, dag_id, dag_run_id, task_id, try_number),
            )
            return cur.rowcount > 0
    finally:
        conn.close()
