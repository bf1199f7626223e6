"""The catalogue rows of the ingestion and delivery templates declare exactly the jobs' arguments,
and the DAG factory's validator enforces their choices and combinations before a job starts."""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.flows import Flow, Template, validate_flow
from lakehouse_jobs.templates import (
    db_to_raw,
    http_to_landing,
    landing_to_raw,
    presentation_to_warehouse,
    quality_check,
)

MODULES = {
    m.TEMPLATE: m for m in (landing_to_raw, presentation_to_warehouse, quality_check, db_to_raw, http_to_landing)
}


@pytest.fixture(scope="module")
def templates(pg: Settings) -> dict[str, Template]:
    with psycopg2.connect(pg.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_jsonb(t) FROM lakehouse.templates t WHERE template_id = ANY(%s)", (list(MODULES),))
        return {t.template_id: t for t in (Template.from_row(row) for (row,) in cur.fetchall())}


@pytest.mark.parametrize("template_id", sorted(MODULES))
def test_catalogue_row_declares_the_job_arguments(templates: dict[str, Template], template_id: str) -> None:
    declared = {(p.name, p.type) for p in templates[template_id].parameters}
    assert declared == {(s.name, s.type) for s in MODULES[template_id].SPEC}
    required = {p.name for p in templates[template_id].parameters if p.required}
    # source_uri is required by the job and defaulted to ${file.uri} by the orchestrator
    assert required == {s.name for s in MODULES[template_id].SPEC if s.required} - {"source_uri"}


def _problems(templates: dict[str, Template], template_id: str, parameters: dict[str, Any]) -> list[str]:
    flow = Flow.from_row(
        {
            "flow_id": "f",
            "tasks": [{"flow_id": "f", "task_id": "t", "template_id": template_id, "parameters": parameters}],
        }
    )
    return [str(p).split("parameters.", 1)[-1] for p in validate_flow(flow, templates)]


def test_validator_enforces_formats_modes_and_combinations(templates: dict[str, Template]) -> None:
    assert (
        _problems(
            templates, "landing_to_raw", {"dataset": "d", "format": "jsonl", "json_paths": {"city": "address.city"}}
        )
        == []
    )
    assert _problems(templates, "landing_to_raw", {"dataset": "d", "format": "xml"})[0].startswith(
        "format: must be one of"
    )
    assert _problems(templates, "landing_to_raw", {"dataset": "d", "format": "csv", "widths": {"a": 1}}) == [
        "widths: needs 'format' in ['fixed_width'], got 'csv'"
    ]
    assert _problems(
        templates, "presentation_to_warehouse", {"source_table": "p.t", "target_table": "w.t", "merge_keys": ["id"]}
    ) == ["merge_keys: needs 'mode' in ['merge'], got 'replace'"]
    assert (
        _problems(
            templates,
            "presentation_to_warehouse",
            {
                "source_table": "p.t",
                "target_table": "w.t",
                "mode": "merge",
                "merge_keys": ["id"],
                "on_schema_change": "refuse",
            },
        )
        == []
    )
    assert len(_problems(templates, "quality_check", {"table": "s.t", "dataset": "d", "checks": []})) == 2
    assert (
        _problems(
            templates,
            "db_to_raw",
            {"dataset": "d", "source_table": "s.t", "watermark_column": "id", "secret_id": "crm"},
        )
        == []
    )
    assert (
        _problems(templates, "http_to_landing", {"url": "https://x/y.csv", "target_key": "rates/${logical_date}.csv"})
        == []
    )
