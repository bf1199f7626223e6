"""Read every active flow, its tasks and every template in ONE query per parse.

The DAG processor parses often; a query per flow would make parse time grow with the number of
flows. The last good answer is kept on disk, so a parse while Postgres is down still yields the
DAGs (and says so in the log) instead of making every DAG disappear. A worker about to run a task
needs one DAG only: it asks for that flow alone (still one query) and leaves the snapshot alone,
which must always hold every flow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import psycopg2

from lakehouse.flows import Catalogue

__all__ = ["CATALOGUE_QUERY", "fetch_catalogue_document", "load_catalogue"]

log = logging.getLogger(__name__)

CATALOGUE_QUERY = """
SELECT json_build_object(
  'flows', coalesce((
      SELECT json_agg(
               to_jsonb(f) || jsonb_build_object('tasks', coalesce((
                   SELECT jsonb_agg(to_jsonb(t) ORDER BY t.task_order, t.task_id)
                   FROM lakehouse.flow_tasks t WHERE t.flow_id = f.flow_id), '[]'::jsonb))
               ORDER BY f.flow_id)
      FROM lakehouse.flows f
      WHERE f.is_active AND (%(dag_id)s::text IS NULL OR coalesce(f.dag_id, f.flow_id) = %(dag_id)s)),
    '[]'::json),
  'templates', coalesce((SELECT json_agg(to_jsonb(t) ORDER BY t.template_id) FROM lakehouse.templates t), '[]'::json),
  'template_versions', coalesce((
      SELECT json_agg(to_jsonb(v) ORDER BY v.template_id, v.version) FROM lakehouse.template_versions v
      WHERE EXISTS (SELECT 1 FROM lakehouse.flow_tasks t
                    WHERE t.template_id = v.template_id AND t.template_version = v.version)), '[]'::json)
)
"""


def fetch_catalogue_document(dsn: str, connect_timeout: int = 5, dag_id: str | None = None) -> dict[str, Any]:
    """Every active flow with its tasks, and every template; only the flow of ``dag_id`` if given."""
    conn = psycopg2.connect(dsn, connect_timeout=connect_timeout)
    try:
        with conn.cursor() as cur:
            cur.execute(CATALOGUE_QUERY, {"dag_id": dag_id})
            (document,) = cur.fetchone()
        return document
    finally:
        conn.close()


def load_catalogue(dsn: str, snapshot_path: Path | None = None, dag_id: str | None = None) -> Catalogue:
    """The catalogue from Postgres, or from the last good snapshot when Postgres is unreachable.

    With ``dag_id`` (a task run's parse) only that DAG's flow is read, and the snapshot is not
    rewritten with that partial answer.
    """
    try:
        document = fetch_catalogue_document(dsn, dag_id=dag_id)
    except psycopg2.OperationalError as exc:
        if snapshot_path is None or not snapshot_path.exists():
            raise
        log.warning("metadata database unreachable (%s); using snapshot %s", exc, snapshot_path)
        return Catalogue.from_document(json.loads(snapshot_path.read_text()))
    if snapshot_path is not None and dag_id is None:
        snapshot_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = snapshot_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document))
        tmp.replace(snapshot_path)
    return Catalogue.from_document(document)
