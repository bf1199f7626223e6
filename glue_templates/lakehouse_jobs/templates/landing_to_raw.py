"""landing → raw: one landing file to parquet with lineage columns; bad records kept as rejects.

Formats: ``csv`` (delimiter, quote, header or declared columns, encoding), ``json`` (one document:
an array of objects or one object), ``jsonl`` (one object per line), ``parquet``, ``fixed_width``
(declared widths) and ``regex`` (named groups); the text formats also gzip-compressed (a name ending
in ``.gz``). JSON fields, nested ones included, become columns through ``--json_paths``.

Output: ``{lake_uri}/raw/{dataset}/_batch_id={batch}/`` (parquet), replaced as a whole on each
run of the batch so a re-run gives the same result. Each row carries ``_source_file``,
``_batch_id``, ``_ingested_at`` and ``_line_number`` (for ``json`` the record's position in the
array, for ``parquet`` the row's). Records that do not parse or cast go to
``{lake_uri}/rejects/{dataset}/_batch_id={batch}/`` (JSON lines, readable with any tool) with the
reason.

A file passes or fails as a whole. Its records are counted first; the rejects are written either
way (nothing read is lost), the raw rows only when ``--max_reject_ratio`` allows. A try that fails
for any reason (reject ratio, empty, truncated or wrong-format file, schema mismatch, read error)
leaves no raw folder for its batch: an earlier try's folder is removed when a try starts and again
when it fails. The rejects folder is replaced once a try has counted records (removed when there
are none) and left as it was by a try that failed before that.

A killed process cannot clean up. Spark's overwrite deletes the folder, then writes, and writes
``_SUCCESS`` at job commit after every data file is in place (a committer that writes in place, as
S3-optimized ones do, may show part files earlier). So a reader can rely on this: a folder with
``_SUCCESS`` holds the whole batch, a folder without it is a dead try's leftovers, and no folder
means the last try failed or none ran. In the metrics ``rows_out`` counts the rows raw holds (0 on
failure), ``rows_valid`` those that parsed and cast.

Schema: ``--schema`` (column → Spark SQL type) when given. Otherwise the dataset's stored schema
``{lake_uri}/raw/{dataset}/_schema.json`` is applied and the file's columns are checked against it;
the first run without either infers the types from the data and writes that file after the raw
write, so every later file is checked against it (a value that no longer fits is a reject, a
changed set of columns fails the run naming them).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse_jobs import io
from lakehouse_jobs.args import ArgSpec
from lakehouse_jobs.identifiers import quote_spark, sanitize_batch_id, validate_identifier
from lakehouse_jobs.job import run_template
from lakehouse_jobs.landing import (
    REASON_COLUMN,
    cast_columns,
    check_java_regex,
    compile_line_regex,
    decode_lines,
    infer_types,
    json_document_records,
    json_path,
    json_top_level_keys,
    mark_invalid_utf8,
    normalize_encoding,
    normalize_header,
    number_lines,
    parse_csv_lines,
    parse_fixed_width_lines,
    parse_json_lines,
    parse_regex_lines,
    parse_schema,
    sniff_problem,
    split_header_line,
)
from lakehouse_jobs.metrics import JobFailure, error_text

__all__ = ["FORMATS", "SPEC", "main", "run"]

TEMPLATE = "landing_to_raw"
FORMATS = ("csv", "json", "jsonl", "parquet", "fixed_width", "regex")

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec(
        "source_uri",
        required=True,
        description="the landing file (s3://bucket/key, file:// URI or path), or "
        "a run's manifest listing several (a micro-batch)",
    ),
    ArgSpec("dataset", required=True, description="raw dataset name"),
    ArgSpec("format", required=True, description=" | ".join(FORMATS)),
    ArgSpec("regex", description="format=regex: full-line pattern with named groups"),
    ArgSpec("header", "bool", default=True, description="format=csv: first line holds column names"),
    ArgSpec("delimiter", default=",", description="format=csv: field delimiter"),
    ArgSpec("quote", default='"', description="format=csv: quote character (empty: no quoting)"),
    ArgSpec("encoding", default="utf-8", description="text formats: character encoding of the file"),
    ArgSpec("columns", "list", description="format=csv: column names (required without header)"),
    ArgSpec("widths", "json", description="format=fixed_width: {column: width} in file order"),
    ArgSpec("json_paths", "json", description='format=json/jsonl: {column: path} e.g. {"city": "address.city"}'),
    ArgSpec("schema", "json", description="column -> Spark SQL type"),
    ArgSpec("infer_schema", "bool", default=True, description="without --schema: infer types and store them"),
    ArgSpec("max_reject_ratio", "float", default=0.0, description="fail when rejects/records exceeds this"),
    ArgSpec("skip_blank_lines", "bool", default=True, description="ignore empty lines"),
)

LINEAGE_COLUMNS = ("_source_file", "_batch_id", "_ingested_at", "_line_number")
REJECT_COLUMNS = ("_source_file", "_batch_id", "_line_number", "_raw_line", "_reason")
SCHEMA_FILE = "_schema.json"


def _validate(args: dict[str, Any]) -> None:
    validate_identifier(args["dataset"], "--dataset")
    fmt = args["format"]
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "regex" and not args["regex"]:
        raise ValueError("--format regex needs --regex")
    if fmt == "csv":
        if not args["delimiter"]:
            raise ValueError("--delimiter must not be empty")
        if len(args["quote"] or "") > 1:
            raise ValueError(f"--quote must be one character (or empty), got {args['quote']!r}")
        if not args["header"] and not args["columns"]:
            raise ValueError("--format csv with --header false needs --columns")
    if fmt == "fixed_width":
        _widths(args["widths"])
    if args["json_paths"] is not None and fmt not in ("json", "jsonl"):
        raise ValueError("--json_paths applies to --format json or jsonl only")
    if fmt != "parquet":
        normalize_encoding(args["encoding"])
    if not 0.0 <= args["max_reject_ratio"] <= 1.0:
        raise ValueError(f"--max_reject_ratio must be between 0 and 1, got {args['max_reject_ratio']}")


def _widths(value: Any) -> list[tuple[str, int]]:
    if not isinstance(value, dict) or not value:
        raise ValueError('--format fixed_width needs --widths, a JSON object {"column": width, ...} in file order')
    widths = []
    for name, width in value.items():
        validate_identifier(name, "--widths column")
        if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
            raise ValueError(f"--widths: width of {name!r} must be a positive integer, got {width!r}")
        widths.append((name, width))
    return widths


def _json_paths(value: Any) -> list[tuple[str, str]] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ValueError('--json_paths must be a JSON object {"column": "path.to.field", ...}')
    return [(validate_identifier(name, "--json_paths column"), json_path(path, name)) for name, path in value.items()]


def _read_lines(spark: SparkSession, readable: str, args: dict[str, Any]) -> DataFrame:
    lines = decode_lines(spark, number_lines(spark, readable), args["encoding"])
    if args["skip_blank_lines"]:
        lines = lines.filter(F.trim("_raw_line") != "")
    return lines


def _parse(spark: SparkSession, readable: str, args: dict[str, Any]) -> tuple[DataFrame, list[str], bool]:
    """The file → ``(_line_number, _raw_line, columns..., _reason)``, its data columns, and whether
    the columns are still text (every format but parquet)."""
    source, fmt = args["source_uri"], args["format"]
    if fmt == "parquet":
        data = spark.read.parquet(readable)
        names = normalize_header(data.columns)
        renamed = data.select(
            *[F.col(quote_spark(old)).alias(new) for old, new in zip(data.columns, names, strict=True)]
        )
        parsed = renamed.select(
            (F.col("_metadata.row_index") + 1).cast("long").alias("_line_number"),
            F.to_json(F.struct(*[F.col(n) for n in names])).alias("_raw_line"),
            *names,
            F.lit(None).cast("string").alias(REASON_COLUMN),
        )
        return parsed, names, False
    if fmt == "json":
        records, ok = json_document_records(spark, readable)
        if not ok:
            raise JobFailure(
                f"landing file {source} is not valid JSON: the document is truncated or malformed "
                f"(expected an array of objects or one object)"
            )
        lines = records
    else:
        lines = _read_lines(spark, readable, args)
    if fmt == "regex":
        regex = compile_line_regex(args["regex"])
        check_java_regex(spark, regex.pattern)
        columns = [name for name, _ in regex.columns]
        parsed = parse_regex_lines(lines, regex)
    elif fmt == "fixed_width":
        widths = _widths(args["widths"])
        columns = [name for name, _ in widths]
        parsed = parse_fixed_width_lines(lines, widths)
    elif fmt in ("json", "jsonl"):
        paths = _json_paths(args["json_paths"])
        if paths:
            columns = [name for name, _ in paths]
            parsed = parse_json_lines(lines, paths)
        else:
            keys = json_top_level_keys(lines)
            columns = normalize_header(keys) if keys else []
            parsed = parse_json_lines(lines, None, list(zip(columns, keys, strict=True)))
    else:
        data = lines
        columns = list(args["columns"] or [])
        quote = args["quote"] or ""
        if args["header"]:
            first = (
                lines.filter(F.trim("_raw_line") != "")
                .orderBy("_line_number")
                .select("_line_number", "_raw_line")
                .first()
            )
            if first is None:
                raise JobFailure(f"landing file {source} is empty", {"rows_in": 0, "rows_valid": 0, "rows_rejected": 0})
            header = normalize_header(split_header_line(first["_raw_line"], args["delimiter"], quote))
            columns = columns or header
            if len(columns) != len(header):
                raise ValueError(f"--columns names {len(columns)} columns but the header of {source} has {len(header)}")
            data = lines.filter(F.col("_line_number") != first["_line_number"])
        for name in columns:
            validate_identifier(name, "column")
        parsed = parse_csv_lines(data, columns, args["delimiter"], quote)
    if fmt != "json" and normalize_encoding(args["encoding"]) == "UTF-8":
        parsed = mark_invalid_utf8(parsed)
    return parsed, columns, True


def _check_file(source: str, readable: str, fmt: str) -> None:
    """Empty, truncated or wrong-format files fail here, naming the file and the problem."""
    head, tail, size = io.file_head(readable, tail=8 if fmt == "parquet" else 0)
    name = PurePosixPath(urlparse(source).path or source).name
    problem = sniff_problem(name, fmt, head, size)
    if problem is None and fmt == "parquet" and (size < 12 or tail[-4:] != b"PAR1"):
        problem = "is truncated: the parquet footer (PAR1 at its end) is missing"
    if problem:
        raise JobFailure(f"landing file {source} {problem}")


def _describe_read_error(exc: BaseException) -> str | None:
    """A Spark/Java read error as a short problem description; None if it is not a read error."""
    if not isinstance(exc, (Py4JJavaError, PySparkException)):
        return None
    text = str(exc)
    if "Unexpected end of input stream" in text or "EOFException" in text:
        return "is truncated: the compressed stream ends early"
    if "Not in GZIP format" in text or "incorrect header check" in text or "invalid block type" in text:
        return "is not valid gzip"
    if "is not a Parquet file" in text or "CANNOT_READ_FILE_FOOTER" in text or "ParquetDecodingException" in text:
        return "is not a readable parquet file (corrupt or truncated)"
    if "MALFORMED" in text or "Malformed" in text:
        return "is malformed"
    return None


def _schema_uri(args: dict[str, Any]) -> str:
    return io.lake_path(args["lake_uri"], "raw", args["dataset"], SCHEMA_FILE)


def _stored_schema(uri: str) -> dict[str, str] | None:
    text = io.read_text(uri)
    if text is None:
        return None
    stored = json.loads(text)
    return {c["name"]: c["type"] for c in stored["columns"]}


def _types(
    spark: SparkSession, parsed: DataFrame, columns: list[str], text_columns: bool, args: dict[str, Any]
) -> tuple[dict[str, str] | None, str]:
    """The column types to apply and where they came from (``parameters``/``stored``/``inferred``/``none``)."""
    source = args["source_uri"]
    if args["schema"]:
        parse_schema(spark, args["schema"], columns)  # validates names and types
        return dict(args["schema"]), "parameters"
    if not args["infer_schema"]:
        return None, "none"
    schema_uri = _schema_uri(args)
    stored = _stored_schema(schema_uri)
    if stored is not None:
        if not columns:  # no record had fields (a blank file, or none parsed): the counts say which
            return None, "stored"
        missing = [c for c in stored if c not in columns]
        extra = [c for c in columns if c not in stored]
        if missing or extra:
            raise JobFailure(
                f"landing file {source} does not match the stored schema of dataset {args['dataset']} "
                f"({schema_uri}): missing columns {missing}, new columns {extra}. Pass --schema, or delete "
                f"{SCHEMA_FILE} to accept the new columns",
                {"schema_source": "stored", "schema_uri": schema_uri, "missing_columns": missing, "new_columns": extra},
            )
        return stored, "stored"
    if text_columns:
        return infer_types(parsed, columns), "inferred"
    return {
        c: t for c, t in ((f.name, f.dataType.simpleString()) for f in parsed.schema.fields) if c in columns
    }, "inferred"


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    dataset = validate_identifier(args["dataset"], "--dataset")  # names the folders: checked first
    batch_folder = f"_batch_id={sanitize_batch_id(args['batch_id'])}"
    raw_path = io.lake_path(args["lake_uri"], "raw", dataset, batch_folder)
    rejects_path = io.lake_path(args["lake_uri"], "rejects", dataset, batch_folder)
    failure_context = {
        "source_uri": args["source_uri"],
        "format": args["format"],
        "raw_path": None,
        "rejects_path": None,
    }
    try:
        # an earlier try's output goes first: if this try dies anywhere, no stale batch is left
        io.delete_path(spark, raw_path)
        files = _manifest_files(args["source_uri"])
        if files is None:
            return _load(spark, args, raw_path, rejects_path)
        return _load_files(spark, args, files, raw_path, rejects_path)
    except Exception as exc:
        _discard_raw(spark, raw_path, exc)
        if isinstance(exc, JobFailure):
            exc.metrics = {**failure_context, **exc.metrics}
        raise


def _discard_raw(spark: SparkSession, raw_path: str, failure: Exception) -> None:
    """A failed try leaves no raw batch, whatever it got to write: the next task and a re-run must
    not take part of a rejected file for the whole. If removing it fails too, the job's own error
    still wins, with the leftover named on stderr and in the failure's metrics."""
    try:
        io.delete_path(spark, raw_path)
    except Exception as cleanup_error:
        note = f"raw batch {raw_path} could not be removed after the failure: {error_text(cleanup_error)}"
        print(f"[{TEMPLATE}] {note}", file=sys.stderr)
        failure.add_note(note)
        if isinstance(failure, JobFailure):
            failure.metrics["raw_cleanup_error"] = note


