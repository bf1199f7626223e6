"""Flows as YAML files: ``lakehouse flow apply / export / validate``.

The rows stay the single source of truth (the DAG factory and the invoker read only them); a YAML
file is a convenient way to write and review them in git. ``apply`` checks the document the way
the DAG factory will, against the templates in the database, and writes the flow and all of its
tasks in one transaction, so Airflow never parses half a flow.

Document shape (every key but ``flow_id`` and ``tasks`` optional; defaults as in the tables)::

    flow_id: invoices
    dag_id: invoices
    description: Customer invoice files -> daily expenses
    schedule: null                 # cron or preset; null: file-triggered only
    trigger: {bucket: landing, key_pattern: "invoices/*.txt", syntax: glob}
    owner: finance-data
    alert_target: null             # e-mail, https:// webhook or arn:aws:sns:...
    tags: [invoices]
    max_active_runs: 16
    max_files_per_run: 1           # above 1: pending files are gathered into one run (micro-batch)
    batch_window_seconds: 0        # with batching: how long a batch waits after its first file
    active: true
    tasks:
      - task_id: landing_to_raw
        template: landing_to_raw
        template_version: 1        # omitted: always the template's current version
        upstream: []               # omitted: the previous task in the list
        retries: 0
        retry_delay_seconds: 60
        timeout_seconds: null
        pool: null
        parameters: {dataset: invoices, format: regex, ...}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg2

from lakehouse.flows import Catalogue, Flow, FlowProblem, validate_catalogue, validate_flow

__all__ = [
    "FlowDocumentError",
    "flow_from_document",
    "read_flow_document",
    "apply_flow_document",
    "export_flow_document",
    "validate_stored_flows",
    "stored_flow_problems",
]

_T = TypeVar("_T")
_FLOW_KEYS = {"flow_id", "dag_id", "description", "schedule", "trigger", "owner", "alert_target", "tags",
              "max_active_runs", "max_files_per_run", "batch_window_seconds", "active", "tasks"}
_TRIGGER_KEYS = {"bucket", "key_pattern", "syntax", "multi_match"}
_TASK_KEYS = {"task_id", "template", "template_version", "upstream", "retries", "retry_delay_seconds", "timeout_seconds", "pool",
              "parameters"}


class FlowDocumentError(ValueError):
    """A flow document that cannot be applied; ``problems`` names every field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


@dataclass(frozen=True)
class _Rows:
    flow: dict[str, Any]
    tasks: list[dict[str, Any]]


def _expect(problems: list[str], where: str, value: Any, kind: type, what: str) -> None:
    """None means "use the default"; YAML's true/false must not pass for a number."""
    if value is None or (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))):
        return
    problems.append(f"{where}: expected {what}, got {type(value).__name__} {value!r}")


def _to_rows(document: Any, source: str) -> _Rows:
    """The flows / flow_tasks rows of a document, or every structural problem at once."""
    problems: list[str] = []
    if not isinstance(document, Mapping):
        raise FlowDocumentError(source, [f"expected a mapping at the top, got {type(document).__name__}"])
    for key in sorted(set(document) - _FLOW_KEYS):
        problems.append(f"{key}: unknown key (known: {', '.join(sorted(_FLOW_KEYS))})")
    flow_id = document.get("flow_id")
    if not isinstance(flow_id, str) or not flow_id:
        problems.append("flow_id: required, a name like 'orders_daily'")
    trigger = document.get("trigger") or {}
    if not isinstance(trigger, Mapping):
        problems.append(f"trigger: expected a mapping with bucket and key_pattern, got {trigger!r}")
        trigger = {}
    for key in sorted(set(trigger) - _TRIGGER_KEYS):
        problems.append(f"trigger.{key}: unknown key (known: {', '.join(sorted(_TRIGGER_KEYS))})")
    if bool(trigger.get("bucket")) != bool(trigger.get("key_pattern")):
        problems.append("trigger: bucket and key_pattern go together")
    for key, kinds, what in (("dag_id", str, "a string"), ("description", str, "a string"),
                             ("schedule", str, "a cron expression or preset"), ("owner", str, "a string"),
                             ("alert_target", str, "a string"), ("tags", list, "a list of strings"),
                             ("max_active_runs", int, "an integer"), ("max_files_per_run", int, "an integer"),
                             ("batch_window_seconds", int, "an integer"), ("active", bool, "true or false")):
        _expect(problems, key, document.get(key), kinds, what)
    _expect(problems, "trigger.multi_match", trigger.get("multi_match"), bool, "true or false")
    flow = {
        "flow_id": flow_id,
        "dag_id": document.get("dag_id"),
        "description": document.get("description") or "",
        "schedule": document.get("schedule"),
        "trigger_bucket": trigger.get("bucket"),
        "trigger_key_pattern": trigger.get("key_pattern"),
        "trigger_pattern_syntax": trigger.get("syntax") or "glob",
        "owner": document.get("owner") or "lakehouse",
        "alert_target": document.get("alert_target"),
        "tags": list(document.get("tags") or []),
        "max_active_runs": document.get("max_active_runs") or 16,
        "max_files_per_run": document.get("max_files_per_run") or 1,
        "batch_window_seconds": document.get("batch_window_seconds") or 0,
        "is_active": document.get("active", True),
    }
    if trigger.get("multi_match") is not None:
        flow["trigger_multi_match"] = trigger["multi_match"]
    raw_tasks = document.get("tasks")
    tasks: list[dict[str, Any]] = []
    if not isinstance(raw_tasks, list) or not raw_tasks:
        problems.append("tasks: required, a non-empty list")
        raw_tasks = []
    for index, raw in enumerate(raw_tasks):
        where = f"tasks[{index}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: expected a mapping, got {raw!r}")
            continue
        where = f"tasks[{raw.get('task_id', index)}]"
        for key in sorted(set(raw) - _TASK_KEYS):
            problems.append(f"{where}.{key}: unknown key (known: {', '.join(sorted(_TASK_KEYS))})")
        for key in ("task_id", "template"):
            if not isinstance(raw.get(key), str) or not raw.get(key):
                problems.append(f"{where}.{key}: required, a string")
        for key, kinds, what in (("upstream", list, "a list of task ids"), ("retries", int, "an integer"),
                                 ("template_version", int, "a template version number"),
                                 ("retry_delay_seconds", int, "an integer"), ("timeout_seconds", int, "an integer"),
                                 ("pool", str, "a pool name"), ("parameters", dict, "a mapping")):
            _expect(problems, f"{where}.{key}", raw.get(key), kinds, what)
        tasks.append({
            "flow_id": flow_id,
            "task_id": raw.get("task_id"),
            "task_order": index + 1,
            "template_id": raw.get("template"),
            "template_version": raw.get("template_version"),
            "upstream": raw.get("upstream"),
            "parameters": dict(raw.get("parameters") or {}),
            "retries": raw.get("retries") or 0,
            "retry_delay_seconds": raw.get("retry_delay_seconds", 60),
            "timeout_seconds": raw.get("timeout_seconds"),
            "pool": raw.get("pool"),
        })
    if problems:
        raise FlowDocumentError(source, problems)
    return _Rows(flow, tasks)


