"""Parsing one landing file into typed columns, keeping every line that fails as a reject.

Everything runs as Spark SQL expressions (no Python UDFs): workers on Glue and under a local
``spark-submit`` then need no copy of this package, and parsing stays in the JVM.

Line numbers are exact and 1-based even when Spark splits the file across tasks: each split is
identified by its byte offset (``_metadata.file_block_start``), lines inside a split keep their
order in ``monotonically_increasing_id``, and a small per-split count gives each split's offset.
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType

from lakehouse_jobs.identifiers import IDENTIFIER, quote_spark
from lakehouse_jobs.io import local_path, spark_jvm

__all__ = [
    "REASON_COLUMN",
    "LineRegex",
    "cast_columns",
    "check_java_regex",
    "compile_line_regex",
    "decode_lines",
    "infer_types",
    "json_path",
    "normalize_header",
    "number_lines",
    "parse_csv_lines",
    "parse_fixed_width_lines",
    "parse_json_lines",
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
            out.append(text[i : i + 2])
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
                    raise ValueError(
                        f"--regex: group name {name!r} must be a lower-case column name "
                        f"(letters, digits, _; starting with a letter)"
                    )
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
        spark_jvm(spark).java.util.regex.Pattern.compile(pattern)
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


def split_header_line(line: str, delimiter: str, quote: str = '"') -> list[str]:
    """The header's cells, parsed with the same quoting rules as the data lines."""
    return next(
        csv.reader(
            [line.lstrip("\ufeff")],
            delimiter=delimiter,
            quotechar=quote or None,
            quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
        )
    )


def number_lines(spark: SparkSession, uri: str) -> DataFrame:
    """``(_line_number, _raw_line)`` for every line of one text file, 1-based and exact.

    A file Spark reads as one split is numbered without a job of its own: its rows are the first
    partition's, in order. That holds for gzip (never split) and for a file no larger than
    ``spark.sql.files.openCostInBytes`` (Spark splits no file below that size, whatever the
    parallelism). A larger file costs one small job that counts the lines of each split.
    """
    local = local_path(uri)
    size = local.stat().st_size if local is not None and local.is_file() else None
    limit = min(
        _byte_size(spark.conf.get("spark.sql.files.maxPartitionBytes", "128m") or "128m"),
        _byte_size(spark.conf.get("spark.sql.files.openCostInBytes", "4m") or "4m"),
    )
    if size is not None and (uri.endswith(".gz") or size <= limit):
        return spark.read.text(uri).select(
            (F.monotonically_increasing_id() + 1).cast("long").alias("_line_number"), F.col("value").alias("_raw_line")
        )
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


def _byte_size(text: str) -> int:
    """A Spark byte-size setting (``134217728b``, ``128m``, ``1g``) in bytes."""
    text = text.strip().lower()
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    number = text.rstrip("bkmgt")
    unit = text[len(number) :].rstrip("b")[:1]
    return int(float(number) * scale.get(unit, 1))


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


def parse_csv_lines(lines: DataFrame, columns: Sequence[str], delimiter: str, quote: str = '"') -> DataFrame:
    """Columns from each delimited line (quotes honoured); a wrong number of fields is a reject."""
    corrupt = "_corrupt_record"
    ddl = ", ".join(f"{quote_spark(c)} STRING" for c in columns) + f", {corrupt} STRING"
    # an empty quote turns quoting off (Spark's spelling of that is the NUL character)
    options = {
        "sep": delimiter,
        "quote": quote or "\u0000",
        "escape": quote or "\\",
        "mode": "PERMISSIVE",
        "columnNameOfCorruptRecord": corrupt,
    }
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
        failures.append(
            F.when(
                failed,
                F.format_string(
                    "column %s: value '%s' is not a valid %s", F.lit(name), F.col(name), F.lit(data_type.simpleString())
                ),
            )
        )
        casts[name] = cast
    if not failures:
        return parsed
    cast_reason = F.concat_ws("; ", *failures)
    reason = F.coalesce(F.col(REASON_COLUMN), F.when(cast_reason != "", cast_reason))
    selected = [casts[c].alias(c) if c in casts else F.col(c) for c in parsed.columns if c != REASON_COLUMN]
    return parsed.select(*selected, reason.alias(REASON_COLUMN))


