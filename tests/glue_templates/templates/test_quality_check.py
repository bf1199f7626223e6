"""quality_check on real Iceberg tables and raw batches: every check type, the failure report with
samples, and row counts compared with the previous successful run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakehouse_jobs.metrics import JobFailure
from lakehouse_jobs.quality import parse_checks
from lakehouse_jobs.templates import quality_check

pytestmark = pytest.mark.integration

CHECKS = [
    {"type": "not_null", "columns": ["order_id", "customer"]},
    {"type": "unique", "columns": ["order_id"]},
    {"type": "accepted_values", "column": "status", "values": ["open", "paid"]},
    {"type": "range", "column": "amount", "min": 0, "max": 1000},
    {"type": "row_count", "min": 1, "max_change": 0.5},
    {"type": "freshness", "column": "updated_at", "max_age_hours": 24},
    {"name": "current rows have a customer", "type": "not_null", "columns": ["customer"], "where": "status = 'paid'"},
]


def _run(
    tmp_path: Path,
    lake_uri: str,
    batch: str,
    *subject: str,
    checks: list | None = None,
    batch_time: str = "2026-11-23T12:00:00+00:00",
) -> dict:
    metrics_file = tmp_path / f"{batch}.json"
    quality_check.main(
        [
            "--batch_id",
            batch,
            "--batch_time",
            batch_time,
            "--lake_uri",
            lake_uri,
            "--metrics_uri",
            str(metrics_file),
            *subject,
            "--checks",
            json.dumps(checks or CHECKS),
        ]
    )
    return json.loads(metrics_file.read_text())


def _orders(spark: SparkSession, table: str, rows: str) -> None:
    spark.sql("CREATE NAMESPACE IF NOT EXISTS stage")
    spark.sql(
        f"CREATE OR REPLACE TABLE {table} USING iceberg AS SELECT * FROM VALUES {rows} "
        "AS t(order_id, customer, status, amount, updated_at)"
    )


def _good(n: int) -> str:
    return ", ".join(f"({i}, 'c{i}', 'paid', {i * 10}.0, TIMESTAMP'2026-11-23 08:00:00')" for i in range(1, n + 1))


GOOD = _good(10)


def test_all_checks_pass_then_each_failure_is_reported_with_samples(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    table = f"stage.orders_{unique}"
    _orders(spark, table, GOOD)
    ok = _run(tmp_path, lake_uri, f"q1_{unique}", "--table", table)
    assert (ok["rows_in"], ok["checks"], ok["checks_failed"]) == (10, 7, 0)

    bad = GOOD + (
        ", (3, NULL, 'paid', 5.0, TIMESTAMP'2026-11-23 08:00:00'), "
        "(11, 'c11', 'refunded', -4.0, TIMESTAMP'2026-11-20 00:00:00'), "
        "(12, 'c12', 'open', 2000.0, TIMESTAMP'2026-11-21 00:00:00')"
    )
    _orders(spark, table, bad)
    with pytest.raises(JobFailure) as failure:
        _run(tmp_path, lake_uri, f"q2_{unique}", "--table", table)
    report = str(failure.value)
    assert f"quality checks on {table}: 5 of 7 failed" in report
    assert "- not_null(order_id, customer): 1 rows with NULL in order_id, customer" in report
    assert "- unique(order_id): 1 values of (order_id) occur more than once" in report and '"_rows": 2' in report
    assert "- accepted_values(status): 1 rows with status not in ['open', 'paid']" in report and "refunded" in report
    assert "- range(amount): 2 rows with amount outside [0, 1000]" in report and "2000.0" in report
    assert "- current rows have a customer: 1 rows" in report
    metrics = json.loads((tmp_path / f"q2_{unique}.json").read_text())
    assert metrics["checks_failed"] == 5 and "error" in metrics
    assert "row_count" not in metrics["failed_checks"] and "freshness(updated_at)" not in metrics["failed_checks"]
    written = json.loads(Path(metrics["report_uri"].removeprefix("file://")).read_text())
    assert [c["name"] for c in written["checks"] if not c["passed"]] == metrics["failed_checks"]


def test_row_count_against_previous_run_and_freshness(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    table = f"stage.counts_{unique}"
    checks = [
        {"type": "row_count", "max_change": 0.5},
        {"type": "freshness", "column": "updated_at", "max_age_hours": 6},
    ]
    _orders(spark, table, GOOD)
    first = _run(tmp_path, lake_uri, f"c1_{unique}", "--table", table, checks=checks)
    assert first["checks_failed"] == 0
    _orders(spark, table, _good(4))  # 4 rows: -60%
    with pytest.raises(JobFailure, match=r"4 rows vs 10 in the previous run: a change of 60\.0%"):
        _run(tmp_path, lake_uri, f"c2_{unique}", "--table", table, checks=checks)
    with pytest.raises(
        JobFailure,
        match=r"freshness\(updated_at\): newest updated_at is 2026-11-23T08:00:00\+00:00, "
        r"28\.0 h old",
    ):
        _run(
            tmp_path, lake_uri, f"c3_{unique}", "--table", table, checks=checks, batch_time="2026-11-24T12:00:00+00:00"
        )
    # the failed runs did not become "the previous run": 10 is still the reference; a re-run of the
    # first batch compares with the run before it (none), not with itself
    _orders(spark, table, GOOD)
    assert _run(tmp_path, lake_uri, f"c4_{unique}", "--table", table, checks=checks)["checks_failed"] == 0
    assert _run(tmp_path, lake_uri, f"c4_{unique}", "--table", table, checks=checks)["checks_failed"] == 0


def test_checks_a_raw_batch(spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str) -> None:
    dataset, batch = f"qraw_{unique}", f"b_{unique}"
    folder = f"{lake_uri}/raw/{dataset}/_batch_id={batch}"
    spark.createDataFrame([(1, "a"), (2, None)], "id int, name string").write.parquet(folder)
    with pytest.raises(JobFailure, match=r"(?s)raw\.qraw_.*1 of 1 failed.*not_null\(name\): 1 rows"):
        _run(tmp_path, lake_uri, batch, "--dataset", dataset, checks=[{"type": "not_null", "columns": ["name"]}])


def test_bad_checks_are_refused_before_reading() -> None:
    with pytest.raises(ValueError, match="type must be one of"):
        parse_checks([{"type": "sometimes_null"}])
    with pytest.raises(ValueError, match="unknown keys"):
        parse_checks([{"type": "unique", "columns": ["id"], "colums": ["x"]}])
    with pytest.raises(ValueError, match="not a valid identifier"):
        parse_checks([{"type": "not_null", "columns": ["id; DROP"]}])
    with pytest.raises(ValueError, match="needs min and/or max"):
        parse_checks([{"type": "range", "column": "x"}])
