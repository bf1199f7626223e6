"""Parsing one landing file into typed columns, keeping every line that fails as a reject.

Everything runs as Spark SQL expressions (no Python UDFs): workers on Glue and under a local
``spark-submit`` then need no copy of this package, and parsing stays in the JVM.

Line numbers are exact and 1-based even when Spark splits the file across tasks: each split is
identified by its byte offset (``_metadata.file_block_start``), lines inside a split keep their
order in ``monotonically_increasing_id``, and a small per-split count gives each split's offset.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType

from lakehouse_jobs.identifiers import IDENTIFIER, quote_spark

__all__ = [
    "LineRegex",
    "REASON_COLUMN",
    "cast_columns",
    "check_java_regex",
    "compile_line_regex",
    "normalize_header",
    "number_lines",
    "parse_csv_lines",
    "parse_regex_lines",
    "parse_schema",
    "split_header_line",
]

REASON_COLUMN = "_reason"
_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class LineRegex:
    """A user's named-group regex, rewritten so Java (Spark) and Python agree on it.

    Java group names may not contain ``_`` and Python does not know ``(?<name>...)``, so named
    groups become plain capturing groups and columns are extracted by group number, which both
    engines number the same way (by opening parenthesis).
    """

    pattern: str  # anchored, without named groups: valid in Java and Python
    columns: tuple[tuple[str, int], ...]  # (column name, group number)


def compile_line_regex(text: str) -> LineRegex:
    """Validate a full-line regex with named groups ``(?<name>...)`` or ``(?P<name>...)``."""
    out: list[str] = []
    columns: list[tuple[str, int]] = []
    group = 0
    i = 0
    in_class = False
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if text.startswith(("\\k<", "\\g<"), i):
                raise ValueError("--regex: named back-references are not supported; use a numbered one like \\1")
            out.append(text[i:i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            out.append(ch)
            i += 1
            if i < len(text) and text[i] == "^":
                out.append("^")
                i += 1
            if i < len(text) and text[i] == "]":  # a leading ] is literal
                out.append("]")
                i += 1
            continue
        if ch == "(":
            if text.startswith("(?P=", i):
                raise ValueError("--regex: named back-references are not supported; use a numbered one like \\1")
            named = re.match(r"\(\?P?<([^>=!]*)>", text[i:])
            if named:
                group += 1
                name = named.group(1)
                if not _GROUP_NAME.fullmatch(name):
                    raise ValueError(f"--regex: group name {name!r} is not valid")
                if not IDENTIFIER.match(name):
                    raise ValueError(f"--regex: group name {name!r} must be a lower-case column name "
                                     f"(letters, digits, _; starting with a letter)")
                if any(name == existing for existing, _ in columns):
                    raise ValueError(f"--regex: group name {name!r} is used twice")
                columns.append((name, group))
                out.append("(")
                i += len(named.group(0))
                continue
            if not text.startswith("(?", i):
                group += 1
        out.append(ch)
        i += 1
    if not columns:
        raise ValueError("--regex needs named groups, e.g. (?<invoice_id>INV-\\d+): they become the columns")
    body = "".join(out)
    pattern = f"^(?:{body})$"
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--regex is not a valid regular expression: {exc}") from None
    if compiled.groups != group:
        raise ValueError(f"--regex: could not number its groups reliably ({compiled.groups} vs {group})")
    return LineRegex(pattern, tuple(columns))


def check_java_regex(spark: SparkSession, pattern: str) -> None:
    """Fail before reading data if Java's regex engine rejects what Python accepted."""
    try:
        spark.sparkContext._jvm.java.util.regex.Pattern.compile(pattern)
    except Exception as exc:  # py4j wraps PatternSyntaxException
        raise ValueError(f"--regex is not valid for Spark's (Java) regex engine: {str(exc).splitlines()[0]}") from None


def normalize_header(names: Sequence[str]) -> list[str]:
    """CSV header cells to column names: ``Invoice Date`` → ``invoice_date``; clashes are errors.

    Real headers carry spaces, capitals and punctuation that Parquet, Iceberg and Postgres treat
    differently; one lower-case snake_case form keeps them identical in every layer.
    """
    columns: list[str] = []
    for position, cell in enumerate(names, start=1):
        name = re.sub(r"[^a-z0-9]+", "_", cell.strip().lower()).strip("_")
        if not name:
            raise ValueError(f"CSV header cell {position} ({cell!r}) is empty: pass --header false --columns ...")
        if name[0].isdigit():
            name = f"c_{name}"
        if name in columns:
            raise ValueError(f"CSV header cell {position} ({cell!r}) repeats column {name!r}")
        columns.append(name)
    return columns


def split_header_line(line: str, delimiter: str) -> list[str]:
    """The header's cells, parsed with the same quoting rules as the data lines."""
    return next(csv.reader([line], delimiter=delimiter, quotechar='"'))