# ---------------------------------------------------------------------------------------------
# encodings, fixed-width and JSON parsing, type inference
# ---------------------------------------------------------------------------------------------

_UNSUPPORTED_ENCODINGS = {"UTF-16", "UTF-16LE", "UTF-16BE", "UTF-32", "UTF-32LE", "UTF-32BE", "UCS-2"}


def normalize_encoding(encoding: str | None) -> str:
    """A Java charset name for ``--encoding``; ASCII-compatible encodings only (lines split on \\n)."""
    name = (encoding or "utf-8").strip().upper().replace("_", "-")
    if name in ("UTF8", "UTF-8"):
        return "UTF-8"
    if name in _UNSUPPORTED_ENCODINGS:
        raise ValueError(
            f"--encoding {encoding!r} is not supported: lines are split on the byte \\n, which "
            f"{name} does not use; convert the file to UTF-8 (or an 8-bit encoding)"
        )
    if not re.fullmatch(r"[A-Z0-9][A-Z0-9.:-]*", name):
        raise ValueError(f"--encoding {encoding!r} is not a charset name")
    return name


def _java_charset(spark: SparkSession, given: str, normalized: str) -> str:
    """Java's name for a charset given in Java's or Python's spelling (``latin-1``, ``cp1252``)."""
    import codecs

    candidates = [given.strip(), normalized]
    with contextlib.suppress(LookupError):
        candidates.append(codecs.lookup(given.strip()).name)
    charset_class = spark_jvm(spark).java.nio.charset.Charset
    for name in candidates:
        try:
            return str(charset_class.forName(name).name())
        except Exception:  # py4j wraps IllegalCharsetNameException / UnsupportedCharsetException
            continue
    raise ValueError(f"--encoding {given!r} is not a charset name Java knows (e.g. ISO-8859-1, windows-1252)")


def decode_lines(spark: SparkSession, lines: DataFrame, encoding: str) -> DataFrame:
    """Lines as text in ``encoding``; a UTF-8 byte-order mark on line 1 is dropped.

    Spark's text reader keeps each line's bytes untouched, so casting a line to binary gives the
    file's bytes back and ``decode`` reads them in the declared charset.
    """
    charset = normalize_encoding(encoding)
    if charset != "UTF-8":
        charset = _java_charset(spark, encoding, charset)
        text = F.decode(F.col("_raw_line").cast("binary"), charset)
    else:
        text = F.col("_raw_line")
    text = F.when(F.col("_line_number") == 1, F.regexp_replace(text, "^\ufeff", "")).otherwise(text)
    return lines.withColumn("_raw_line", text)


def mark_invalid_utf8(parsed: DataFrame) -> DataFrame:
    """A UTF-8 line with bytes that are not UTF-8 is a reject (the file is in another encoding)."""
    invalid = F.decode(F.col("_raw_line").cast("binary"), "UTF-8") != F.col("_raw_line")
    reason = F.when(invalid, F.lit("line is not valid UTF-8: pass --encoding (e.g. windows-1252)"))
    return parsed.withColumn(REASON_COLUMN, F.coalesce(reason, F.col(REASON_COLUMN)))


def parse_fixed_width_lines(lines: DataFrame, widths: Sequence[tuple[str, int]]) -> DataFrame:
    """Columns cut at declared widths (values trimmed, empty = NULL); a line of the wrong length is a reject.

    A line longer than the declared total is accepted only when the extra characters are blanks.
    """
    total = sum(w for _, w in widths)
    length = F.length("_raw_line")
    too_short = length < total
    too_long = (length > total) & (F.trim(F.substring("_raw_line", total + 1, 1 << 30)) != "")
    reason = F.when(too_short, F.format_string(f"line has %d characters, expected {total}", length)).when(
        too_long, F.format_string(f"line has %d characters, expected {total} (text after the last column)", length)
    )
    bad = too_short | too_long
    cols = []
    position = 1
    for name, width in widths:
        value = F.nullif(F.trim(F.substring("_raw_line", position, width)), F.lit(""))
        cols.append(F.when(~bad, value).alias(name))
        position += width
    return lines.select("_line_number", "_raw_line", *cols, reason.alias(REASON_COLUMN))


