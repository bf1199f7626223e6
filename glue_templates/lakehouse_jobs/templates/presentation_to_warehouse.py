"""presentation → warehouse: an Iceberg table replaces a warehouse table atomically.

The connection comes from ``--secret_id`` (AWS Secrets Manager, on Glue) or from the
``LAKEHOUSE_WAREHOUSE_*`` environment the local runner sets. See lakehouse_jobs.warehouse for how
the swap keeps readers from ever seeing a missing or half-loaded table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.sql import SparkSession

from lakehouse_jobs.args import ArgSpec
from lakehouse_jobs.identifiers import parse_table_name
from lakehouse_jobs.job import run_template
from lakehouse_jobs.warehouse import connection_from_env, connection_from_secret, load_atomically

__all__ = ["SPEC", "main", "run"]

TEMPLATE = "presentation_to_warehouse"

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec("source_table", required=True, description="Iceberg presentation table, namespace.table"),
    ArgSpec("target_table", required=True, description="warehouse table, schema.table"),
    ArgSpec("secret_id", description="AWS Secrets Manager secret of the warehouse login"),
)


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    source = parse_table_name(args["source_table"], "--source_table")
    target = parse_table_name(args["target_table"], "--target_table")
    connection = connection_from_secret(args["secret_id"]) if args["secret_id"] else connection_from_env()
    rows = load_atomically(spark, spark.table(source.spark), target, args["batch_id"], connection)
    return {"rows_in": rows, "rows_out": rows, "rows_rejected": 0, "source_table": str(source),
            "target_table": str(target)}


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
