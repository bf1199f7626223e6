"""Table maintenance: compact data and delete files, expire old snapshots, remove orphan files.

Every SCD2 batch adds a few small data files and one position delete file, and every commit a
snapshot; nothing else ever takes them away. This template does, with Iceberg's own Spark
procedures (``rewrite_data_files``, ``rewrite_position_delete_files``, ``expire_snapshots``,
``remove_orphan_files``), scheduled per table by a flow row with a schedule (docs/scd2.md,
"Maintenance"). It takes the same lock as the table's SCD2 runs, so on the JDBC catalog the two
never overlap; elsewhere Iceberg's commit validation makes the later of two conflicting commits
fail instead of losing or duplicating a version (tests/glue_templates/test_maintain_table.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark.sql import SparkSession

from lakehouse_jobs.args import ArgSpec, JobArgumentError
from lakehouse_jobs.identifiers import TableName, parse_table_name, quote_spark
from lakehouse_jobs.job import run_template
from lakehouse_jobs.scd2 import jvm, storage

__all__ = ["SPEC", "main", "run", "validate"]

TEMPLATE = "maintain_table"
#: remove_orphan_files refuses anything younger than a day: a running job's files not yet committed
#: look exactly like orphans
MIN_ORPHAN_AGE_DAYS = 1.0

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec("table", required=True, description="Iceberg table to maintain, namespace.table"),
    ArgSpec(
        "compact",
        "bool",
        default=True,
        description="rewrite data files (sorted by the table's sort order) and position delete files",
    ),
    ArgSpec(
        "delete_file_threshold",
        "int",
        default=1,
        description="compaction rewrites a data file with at least this many delete files",
    ),
    ArgSpec(
        "rewrite_all",
        "bool",
        default=False,
        description="compaction rewrites every data file (after a layout change, to sort what was written before it)",
    ),
    ArgSpec(
        "snapshot_retention_days",
        "float",
        default=7.0,
        description="snapshots older than this are expired: time travel reaches back this far",
    ),
    ArgSpec("retain_last", "int", default=10, description="snapshots kept whatever their age"),
    ArgSpec("remove_orphans", "bool", default=True, description="remove files no snapshot references"),
    ArgSpec(
        "orphan_file_age_days",
        "float",
        default=3.0,
        description="only orphan files older than this (at least 1: a running job's files are not committed yet)",
    ),
)


def validate(args: dict[str, Any]) -> None:
    """Values the types alone cannot check, refused before Spark does anything."""
    if args["snapshot_retention_days"] <= 0:
        raise JobArgumentError("argument --snapshot_retention_days must be above 0")
    if args["retain_last"] < 1:
        raise JobArgumentError("argument --retain_last must be at least 1 (the current snapshot)")
    if args["delete_file_threshold"] < 1:
        raise JobArgumentError("argument --delete_file_threshold must be at least 1")
    if args["orphan_file_age_days"] < MIN_ORPHAN_AGE_DAYS:
        raise JobArgumentError(
            f"argument --orphan_file_age_days must be at least {MIN_ORPHAN_AGE_DAYS:g}: younger "
            "files may belong to a job that has not committed yet"
        )


def _timestamp(moment: datetime) -> str:
    """A Spark SQL timestamp literal of an instant, whatever the session's time zone."""
    return f"TIMESTAMP '{moment.astimezone(UTC).isoformat(sep=' ')}'"


def _files(spark: SparkSession, table: TableName) -> dict[str, int]:
    """The table's live data and delete files (its ``files`` metadata table)."""
    counts = {"data_files": 0, "delete_files": 0}
    for row in spark.sql(f"SELECT content, count(*) AS n FROM {table.spark}.files GROUP BY content").collect():
        counts["data_files" if row["content"] == 0 else "delete_files"] += int(row["n"])
    return counts


def _options(options: dict[str, str]) -> str:
    return "map(" + ", ".join(f"'{k}', '{v}'" for k, v in options.items()) + ")"


def maintain(spark: SparkSession, table: TableName, args: dict[str, Any]) -> dict[str, Any]:
    """Run the procedures on ``table`` in order: compaction first (it leaves the old files to the
    snapshots), then expiry (which deletes files only expired snapshots used), then orphans."""
    catalog = quote_spark(spark.conf.get("spark.sql.defaultCatalog", "spark_catalog") or "spark_catalog")
    name = f"'{table}'"
    report: dict[str, Any] = {"files_before": _files(spark, table)}
    if args["compact"]:
        sorted_table = any(jvm.layout(spark, table).sort_columns)
        options = {
            "min-input-files": "2",
            "delete-file-threshold": str(args["delete_file_threshold"]),
            **({"rewrite-all": "true"} if args["rewrite_all"] else {}),
        }
        strategy = "'sort'" if sorted_table else "'binpack'"
        rewritten = spark.sql(
            f"CALL {catalog}.system.rewrite_data_files(table => {name}, strategy => {strategy}, "
            f"options => {_options(options)})"
        ).first()
        report["rewrite_data_files"] = rewritten.asDict() if rewritten is not None else {}
        deletes = spark.sql(
            f"CALL {catalog}.system.rewrite_position_delete_files(table => {name}, "
            f"options => map('rewrite-all', 'true'))"
        ).first()
        report["rewrite_position_delete_files"] = deletes.asDict() if deletes is not None else {}
    now = datetime.now(UTC)
    expired = spark.sql(
        f"CALL {catalog}.system.expire_snapshots(table => {name}, "
        f"older_than => {_timestamp(now - timedelta(days=args['snapshot_retention_days']))}, "
        f"retain_last => {int(args['retain_last'])})"
    ).first()
    report["expire_snapshots"] = expired.asDict() if expired is not None else {}
    if args["remove_orphans"]:
        orphans = spark.sql(
            f"CALL {catalog}.system.remove_orphan_files(table => {name}, "
            f"older_than => {_timestamp(now - timedelta(days=args['orphan_file_age_days']))})"
        )
        report["orphan_files_removed"] = orphans.count()
    report["files_after"] = _files(spark, table)
    return report


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    validate(args)
    table = parse_table_name(args["table"], "--table")
    if not spark.catalog.tableExists(str(table)):
        raise ValueError(f"table {table} does not exist")
    with storage.table_lock(spark, table):
        spark.sql(f"REFRESH TABLE {table.spark}")
        rows_before = spark.table(table.spark).count()  # live rows: the summary's total counts deleted ones
        report = maintain(spark, table, args)
        spark.sql(f"REFRESH TABLE {table.spark}")
        rows_after = spark.table(table.spark).count()  # from metadata alone once no deletes are left
    if rows_after != rows_before:  # compaction rewrites rows, it never adds or drops one
        raise RuntimeError(f"{table} had {rows_before} rows before maintenance and {rows_after} after")
    return {
        "rows_in": rows_before,
        "rows_out": rows_after,
        "rows_rejected": 0,
        "target_table": str(table),
        "snapshot_id": jvm.current_snapshot_id(spark, table),
        **report,
    }


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
