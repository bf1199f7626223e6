"""db_to_raw: a table or query of a JDBC source (Postgres) into raw, incrementally by a watermark column.

Each run reads the rows with ``last committed watermark < watermark_column <= high``, where
``high`` is the column's maximum when the run starts (rows arriving meanwhile wait for the next
run: no gap between runs). They are written to ``{lake_uri}/raw/{dataset}/_batch_id={batch}/``
(parquet, with ``_source_file``, ``_batch_id``, ``_ingested_at``), and only after that write
committed is the new watermark stored, in ``{lake_uri}/_watermarks/{dataset}.json``.

Before the raw write the run records itself as pending in that file. A run that fails after writing
raw but before committing the watermark therefore leaves a marked, uncommitted folder: the next
run of another batch deletes it and reads again from the last committed watermark (no duplicate),
a retry of the same batch simply overwrites it. A re-run of a batch that already committed reads
the same range again (same rows, same folder).

The connection is the secret ``--secret_id`` ({host, port, dbname, username, password}; locally
the runner hands over an Airflow connection, on Glue it is read from Secrets Manager), else
``LAKEHOUSE_SOURCE_JDBC_URL`` / ``_USER`` / ``_PASSWORD``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse_jobs import io
from lakehouse_jobs.args import ArgSpec
from lakehouse_jobs.environment import read_environment
from lakehouse_jobs.identifiers import parse_table_name, quote_postgres, sanitize_batch_id, validate_identifier
from lakehouse_jobs.job import run_template
from lakehouse_jobs.sql import single_select_text
from lakehouse_jobs.warehouse import WarehouseConnection, _jdbc, _query, connection_from_secret

__all__ = ["SPEC", "commit_watermark", "main", "run"]

TEMPLATE = "db_to_raw"

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec("dataset", required=True, description="raw dataset name"),
    ArgSpec("source_table", description="schema.table to read (or --query)"),
    ArgSpec("query", description="one SELECT in the source's SQL dialect (or --source_table)"),
    ArgSpec("watermark_column", required=True, description="monotonic column: updated_at, id, ..."),
    ArgSpec("initial_watermark", description="read rows above this value on the first run (default: all)"),
    ArgSpec("secret_id", description="secret with the source login; else LAKEHOUSE_SOURCE_JDBC_* env"),
    ArgSpec("fetchsize", "int", default=10000, description="rows per JDBC round trip"),
)


def _connection(args: dict[str, Any]) -> WarehouseConnection:
    if args["secret_id"]:
        return connection_from_secret(args["secret_id"])
    login = read_environment().source
    if not login.url:
        raise ValueError(
            "no source connection: pass --secret_id or set LAKEHOUSE_SOURCE_JDBC_URL, "
            "LAKEHOUSE_SOURCE_JDBC_USER and LAKEHOUSE_SOURCE_JDBC_PASSWORD"
        )
    return WarehouseConnection(login.url, login.user, login.password)


def _literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def commit_watermark(uri: str, state: dict[str, Any]) -> None:
    """The commit point of a run: written only after the raw write succeeded."""
    io.write_text(uri, json.dumps(state, indent=2, default=str))


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    dataset = validate_identifier(args["dataset"], "--dataset")
    column = quote_postgres(validate_identifier(args["watermark_column"], "--watermark_column"))
    if bool(args["source_table"]) == bool(args["query"]):
        raise ValueError("pass exactly one of --source_table or --query")
    if args["source_table"]:
        source_name = str(parse_table_name(args["source_table"], "--source_table"))
        source_sql = f"SELECT * FROM {parse_table_name(args['source_table'], '--source_table').postgres}"
    else:
        source_sql = single_select_text(args["query"], "--query")
        source_name = "query"
    batch_id = args["batch_id"]
    lake = args["lake_uri"]
    state_uri = io.lake_path(lake, "_watermarks", f"{dataset}.json")
    raw_path = io.lake_path(lake, "raw", dataset, f"_batch_id={sanitize_batch_id(batch_id)}")
    state = json.loads(io.read_text(state_uri) or "{}")
    metrics: dict[str, Any] = {}

    pending = state.get("pending")
    if pending and pending.get("batch_id") != batch_id:
        # a run that wrote raw but never committed its watermark: its rows will be read again now
        stale = io.lake_path(lake, "raw", dataset, f"_batch_id={sanitize_batch_id(pending['batch_id'])}")
        io.delete_path(spark, stale)
        metrics["discarded_uncommitted_batch"] = pending["batch_id"]

    connection = _connection(args)
    if state.get("batch_id") == batch_id and "watermark" in state:
        low, high = state.get("previous_watermark"), state["watermark"]  # re-run of a committed batch
    else:
        low = state.get("watermark", args["initial_watermark"])
        above = f" WHERE q.{column} > {_literal(low)}" if low is not None else ""
        with _jdbc(spark, connection) as conn:
            high = _query(conn, f"SELECT CAST(max(q.{column}) AS VARCHAR(100)) FROM ({source_sql}) q{above}")[0][0]
        if high is None:
            high = low  # nothing new: an empty batch, the watermark stays

    conditions = []
    if low is not None:
        conditions.append(f"q.{column} > {_literal(low)}")
    conditions.append(f"q.{column} <= {_literal(high)}" if high is not None else "1 = 0")
    query = f"SELECT q.* FROM ({source_sql}) q WHERE {' AND '.join(conditions)}"

    ingested_at = (
        datetime.fromisoformat(args["batch_time"]).astimezone(UTC) if args.get("batch_time") else datetime.now(UTC)
    )
    commit_watermark(
        state_uri,
        {
            **{k: v for k, v in state.items() if k != "pending"},
            "pending": {"batch_id": batch_id, "low": low, "high": high},
        },
    )
    rows = (
        spark.read.format("jdbc")
        .option("url", connection.url)
        .option("driver", connection.driver)
        .option("user", connection.user)
        .option("password", connection.password)
        .option("query", query)
        .option("fetchsize", args["fetchsize"])
        .load()
    )
    rows = rows.withColumns(
        {
            "_source_file": F.lit(f"{connection.url.split('?')[0]}#{source_name}"),
            "_batch_id": F.lit(batch_id),
            "_ingested_at": F.lit(ingested_at),
        }
    )
    rows.write.mode("overwrite").parquet(raw_path)
    count = spark.read.parquet(raw_path).count()
    commit_watermark(
        state_uri,
        {
            "dataset": dataset,
            "watermark_column": args["watermark_column"],
            "watermark": high,
            "previous_watermark": low,
            "batch_id": batch_id,
            "rows": count,
            "committed_at": datetime.now(UTC).isoformat(),
        },
    )
    return {
        "rows_in": count,
        "rows_out": count,
        "rows_rejected": 0,
        "raw_path": raw_path,
        "watermark_from": low,
        "watermark_to": high,
        "watermark_uri": state_uri,
        **metrics,
    }


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
