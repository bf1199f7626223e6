"""The schema is built by versioned migrations and refuses bad rows at INSERT time."""

from __future__ import annotations

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.metadata.migrations import discover, migrate


def test_migrations_are_idempotent(pg: Settings) -> None:
    assert migrate(pg.metadata_dsn) == []


def test_migration_files_are_named_and_ordered(settings: Settings, tmp_path) -> None:
    keys = [m.key for m in discover(settings.root / "metadata" / "migrations")]
    assert keys[0] == "V001" and "R__template_catalogue" in keys
    (tmp_path / "001_oops.sql").write_text("select 1")
    with pytest.raises(ValueError, match="not a migration name"):
        discover(tmp_path)


def fresh_database(pg: Settings, name: str) -> str:
    """An empty scratch database: isolated migrations there leave the real schema untouched."""
    admin = psycopg2.connect(pg.dsn("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    return name


def test_repeatable_migration_reapplies_on_change(pg: Settings, tmp_path) -> None:
    # an isolated migrations folder applied to a scratch database keeps the real schema untouched
    scratch = fresh_database(pg, "mig_scratch")
    (tmp_path / "V001__t.sql").write_text("CREATE TABLE lakehouse.t (x int);")
    (tmp_path / "R__rows.sql").write_text("DELETE FROM lakehouse.t; INSERT INTO lakehouse.t VALUES (1);")
    dsn = pg.dsn(scratch)
    assert migrate(dsn, tmp_path) == ["V001", "R__rows"]
    assert migrate(dsn, tmp_path) == []
    (tmp_path / "R__rows.sql").write_text("DELETE FROM lakehouse.t; INSERT INTO lakehouse.t VALUES (2);")
    assert migrate(dsn, tmp_path) == ["R__rows"]
    (tmp_path / "V001__t.sql").write_text("CREATE TABLE lakehouse.t (x bigint);")
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        migrate(dsn, tmp_path)


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("INSERT INTO lakehouse.flows (flow_id) VALUES ('Bad-Id')", "flows_flow_id_check"),
        ("INSERT INTO lakehouse.flows (flow_id, trigger_bucket) VALUES ('half_trigger', 'b')", "flows_check"),
        (
            "INSERT INTO lakehouse.flows (flow_id) VALUES ('fk_flow');"
            "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id) VALUES ('fk_flow', 'a', 'no_such')",
            "flow_tasks_template_id_fkey",
        ),
        (
            "INSERT INTO lakehouse.flows (flow_id) VALUES ('param_flow');"
            "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) "
            "VALUES ('param_flow', 'a', 'landing_to_raw', '[1]')",
            "flow_tasks_parameters_check",
        ),
    ],
)
def test_database_refuses_bad_rows(pg: Settings, statement: str, error: str) -> None:
    conn = psycopg2.connect(pg.metadata_dsn)
    try:
        with pytest.raises(psycopg2.IntegrityError, match=error), conn, conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def test_a_template_change_that_breaks_stored_flows_is_refused_and_names_them(pg: Settings, tmp_path) -> None:
    """Making a parameter required (or dropping one) would silently drop those flows' DAGs at the
    next parse: the migration refuses, names every flow and field, and changes nothing."""
    import shutil

    from lakehouse.metadata.migrations import TemplateChangeBreaksFlowsError

    scratch = fresh_database(pg, "mig_templates")
    real = pg.root / "metadata" / "migrations"
    for path in real.glob("V*.sql"):
        shutil.copy(path, tmp_path / path.name)
    spec = (
        '[{"name": "sql", "type": "str", "required": true}, {"name": "target_table", "type": "str", "required": true}]'
    )
    catalogue = tmp_path / "R__templates.sql"
    catalogue.write_text(
        f"INSERT INTO lakehouse.templates (template_id, script_location, parameter_spec) "
        f"VALUES ('present', 'present.py', '{spec}') ON CONFLICT (template_id) DO UPDATE "
        f"SET parameter_spec = EXCLUDED.parameter_spec;"
    )
    dsn = pg.dsn(scratch)
    migrate(dsn, tmp_path)
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        for flow_id in ("sales", "stock"):
            cur.execute("INSERT INTO lakehouse.flows (flow_id) VALUES (%s)", (flow_id,))
            cur.execute(
                "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) VALUES "
                '(%s, \'build\', \'present\', \'{"sql": "select 1", "target_table": "p.t"}\')',
                (flow_id,),
            )
    breaking = spec.replace("]", ', {"name": "partition_by", "type": "list", "required": true}]')
    catalogue.write_text(catalogue.read_text().replace(spec, breaking))
    with pytest.raises(TemplateChangeBreaksFlowsError) as raised:
        migrate(dsn, tmp_path)
    assert "would break 2 flow(s) (sales, stock)" in str(raised.value)
    assert "flow 'sales': flow_tasks[build].parameters.partition_by: required by template 'present'" in str(
        raised.value
    )
    with conn, conn.cursor() as cur:
        cur.execute("SELECT parameter_spec FROM lakehouse.templates WHERE template_id = 'present'")
        assert len(cur.fetchone()[0]) == 2  # unchanged
    compatible = spec.replace("]", ', {"name": "partition_by", "type": "list", "required": false}]')
    catalogue.write_text(catalogue.read_text().replace(breaking, compatible))
    assert migrate(dsn, tmp_path) == ["R__templates"]
    conn.close()