_PATH = re.compile(r"^\$?(\.?[A-Za-z_][A-Za-z0-9_]*|\[\d+\]|\['[^'\]]+'\])+$")


def json_path(path: str, column: str) -> str:
    """``customer.name`` / ``items[0].sku`` / ``$.a['b c']`` → a ``$``-rooted JSON path."""
    text = path.strip() if isinstance(path, str) else ""
    if not text or not _PATH.match(text):
        raise ValueError(
            f"--json_paths: path {path!r} of column {column!r} is not a path like customer.name or items[0].sku"
        )
    if text.startswith("$"):
        return text
    return "$" + ("" if text.startswith("[") else ".") + text


def parse_json_lines(
    lines: DataFrame, paths: Sequence[tuple[str, str]] | None, keys: Sequence[tuple[str, str]] | None = None
) -> DataFrame:
    """Each line (or record) one JSON object; columns from declared paths (nested objects flattened),
    or from its top-level keys (``keys``: column → key). Nested values without a path stay JSON text."""
    is_object = F.json_object_keys("_raw_line").isNotNull()
    reason = F.when(~is_object, F.lit("not a JSON object"))
    cols: list[Column] = []
    if paths:
        for name, path in paths:
            cols.append(F.when(is_object, F.get_json_object("_raw_line", path)).alias(name))
    else:
        as_map = F.from_json(F.col("_raw_line"), "map<string,string>")
        for name, key in keys or ():
            cols.append(F.when(is_object, as_map[key]).alias(name))
    return lines.select("_line_number", "_raw_line", *cols, reason.alias(REASON_COLUMN))


def json_top_level_keys(lines: DataFrame) -> list[str]:
    """Every top-level key of the JSON objects, in order of first appearance (one pass)."""
    keys = (
        lines.select("_line_number", F.explode(F.json_object_keys("_raw_line")).alias("key"))
        .groupBy("key")
        .agg(F.min("_line_number").alias("first"))
        .collect()
    )
    return [r["key"] for r in sorted(keys, key=lambda r: (r["first"], r["key"]))]


def json_document_records(spark: SparkSession, uri: str) -> tuple[DataFrame, bool]:
    """A JSON document (an array of objects, or one object) as ``(_line_number, _raw_line)`` records.

    ``_line_number`` is the record's position in the array (1-based). Returns the records and whether
    the document parsed at all (False: truncated or not JSON).
    """
    doc = spark.read.text(uri, wholetext=True).select(F.trim(F.regexp_replace("value", "^\ufeff", "")).alias("v"))
    records = F.when(F.col("v").startswith("["), F.from_json("v", "array<string>")).when(
        F.col("v").startswith("{") & F.json_object_keys("v").isNotNull(), F.array("v")
    )
    parsed = doc.select(records.alias("records")).persist()
    ok = parsed.filter(F.col("records").isNull()).count() == 0
    out = parsed.select(F.posexplode("records").alias("pos", "_raw_line")).select(
        (F.col("pos") + 1).cast("long").alias("_line_number"), "_raw_line"
    )
    return out, ok


# candidate types in the order they are tried: the first that every non-empty value fits wins
_INT = r"^[+-]?[0-9]{1,18}$"
_DECIMAL = r"^[+-]?[0-9]+(\.[0-9]+)?$"
_DOUBLE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_BOOL = r"^(?i)(true|false)$"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_TIMESTAMP = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$"
)


