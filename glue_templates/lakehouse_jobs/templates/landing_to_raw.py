"""landing → raw: one landing file to parquet with lineage columns; bad lines kept as rejects.

Output: ``{lake_uri}/raw/{dataset}/_batch_id={batch}/`` (parquet), replaced as a whole on each
run of the batch so a re-run gives the same result. Each row carries ``_source_file``,
``_batch_id``, ``_ingested_at`` and ``_line_number``. Lines that do not parse or cast go to
``{lake_uri}/rejects/{dataset}/_batch_id={batch}/`` (JSON lines, readable with any tool) with the
reason. Rows and rejects are written before the reject-ratio check, so a failing run loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse_jobs import io
from lakehouse_jobs.args import ArgSpec
from lakehouse_jobs.identifiers import sanitize_batch_id, validate_identifier
from lakehouse_jobs.job import run_template
from lakehouse_jobs.landing import (
    REASON_COLUMN,
    cast_columns,
    check_java_regex,
    compile_line_regex,
    normalize_header,
    number_lines,
    parse_csv_lines,
    parse_regex_lines,
    parse_schema,
    split_header_line,
)
from lakehouse_jobs.metrics import JobFailure

__all__ = ["SPEC", "main", "run"]

TEMPLATE = "landing_to_raw"

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec("source_uri", required=True, description="the landing file: s3://bucket/key, file:// URI or path"),
    ArgSpec("dataset", required=True, description="raw dataset name"),
    ArgSpec("format", required=True, description="csv | regex"),
    ArgSpec("regex", description="format=regex: full-line pattern with named groups"),
    ArgSpec("header", "bool", default=True, description="format=csv: first line holds column names"),
    ArgSpec("delimiter", default=",", description="format=csv: field delimiter"),
    ArgSpec("columns", "list", description="format=csv: column names (required without header)"),
    ArgSpec("schema", "json", description="column -> Spark SQL type"),
    ArgSpec("max_reject_ratio", "float", default=0.0, description="fail when rejects/lines exceeds this"),
    ArgSpec("skip_blank_lines", "bool", default=True, description="ignore empty lines"),
)

LINEAGE_COLUMNS = ("_source_file", "_batch_id", "_ingested_at", "_line_number")
REJECT_COLUMNS = ("_source_file", "_batch_id", "_line_number", "_raw_line", "_reason")


def _validate(args: dict[str, Any]) -> None:
    validate_identifier(args["dataset"], "--dataset")
    if args["format"] not in ("csv", "regex"):
        raise ValueError(f"--format must be csv or regex, got {args['format']!r}")
    if args["format"] == "regex" and not args["regex"]:
        raise ValueError("--format regex needs --regex")
    if args["format"] == "csv":
        if not args["delimiter"]:
            raise ValueError("--delimiter must not be empty")
        if not args["header"] and not args["columns"]:
            raise ValueError("--format csv with --header false needs --columns")
    if not 0.0 <= args["max_reject_ratio"] <= 1.0:
        raise ValueError(f"--max_reject_ratio must be between 0 and 1, got {args['max_reject_ratio']}")


def _parse(spark: SparkSession, lines: DataFrame, args: dict[str, Any]) -> DataFrame:
    """Data lines → typed columns + ``_reason``; a CSV header line is consumed here."""
    source = args["source_uri"]
    if args["format"] == "regex":
        regex = compile_line_regex(args["regex"])
        check_java_regex(spark, regex.pattern)
        columns = [name for name, _ in regex.columns]
        parsed = parse_regex_lines(lines, regex)
    else:
        data = lines
        columns = list(args["columns"] or [])
        if args["header"]:
            first = lines.filter(F.trim("_raw_line") != "").orderBy("_line_number").select("_line_number", "_raw_line").first()
            if first is None:
                raise JobFailure(f"landing file {source} is empty")
            header = normalize_header(split_header_line(first["_raw_line"], args["delimiter"]))
            columns = columns or header
            if len(columns) != len(header):
                raise ValueError(f"--columns names {len(columns)} columns but the header of {source} has {len(header)}")
            data = lines.filter(F.col("_line_number") != first["_line_number"])
        for name in columns:
            validate_identifier(name, "column")
        parsed = parse_csv_lines(data, columns, args["delimiter"])
    if args["schema"]:
        parsed = cast_columns(parsed, parse_schema(spark, args["schema"], columns))
    return parsed


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    _validate(args)
    source, dataset, batch_id = args["source_uri"], args["dataset"], args["batch_id"]
    batch_folder = f"_batch_id={sanitize_batch_id(batch_id)}"
    raw_path = io.lake_path(args["lake_uri"], "raw", dataset, batch_folder)
    rejects_path = io.lake_path(args["lake_uri"], "rejects", dataset, batch_folder)
    # the run's time, not the clock: a re-run of an old batch must not look newer than later batches
    ingested_at = (datetime.fromisoformat(args["batch_time"]).astimezone(timezone.utc)
                   if args.get("batch_time") else datetime.now(timezone.utc))
    with io.localize_input(spark, source) as readable:
        lines = number_lines(spark, readable)
        if args["skip_blank_lines"]:
            lines = lines.filter(F.trim("_raw_line") != "")
        parsed = _parse(spark, lines, args).withColumns({
            "_source_file": F.lit(source),
            "_batch_id": F.lit(batch_id),
            "_ingested_at": F.lit(ingested_at),
        }).persist()
        try:
            counts = parsed.agg(
                F.count(F.lit(1)).alias("rows_in"),
                F.count(F.col(REASON_COLUMN)).alias("rows_rejected"),
            ).first()
            rows_in, rows_rejected = int(counts["rows_in"]), int(counts["rows_rejected"])
            if rows_in == 0:
                raise JobFailure(f"landing file {source} is empty: it has no data lines")
            data_columns = [c for c in parsed.columns if c not in (*LINEAGE_COLUMNS, "_raw_line", REASON_COLUMN)]
            good = parsed.filter(F.col(REASON_COLUMN).isNull()).select(*data_columns, *LINEAGE_COLUMNS)
            good.write.mode("overwrite").parquet(raw_path)
            if rows_rejected:
                parsed.filter(F.col(REASON_COLUMN).isNotNull()).select(*REJECT_COLUMNS) \
                    .coalesce(1).write.mode("overwrite").json(rejects_path)
            else:
                io.delete_path(spark, rejects_path)  # rejects of an earlier run of this batch are stale now
        finally:
            parsed.unpersist()
    metrics: dict[str, Any] = {
        "rows_in": rows_in,
        "rows_out": rows_in - rows_rejected,
        "rows_rejected": rows_rejected,
        "source_uri": source,
        "raw_path": raw_path,
        "rejects_path": rejects_path if rows_rejected else None,
    }
    ratio = rows_rejected / rows_in
    if ratio > args["max_reject_ratio"]:
        raise JobFailure(
            f"landing file {source}: {rows_rejected} of {rows_in} lines rejected ({ratio:.1%}), more than "
            f"max_reject_ratio {args['max_reject_ratio']}; rejects written to {rejects_path}",
            metrics,
        )
    return metrics


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
