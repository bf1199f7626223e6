"""raw → stage: one raw batch applied to an Iceberg SCD2 history table (see lakehouse_jobs.scd2).

Reads ``{lake_uri}/raw/{dataset}/_batch_id={batch}/`` as landing_to_raw wrote it and applies it to
``target_table`` (``namespace.table`` in the session's default catalog) in one commit. Re-running
a batch adds nothing, so a retried task is safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.sql import SparkSession

from lakehouse_jobs import io
from lakehouse_jobs.args import ArgSpec
from lakehouse_jobs.identifiers import parse_table_name, sanitize_batch_id, validate_identifier
from lakehouse_jobs.job import run_template
from lakehouse_jobs.scd2 import apply_changes

__all__ = ["SPEC", "main", "run"]

TEMPLATE = "raw_to_stage_scd2"

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec("dataset", required=True, description="raw dataset to read the batch from"),
    ArgSpec("target_table", required=True, description="Iceberg stage table, namespace.table"),
    ArgSpec("keys", "list", required=True, description="business key columns"),
    ArgSpec("sequence_by", description="column ordering changes; default: the load time _ingested_at"),
    ArgSpec("track_columns", "list", description="columns whose change opens a new version (default: all)"),
    ArgSpec("track_except", "list", description="columns excluded from change tracking"),
)


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    dataset = validate_identifier(args["dataset"], "--dataset")
    table = parse_table_name(args["target_table"], "--target_table")
    raw_path = io.lake_path(args["lake_uri"], "raw", dataset, f"_batch_id={sanitize_batch_id(args['batch_id'])}")
    if not io.path_exists(spark, raw_path):
        raise FileNotFoundError(f"raw batch {raw_path} does not exist: did landing_to_raw run for batch "
                                f"{args['batch_id']!r} of dataset {dataset!r}?")
    batch = spark.read.parquet(raw_path)
    result = apply_changes(
        spark, table, batch, args["keys"], args["sequence_by"], args["batch_id"],
        track_columns=args["track_columns"], track_except=args["track_except"],
    )
    return {
        "rows_in": result.rows_in,
        "rows_out": result.versions_inserted,
        "rows_rejected": 0,
        "versions_closed": result.versions_closed,
        "versions_updated": result.versions_updated,
        "committed": result.committed,
        "target_table": str(table),
        "raw_path": raw_path,
    }


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
