"""Read every active flow, its tasks and every template in ONE query per parse.

The DAG processor parses often; a query per flow would make parse time grow with the number of
flows. The last good answer is kept on disk, so a parse while Postgres is down still yields the
DAGs (and says so in the log) instead of making every DAG disappear. A worker about to run a task
needs one DAG only: it asks for that flow alone (still one query) and leaves the snapshot alone,
which must always hold every flow.

The templates themselves are declared once, in ``metadata/migrations/R__template_catalogue.sql``;
:func:`declared_templates` reads that file without a database, so the templates reference
(``docs/templates.md``, :func:`templates_reference_markdown`) builds anywhere, and a test proves
the file reads exactly as Postgres applies it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import psycopg2

from lakehouse.flows import (
    PLACEHOLDER_NAMES,
    RESERVED_ARGUMENTS,
    Catalogue,
    ParameterSpecEntry,
    ParameterSpecList,
)

__all__ = [
    "CATALOGUE_QUERY",
    "CATALOGUE_SQL",
    "declared_templates",
    "fetch_catalogue_document",
    "load_catalogue",
    "templates_reference_markdown",
]

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


# -- the declarations: the catalogue's SQL file, read without a database -------------------------------
#: The one declaration of every template (a repeatable migration: re-applied when it changes).
CATALOGUE_SQL = Path(__file__).resolve().parents[3] / "metadata" / "migrations" / "R__template_catalogue.sql"

_SQL_TOKEN = re.compile(r"\s+|--[^\n]*|'(?:[^']|'')*'|-?\d+\b|[A-Za-z_][A-Za-z0-9_.]*|\S")


def _sql_tokens(text: str) -> list[str]:
    """Tokens outside comments: quoted literals whole, so a ``--`` or ``)`` inside one is text."""
    return [t for t in _SQL_TOKEN.findall(text) if not t.isspace() and not t.startswith("--")]


def _sql_value(token: str, where: str) -> Any:
    if token.startswith("'"):
        return token[1:-1].replace("''", "'")
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if token.upper() in ("NULL", "TRUE", "FALSE"):
        return {"NULL": None, "TRUE": True, "FALSE": False}[token.upper()]
    # E'...', $$...$$, casts, expressions: refused by name rather than half-read
    raise ValueError(f"{where}: only plain '...' strings, integers, NULL, true and false can be read, got {token!r}")


def declared_templates(path: Path = CATALOGUE_SQL) -> list[dict[str, Any]]:
    """The rows of every ``INSERT INTO lakehouse.templates`` of ``path``, as Postgres would store
    them (``parameter_spec`` parsed), in file order. Reading the SQL keeps it the one declaration:
    no generated file to forget, and the docs build needs no database."""
    tokens = _sql_tokens(path.read_text())
    rows: list[dict[str, Any]] = []
    i = 0
    while i < len(tokens):
        if [t.upper() for t in tokens[i : i + 3]] != ["INSERT", "INTO", "LAKEHOUSE.TEMPLATES"]:
            i += 1
            continue
        i += 3
        columns: list[str] = []
        if tokens[i] != "(":
            raise ValueError(f"{path.name}: INSERT INTO lakehouse.templates needs its column list")
        i += 1
        while tokens[i] != ")":
            if tokens[i] != ",":
                columns.append(tokens[i])
            i += 1
        if tokens[i + 1].upper() != "VALUES":
            raise ValueError(f"{path.name}: INSERT INTO lakehouse.templates needs VALUES")
        i += 2
        while tokens[i] == "(":
            values: list[Any] = []
            i += 1
            while tokens[i] != ")":
                if tokens[i] != ",":
                    values.append(_sql_value(tokens[i], f"{path.name}: row {len(rows) + 1}"))
                i += 1
            if len(values) != len(columns):
                raise ValueError(
                    f"{path.name}: row {len(rows) + 1} has {len(values)} values for {len(columns)} columns"
                )
            row = dict(zip(columns, values, strict=True))
            if isinstance(row.get("parameter_spec"), str):
                row["parameter_spec"] = json.loads(row["parameter_spec"])
            rows.append(row)
            i += 1
            if i < len(tokens) and tokens[i] == ",":
                i += 1
    return rows


# -- the templates reference page ---------------------------------------------------------------------
_TYPE_TEXT = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "json": "JSON (object or list)",
    "list": "list of strings",
}

_PAGE_HEAD = """\
# Templates