def number_lines(spark: SparkSession, uri: str) -> DataFrame:
    """``(_line_number, _raw_line)`` for every line of one text file, 1-based and exact."""
    lines = spark.read.text(uri).select(
        F.col("value").alias("_raw_line"),
        F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_row_id"),
    )
    blocks = lines.groupBy("_block").agg(F.count(F.lit(1)).alias("n"), F.min("_row_id").alias("first")).collect()
    offsets: list[tuple[int, int, int]] = []  # (block start, first row id, lines before this block)
    seen = 0
    for row in sorted(blocks, key=lambda r: r["_block"]):
        offsets.append((row["_block"], row["first"], seen))
        seen += row["n"]
    if not offsets:
        return lines.select(F.lit(0).cast("long").alias("_line_number"), "_raw_line").limit(0)
    base: Column = F.lit(None).cast("long")
    for block, first, before in offsets:
        base = F.when(F.col("_block") == block, F.lit(before - first)).otherwise(base)
    return lines.select((F.col("_row_id") + base + 1).cast("long").alias("_line_number"), "_raw_line")


def parse_regex_lines(lines: DataFrame, regex: LineRegex) -> DataFrame:
    """Columns from each line's named groups; a line that does not match fully is a reject.

    An empty (or non-participating) group is NULL, as an empty CSV field is: NULL is then the one
    spelling of "no value" downstream.
    """
    matches = F.col("_raw_line").rlike(regex.pattern)
    cols = [
        F.when(matches, F.nullif(F.regexp_extract("_raw_line", regex.pattern, index), F.lit(""))).alias(name)
        for name, index in regex.columns
    ]
    reason = F.when(~matches, F.lit("line does not match regex"))
    return lines.select("_line_number", "_raw_line", *cols, reason.alias(REASON_COLUMN))


def parse_csv_lines(lines: DataFrame, columns: Sequence[str], delimiter: str) -> DataFrame:
    """Columns from each delimited line (quotes honoured); a wrong number of fields is a reject."""
    corrupt = "_corrupt_record"
    ddl = ", ".join(f"{quote_spark(c)} STRING" for c in columns) + f", {corrupt} STRING"
    options = {"sep": delimiter, "quote": '"', "escape": '"', "mode": "PERMISSIVE",
               "columnNameOfCorruptRecord": corrupt}
    parsed = F.from_csv(F.col("_raw_line"), ddl, options)
    blank = F.trim(F.col("_raw_line")) == ""
    bad = parsed[corrupt].isNotNull() | (blank & F.lit(len(columns) > 1))
    reason = F.when(blank & F.lit(len(columns) > 1), F.lit(f"blank line, expected {len(columns)} fields")).when(
        parsed[corrupt].isNotNull(), F.lit(f"wrong number of fields, expected {len(columns)}")
    )
    cols = [F.when(~bad, parsed[c]).alias(c) for c in columns]
    return lines.select("_line_number", "_raw_line", *cols, reason.alias(REASON_COLUMN))


def parse_schema(spark: SparkSession, schema: Mapping[str, str], columns: Sequence[str]) -> dict[str, DataType]:
    """``{"amount": "decimal(12,2)"}`` to Spark types; unknown columns or types fail early."""
    if not isinstance(schema, Mapping):
        raise ValueError("--schema must be a JSON object mapping column names to Spark SQL types")
    unknown = sorted(set(schema) - set(columns))
    if unknown:
        raise ValueError(f"--schema names columns the file does not have: {unknown} (columns: {list(columns)})")
    types: dict[str, DataType] = {}
    for name, type_text in schema.items():
        if not isinstance(type_text, str):
            raise ValueError(f"--schema: type of column {name!r} must be a string like 'int', got {type_text!r}")
        try:
            types[name] = _parse_type(spark, type_text)
        except Exception:
            raise ValueError(f"--schema: column {name!r} has an unknown Spark SQL type {type_text!r}") from None
    return types


def _parse_type(spark: SparkSession, type_text: str) -> DataType:
    """Spark's own parser decides (PySpark 3.5 has no public ``fromDDL``); the character check
    keeps anything but a type name out of the SQL text."""
    if not re.fullmatch(r"[A-Za-z0-9_(), <>:]+", type_text):
        raise ValueError(type_text)
    return spark.sql(f"SELECT CAST(NULL AS {type_text}) AS v").schema["v"].dataType


def cast_columns(parsed: DataFrame, types: Mapping[str, DataType]) -> DataFrame:
    """Cast typed columns; a non-NULL value that does not cast becomes a reject naming the column.

    ``try_cast`` returns NULL instead of failing whatever ``spark.sql.ansi.enabled`` is, so a bad
    value is detected (raw not NULL, cast NULL) instead of silently loading as NULL.
    """
    failures: list[Column] = []
    casts: dict[str, Column] = {}
    for name, data_type in types.items():
        cast = F.expr(f"try_cast({quote_spark(name)} AS {data_type.simpleString()})")
        failed = F.col(name).isNotNull() & cast.isNull()
        failures.append(F.when(failed, F.format_string("column %s: value '%s' is not a valid %s",
                                                        F.lit(name), F.col(name), F.lit(data_type.simpleString()))))
        casts[name] = cast
    if not failures:
        return parsed
    cast_reason = F.concat_ws("; ", *failures)
    reason = F.coalesce(F.col(REASON_COLUMN), F.when(cast_reason != "", cast_reason))
    selected = [casts[c].alias(c) if c in casts else F.col(c) for c in parsed.columns if c != REASON_COLUMN]
    return parsed.select(*selected, reason.alias(REASON_COLUMN))
