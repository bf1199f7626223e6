"""raw → stage: one raw batch applied to an Iceberg SCD2 history table (see lakehouse_jobs.scd2).

Reads ``{lake_uri}/raw/{dataset}/_batch_id={batch}/`` as landing_to_raw wrote it and applies it to
``target_table`` (``namespace.table`` in the session's default catalog) in one commit. Re-running
a batch adds nothing, so a retried task is safe; two runs on one table are serialised.
Parameters mirror the ``raw_to_stage_scd2`` row of metadata/migrations/R__template_catalogue.sql,
which the orchestrator validates before it starts the job; :func:`validate` repeats the checks that
span several parameters so a hand-run job fails the same way, before Spark reads anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.sql import SparkSession

from lakehouse_jobs import io
from lakehouse_jobs.args import ArgSpec, JobArgumentError
from lakehouse_jobs.identifiers import parse_table_name, sanitize_batch_id, validate_identifier
from lakehouse_jobs.job import run_template
from lakehouse_jobs.scd2 import MODES, apply_changes

__all__ = ["SPEC", "main", "run", "validate"]

TEMPLATE = "raw_to_stage_scd2"

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec("dataset", required=True, description="raw dataset to read the batch from"),
    ArgSpec("target_table", required=True, description="Iceberg stage table, namespace.table"),
    ArgSpec("keys", "list", required=True, description="business key columns"),
    ArgSpec("sequence_by", description="column ordering changes; default: the load time _ingested_at"),
    ArgSpec("mode", default="cdc", description="cdc: rows are changes; snapshot: the batch is the full state"),
    ArgSpec("op_column", description="cdc: column telling insert/update/delete apart"),
    ArgSpec("op_mapping", "json", description='op_column values to I/U/D, e.g. {"c": "I", "u": "U", "d": "D"}'),
    ArgSpec("soft_delete", "bool", default=False, description="a delete also opens a tombstone version"),
    ArgSpec("track_columns", "list", description="columns whose change opens a new version (default: all)"),
    ArgSpec("track_except", "list", description="columns excluded from change tracking"),
)


def validate(args: dict[str, Any]) -> None:
    """Parameter combinations the types alone cannot check, refused before Spark reads anything."""
    if args["mode"] not in MODES:
        raise JobArgumentError(f"argument --mode must be one of {list(MODES)}, got {args['mode']!r}")
    if args["op_column"] is not None:
        validate_identifier(args["op_column"], "--op_column")
        if args["mode"] != "cdc":
            raise JobArgumentError("argument --op_column is for --mode cdc; in snapshot mode a missing key is a delete")
    mapping = args["op_mapping"]
    if mapping is not None:
        if args["op_column"] is None:
            raise JobArgumentError("argument --op_mapping needs --op_column")
        if (
            not isinstance(mapping, dict)
            or not mapping
            or not all(isinstance(k, str) and v in ("I", "U", "D") for k, v in mapping.items())
        ):
            raise JobArgumentError(
                f'argument --op_mapping must be a JSON object mapping op values to "I", "U" or "D", got {mapping!r}'
            )
    if args["track_columns"] and args["track_except"]:
        raise JobArgumentError("give --track_columns or --track_except, not both")
    for name in (
        *args["keys"],
        *(args["track_columns"] or ()),
        *(args["track_except"] or ()),
        *([args["sequence_by"]] if args["sequence_by"] else []),
    ):
        validate_identifier(name, "column")


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    validate(args)
    dataset = validate_identifier(args["dataset"], "--dataset")
    table = parse_table_name(args["target_table"], "--target_table")
    raw_path = io.lake_path(args["lake_uri"], "raw", dataset, f"_batch_id={sanitize_batch_id(args['batch_id'])}")
    if not io.path_exists(spark, raw_path):
        raise FileNotFoundError(
            f"raw batch {raw_path} does not exist: did landing_to_raw run for batch "
            f"{args['batch_id']!r} of dataset {dataset!r}?"
        )
    if not io.path_exists(spark, f"{raw_path}/_SUCCESS"):  # written at the raw write's commit, last
        raise FileNotFoundError(
            f"raw batch {raw_path} is incomplete (no _SUCCESS): its landing_to_raw try did not "
            "finish; re-run landing_to_raw for this batch"
        )
    batch = spark.read.parquet(raw_path)
    result = apply_changes(
        spark,
        table,
        batch,
        args["keys"],
        args["sequence_by"],
        args["batch_id"],
        track_columns=args["track_columns"],
        track_except=args["track_except"],
        mode=args["mode"],
        op_column=args["op_column"],
        op_mapping=args["op_mapping"],
        soft_delete=args["soft_delete"],
    )
    return {
        "rows_in": result.rows_in,
        "rows_out": result.versions_inserted,
        "rows_rejected": 0,
        "versions_closed": result.versions_closed,
        "versions_updated": result.versions_updated,
        "versions_replaced": result.versions_replaced,
        "snapshot_id": result.snapshot_id,
        "committed": result.committed,
        "target_table": str(table),
        "raw_path": raw_path,
    }


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
