"""quality_check: declared checks on any layer's table; fails the flow with a report of every failure.

The subject is a catalog table (``--table stage.orders``, Iceberg stage or presentation) or a raw
dataset (``--dataset orders``: the batch's folder ``raw/<dataset>/_batch_id=<batch>/``, or the
whole dataset with ``--raw_scope all``). Every check runs, then the report (each check's outcome,
offending-row counts and up to ``--sample_size`` offending rows) is written to
``{lake_uri}/_quality/<subject>/_batch_id=<batch>.json``; when any check failed the task fails with
the report as its error. The row count of a run whose checks all passed is kept in
``{lake_uri}/_quality/<subject>/_last_success.json`` for the next run's ``row_count`` ``max_change``
(a re-run of the same batch compares against the run before it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from lakehouse_jobs import io
from lakehouse_jobs.args import ArgSpec
from lakehouse_jobs.identifiers import parse_table_name, sanitize_batch_id, validate_identifier
from lakehouse_jobs.job import run_template
from lakehouse_jobs.metrics import JobFailure
from lakehouse_jobs.quality import parse_checks, report_text, run_check

__all__ = ["SPEC", "main", "run"]

TEMPLATE = "quality_check"

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec("table", description="catalog table to check, namespace.table (stage/presentation)"),
    ArgSpec("dataset", description="raw dataset to check instead of a table"),
    ArgSpec("raw_scope", default="batch", description="dataset: batch (this batch's folder) | all"),
    ArgSpec(
        "checks", "json", required=True, description='list of checks, e.g. [{"type": "not_null", "columns": ["id"]}]'
    ),
    ArgSpec("sample_size", "int", default=5, description="offending rows shown per failed check"),
)


def _subject(spark: SparkSession, args: dict[str, Any]) -> tuple[str, DataFrame]:
    if bool(args["table"]) == bool(args["dataset"]):
        raise ValueError("pass exactly one of --table (a catalog table) or --dataset (a raw dataset)")
    if args["table"]:
        table = parse_table_name(args["table"], "--table")
        return str(table), spark.table(table.spark)
    dataset = validate_identifier(args["dataset"], "--dataset")
    if args["raw_scope"] not in ("batch", "all"):
        raise ValueError(f"--raw_scope must be batch or all, got {args['raw_scope']!r}")
    parts = ["raw", dataset] + (
        [f"_batch_id={sanitize_batch_id(args['batch_id'])}"] if args["raw_scope"] == "batch" else []
    )
    path = io.lake_path(args["lake_uri"], *parts)
    if not io.path_exists(spark, path):
        raise FileNotFoundError(f"raw data {path} does not exist: did landing_to_raw run for this batch?")
    return f"raw.{dataset}", spark.read.parquet(path)


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    checks = parse_checks(args["checks"])
    if args["sample_size"] < 0:
        raise ValueError("--sample_size must not be negative")
    subject, df = _subject(spark, args)
    now = datetime.fromisoformat(args["batch_time"]).astimezone(UTC) if args.get("batch_time") else datetime.now(UTC)
    state_uri = io.lake_path(args["lake_uri"], "_quality", subject, "_last_success.json")
    state = json.loads(io.read_text(state_uri) or "null")
    previous = state
    if state and state.get("batch_id") == args["batch_id"]:
        previous = state.get("previous")  # a re-run of this batch compares with the run before it
    previous_count = previous.get("row_count") if previous else None

    df = df.persist()
    try:
        rows = df.count()
        results = [run_check(df, check, args["sample_size"], now, previous_count) for check in checks]
    finally:
        df.unpersist()
    failed = [r for r in results if not r.passed]
    report = {
        "subject": subject,
        "batch_id": args["batch_id"],
        "checked_at": now.isoformat(),
        "row_count": rows,
        "passed": not failed,
        "checks": [r.as_dict() for r in results],
    }
    report_uri = io.lake_path(
        args["lake_uri"], "_quality", subject, f"_batch_id={sanitize_batch_id(args['batch_id'])}.json"
    )
    io.write_text(report_uri, json.dumps(report, indent=2, default=str))
    metrics = {
        "rows_in": rows,
        "rows_out": rows,
        "rows_rejected": 0,
        "subject": subject,
        "checks": len(results),
        "checks_failed": len(failed),
        "failed_checks": [r.name for r in failed],
        "report_uri": report_uri,
    }
    if failed:
        raise JobFailure(report_text(subject, results) + f"\nreport: {report_uri}", metrics)
    earlier = {k: previous[k] for k in ("batch_id", "row_count", "checked_at") if k in previous} if previous else None
    io.write_text(
        state_uri,
        json.dumps(
            {"batch_id": args["batch_id"], "row_count": rows, "checked_at": now.isoformat(), "previous": earlier},
            default=str,
        ),
    )
    return metrics


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