Every task of a flow runs one template: a Spark job (or a plain Python one) that takes its
parameters as `--name value` arguments. A task gives them in `parameters` (a flow document's
`tasks[].parameters`, or the `flow_tasks.parameters` column); they are checked against the
declarations below before any job starts, and every problem names the flow, the task and the
parameter.

Values may use placeholders, filled in per run:

{placeholders}

The orchestrator passes these arguments to every job itself; a task cannot set them:

{reserved}

<!-- Generated from metadata/migrations/R__template_catalogue.sql by
     `.venv/bin/lakehouse docs templates > docs/templates.md`; a test fails when it differs. -->

| Template | What it does |
| --- | --- |
"""


def _cell(text: str) -> str:
    """A table cell's text: a ``|`` would end the cell, a ``<`` start an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _rules(entries: list[ParameterSpecEntry]) -> list[str]:
    """The rules between parameters, each once (``a`` excludes ``b`` and ``b`` excludes ``a`` are one)."""
    rules: list[str] = []
    seen: set[frozenset[str]] = set()
    for entry in entries:
        for other, allowed in entry.requires.items():
            needs = (
                f"{_code(other)} is given"
                if allowed is None
                else f"{_code(other)} is {' or '.join(_code(v) for v in allowed)}"
            )
            default = next((e.default for e in entries if e.name == other), None)
            if allowed is not None and default in allowed:
                needs += f" (`{other}` omitted: its default {_code(default)})"
            rules.append(f"{_code(entry.name)} only when {needs}")
        for other in entry.excludes:
            if (pair := frozenset((entry.name, other))) not in seen:
                seen.add(pair)
                rules.append(f"{_code(entry.name)} and {_code(other)} cannot be given together")
        if entry.item_choices is not None:
            rules.append(
                f"{_code(entry.name)}: every item (or object value) is one of "
                + ", ".join(_code(v) for v in entry.item_choices)
            )
    return rules


def templates_reference_markdown(path: Path = CATALOGUE_SQL) -> str:
    """``docs/templates.md``: each template's description, parameters and the rules between them,
    in the catalogue's order, read through the same model the catalogue is loaded with."""
    templates = declared_templates(path)
    head = _PAGE_HEAD.format(
        placeholders=", ".join(f"`${{{n}}}`" for n in PLACEHOLDER_NAMES),
        reserved=", ".join(f"`{n}`" for n in RESERVED_ARGUMENTS),
    )
    index = [
        f"| [`{t['template_id']}`](#{t['template_id']}) | {_cell(t.get('description') or '')} |" for t in templates
    ]
    sections: list[str] = []
    for t in templates:
        entries = ParameterSpecList.model_validate(t.get("parameter_spec") or []).root
        lines = [
            f"## `{t['template_id']}`",
            "",
            _cell(t.get("description") or ""),
            "",
            f"Version {t.get('version', 1)}; the job: `glue_templates/{t['script_location']}`.",
            "",
            "| Parameter | Type | Required | Default | Choices | Meaning |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for e in entries:
            lines.append(
                "| "
                + " | ".join(
                    (
                        f"`{e.name}`",
                        _TYPE_TEXT[e.type],
                        "yes" if e.required else "no",
                        _cell(_code(e.default)) if e.default is not None else "",
                        _cell(", ".join(_code(c) for c in e.choices)) if e.choices is not None else "",
                        _cell(e.description),
                    )
                )
                + " |"
            )
        if rules := _rules(entries):
            lines += ["", "Rules between parameters:", "", *(f"- {_cell(rule)}" for rule in rules)]
        sections.append("\n".join(lines))
    return head + "\n".join(index) + "\n\n" + "\n\n".join(sections) + "\n"
