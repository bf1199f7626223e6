"""stage → presentation: one SELECT over catalog tables, written as an Iceberg table atomically.

``CREATE OR REPLACE`` through DataFrameWriterV2 is a single Iceberg commit: readers see the old
table or the new one, and a failed run leaves the old one in place. The table is rebuilt from the
query every time, so a re-run is safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.sql import SparkSession

from lakehouse_jobs.args import ArgSpec
from lakehouse_jobs.identifiers import parse_table_name, quote_spark
from lakehouse_jobs.job import run_template
from lakehouse_jobs.sql import single_query

__all__ = ["SPEC", "main", "run"]

TEMPLATE = "stage_to_presentation"

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec("sql", required=True, description="one SELECT (or WITH ... SELECT) statement"),
    ArgSpec("target_table", required=True, description="Iceberg presentation table, namespace.table"),
)


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    table = parse_table_name(args["target_table"], "--target_table")
    query = single_query(spark, args["sql"])
    result = spark.sql(query)  # lazy: a query, checked above, runs only inside the write below
    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {quote_spark(table.namespace)}")
    result.writeTo(table.spark).using("iceberg").tableProperty("format-version", "2").createOrReplace()
    rows_out = spark.table(table.spark).count()
    return {"rows_in": rows_out, "rows_out": rows_out, "rows_rejected": 0, "target_table": str(table)}


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