def _load(spark: SparkSession, args: dict[str, Any], raw_path: str, rejects_path: str) -> dict[str, Any]:
    """Parse, count, check the reject ratio, then write: raw only when the file passed."""
    _validate(args)
    source, batch_id, fmt = args["source_uri"], args["batch_id"], args["format"]
    unit = "rows" if fmt == "parquet" else "records" if fmt == "json" else "lines"
    # the run's time, not the clock: a re-run of an old batch must not look newer than later batches
    ingested_at = (
        datetime.fromisoformat(args["batch_time"]).astimezone(UTC) if args.get("batch_time") else datetime.now(UTC)
    )
    metrics: dict[str, Any] = {}
    with io.localize_input(spark, source) as readable:
        _check_file(source, readable, fmt)
        try:
            parsed, columns, text_columns = _parse(spark, readable, args)
            types, schema_source = _types(spark, parsed, columns, text_columns, args)
            if types:
                parsed = cast_columns(parsed, parse_schema(spark, types, columns))
            parsed = parsed.withColumns(
                {
                    "_source_file": F.lit(source),
                    "_batch_id": F.lit(batch_id),
                    "_ingested_at": F.lit(ingested_at),
                }
            ).persist()
            try:
                counts = parsed.agg(
                    F.count(F.lit(1)).alias("rows_in"),
                    F.count(F.col(REASON_COLUMN)).alias("rows_rejected"),
                ).first()
                if counts is None:  # an aggregation without grouping always has one row
                    raise RuntimeError("counting the parsed lines returned no row")
                rows_in, rows_rejected = int(counts["rows_in"]), int(counts["rows_rejected"])
                metrics = {
                    "rows_in": rows_in,
                    "rows_out": 0,  # what raw holds: set once the raw write committed
                    "rows_valid": rows_in - rows_rejected,
                    "rows_rejected": rows_rejected,
                    "source_uri": source,
                    "format": fmt,
                    "raw_path": None,
                    "rejects_path": None,  # set once they are written
                    "schema_source": schema_source,
                    "schema": types,
                }
                if rows_in == 0:
                    raise JobFailure(f"landing file {source} is empty: it has no data {unit}", metrics)
                # rejects are kept whether or not the file passes: nothing read is lost
                if rows_rejected:
                    parsed.filter(F.col(REASON_COLUMN).isNotNull()).select(*REJECT_COLUMNS).coalesce(1).write.mode(
                        "overwrite"
                    ).json(rejects_path)
                    metrics["rejects_path"] = rejects_path
                else:
                    io.delete_path(spark, rejects_path)  # rejects of an earlier run of this batch are stale now
                ratio = rows_rejected / rows_in
                if ratio > args["max_reject_ratio"]:
                    raise JobFailure(
                        f"landing file {source}: {rows_rejected} of {rows_in} {unit} rejected ({ratio:.1%}), more "
                        f"than max_reject_ratio {args['max_reject_ratio']}; nothing written to raw, rejects written "
                        f"to {rejects_path}",
                        metrics,
                    )
                good = parsed.filter(F.col(REASON_COLUMN).isNull()).select(*columns, *LINEAGE_COLUMNS)
                good.write.mode("overwrite").parquet(raw_path)
                metrics.update(rows_out=rows_in - rows_rejected, raw_path=raw_path)
            finally:
                parsed.unpersist()
        except JobFailure:
            raise
        except Exception as exc:
            problem = _describe_read_error(exc)
            if problem is None:
                raise
            raise JobFailure(f"landing file {source} {problem} (read as {fmt})", metrics) from exc
    if schema_source == "inferred" and types is not None:
        metrics["schema_uri"] = _store_inferred_schema(args, fmt, source, columns, types)
    return metrics


