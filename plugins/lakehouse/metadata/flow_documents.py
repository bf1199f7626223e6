"""Flows as YAML files: ``lakehouse flow apply / export / validate``.

The rows stay the single source of truth (the DAG factory and the invoker read only them); a YAML
file is a convenient way to write and review them in git. ``apply`` checks the document the way
the DAG factory will, against the templates in the database, and writes the flow and all of its
tasks in one transaction, so Airflow never parses half a flow.

The document's shape, defaults and meaning are declared once, by
:class:`lakehouse.metadata.flow_model.FlowDocument` (``lakehouse flow schema`` prints its JSON
Schema); an example::

    flow_id: invoices
    description: Customer invoice files -> daily expenses
    trigger: {bucket: landing, key_pattern: "invoices/*.txt"}
    owner: finance-data
    tasks:
      - task_id: landing_to_raw
        template: landing_to_raw
        retries: 2
        parameters: {dataset: invoices, format: regex, ...}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg2

from lakehouse.flows import Catalogue, Flow, FlowProblem, validate_catalogue, validate_flow
from lakehouse.metadata.flow_model import FlowDocument, FlowDocumentError, parse_flow_document

__all__ = [
    "FlowDocumentError",
    "apply_flow_document",
    "export_flow_document",
    "flow_from_document",
    "read_flow_document",
    "stored_flow_problems",
    "validate_stored_flows",
]

_T = TypeVar("_T")


def _flow(document: FlowDocument) -> Flow:
    return Flow.from_row({**document.flow_row(), "tasks": document.task_rows()})


def flow_from_document(document: Any, source: str = "<document>") -> Flow:
    """The typed flow a document describes (structure checked; templates not yet)."""
    return _flow(parse_flow_document(document, source))


def read_flow_document(path: Path) -> Any:
    import yaml  # here, not at the top: the migrations (and the Lambda zip that runs them) need no YAML

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FlowDocumentError(str(path), [f"not valid YAML: {exc}"]) from exc


_STORED_FLOWS = """
  'flows', coalesce((
      SELECT json_agg(to_jsonb(f) || jsonb_build_object('tasks', coalesce((
                 SELECT jsonb_agg(to_jsonb(t) ORDER BY t.task_order, t.task_id)
                 FROM lakehouse.flow_tasks t WHERE t.flow_id = f.flow_id), '[]'::jsonb)) ORDER BY f.flow_id)
      FROM lakehouse.flows f WHERE %(flow_id)s::text IS NULL OR f.flow_id = %(flow_id)s), '[]'::json),
  'templates', coalesce((SELECT json_agg(to_jsonb(t) ORDER BY t.template_id) FROM lakehouse.templates t), '[]'::json)"""
_PINNED_TEMPLATE_VERSIONS = """,
  'template_versions', coalesce((
      SELECT json_agg(to_jsonb(v) ORDER BY v.template_id, v.version) FROM lakehouse.template_versions v),
    '[]'::json)"""  # every version: a document being applied may pin one no stored task uses yet


def _with_cursor(dsn: str, read: Callable[[Any], _T]) -> _T:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            return read(cur)
    finally:
        conn.close()


def _stored(dsn: str, flow_id: str | None) -> dict[str, Any]:
    """Flows active or not (validation and export must see paused flows too), and all templates."""
    return _with_cursor(dsn, lambda cur: _stored_with(cur, flow_id))


def _stored_with(cur: Any, flow_id: str | None) -> dict[str, Any]:
    cur.execute("SELECT to_regclass('lakehouse.template_versions') IS NOT NULL")
    versioned = cur.fetchone()[0]  # false on a schema from before V004, met while migrating it
    query = "SELECT json_build_object(" + _STORED_FLOWS + (_PINNED_TEMPLATE_VERSIONS if versioned else "") + ")"
    cur.execute(query, {"flow_id": flow_id})
    (document,) = cur.fetchone()
    return document


def apply_flow_document(dsn: str, document: Any, source: str = "<document>") -> Flow:
    """Validate against the stored templates, then replace the flow's rows in one transaction."""
    parsed = parse_flow_document(document, source)
    flow = _flow(parsed)
    catalogue = Catalogue.from_document(_stored(dsn, flow.flow_id))
    problems = validate_flow(flow, catalogue.templates)
    if problems:
        raise FlowDocumentError(source, [str(p) for p in problems])
    row = parsed.flow_row()
    columns = list(row)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != "flow_id")
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            # column names come from FlowDocument.flow_row's fixed keys, never from the document
            cur.execute(
                f"INSERT INTO lakehouse.flows ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
                f"ON CONFLICT (flow_id) DO UPDATE SET {updates}, updated_at = now()",
                [row[c] for c in columns],
            )
            cur.execute("DELETE FROM lakehouse.flow_tasks WHERE flow_id = %s", (flow.flow_id,))
            for task in parsed.task_rows():
                cur.execute(
                    """INSERT INTO lakehouse.flow_tasks (flow_id, task_id, task_order, template_id, template_version,
                           upstream, parameters, retries, retry_delay_seconds, timeout_seconds, pool)
                       VALUES (%(flow_id)s, %(task_id)s, %(task_order)s, %(template_id)s, %(template_version)s,
                               %(upstream)s, %(parameters)s, %(retries)s, %(retry_delay_seconds)s,
                               %(timeout_seconds)s, %(pool)s)""",
                    {**task, "parameters": json.dumps(task["parameters"])},
                )
    except psycopg2.Error as exc:
        raise FlowDocumentError(source, [f"the database refused the rows: {exc.pgerror or exc}".strip()]) from exc
    finally:
        conn.close()
    return flow


def export_flow_document(dsn: str, flow_id: str) -> str:
    """The stored flow as YAML that ``apply`` accepts unchanged (a round trip keeps the rows)."""
    document = _stored(dsn, flow_id)
    if not document["flows"]:
        raise LookupError(f"no flow {flow_id!r} in lakehouse.flows")
    row = document["flows"][0]
    out = FlowDocument.from_rows(row, row["tasks"]).to_document()
    import yaml

    return yaml.safe_dump(out, sort_keys=False, allow_unicode=True, width=120)


def validate_stored_flows(dsn: str, flow_id: str | None = None) -> list[FlowProblem]:
    """Every problem of the stored flows (active or not) as the DAG factory would find them."""
    return _with_cursor(dsn, lambda cur: stored_flow_problems(cur, flow_id))


def stored_flow_problems(cur: Any, flow_id: str | None = None) -> list[FlowProblem]:
    """:func:`validate_stored_flows` on an open cursor, so a migration can check inside its transaction."""
    document = _stored_with(cur, flow_id)
    if flow_id is not None and not document["flows"]:
        return [FlowProblem(flow_id, "flows.flow_id", "no such flow")]
    by_flow = validate_catalogue(Catalogue.from_document(document))
    return [problem for found in by_flow.values() for problem in found]
