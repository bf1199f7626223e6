"""A flood of small files into a flow that gathers them into micro-batches: every row reaches the
warehouse exactly once, counted by source file, through few runs instead of one run per file."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lakehouse.config import Settings
from lakehouse.demo import query, wait_for_dag
from lakehouse.hooks.airflow_api import AirflowApiClient
from lakehouse.hooks.s3 import landing_client
from lakehouse.metadata.flow_documents import apply_flow_document

pytestmark = pytest.mark.e2e

FILES = 300
ROWS = 3


def test_300_files_at_once_reach_the_warehouse_once_each_in_few_runs(
    stack: Settings, client: AirflowApiClient, scalar
) -> None:
    apply_flow_document(
        stack.metadata_dsn,
        {
            "flow_id": "e2e_flood",
            "tags": ["e2e"],
            "trigger": {"bucket": "landing", "key_pattern": "flood/*.csv"},
            "max_files_per_run": 100,
            "batch_window_seconds": 2,
            "max_active_runs": 1,  # the runs rebuild one presentation table: one after another
            "tasks": [
                {
                    "task_id": "to_raw",
                    "template": "landing_to_raw",
                    "parameters": {
                        "dataset": "e2e_flood",
                        "format": "csv",
                        "schema": {"file_no": "int", "row_no": "int", "value": "string"},
                    },
                },
                {
                    "task_id": "to_stage",
                    "template": "raw_to_stage_scd2",
                    "parameters": {
                        "dataset": "e2e_flood",
                        "target_table": "stage.e2e_flood",
                        "keys": ["file_no", "row_no"],
                    },
                },
                {
                    "task_id": "to_presentation",
                    "template": "stage_to_presentation",
                    "parameters": {
                        "sql": "SELECT file_no, count(*) AS row_count, count(DISTINCT _source_file) AS sources "
                        "FROM stage.e2e_flood WHERE _is_current GROUP BY file_no",
                        "target_table": "presentation.e2e_flood",
                    },
                },
                {
                    "task_id": "to_warehouse",
                    "template": "presentation_to_warehouse",
                    "parameters": {"source_table": "presentation.e2e_flood", "target_table": "presentation.e2e_flood"},
                },
            ],
        },
    )
    wait_for_dag(client, "e2e_flood")
    s3 = landing_client(stack)

    def upload(i: int) -> None:
        body = "file_no,row_no,value\n" + "".join(f"{i},{r},v{i}_{r}\n" for r in range(1, ROWS + 1))
        s3.put_object(Bucket="landing", Key=f"flood/f{i:04d}.csv", Body=body.encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, range(FILES)))

    def triggered() -> int:
        return int(
            scalar(
                stack.metadata_dsn,
                "SELECT count(*) FROM lakehouse.file_ledger WHERE flow_id = 'e2e_flood' AND status = 'triggered'",
            )
        )

    deadline = time.monotonic() + 300
    while triggered() < FILES:
        assert time.monotonic() < deadline, f"only {triggered()} of {FILES} files reached a run"
        time.sleep(2)
    _, batches = query(
        stack.metadata_dsn,
        "SELECT dag_run_id, files FROM lakehouse.file_batches WHERE flow_id = 'e2e_flood' ORDER BY batch_id",
    )
    assert sum(files for _, files in batches) == FILES and all(files <= 100 for _, files in batches)
    assert len(batches) < FILES // 10, f"{len(batches)} runs for {FILES} files: the flood was not batched"
    for run_id, _ in batches:
        run = client.wait_for_dag_run("e2e_flood", run_id, timeout=900)
        assert run["state"] == "success", run

    _, rows = query(
        stack.warehouse_dsn, "SELECT file_no, row_count, sources FROM presentation.e2e_flood ORDER BY file_no"
    )
    assert rows == [(i, ROWS, 1) for i in range(FILES)]  # every row of every file, once