def _store_inferred_schema(
    args: dict[str, Any], fmt: str, inferred_from: str, columns: list[str], types: dict[str, str]
) -> str:
    """Written after the raw write committed: the dataset's later files are checked against it."""
    uri = _schema_uri(args)
    document = {
        "dataset": args["dataset"],
        "format": fmt,
        "inferred_from": inferred_from,
        "batch_id": args["batch_id"],
        "columns": [{"name": c, "type": types[c]} for c in columns],
    }
    io.write_text(uri, json.dumps(document, indent=2))
    return uri


# -- a run of many files (a micro-batch) ---------------------------------------------------------
@dataclass(frozen=True)
class _SourceFile:
    uri: str
    event_time: datetime | None


def _manifest_files(source_uri: str) -> list[_SourceFile] | None:
    """The files a run's manifest lists (``${files.uri}`` of a batched run), or None for a plain file."""
    if not io.is_manifest(source_uri):
        return None
    text = io.read_text(source_uri)
    if text is None:
        raise JobFailure(f"manifest {source_uri} does not exist")
    files = json.loads(text).get("files") or []
    if not files:
        raise JobFailure(f"manifest {source_uri} lists no files")
    return [
        _SourceFile(f["uri"], datetime.fromisoformat(f["event_time"]) if f.get("event_time") else None) for f in files
    ]


