"""presentation → warehouse: an Iceberg table into the warehouse with COPY, replaced or merged.

The connection comes from ``--secret_id`` (AWS Secrets Manager on Glue; locally the runner hands
the Airflow connection over) or from the ``LAKEHOUSE_WAREHOUSE_*`` environment the local runner
sets. ``--mode replace`` swaps the whole table atomically; ``--mode merge`` upserts by
``--merge_keys`` in one transaction. Postgres is bulk-loaded with ``COPY ... FROM STDIN``: on
``wal_level=minimal`` parquet files sent by the driver as binary COPY (ADBC) in the one transaction
that also publishes them, elsewhere CSV files streamed through the JDBC driver; Redshift with
``COPY ... FORMAT AS PARQUET`` from ``--temp_uri`` on S3 with ``--iam_role``. See
lakehouse_jobs.warehouse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from lakehouse_jobs import io
from lakehouse_jobs.args import ArgSpec
from lakehouse_jobs.identifiers import parse_table_name, validate_identifier
from lakehouse_jobs.job import run_template
from lakehouse_jobs.warehouse import LoadOptions, connection_from_env, connection_from_secret, load

__all__ = ["SPEC", "main", "run"]

TEMPLATE = "presentation_to_warehouse"

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec("source_table", required=True, description="Iceberg presentation table, namespace.table"),
    ArgSpec("target_table", required=True, description="warehouse table, schema.table"),
    ArgSpec("secret_id", description="the warehouse login: an Airflow connection locally, Secrets Manager on AWS"),
    ArgSpec("mode", default="replace", description="replace (atomic swap) | merge (upsert by merge_keys)"),
    ArgSpec("merge_keys", "list", description="mode=merge: key columns"),
    ArgSpec("on_schema_change", default="apply", description="apply | refuse"),
    ArgSpec(
        "temp_uri",
        description="folder for the files COPY reads (default {lake_uri}/_tmp/warehouse; s3:// for Redshift)",
    ),
    ArgSpec("iam_role", description="Redshift: IAM role ARN that COPY assumes to read temp_uri"),
    ArgSpec(
        "copy_parallelism",
        "int",
        default=2,
        description="Postgres logging every write (wal_level above minimal, e.g. RDS): files copied at once; "
        "on wal_level=minimal one connection loads in one transaction",
    ),
)


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    source = parse_table_name(args["source_table"], "--source_table")
    target = parse_table_name(args["target_table"], "--target_table")
    keys = tuple(validate_identifier(k, "--merge_keys column") for k in (args["merge_keys"] or ()))
    if args["mode"] not in ("replace", "merge"):
        raise ValueError(f"--mode must be replace or merge, got {args['mode']!r}")
    if args["mode"] == "merge" and not keys:
        raise ValueError("--mode merge needs --merge_keys")
    if args["on_schema_change"] not in ("apply", "refuse"):
        raise ValueError(f"--on_schema_change must be apply or refuse, got {args['on_schema_change']!r}")
    connection = connection_from_secret(args["secret_id"]) if args["secret_id"] else connection_from_env()
    options = LoadOptions(
        mode=args["mode"],
        keys=keys,
        on_schema_change=args["on_schema_change"],
        work_uri=args["temp_uri"] or io.lake_path(args["lake_uri"], "_tmp", "warehouse"),
        iam_role=args["iam_role"] or "",
        parallelism=max(1, args["copy_parallelism"]),
    )
    result = load(spark, _read_split(spark, source.spark), target, args["batch_id"], connection, options)
    rows = result.pop("rows")
    return {
        "rows_in": rows,
        "rows_out": rows,
        "rows_rejected": 0,
        "source_table": str(source),
        "target_table": str(target),
        **result,
    }


def _read_split(spark: SparkSession, table: str) -> DataFrame:
    """The Iceberg table read in enough splits to keep every core busy writing the files COPY loads.

    Iceberg packs small files into 128 MB splits, so a table of a few hundred MB is read (and its
    CSV written) by one or two tasks; the split size comes from the table's size instead.
    """
    try:  # the snapshot summary, read through Iceberg's API: no Spark job
        loaded = io.spark_jvm(spark).org.apache.iceberg.spark.Spark3Util.loadIcebergTable(
            spark._jsparkSession, table.replace("`", "")
        )
        snapshot = loaded.currentSnapshot()
        total = int(snapshot.summary().get("total-files-size") or 0) if snapshot is not None else 0
    except Exception:  # not an Iceberg table: Spark's own splitting
        return spark.table(table)
    cores = max(1, spark.sparkContext.defaultParallelism)
    split = max(1 << 20, int(total) // (2 * cores) + 1)
    return spark.read.option("split-size", str(split)).table(table)


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
