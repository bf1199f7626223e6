"""`lakehouse flow apply / export / validate`: YAML in, the same rows out, every problem named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from lakehouse.config import Settings
from lakehouse.metadata.flow_documents import (
    FlowDocumentError,
    apply_flow_document,
    export_flow_document,
    read_flow_document,
    validate_stored_flows,
)

DOCUMENT = """
flow_id: doc_orders
description: orders from the shop, daily
schedule: "15 4 * * *"
trigger: {bucket: landing, key_pattern: "orders/*.csv", syntax: glob}
owner: shop-data
tags: [shop]
max_active_runs: 2
tasks:
  - task_id: ingest
    template: landing_to_raw
    retries: 2
    parameters: {dataset: orders, format: csv}
  - task_id: history
    template: raw_to_stage_scd2
    parameters: {dataset: orders, target_table: stage.orders, keys: [order_id]}
  - task_id: by_day
    template: stage_to_presentation
    upstream: [history]
    parameters: {sql: "SELECT 1 AS x", target_table: presentation.orders_by_day}
  - task_id: by_shop
    template: stage_to_presentation
    upstream: [history]
    pool: shop_pool
    timeout_seconds: 600
    parameters: {sql: "SELECT 2 AS x", target_table: presentation.orders_by_shop}
"""


def stored_rows(settings: Settings, flow_id: str) -> tuple[Any, list[Any]]:
    with psycopg2.connect(settings.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT schedule, trigger_key_pattern, owner, tags, max_active_runs, is_active "
            "FROM lakehouse.flows WHERE flow_id = %s",
            (flow_id,),
        )
        flow = cur.fetchone()
        cur.execute(
            "SELECT task_id, task_order, template_id, upstream, parameters, retries, timeout_seconds, pool "
            "FROM lakehouse.flow_tasks WHERE flow_id = %s ORDER BY task_order",
            (flow_id,),
        )
        tasks = cur.fetchall()
    conn.close()
    return flow, tasks


@pytest.fixture
def clean(pg: Settings):
    yield pg
    with psycopg2.connect(pg.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id LIKE 'doc\\_%'")
    conn.close()


def test_apply_then_export_round_trips_the_rows(clean: Settings, tmp_path: Path) -> None:
    flow = apply_flow_document(clean.metadata_dsn, yaml.safe_load(DOCUMENT))
    assert [t.task_id for t in flow.tasks] == ["ingest", "history", "by_day", "by_shop"]
    first = stored_rows(clean, "doc_orders")
    assert first[0] == ("15 4 * * *", "orders/*.csv", "shop-data", ["shop"], 2, True)
    assert first[1][3] == (
        "by_shop",
        4,
        "stage_to_presentation",
        ["history"],
        {"sql": "SELECT 2 AS x", "target_table": "presentation.orders_by_shop"},
        0,
        600,
        "shop_pool",
    )
    exported = tmp_path / "doc_orders.yaml"
    exported.write_text(export_flow_document(clean.metadata_dsn, "doc_orders"))
    apply_flow_document(clean.metadata_dsn, read_flow_document(exported), str(exported))
    assert stored_rows(clean, "doc_orders") == first


def test_every_problem_is_named_and_nothing_is_written(clean: Settings) -> None:
    document = yaml.safe_load(DOCUMENT)
    document["schedul"] = "@daily"
    document["tasks"][0]["template"] = "landing_to_rawz"
    document["tasks"][1]["parameters"].pop("keys")
    document["tasks"][2]["upstream"] = ["by_shop"]
    document["tasks"][3]["upstream"] = ["by_day"]
    with pytest.raises(FlowDocumentError) as raised:
        apply_flow_document(clean.metadata_dsn, document, "orders.yaml")
    assert raised.value.problems == [
        "schedul: unknown key (known: active, alert_target, batch_window_seconds, dag_id, description, flow_id, "
        "max_active_runs, max_files_per_run, owner, schedule, tags, tasks, trigger)"
    ]
    del document["schedul"]
    with pytest.raises(FlowDocumentError) as raised:
        apply_flow_document(clean.metadata_dsn, document, "orders.yaml")
    text = str(raised.value)
    assert text.startswith("orders.yaml: ")
    assert "flow 'doc_orders': flow_tasks[ingest].template_id: unknown template 'landing_to_rawz'" in text
    assert "flow_tasks[history].parameters.keys: required by template 'raw_to_stage_scd2' but missing" in text
    assert "flow_tasks.upstream: cycle: " in text
    assert stored_rows(clean, "doc_orders") == (None, [])


def test_structural_problems_name_the_field(clean: Settings) -> None:
    document = {
        "flow_id": "doc_bad",
        "max_active_runs": True,
        "trigger": {"bucket": "landing"},
        "tasks": [{"task_id": "a", "template": "stage_to_presentation", "retries": "3", "colour": 1}],
    }
    with pytest.raises(FlowDocumentError) as raised:
        apply_flow_document(clean.metadata_dsn, document, "bad.yaml")
    assert raised.value.problems == [
        "trigger: bucket and key_pattern go together",
        "max_active_runs: expected an integer, got bool True",
        "tasks[a].retries: expected an integer, got str '3'",
        "tasks[a].colour: unknown key (known: parameters, pool, retries, retry_delay_seconds, task_id, "
        "template, template_version, timeout_seconds, upstream)",
    ]
    document = {
        "flow_id": "doc_bad",
        "trigger": {"bucket": "landing", "key_pattern": "x/*", "syntax": "re"},
        "tasks": [
            {"task_id": "a", "template": "stage_to_presentation"},
            {"template": "x", "upstream": "a"},
            {"task_id": "a", "template": "stage_to_presentation"},
        ],
    }
    with pytest.raises(FlowDocumentError) as raised:
        apply_flow_document(clean.metadata_dsn, document, "bad.yaml")
    assert raised.value.problems == [
        "trigger.syntax: expected 'glob' or 'regex', got str 're'",
        "tasks[1].task_id: required (the task's name, unique in the flow)",
        "tasks[1].upstream: expected a list, got str 'a'",
    ]
    del document["tasks"][1]
    with pytest.raises(FlowDocumentError, match=r"tasks: task_id 'a' given to more than one task"):
        apply_flow_document(clean.metadata_dsn, {**document, "trigger": None}, "bad.yaml")


def test_trigger_options_and_batching_round_trip(clean: Settings) -> None:
    document = {
        "flow_id": "doc_batched",
        "trigger": {"bucket": "landing", "key_pattern": "b/.*\\.csv", "syntax": "regex", "multi_match": False},
        "max_files_per_run": 50,
        "batch_window_seconds": 30,
        "active": False,
        "tasks": [
            {
                "task_id": "a",
                "template": "stage_to_presentation",
                "upstream": [],
                "parameters": {"sql": "select 1", "target_table": "p.t"},
            }
        ],
    }
    apply_flow_document(clean.metadata_dsn, document)
    exported = yaml.safe_load(export_flow_document(clean.metadata_dsn, "doc_batched"))
    assert exported["trigger"] == document["trigger"]
    assert (exported["max_files_per_run"], exported["batch_window_seconds"], exported["active"]) == (50, 30, False)
    assert exported["tasks"] == document["tasks"]
    with psycopg2.connect(clean.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT trigger_multi_match, trigger_pattern_syntax FROM lakehouse.flows WHERE flow_id = 'doc_batched'"
        )
        assert cur.fetchone() == (False, "regex")
        cur.execute("DELETE FROM lakehouse.flow_tasks WHERE flow_id = 'doc_batched'")
    conn.close()
    with pytest.raises(FlowDocumentError, match=r"lakehouse.flows\[doc_batched\]: tasks: expected a non-empty list"):
        export_flow_document(clean.metadata_dsn, "doc_batched")


def test_a_refused_row_rolls_back_the_whole_flow(clean: Settings) -> None:
    apply_flow_document(clean.metadata_dsn, yaml.safe_load(DOCUMENT))
    before = stored_rows(clean, "doc_orders")
    document = yaml.safe_load(DOCUMENT)
    document["owner"] = "someone-else"
    document["tasks"][3]["pool"] = "not a pool name!"  # the table's CHECK refuses it
    with pytest.raises(FlowDocumentError, match=r"the database refused the rows: .*flow_tasks_pool_check"):
        apply_flow_document(clean.metadata_dsn, document)
    assert stored_rows(clean, "doc_orders") == before


def test_validate_sees_rows_written_with_plain_sql_even_paused_flows(clean: Settings) -> None:
    with psycopg2.connect(clean.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO lakehouse.flows (flow_id, schedule, is_active) VALUES ('doc_paused', '@dayly', false)")
        cur.execute(
            "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) VALUES "
            "('doc_paused', 'load', 'presentation_to_warehouse', '{\"source_table\": 3}')"
        )
    conn.close()
    problems = [str(p) for p in validate_stored_flows(clean.metadata_dsn, "doc_paused")]
    assert "flow 'doc_paused': flows.schedule: unknown preset '@dayly'" in problems[0]
    assert any("flow_tasks[load].parameters.source_table: expected str, got int 3" in p for p in problems)
    assert any("flow_tasks[load].parameters.target_table: required by template" in p for p in problems)
    assert [str(p) for p in validate_stored_flows(clean.metadata_dsn, "doc_nowhere")] == [
        "flow 'doc_nowhere': flows.flow_id: no such flow"
    ]


def test_the_database_refuses_an_unknown_template_at_insert(clean: Settings) -> None:
    """Foreign keys catch the commonest typo at INSERT time, before any parse."""
    with psycopg2.connect(clean.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO lakehouse.flows (flow_id) VALUES ('doc_fk')")
        with pytest.raises(psycopg2.errors.ForeignKeyViolation, match="template_id"):
            cur.execute(
                "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id) "
                "VALUES ('doc_fk', 'a', 'no_such_template')"
            )
    conn.close()


def test_a_pinned_task_keeps_its_template_version_after_a_new_one_ships(clean: Settings) -> None:
    """Version 2 of a template makes a new parameter required: the flow pinned to version 1 keeps
    validating and running version 1's script; an unpinned flow would need the new parameter."""
    from lakehouse.dag_factory import build_dags
    from lakehouse.metadata.catalogue import load_catalogue

    conn = psycopg2.connect(clean.metadata_dsn)
    spec_v1 = '[{"name": "sql", "type": "str", "required": true}]'
    spec_v2 = '[{"name": "sql", "type": "str", "required": true}, {"name": "mode", "type": "str", "required": true}]'
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.templates WHERE template_id = 'doc_tpl'")
        cur.execute(
            "INSERT INTO lakehouse.templates (template_id, version, script_location, parameter_spec) "
            "VALUES ('doc_tpl', 1, 'doc_tpl_v1.py', %s)",
            (spec_v1,),
        )
    document = {
        "flow_id": "doc_pinned",
        "tasks": [{"task_id": "a", "template": "doc_tpl", "template_version": 1, "parameters": {"sql": "select 1"}}],
    }
    apply_flow_document(clean.metadata_dsn, document)
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE lakehouse.templates SET version = 2, script_location = 'doc_tpl_v2.py', "
            "parameter_spec = %s WHERE template_id = 'doc_tpl'",
            (spec_v2,),
        )
    assert validate_stored_flows(clean.metadata_dsn, "doc_pinned") == []
    dag = build_dags(load_catalogue(clean.metadata_dsn), clean)["doc_pinned"]
    assert dag.task_dict["a"].template.script_location == "doc_tpl_v1.py"
    assert "template_version: 1" in export_flow_document(clean.metadata_dsn, "doc_pinned")
    unpinned = {
        **document,
        "flow_id": "doc_unpinned",
        "tasks": [{"task_id": "a", "template": "doc_tpl", "parameters": {"sql": "select 1"}}],
    }
    with pytest.raises(FlowDocumentError, match=r"parameters.mode: required by template 'doc_tpl'"):
        apply_flow_document(clean.metadata_dsn, unpinned)
    missing = {
        **document,
        "flow_id": "doc_pin7",
        "tasks": [{"task_id": "a", "template": "doc_tpl", "template_version": 7, "parameters": {"sql": "x"}}],
    }
    with pytest.raises(
        FlowDocumentError,
        match=r"flow_tasks\[a\].template_version: template 'doc_tpl' has no "
        r"version 7 \(current: 2\)",
    ):
        apply_flow_document(clean.metadata_dsn, missing)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = 'doc_pinned'")
        cur.execute("DELETE FROM lakehouse.templates WHERE template_id = 'doc_tpl'")
    conn.close()