def _load_files(
    spark: SparkSession, args: dict[str, Any], files: list[_SourceFile], raw_path: str, rejects_path: str
) -> dict[str, Any]:
    """Many files in one run: parsed one by one (lazily), read, counted and written together.

    A file is accepted or rejected as a whole: one that is empty, binary, truncated, in the wrong
    format, of other columns than the batch, or over ``max_reject_ratio`` stays out of raw, is
    named with its reason in the metrics (``rejected_files``) and the alert, and the rest of the
    batch goes on. Every file's bad records go to the rejects either way; when no file is left,
    the task fails. Each raw row keeps its file (``_source_file``) and the file's event time
    (``_ingested_at``), which orders a multi-file batch in the stage when it has no ``sequence_by``.
    """
    _validate(args)
    batch_id, fmt = args["batch_id"], args["format"]
    unit = "rows" if fmt == "parquet" else "records" if fmt == "json" else "lines"
    batch_time = (
        datetime.fromisoformat(args["batch_time"]).astimezone(UTC) if args.get("batch_time") else datetime.now(UTC)
    )
    rejected: dict[str, str] = {}
    with ExitStack() as staged:
        parsed_files: list[tuple[_SourceFile, DataFrame, list[str], bool]] = []
        staged_as: dict[str, str] = {}  # the URI of each file -> what Spark read (named in its errors)
        for source in files:
            readable = staged.enter_context(io.localize_input(spark, source.uri))
            staged_as[source.uri] = readable
            try:
                _check_file(source.uri, readable, fmt)
                frame, columns, text_columns = _parse(spark, readable, {**args, "source_uri": source.uri})
            except JobFailure as exc:
                rejected[source.uri] = str(exc)
                continue
            except Exception as exc:
                problem = _describe_read_error(exc)
                if problem is None:
                    raise
                rejected[source.uri] = f"landing file {source.uri} {problem} (read as {fmt})"
                continue
            ingested_at = (source.event_time or batch_time).astimezone(UTC)
            parsed_files.append(
                (
                    source,
                    frame.withColumns(
                        {
                            "_source_file": F.lit(source.uri),
                            "_batch_id": F.lit(batch_id),
                            "_ingested_at": F.lit(ingested_at),
                        }
                    ),
                    columns,
                    text_columns,
                )
            )
        if not parsed_files:
            raise JobFailure(_all_rejected(files, rejected), {"rejected_files": _listed(rejected)})
        columns = parsed_files[0][2]
        for source, _, file_columns, _ in parsed_files[1:]:
            if file_columns != columns:
                rejected[source.uri] = (
                    f"landing file {source.uri} has columns {file_columns}, the batch's first "
                    f"file {parsed_files[0][0].uri} has {columns}"
                )
        kept = [(s, f, t) for s, f, c, t in parsed_files if s.uri not in rejected]
        union = kept[0][1]
        for _, frame, _ in kept[1:]:
            union = union.unionByName(frame)
        types, schema_source = _types(spark, union, columns, kept[0][2], args)
        if types:
            union = cast_columns(union, parse_schema(spark, types, columns))
        metrics, union = _count_by_file(union, kept, staged_as, rejected, args, unit, fmt)
        try:
            accepted = [s.uri for s, _, _ in kept if s.uri not in rejected]
            if metrics["rows_rejected"]:
                union.filter(F.col(REASON_COLUMN).isNotNull()).select(*REJECT_COLUMNS).coalesce(1).write.mode(
                    "overwrite"
                ).json(rejects_path)
                metrics["rejects_path"] = rejects_path
            else:
                io.delete_path(spark, rejects_path)
            metrics.update(
                source_uri=args["source_uri"],
                format=fmt,
                files=len(files),
                files_accepted=len(accepted),
                files_rejected=len(rejected),
                rejected_files=_listed(rejected),
                raw_path=None,
                schema_source=schema_source,
                schema=types,
                rows_out=0,
            )
            if not accepted:
                raise JobFailure(_all_rejected(files, rejected), metrics)
            good = union.filter(F.col(REASON_COLUMN).isNull() & F.col("_source_file").isin(accepted))
            good.select(*columns, *LINEAGE_COLUMNS).write.mode("overwrite").parquet(raw_path)
            rows_out = sum(n for uri, n in metrics.pop("_valid_by_file").items() if uri in accepted)
            metrics.update(rows_out=rows_out, raw_path=raw_path)
        finally:
            union.unpersist()
    if schema_source == "inferred" and types is not None:
        metrics["schema_uri"] = _store_inferred_schema(args, fmt, accepted[0], columns, types)
    return metrics