def flow_from_document(document: Any, source: str = "<document>") -> Flow:
    """The typed flow a document describes (structure checked; templates not yet)."""
    rows = _to_rows(document, source)
    return Flow.from_row({**rows.flow, "tasks": rows.tasks})


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
    rows = _to_rows(document, source)
    flow = Flow.from_row({**rows.flow, "tasks": rows.tasks})
    catalogue = Catalogue.from_document(_stored(dsn, flow.flow_id))
    problems = validate_flow(flow, catalogue.templates)
    if problems:
        raise FlowDocumentError(source, [str(p) for p in problems])
    columns = list(rows.flow)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != "flow_id")
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            # column names come from the fixed key set above, never from the document
            cur.execute(
                f"INSERT INTO lakehouse.flows ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
                f"ON CONFLICT (flow_id) DO UPDATE SET {updates}, updated_at = now()",
                [rows.flow[c] for c in columns],
            )
            cur.execute("DELETE FROM lakehouse.flow_tasks WHERE flow_id = %s", (flow.flow_id,))
            for task in rows.tasks:
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
    trigger: dict[str, Any] = {}
    if row.get("trigger_bucket"):
        trigger = {"bucket": row["trigger_bucket"], "key_pattern": row["trigger_key_pattern"],
                   "syntax": row.get("trigger_pattern_syntax") or "glob"}
        if row.get("trigger_multi_match") is False:
            trigger["multi_match"] = False
    out: dict[str, Any] = {"flow_id": row["flow_id"]}
    if row.get("dag_id") and row["dag_id"] != row["flow_id"]:
        out["dag_id"] = row["dag_id"]
    out.update({
        "description": row.get("description") or "",
        "schedule": row.get("schedule"),
        **({"trigger": trigger} if trigger else {}),
        "owner": row.get("owner"),
        "alert_target": row.get("alert_target"),
        "tags": list(row.get("tags") or []),
        "max_active_runs": row.get("max_active_runs"),
        **({"max_files_per_run": row["max_files_per_run"]} if (row.get("max_files_per_run") or 1) != 1 else {}),
        **({"batch_window_seconds": row["batch_window_seconds"]} if row.get("batch_window_seconds") else {}),
        "active": row.get("is_active", True),
    })
    tasks = []
    for t in row["tasks"]:
        task: dict[str, Any] = {"task_id": t["task_id"], "template": t["template_id"]}
        if t.get("template_version") is not None:
            task["template_version"] = t["template_version"]
        if t.get("upstream") is not None:  # NULL (the previous task) stays implicit
            task["upstream"] = list(t["upstream"])
        for key, default in (("retries", 0), ("retry_delay_seconds", 60), ("timeout_seconds", None), ("pool", None)):
            if t.get(key) != default:
                task[key] = t.get(key)
        task["parameters"] = t.get("parameters") or {}
        tasks.append(task)
    out["tasks"] = tasks
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
