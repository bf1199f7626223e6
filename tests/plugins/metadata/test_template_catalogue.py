"""The template catalogue is declared once, in its SQL file: read without a database exactly as
Postgres applies it, checked by the parameter-spec model, rendered as docs/templates.md."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from lakehouse.cli import main
from lakehouse.config import Settings
from lakehouse.flows import Flow, ParameterSpec, Template, validate_flow
from lakehouse.metadata.catalogue import CATALOGUE_SQL, declared_templates, templates_reference_markdown

ROOT = Path(__file__).resolve().parents[3]
COLUMNS = ("template_id", "version", "script_location", "description", "parameter_spec")


def test_the_sql_file_reads_as_postgres_applies_it(pg: Settings) -> None:
    declared = {row["template_id"]: {c: row.get(c) for c in COLUMNS} for row in declared_templates()}
    with psycopg2.connect(pg.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM lakehouse.templates WHERE template_id NOT LIKE 'doc\\_%'")
        stored = {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in cur.fetchall()}
    conn.close()
    assert declared == stored


def test_every_declared_parameter_spec_passes_the_model() -> None:
    templates = [Template.from_row(row) for row in declared_templates()]
    assert [(t.template_id, t.problem) for t in templates if t.problem] == []
    assert all(p.description for t in templates for p in t.parameters)


def test_the_reader_keeps_quotes_and_comment_marks_inside_literals(tmp_path: Path) -> None:
    sql = tmp_path / "R__t.sql"
    sql.write_text(
        "-- a comment ('not a row')\n"
        "INSERT INTO lakehouse.templates (template_id, version, script_location, description, parameter_spec) VALUES\n"
        "('a', 2, 'a.py', 'it''s -- not a comment), really',\n"
        ' \'[{"name": "x", "description": "the stack\'\'s"}]\'),\n'
        "('b', 1, 'b.py', NULL, '[]') -- trailing\n"
        "ON CONFLICT (template_id) DO NOTHING;\n"
    )
    assert declared_templates(sql) == [
        {
            "template_id": "a",
            "version": 2,
            "script_location": "a.py",
            "description": "it's -- not a comment), really",
            "parameter_spec": [{"name": "x", "description": "the stack's"}],
        },
        {"template_id": "b", "version": 1, "script_location": "b.py", "description": None, "parameter_spec": []},
    ]
    sql.write_text("INSERT INTO lakehouse.templates (template_id, description) VALUES ('a', $$x$$);")
    with pytest.raises(ValueError, match=r"R__t.sql: row 1: only plain '...' strings"):
        declared_templates(sql)


def test_a_malformed_parameter_spec_invalidates_only_the_flows_using_it() -> None:
    """A parse never fails for one bad row: the template carries its problem, its flows show it."""
    bad = Template.from_row(
        {
            "template_id": "bad",
            "script_location": "bad.py",
            "parameter_spec": [
                {"name": "n", "type": "int", "default": "ten"},
                {"name": "m", "required": "yes", "colour": 1},
                {"name": "k", "excludes": ["nowhere"]},
            ],
        }
    )
    assert bad.parameters == () and bad.problem is not None
    assert bad.problem.startswith(
        "parameter_spec[n]: default expected int, got str 'ten'; "
        "parameter_spec[m].required: Input should be a valid boolean, got 'yes'; "
        "parameter_spec[m].colour: unknown key (known: name, type, required, default"
    )
    good = Template("good", "good.py", parameters=(ParameterSpec("x"),))
    flow = Flow.from_row(
        {
            "flow_id": "f",
            "tasks": [
                {"flow_id": "f", "task_id": "a", "template_id": "bad", "parameters": {"n": 1}},
                {"flow_id": "f", "task_id": "b", "template_id": "good", "parameters": {"x": "y"}},
            ],
        }
    )
    assert [str(p) for p in validate_flow(flow, {"bad": bad, "good": good})] == [
        f"flow 'f': flow_tasks[a].template_id: template 'bad' has an invalid parameter_spec: {bad.problem}"
    ]
    names = Template.from_row(
        {
            "template_id": "t",
            "script_location": "t.py",
            "parameter_spec": [{"name": "a", "excludes": ["b"]}, {"name": "a"}, {"name": "c", "requires": {"d": None}}],
        }
    )
    assert names.problem == (
        "parameter_spec: 'a' is declared twice; 'a' names an undeclared parameter 'b'; "
        "'c' names an undeclared parameter 'd'"
    )


def test_the_templates_page_is_what_the_declarations_render(capsys: pytest.CaptureFixture[str]) -> None:
    page = ROOT / "docs" / "templates.md"
    assert page.read_text() == templates_reference_markdown(), (
        "docs/templates.md is stale: run `.venv/bin/lakehouse docs templates > docs/templates.md`"
    )
    assert main(["docs", "templates"]) == 0
    assert capsys.readouterr().out == page.read_text()


def test_the_page_shows_every_template_parameter_and_rule() -> None:
    page = templates_reference_markdown(CATALOGUE_SQL)
    for row in declared_templates():
        assert f"\n## `{row['template_id']}`\n" in page
        for entry in row["parameter_spec"]:
            assert f"| `{entry['name']}` |" in page
    assert "| `format` | string | yes |  | `csv`, `json`, `jsonl`, `parquet`, `fixed_width`, `regex` |" in page
    assert "| `source_uri` | string | no | `${files.uri}` |" in page
    assert "- `op_mapping` only when `op_column` is given" in page
    assert "- `op_column` only when `mode` is `cdc` (`mode` omitted: its default `cdc`)" in page
    assert "- `track_columns` and `track_except` cannot be given together" in page
    assert page.count("`track_columns` and `track_except`") + page.count("`track_except` and `track_columns`") == 1
    assert "- `op_mapping`: every item (or object value) is one of `I`, `U`, `D`" in page
    assert "not_null\\|unique" in page and "raw/&lt;dataset>/" in page  # a cell stays one cell, no HTML tag
