"""The sample invoices flow's own task parameters (metadata/samples/invoices/flow.sql), run through
all four templates in-process on its two sample files: the metadata rows and the jobs agree."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from pyspark.sql import SparkSession

from lakehouse.config import Settings
from lakehouse_jobs.templates import (
    landing_to_raw,
    presentation_to_warehouse,
    raw_to_stage_scd2,
    stage_to_presentation,
)

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[3] / "metadata" / "samples" / "invoices"
_TASK = re.compile(r"\('invoices', '(\w+)', \d+, '\w+', \$json\$(.*?)\$json\$\)", re.DOTALL)


def _task_parameters() -> dict[str, dict[str, Any]]:
    return {task: json.loads(body) for task, body in _TASK.findall((SAMPLES / "flow.sql").read_text())}


def _as_argv(parameters: dict[str, Any]) -> list[str]:
    """Rendered the way the orchestrator passes them: lists comma-joined, objects as JSON."""
    argv: list[str] = []
    for name, value in parameters.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = ",".join(value)
        elif isinstance(value, dict):
            text = json.dumps(value)
        else:
            text = str(value)
        argv += [f"--{name}", text]
    return argv


def test_two_sample_files_through_all_templates(
    spark: SparkSession, pg: Settings, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKEHOUSE_WAREHOUSE_JDBC_URL", pg.jdbc_url(pg.warehouse_db))
    monkeypatch.setenv("LAKEHOUSE_WAREHOUSE_USER", pg.pg_user)
    monkeypatch.setenv("LAKEHOUSE_WAREHOUSE_PASSWORD", pg.pg_password)
    tasks = _task_parameters()
    assert list(tasks) == ["landing_to_raw", "raw_to_stage_scd2", "stage_to_presentation", "presentation_to_warehouse"]
    stage, presentation, warehouse = f"stage.invoices_{unique}", f"presentation.daily_{unique}", f"wh_{unique}.daily"
    tasks["raw_to_stage_scd2"]["target_table"] = stage
    tasks["stage_to_presentation"]["target_table"] = presentation
    tasks["stage_to_presentation"]["sql"] = tasks["stage_to_presentation"]["sql"].replace("stage.invoices", stage)
    tasks["presentation_to_warehouse"].update(source_table=presentation, target_table=warehouse)
    tasks["landing_to_raw"]["dataset"] = tasks["raw_to_stage_scd2"]["dataset"] = f"invoices_{unique}"

    metrics: dict[str, list[dict[str, Any]]] = {}
    for day in ("2026-11-01", "2026-11-02"):
        batch = f"s3__invoices__{day}_{unique}"
        common = ["--flow_id", "invoices", "--run_id", f"manual__{day}", "--batch_id", batch, "--lake_uri", pg.lake_uri]
        extra = {"landing_to_raw": ["--source_uri", str(SAMPLES / f"invoices_{day}.txt")]}
        modules = {
            "landing_to_raw": landing_to_raw,
            "raw_to_stage_scd2": raw_to_stage_scd2,
            "stage_to_presentation": stage_to_presentation,
            "presentation_to_warehouse": presentation_to_warehouse,
        }
        for task, module in modules.items():
            argv = [*common, "--task_id", task, *extra.get(task, []), *_as_argv(tasks[task])]
            metrics.setdefault(task, []).append(module.main(argv))

    assert [(m["rows_in"], m["rows_out"], m["rows_rejected"]) for m in metrics["landing_to_raw"]] == [
        (5, 5, 0),
        (5, 4, 1),
    ]
    # day 2: INV-1003 changed amount, INV-1005 unchanged, INV-1006 and INV-1007 new
    assert [(m["rows_out"], m["versions_closed"]) for m in metrics["raw_to_stage_scd2"]] == [(5, 0), (3, 1)]
    history = spark.table(stage).filter("invoice_id = 'INV-1003'").orderBy("_valid_from").collect()
    assert [(str(r["amount"]), r["_is_current"]) for r in history] == [("420.00", False), ("380.00", True)]
    with psycopg2.connect(pg.warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT invoice_date::text, invoice_count, total_amount::text FROM {warehouse} ORDER BY 1")
        # 2026-11-01: 596.00 + 249.90 + 380.00 (INV-1003 corrected by the second file)
        assert cur.fetchall() == [
            ("2026-11-01", 3, "1225.90"),
            ("2026-11-02", 2, "485.40"),
            ("2026-11-03", 2, "890.00"),
        ]
