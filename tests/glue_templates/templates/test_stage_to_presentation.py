"""stage_to_presentation: a query becomes an Iceberg table; anything but a query is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakehouse_jobs.sql import UnsafeSqlError
from lakehouse_jobs.templates import stage_to_presentation

pytestmark = pytest.mark.integration


def _run(tmp_path: Path, lake_uri: str, sql: str, target: str) -> dict:
    metrics_file = tmp_path / "metrics.json"
    stage_to_presentation.main(
        [
            "--batch_id",
            "b1",
            "--lake_uri",
            lake_uri,
            "--metrics_uri",
            str(metrics_file),
            "--sql",
            sql,
            "--target_table",
            target,
        ]
    )
    return json.loads(metrics_file.read_text())


def test_creates_and_replaces_the_table(spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str) -> None:
    source = f"stage.src_{unique}"
    spark.sql("CREATE NAMESPACE IF NOT EXISTS stage")
    spark.sql(
        f"CREATE TABLE {source} (invoice_date date, amount decimal(12,2), _is_current boolean, "
        f"_is_deleted boolean) USING iceberg"
    )
    spark.sql(
        f"INSERT INTO {source} VALUES (DATE'2026-11-01', 10.00, true, false), "
        f"(DATE'2026-11-01', 5.50, true, false), (DATE'2026-11-02', 7.00, true, false), "
        f"(DATE'2026-11-02', 99.00, false, false)"
    )
    target = f"pres_{unique}.daily"  # the namespace does not exist yet
    sql = (
        f"-- daily totals; a ';' in a comment is fine\nSELECT invoice_date, SUM(amount) AS total_amount, "
        f"COUNT(*) AS invoice_count FROM {source} WHERE _is_current AND NOT _is_deleted GROUP BY invoice_date;"
    )

    metrics = _run(tmp_path, lake_uri, sql, target)

    assert metrics["rows_out"] == 2
    rows = {
        r["invoice_date"].isoformat(): (str(r["total_amount"]), r["invoice_count"])
        for r in spark.table(target).collect()
    }
    assert rows == {"2026-11-01": ("15.50", 2), "2026-11-02": ("7.00", 1)}
    spark.sql(f"INSERT INTO {source} VALUES (DATE'2026-11-03', 1.00, true, false)")
    assert _run(tmp_path, lake_uri, sql, target)["rows_out"] == 3
    assert spark.table(target).count() == 3


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE stage.anything",
        "INSERT INTO stage.x SELECT 1",
        "SELECT 1; DROP TABLE stage.x",
        "WITH a AS (SELECT 1 AS v) INSERT INTO stage.x SELECT * FROM a",
        "  ",
    ],
)
def test_refuses_anything_but_one_query(spark: SparkSession, tmp_path: Path, lake_uri: str, sql: str) -> None:
    with pytest.raises(UnsafeSqlError):
        _run(tmp_path, lake_uri, sql, "presentation.never_created")
    assert not spark.catalog.tableExists("presentation.never_created")
    assert "UnsafeSqlError" in json.loads((tmp_path / "metrics.json").read_text())["error"]


def test_refuses_an_invalid_target_name(spark: SparkSession, tmp_path: Path, lake_uri: str) -> None:
    with pytest.raises(ValueError, match="--target_table"):
        _run(tmp_path, lake_uri, "SELECT 1 AS x", "presentation.daily; DROP TABLE x")