def infer_types(parsed: DataFrame, columns: Sequence[str]) -> dict[str, str]:
    """Spark SQL type names for string columns, from every value (one aggregation over the data).

    Integers become ``bigint`` and decimals ``decimal(p,s)`` with at least 18 digits, so a later
    file with larger values still fits the stored schema; anything mixed stays ``string``.
    """
    ok = F.col(REASON_COLUMN).isNull()
    aggs: list[Column] = []
    for i, name in enumerate(columns):
        v = F.when(ok, F.trim(F.col(name)))
        present = v.isNotNull() & (v != "")

        def count_if(cond: Column, tag: str, i: int = i, present: Column = present) -> Column:
            return F.count(F.when(present & cond, 1)).alias(f"{tag}{i}")

        fraction = F.regexp_extract(v, r"\.([0-9]+)$", 1)
        integer = F.regexp_replace(F.regexp_replace(v, r"^[+-]", ""), r"\..*$", "")
        aggs += [
            F.count(F.when(present, 1)).alias(f"n{i}"),
            count_if(v.rlike(_BOOL), "bool", i),
            count_if(v.rlike(_INT), "int", i),
            count_if(v.rlike(_DECIMAL), "dec", i),
            count_if(v.rlike(_DOUBLE), "dbl", i),
            count_if(v.rlike(_DATE) & F.expr(f"try_cast(trim({quote_spark(name)}) AS date)").isNotNull(), "date", i),
            count_if(
                v.rlike(_TIMESTAMP) & F.expr(f"try_cast(trim({quote_spark(name)}) AS timestamp)").isNotNull(), "ts", i
            ),
            F.max(F.when(present & v.rlike(_DECIMAL), F.length(fraction))).alias(f"scale{i}"),
            F.max(F.when(present & v.rlike(_DECIMAL), F.length(integer))).alias(f"digits{i}"),
        ]
    if not aggs:
        return {}
    row = parsed.agg(*aggs).first()
    if row is None:  # an aggregation without grouping always has one row
        raise RuntimeError("type inference: the aggregation returned no row")
    types: dict[str, str] = {}
    for i, name in enumerate(columns):
        n = row[f"n{i}"]
        if n == 0:
            types[name] = "string"
        elif row[f"bool{i}"] == n:
            types[name] = "boolean"
        elif row[f"int{i}"] == n:
            types[name] = "bigint"
        elif row[f"dec{i}"] == n and (row[f"digits{i}"] or 0) + (row[f"scale{i}"] or 0) <= 38:
            scale = row[f"scale{i}"] or 0
            precision = min(38, max(18, (row[f"digits{i}"] or 0) + scale))
            types[name] = f"decimal({precision},{scale})"
        elif row[f"dbl{i}"] == n:
            types[name] = "double"
        elif row[f"date{i}"] == n:
            types[name] = "date"
        elif row[f"ts{i}"] == n:
            types[name] = "timestamp"
        else:
            types[name] = "string"
    return types


def sniff_problem(name: str, fmt: str, head: bytes, size: int) -> str | None:
    """What is wrong with a landing file judging by its size and first bytes; None when plausible.

    ``head`` is the start of the file as stored (compressed when gzip). The answer completes the
    sentence "landing file <uri> ..." in the job's error.
    """
    import zlib

    if size == 0:
        return "is empty (0 bytes)"
    gz_name = name.lower().endswith(".gz")
    gz_magic = head[:2] == b"\x1f\x8b"
    if fmt == "parquet":
        if gz_name or gz_magic:
            return "is gzip-wrapped parquet: parquet compresses internally (e.g. codec gzip), land the .parquet file"
        if head[:4] != b"PAR1":
            return f"is not a parquet file: it does not start with the PAR1 magic bytes (starts with {head[:16]!r})"
        return None
    if gz_name and not gz_magic:
        return "is named .gz but is not gzip-compressed"
    if gz_magic and not gz_name:
        return "is gzip-compressed but its name does not end in .gz (name it .gz so it is decompressed)"
    content = head
    if gz_magic:
        try:
            content = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
        except zlib.error as exc:
            return f"is not valid gzip: {exc}"
    if content[:4] == b"PAR1":
        return f"is a parquet file, not {fmt}: use --format parquet"
    if b"\x00" in content[:4096]:
        return f"is binary (it contains NUL bytes), not {fmt} text; UTF-16 files must be converted to UTF-8"
    if fmt == "json":
        start = content.lstrip(b"\xef\xbb\xbf").lstrip()
        if start and start[:1] not in (b"[", b"{"):
            return f"is not JSON: it starts with {start[:20]!r}, expected [ or {{"
    return None