def _count_by_file(
    union: DataFrame,
    kept: list[tuple[_SourceFile, DataFrame, bool]],
    staged_as: dict[str, str],
    rejected: dict[str, str],
    args: dict[str, Any],
    unit: str,
    fmt: str,
) -> tuple[dict[str, Any], DataFrame]:
    """Records and rejects per file, in one job over all files; files empty or over the reject
    ratio are added to ``rejected``. A file Spark cannot read at all (a cut gzip stream found only
    while reading) is named from the error, set aside, and the count runs again without it."""
    while True:
        frame = union.filter(~F.col("_source_file").isin(list(rejected))) if rejected else union
        frame = frame.persist()
        try:
            counts = (
                frame.groupBy("_source_file")
                .agg(F.count(F.lit(1)).alias("rows_in"), F.count(F.col(REASON_COLUMN)).alias("rows_rejected"))
                .collect()
            )
            break
        except Exception as exc:
            frame.unpersist()
            problem = _describe_read_error(exc)
            culprit = next(
                (s.uri for s, _, _ in kept if s.uri not in rejected and _names_file(exc, staged_as[s.uri])), None
            )
            if problem is None or culprit is None:
                raise
            rejected[culprit] = f"landing file {culprit} {problem} (read as {fmt})"
    by_file = {row["_source_file"]: (int(row["rows_in"]), int(row["rows_rejected"])) for row in counts}
    for source, _, _ in kept:
        rows_in, bad = by_file.get(source.uri, (0, 0))
        if source.uri in rejected:
            continue
        if rows_in == 0:
            rejected[source.uri] = f"landing file {source.uri} is empty: it has no data {unit}"
        elif bad / rows_in > args["max_reject_ratio"]:
            rejected[source.uri] = (
                f"landing file {source.uri}: {bad} of {rows_in} {unit} rejected "
                f"({bad / rows_in:.1%}), more than max_reject_ratio {args['max_reject_ratio']}"
            )
    metrics = {
        "rows_in": sum(n for n, _ in by_file.values()),
        "rows_rejected": sum(b for _, b in by_file.values()),
        "rows_valid": sum(n - b for n, b in by_file.values()),
        "rejects_path": None,
        "_valid_by_file": {uri: n - b for uri, (n, b) in by_file.items()},
    }
    return metrics, frame


def _names_file(exc: BaseException, readable: str) -> bool:
    """Whether a Spark read error names this file: Spark says which path it failed to read."""
    path = urlparse(readable).path or readable
    return bool(path) and path in error_text(exc)


def _listed(rejected: dict[str, str]) -> list[str]:
    return [reason for _, reason in sorted(rejected.items())]


def _all_rejected(files: list[_SourceFile], rejected: dict[str, str]) -> str:
    return f"all {len(files)} files of the batch were rejected: " + "; ".join(_listed(rejected))


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
