"""Where is my file? One object's whole story from the metadata: ledger rows, runs, task tries.

``lakehouse trace s3://bucket/key`` and ``lakehouse runs`` read the same two tables a person would
query by hand (``file_ledger``, ``task_runs``), so the answer needs no SQL and no Airflow log. What
each task produced (raw batch, rejects, stage snapshot, warehouse table) comes from the metrics the
job reported, which the audit row keeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import psycopg2
import psycopg2.extras

__all__ = [
    "OUTPUT_KEYS",
    "format_runs",
    "format_trace",
    "list_task_runs",
    "parse_object_uri",
    "to_json",
    "trace_object",
]

#: The metrics of a try that say where its output (or its rejects) went, in the order shown.
OUTPUT_KEYS = ("raw_path", "rejects_path", "target_table", "snapshot_id", "committed", "source_table")

_LEDGER = """SELECT l.ledger_id, l.bucket, l.object_key, l.etag, l.size, l.flow_id, l.dag_id, l.dag_run_id, l.status,
                    l.deliveries, l.attempts, l.last_error, l.source, l.run_suffix, l.event_time, l.received_at,
                    l.updated_at, l.batch_id, b.files AS batch_files, b.manifest_uri AS batch_manifest
             FROM lakehouse.file_ledger l LEFT JOIN lakehouse.file_batches b USING (batch_id)
             WHERE l.bucket = %s AND l.object_key = %s ORDER BY l.ledger_id"""
_TRIES = """SELECT task_run_id, flow_id, task_id, template_id, dag_id, dag_run_id, try_number, batch_id, status,
                   started_at, ended_at, rows_in, rows_out, rows_rejected, error_summary, metrics, external_run_id
            FROM lakehouse.task_runs WHERE dag_run_id = ANY(%s) ORDER BY task_run_id"""


def parse_object_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); a one-line error naming what is missing."""
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key:
        raise ValueError(f"{uri!r} is not an object URI: give s3://<bucket>/<key>")
    return parsed.netloc, key


def _rows(dsn: str, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(row) for row in cur.fetchall()]
    finally:
        conn.close()


def _outputs(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: metrics[k] for k in OUTPUT_KEYS if metrics and metrics.get(k) is not None}


def trace_object(dsn: str, uri: str, run_state: Callable[[str, str], str | None] | None = None) -> dict[str, Any]:
    """Everything recorded about one object: per file version and flow its ledger row, the run it
    started (with Airflow's state when ``run_state(dag_id, run_id)`` is given) and each task try
    with counts, one-line reason and outputs."""
    bucket, key = parse_object_uri(uri)
    versions = _rows(dsn, _LEDGER, (bucket, key))
    runs = [v["dag_run_id"] for v in versions if v["dag_run_id"]]
    tries = _rows(dsn, _TRIES, (runs,)) if runs else []
    for version in versions:
        run_id = version["dag_run_id"]
        version["run"] = None
        if run_id and version["status"] == "triggered":
            state = run_state(version["dag_id"], run_id) if run_state else None
            version["run"] = {"dag_id": version["dag_id"], "dag_run_id": run_id, "state": state}
        version["tasks"] = [
            {
                **{
                    k: t[k]
                    for k in (
                        "task_id",
                        "template_id",
                        "try_number",
                        "status",
                        "started_at",
                        "ended_at",
                        "rows_in",
                        "rows_out",
                        "rows_rejected",
                        "error_summary",
                        "batch_id",
                    )
                },
                "outputs": _outputs(t["metrics"]),
            }
            for t in tries
            if t["dag_run_id"] == run_id and t["flow_id"] == version["flow_id"]
        ]
    return {"uri": f"s3://{bucket}/{key}", "versions": versions}


def list_task_runs(dsn: str, flow_id: str | None = None, failed: bool = False, limit: int = 30) -> list[dict[str, Any]]:
    """The newest task tries, newest first, as ``lakehouse runs`` prints them."""
    where = ["true"]
    params: list[Any] = []
    if flow_id:
        where.append("t.flow_id = %s")
        params.append(flow_id)
    if failed:
        where.append("t.status IN ('failed', 'timeout', 'killed')")
    return _rows(
        dsn,
        "SELECT t.task_run_id, t.flow_id, t.task_id, t.dag_run_id, t.try_number, t.status, t.started_at, "
        "t.ended_at, t.rows_in, t.rows_out, t.rows_rejected, t.error_summary, t.metrics, "
        "b.batch_id, b.files AS batch_files FROM lakehouse.task_runs t "
        "LEFT JOIN lakehouse.file_batches b USING (dag_run_id) WHERE "
        + " AND ".join(where)
        + " ORDER BY t.task_run_id DESC LIMIT %s",
        (*params, limit),
    )


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _took(started: datetime | None, ended: datetime | None) -> str:
    return f"{(ended - started).total_seconds():.1f}s" if started and ended else "-"


def _counts(row: Mapping[str, Any]) -> str:
    if row["rows_in"] is None and row["rows_out"] is None and row["rows_rejected"] is None:
        return "no counts"
    return f"in {row['rows_in']}, out {row['rows_out']}, rejected {row['rows_rejected']}"


def format_runs(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per try; a failed try's reason on the line below it, whole."""
    if not rows:
        return "no task runs"
    lines = []
    for r in rows:
        batch = f" (batch {r['batch_id']}: {r['batch_files']} files)" if r.get("batch_id") else ""
        lines.append(
            f"{_when(r['started_at'])}  {r['flow_id']}.{r['task_id']}  try {r['try_number']}  "
            f"{r['status']:<7}  {_took(r['started_at'], r['ended_at']):>7}  {_counts(r)}  {r['dag_run_id']}"
            f"{batch}"
        )
        if r["error_summary"]:
            lines.append(f"    why: {r['error_summary']}")
    return "\n".join(lines)


def format_trace(trace: Mapping[str, Any]) -> str:
    """The trace for a person: one block per file version and flow."""
    versions = trace["versions"]
    if not versions:
        return (
            f"{trace['uri']}: never seen by the invoker (no ledger row); was the event delivered? "
            "`lakehouse replay --flow F --prefix P` sends existing objects"
        )
    out = [trace["uri"]]
    for v in versions:
        flow = v["flow_id"] or "(no flow matched)"
        out.append(
            f"- version {v['etag'] or '?'} ({v['size'] if v['size'] is not None else '?'} bytes) -> flow "
            f"{flow}: {v['status']}, {v['deliveries']} deliver{'y' if v['deliveries'] == 1 else 'ies'}, "
            f"{v['attempts']} trigger call(s); first seen {_when(v['received_at'])} via {v['source'] or '?'}"
        )
        if v["last_error"]:
            out.append(f"    why: {v['last_error']}")
        if v["batch_id"]:
            out.append(f"    in batch {v['batch_id']} of {v['batch_files']} files (manifest {v['batch_manifest']})")
        if v["dag_run_id"]:
            state = (v["run"] or {}).get("state")
            out.append(f"    run {v['dag_run_id']}" + (f": {state}" if state else ""))
        for t in v["tasks"]:
            out.append(
                f"    {t['task_id']} ({t['template_id']}) try {t['try_number']}: {t['status']}, "
                f"{_took(t['started_at'], t['ended_at'])}, {_counts(t)}"
            )
            if t["error_summary"]:
                out.append(f"        why: {t['error_summary']}")
            for name, value in t["outputs"].items():
                out.append(f"        {name}: {value}")
    return "\n".join(out)


def to_json(value: Any) -> str:
    """The same data for scripts (``--json``): timestamps as ISO strings."""
    return json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v), indent=2)
