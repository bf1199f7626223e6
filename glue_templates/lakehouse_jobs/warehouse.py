"""Loading a table into the warehouse (Postgres locally, Redshift on AWS) so readers never see half.

Rows never go row by row. Spark writes the table as files and the warehouse bulk-loads them with
``COPY`` into a staging table next to the target:

* Postgres with ``wal_level=minimal`` (the local stack) and the work folder on the driver's disk:
  Spark writes uncompressed parquet files and the driver reads each with pyarrow as soon as Spark
  has finished it and streams it into one ``COPY ... FORMAT binary`` through ADBC (Apache Arrow's
  database API, ``adbc-driver-postgresql``), in the one transaction that creates the staging
  table and publishes it. Binary COPY spares Postgres the text parsing of CSV (its dates,
  timestamps, numbers and line splitting were half of the load's CPU) and parquet is cheaper for
  Spark to write than CSV. (On such a server with the work folder elsewhere: CSV as below, on one
  connection in that one transaction.)
* Postgres that logs every write (e.g. RDS, where Glue runs without a Python database driver):
  Spark writes CSV files and the driver streams them through the JDBC driver's ``CopyManager``,
  several at once, each on its own connection.
* Redshift: Spark writes parquet to S3 and one ``COPY ... FORMAT AS PARQUET`` reads it.

Then one transaction (over a plain JDBC connection from the driver JVM, or the ADBC connection
that loaded the rows) makes them visible:

* ``replace``: drop the old table and rename the staging table into its place (atomic swap). A
  reader blocked on the table's lock during the swap resumes on the new table.
* ``merge``: delete the target rows whose key is in the batch and insert the batch (an upsert),
  after applying schema changes, all in the same transaction.

The warehouse columns follow the presentation table. ``on_schema_change`` decides what happens when
they differ from the existing warehouse table: ``apply`` (replace: the new table has the new
columns; merge: new columns are added, changed types altered, dropped ones kept and left NULL) or
``refuse`` (fail before anything is loaded, naming every difference).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakehouse_jobs import io
from lakehouse_jobs.environment import read_environment
from lakehouse_jobs.identifiers import TableName, quote_postgres, validate_identifier
from lakehouse_jobs.job import spark_settings
from lakehouse_jobs.secrets import read_secret

__all__ = [
    "LoadOptions",
    "SchemaChangeRefused",
    "SchemaDiff",
    "WarehouseConnection",
    "connection_from_env",
    "connection_from_secret",
    "libpq_uri",
    "load",
    "load_atomically",
    "merge_statements",
    "redshift_copy_statement",
    "schema_change_statements",
    "schema_diff",
    "staging_table_name",
    "swap_statements",
    "warehouse_type",
]

_DRIVERS = {"postgres": "org.postgresql.Driver", "redshift": "com.amazon.redshift.jdbc42.Driver"}
_MAX_IDENTIFIER = 63


@dataclass(frozen=True)
class WarehouseConnection:
    url: str
    user: str
    password: str = ""
    driver: str = _DRIVERS["postgres"]

    def __repr__(self) -> str:  # never print the password into a job log
        return f"WarehouseConnection(url={self.url!r}, user={self.user!r})"

    @property
    def engine(self) -> str:
        return "redshift" if self.url.startswith("jdbc:redshift:") else "postgres"


def connection_from_env(environ: Mapping[str, str] | None = None) -> WarehouseConnection:
    """Local runs: ``LAKEHOUSE_WAREHOUSE_JDBC_URL`` / ``_USER`` / ``_PASSWORD`` (set by the runner)."""
    login = read_environment(environ).warehouse
    if not login.url:
        raise ValueError(
            "no warehouse connection: pass --secret_id or set LAKEHOUSE_WAREHOUSE_JDBC_URL, "
            "LAKEHOUSE_WAREHOUSE_USER and LAKEHOUSE_WAREHOUSE_PASSWORD"
        )
    driver = _DRIVERS["redshift"] if login.url.startswith("jdbc:redshift:") else _DRIVERS["postgres"]
    return WarehouseConnection(login.url, login.user, login.password, driver)


def connection_from_secret(secret_id: str, client: Any = None) -> WarehouseConnection:
    """A secret in the RDS/Redshift shape ``{host, port, dbname, username, password}``: handed over
    by the local runner (an Airflow connection) or read from AWS Secrets Manager (Glue)."""
    secret = read_secret(secret_id, client)
    missing = [k for k in ("host", "username", "password") if not secret.get(k)]
    if missing:
        raise ValueError(f"secret {secret_id} lacks {missing}; it needs host, port, dbname, username, password")
    engine = "redshift" if str(secret.get("engine", "")).lower() == "redshift" else "postgres"
    port = int(secret.get("port") or (5439 if engine == "redshift" else 5432))
    dbname = secret.get("dbname") or ("dev" if engine == "redshift" else "postgres")
    scheme = "redshift" if engine == "redshift" else "postgresql"
    return WarehouseConnection(
        f"jdbc:{scheme}://{secret['host']}:{port}/{dbname}", secret["username"], secret["password"], _DRIVERS[engine]
    )


def staging_table_name(table: str, batch_id: str) -> str:
    """``{table}__load_{batch}``, kept within the 63-character identifier limit and unique per batch."""
    readable = re.sub(r"[^a-z0-9_]+", "_", batch_id.lower()).strip("_")
    name = f"{table}__load_{readable}"
    if len(name) <= _MAX_IDENTIFIER and readable:
        return name
    digest = hashlib.sha1(batch_id.encode("utf-8")).hexdigest()[:12]
    return f"{table[: _MAX_IDENTIFIER - len('__load_') - len(digest)]}__load_{digest}"


@contextmanager
def _jdbc(spark: SparkSession, connection: WarehouseConnection) -> Iterator[Any]:
    """A ``java.sql.Connection`` in manual-commit mode; rolled back unless committed."""
    jvm = io.spark_jvm(spark)
    # The driver jar comes with spark.jars / Glue, i.e. in Spark's class loader, which neither py4j's
    # Class.forName nor DriverManager sees; Spark's own registry loads and wraps it for us.
    registry = jvm.org.apache.spark.sql.execution.datasources.jdbc.DriverRegistry
    registry.register(connection.driver)
    properties = jvm.java.util.Properties()
    properties.setProperty("user", connection.user)
    properties.setProperty("password", connection.password)
    conn = registry.get(connection.driver).connect(connection.url, properties)
    if conn is None:
        raise ValueError(f"driver {connection.driver} does not accept {connection.url}")
    try:
        conn.setAutoCommit(False)
        yield conn
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


# pgJDBC URL parameters with a libpq equivalent (pgJDBC name -> libpq name)
_LIBPQ_PARAMETERS = {
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "connectTimeout": "connect_timeout",
    "ApplicationName": "application_name",
    "options": "options",
}


def libpq_uri(connection: WarehouseConnection) -> str:
    """The libpq URI (what ADBC connects with) of a ``jdbc:postgresql://host[:port]/db[?...]`` URL.

    A URL parameter without a libpq equivalent fails here rather than be dropped: it could be the
    one that makes the connection safe (e.g. pgJDBC's ``ssl=true``; write ``sslmode=require``).
    """
    match = re.fullmatch(r"jdbc:postgresql://([^/?]+)(?:/([^?]*))?(?:\?(.*))?", connection.url)
    if connection.engine != "postgres" or not match:
        raise ValueError(f"not a jdbc:postgresql:// URL with one host: {connection.url!r}")
    host, database, query = match.groups()
    params = []
    for pair in filter(None, (query or "").split("&")):
        key, _, value = pair.partition("=")
        if key not in _LIBPQ_PARAMETERS:
            raise ValueError(
                f"warehouse URL parameter {key!r} has no libpq equivalent for the binary load; "
                f"use one of {sorted(_LIBPQ_PARAMETERS)}"
            )
        params.append(f"{_LIBPQ_PARAMETERS[key]}={value}")
    login = f"{quote(connection.user, safe='')}:{quote(connection.password, safe='')}@"
    return f"postgresql://{login}{host}/{database or ''}" + (f"?{'&'.join(params)}" if params else "")


_COPY_CHUNK_BYTES = 1 << 20


class _ArrowConnection:
    """A libpq connection through ADBC for the binary load, in one transaction until ``commit``
    (like the JDBC connections in manual-commit mode), with the same update counts."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._cursor = conn.cursor()

    def execute(self, statements: Sequence[str]) -> list[int]:
        counts = []
        for sql in statements:
            self._cursor.execute(sql)
            counts.append(int(self._cursor.rowcount))
        return counts

    def ingest(self, table: TableName, data: Any) -> int:
        """Append Arrow data (a table or a stream of batches) to ``table``, columns matched by name,
        with one ``COPY ... FORMAT binary``; returns the rows it copied.

        ADBC sends the rows in pieces of ``_COPY_CHUNK_BYTES``, so Postgres stores one piece while
        this process encodes the next.
        """
        self._cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(_COPY_CHUNK_BYTES)})
        return int(self._cursor.adbc_ingest(table.table, data, mode="append", db_schema_name=table.namespace))

    def commit(self) -> None:
        self._conn.commit()


@contextmanager
def _arrow(connection: WarehouseConnection) -> Iterator[_ArrowConnection]:
    """An ADBC connection whose statements form one transaction; rolled back unless committed."""
    from adbc_driver_postgresql import dbapi  # the binary load's alone: Glue's jobs never import it

    conn = dbapi.connect(libpq_uri(connection))
    try:
        yield _ArrowConnection(conn)
    except BaseException:
        with contextlib.suppress(Exception):  # a broken connection must not hide why the load failed
            conn.rollback()
        raise
    finally:
        conn.close()


def _execute(conn: Any, statements: Sequence[str]) -> list[int]:
    """Run statements in order; returns each one's update count (-1 for DDL and queries)."""
    if isinstance(conn, _ArrowConnection):
        return conn.execute(statements)
    statement = conn.createStatement()
    counts = []
    try:
        for sql in statements:
            statement.execute(sql)
            counts.append(int(statement.getUpdateCount()))
    finally:
        statement.close()
    return counts


def _query(conn: Any, sql: str, params: Sequence[str] = ()) -> list[tuple]:
    statement = conn.prepareStatement(sql)
    try:
        for i, value in enumerate(params, start=1):
            statement.setString(i, value)
        result = statement.executeQuery()
        width = result.getMetaData().getColumnCount()
        rows = []
        while result.next():
            rows.append(tuple(result.getString(i) for i in range(1, width + 1)))
        return rows
    finally:
        statement.close()


def _count(conn: Any, table: TableName) -> int:
    return int(_query(conn, f"SELECT count(*) FROM {table.postgres}")[0][0])


# ---------------------------------------------------------------------------------------------
# types and schema changes
# ---------------------------------------------------------------------------------------------


def warehouse_type(data_type: T.DataType, engine: str = "postgres") -> str:
    """The warehouse column type of a Spark type, spelled as ``information_schema`` reports it."""
    redshift = engine == "redshift"
    if isinstance(data_type, (T.StringType, T.VarcharType, T.CharType)):
        return "character varying(65535)" if redshift else "text"
    if isinstance(data_type, T.BooleanType):
        return "boolean"
    if isinstance(data_type, (T.ByteType, T.ShortType)):
        return "smallint"
    if isinstance(data_type, T.IntegerType):
        return "integer"
    if isinstance(data_type, T.LongType):
        return "bigint"
    if isinstance(data_type, T.FloatType):
        return "real"
    if isinstance(data_type, T.DoubleType):
        return "double precision"
    if isinstance(data_type, T.DecimalType):
        return f"numeric({data_type.precision},{data_type.scale})"
    if isinstance(data_type, T.DateType):
        return "date"
    if isinstance(data_type, (T.TimestampType, T.TimestampNTZType)):
        return "timestamp without time zone"
    if isinstance(data_type, T.BinaryType):
        return "character varying(65535)" if redshift else "bytea"
    if isinstance(data_type, (T.ArrayType, T.MapType, T.StructType)):
        return "super" if redshift else "jsonb"
    raise ValueError(f"no warehouse type for Spark type {data_type.simpleString()}")


@dataclass(frozen=True)
class SchemaDiff:
    added: tuple[tuple[str, str], ...] = ()  # (column, type) in the presentation table only
    removed: tuple[str, ...] = ()  # in the warehouse table only
    changed: tuple[tuple[str, str, str], ...] = ()  # (column, warehouse type, presentation type)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        parts = [f"new column {c} {t}" for c, t in self.added]
        parts += [f"column {c} is gone" for c in self.removed]
        parts += [f"column {c} changes type {old} -> {new}" for c, old, new in self.changed]
        return "; ".join(parts)


class SchemaChangeRefused(ValueError):
    """The presentation table's columns differ from the warehouse table's and the policy is refuse."""


def schema_diff(existing: Sequence[tuple[str, str]], wanted: Sequence[tuple[str, str]]) -> SchemaDiff:
    old = dict(existing)
    new = dict(wanted)
    return SchemaDiff(
        added=tuple((c, t) for c, t in wanted if c not in old),
        removed=tuple(c for c, _ in existing if c not in new),
        changed=tuple((c, old[c], t) for c, t in wanted if c in old and old[c] != t),
    )


def schema_change_statements(target: TableName, diff: SchemaDiff) -> list[str]:
    """``apply`` for merge mode: add new columns, alter changed types, let dropped ones be NULL."""
    statements = [f"ALTER TABLE {target.postgres} ADD COLUMN {quote_postgres(c)} {t}" for c, t in diff.added]
    statements += [
        f"ALTER TABLE {target.postgres} ALTER COLUMN {quote_postgres(c)} TYPE {new} USING {quote_postgres(c)}::{new}"
        for c, _, new in diff.changed
    ]
    statements += [
        f"ALTER TABLE {target.postgres} ALTER COLUMN {quote_postgres(c)} DROP NOT NULL" for c in diff.removed
    ]
    return statements


def _existing_columns(conn: Any, table: TableName) -> list[tuple[str, str]] | None:
    rows = _query(
        conn,
        "SELECT column_name, data_type, numeric_precision, numeric_scale, character_maximum_length "
        "FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position",
        (table.namespace, table.table),
    )
    if not rows:
        return None
    columns = []
    for name, data_type, precision, scale, length in rows:
        if data_type == "numeric" and precision is not None:
            data_type = f"numeric({precision},{scale})"
        elif data_type == "character varying" and length is not None:
            data_type = f"character varying({length})"
        columns.append((name, data_type))
    return columns


# ---------------------------------------------------------------------------------------------
# SQL of the two modes (the same for Postgres and Redshift)
# ---------------------------------------------------------------------------------------------


def create_table_statement(table: TableName, columns: Sequence[tuple[str, str]], unlogged: bool = False) -> str:
    body = ", ".join(f"{quote_postgres(c)} {t}" for c, t in columns)
    return f"CREATE {'UNLOGGED ' if unlogged else ''}TABLE {table.postgres} ({body})"


def swap_statements(target: TableName, staging: TableName) -> list[str]:
    """Replace ``target`` by ``staging`` (run inside one transaction)."""
    return [
        f"DROP TABLE IF EXISTS {target.postgres}",
        f"ALTER TABLE {staging.postgres} RENAME TO {quote_postgres(target.table)}",
    ]


def merge_statements(target: TableName, staging: TableName, columns: Sequence[str], keys: Sequence[str]) -> list[str]:
    """Upsert ``staging`` into ``target`` by ``keys`` (run inside one transaction): the first
    statement's count is the rows replaced, the second's the rows written."""
    t, s = quote_postgres(target.table), quote_postgres(staging.table)  # same schema: table names qualify
    match = " AND ".join(f"{t}.{quote_postgres(k)} = {s}.{quote_postgres(k)}" for k in keys)
    names = ", ".join(quote_postgres(c) for c in columns)
    return [
        f"DELETE FROM {target.postgres} USING {staging.postgres} WHERE {match}",
        f"INSERT INTO {target.postgres} ({names}) SELECT {names} FROM {staging.postgres}",
        f"DROP TABLE {staging.postgres}",
    ]


def redshift_copy_statement(staging: TableName, columns: Sequence[str], s3_prefix: str, iam_role: str) -> str:
    """Redshift's bulk load of the parquet files Spark wrote under ``s3_prefix``."""
    if not s3_prefix.startswith("s3://") or "'" in s3_prefix:
        raise ValueError(f"--temp_uri must be an s3:// prefix for Redshift COPY, got {s3_prefix!r}")
    if not re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]+", iam_role or ""):
        raise ValueError(f"--iam_role must be an IAM role ARN Redshift can assume, got {iam_role!r}")
    names = ", ".join(quote_postgres(c) for c in columns)
    return f"COPY {staging.postgres} ({names}) FROM '{s3_prefix.rstrip('/')}/' IAM_ROLE '{iam_role}' FORMAT AS PARQUET"


# ---------------------------------------------------------------------------------------------
# the load
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    mode: str = "replace"  # replace | merge
    keys: tuple[str, ...] = ()
    on_schema_change: str = "apply"  # apply | refuse
    work_uri: str = ""  # where Spark writes the files COPY reads (lake folder; s3:// for Redshift)
    iam_role: str = ""  # Redshift: role COPY assumes to read work_uri
    parallelism: int = 2  # Postgres logging every write: files copied at once, each on its own connection
    # Postgres: copy on one connection inside the publishing transaction (None: when wal_level is
    # minimal, i.e. that transaction's COPY writes no WAL)
    single_transaction: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _csv_ready(df: DataFrame) -> DataFrame:
    """Columns CSV can carry and Postgres' COPY reads back: nested values as JSON, bytes as hex."""
    cols = []
    for f in df.schema.fields:
        col = F.col(f"`{f.name}`")
        if isinstance(f.dataType, (T.ArrayType, T.MapType, T.StructType)):
            col = F.to_json(col)
        elif isinstance(f.dataType, T.BinaryType):
            col = F.concat(F.lit("\\x"), F.lower(F.hex(col)))
        cols.append(col.alias(f.name))
    return df.select(*cols)


def _write_csv(df: DataFrame, uri: str, rows_per_file: int = 0) -> None:
    writer = (
        _csv_ready(df)
        .write.mode("overwrite")
        .option("header", False)
        .option("quote", '"')
        .option("escape", '"')
        .option("emptyValue", '""')
        .option("nullValue", "")
        .option("ignoreLeadingWhiteSpace", False)
        .option("ignoreTrailingWhiteSpace", False)
        .option("dateFormat", "yyyy-MM-dd")
        .option("timestampFormat", "yyyy-MM-dd HH:mm:ss.SSSSSS")
        .option("timestampNTZFormat", "yyyy-MM-dd HH:mm:ss.SSSSSS")
        .option("encoding", "UTF-8")
    )
    if rows_per_file:
        writer = writer.option("maxRecordsPerFile", rows_per_file)
    writer.csv(uri)


def _arrow_ready(df: DataFrame) -> DataFrame:
    """Columns whose parquet form, read back by pyarrow, ADBC sends in their warehouse type's binary
    layout (it matches Arrow types to Postgres ones: int8/int16 -> smallint, decimal -> numeric,
    date32 -> date, timestamp -> timestamp, binary -> bytea as is).

    Timestamps become ``timestamp_ntz``, the wall-clock time in the session time zone: what the
    CSV files carry and a ``timestamp without time zone`` column keeps (parquet would hold the UTC
    instant). Nested values become their JSON text in jsonb's binary layout, a version byte 1 and
    then the text, which ADBC passes on as bytes.
    """
    cols = []
    for f in df.schema.fields:
        col = F.col(f"`{f.name}`")
        if isinstance(f.dataType, T.TimestampType):
            col = col.cast(T.TimestampNTZType())
        elif isinstance(f.dataType, (T.ArrayType, T.MapType, T.StructType)):
            col = F.concat(F.unhex(F.lit("01")), F.to_json(col).cast(T.BinaryType()))
        cols.append(col.alias(f.name))
    return df.select(*cols)


def _write_parquet(df: DataFrame, uri: str, rows_per_file: int = 0) -> None:
    """Parquet for the binary load: neither compressed nor dictionary-encoded, which measured the
    cheapest for Spark to write (the files are read once, right away, from local disk)."""
    writer = (
        _arrow_ready(df)
        .write.mode("overwrite")
        .option("compression", "none")
        .option("parquet.enable.dictionary", "false")
    )
    if rows_per_file:
        writer = writer.option("maxRecordsPerFile", rows_per_file)
    writer.parquet(uri)


def _data_files(spark: SparkSession, uri: str) -> list[Any]:
    jvm = io.spark_jvm(spark)
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return [
        s.getPath()
        for s in fs.listStatus(path)
        if s.isFile() and not s.getPath().getName().startswith(("_", ".")) and s.getLen() > 0
    ]


_ROWS_PER_FILE = 100_000
_PART_COUNTER = re.compile(r"^part-.*-c(\d+)(\.[^/]*)?$")


def _complete_files(folder: str) -> dict[str, tuple[str, int]]:
    """Files of a running Spark write into the local ``folder`` that are complete, by name (path,
    length). Listed with ``os`` rather than Hadoop's file system: polled ten times a second
    through py4j, the listing cost a tenth of a second of CPU and wall time per poll.

    Spark's file committer writes a task's files into
    ``_temporary/<job>/_temporary/attempt_*/`` one after the other (``maxRecordsPerFile``), moves
    them to ``_temporary/<job>/task_*/`` when the task commits and into ``folder`` when the job
    commits, keeping their names. A file in an attempt folder is complete once the writer has
    opened the next one (a higher ``-cNNN`` counter); files in a task folder are. Any other layout
    (another committer) shows nothing until the job has committed.
    """

    def entries(parent: str) -> list[os.DirEntry]:
        try:
            with os.scandir(parent) as listing:
                return list(listing)
        except FileNotFoundError:
            return []

    def folders(parent: str, prefix: str) -> list[str]:
        return [e.path for e in entries(parent) if e.name.startswith(prefix) and e.is_dir()]

    complete: dict[str, tuple[str, int]] = {}
    try:  # the committer renames folders while we look: whatever vanished is found next time
        for job in folders(os.path.join(folder, "_temporary"), ""):
            for task in folders(job, "task_"):
                for e in entries(task):
                    if e.name.startswith("part-") and e.stat().st_size > 0:
                        complete[e.name] = (e.path, e.stat().st_size)
            for attempt in folders(os.path.join(job, "_temporary"), "attempt_"):
                parts = [(int(match.group(1)), e) for e in entries(attempt) if (match := _PART_COUNTER.match(e.name))]
                newest = max((c for c, _ in parts), default=0)
                for counter, e in parts:
                    if counter < newest and e.stat().st_size > 0:
                        complete[e.name] = (e.path, e.stat().st_size)
    except FileNotFoundError:  # the final listing is strict
        pass
    return complete


def _moved(exc: BaseException) -> bool:
    """Whether opening a file failed because it is not (or no longer) where it was listed."""
    return isinstance(exc, FileNotFoundError) or "FileNotFound" in str(exc)


def _load_while_writing(
    spark: SparkSession,
    write: Callable[[str, int], None],
    work: str,
    open_file: Callable[[Any], Any],
    load_files: Callable[[int, Iterator[Any]], int],
    consumers: int,
    pipeline: bool,
) -> tuple[int, int, float]:
    """Let ``write(work, rows_per_file)`` write files into ``work`` and load every file: consumer
    ``i`` of ``consumers`` runs ``load_files(i, files)``, which loads the files the iterator
    ``files`` hands it (each opened with ``open_file(hadoop_path)``, closed when the next one is
    asked for) and returns the rows; returns (rows loaded, files, seconds of the write).

    With ``pipeline`` (``work`` is a local ``file:`` folder) Spark writes files of
    ``_ROWS_PER_FILE`` rows and a file is loaded as soon as it is complete (see
    ``_complete_files``), while Spark writes the next ones, so the warehouse stores rows while
    Spark encodes; such a file reaches ``open_file`` as a local path, any other as a Hadoop path.
    That needs a file system where a file being read stays readable when the committer moves it
    (local files); elsewhere (S3) loading starts after the write. Every file is loaded once, by
    name; a file loaded early must be in the committed output with the same length, else the load
    fails (and its transactions roll back).
    """
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    todo: queue.Queue = queue.Queue()
    failures: list[BaseException] = []
    copied_rows = [0] * consumers
    write_done = threading.Event()
    write_seconds = [0.0]
    group = f"warehouse-load-{id(todo)}"
    folder = io.local_path(work)  # None on S3: the files are listed after the write only

    def run_write() -> None:
        started = time.monotonic()
        try:
            spark.sparkContext.setJobGroup(group, "files for COPY", interruptOnCancel=True)
            write(work, _ROWS_PER_FILE if pipeline else 0)
        except BaseException as exc:
            failures.append(exc)
        finally:
            write_seconds[0] = time.monotonic() - started
            write_done.set()

    def open_named(name: str) -> Any:
        """Open ``name`` wherever the committer has moved it by now (an open file stays readable)."""
        for attempt in range(50):
            try:
                return open_file(where[name])
            except Exception as exc:
                if not _moved(exc) or attempt == 49:
                    raise
            moved: dict[str, tuple[Any, int]] = dict(_complete_files(str(folder))) if folder else {}
            if name not in moved:
                moved = {p.getName(): (p, 0) for p in _data_files(spark, work)}
            if name in moved:
                where[name] = moved[name][0]
            else:
                time.sleep(0.02)
        raise AssertionError("unreachable")

    def next_files() -> Iterator[Any]:
        while True:
            name = todo.get()
            if name is None or failures:
                return
            opened = open_named(name)
            try:
                yield opened
            finally:
                opened.close()

    def consume(i: int) -> None:
        try:
            copied_rows[i] += load_files(i, next_files())
        except BaseException as exc:
            failures.append(exc)

    writer = threading.Thread(target=run_write, name="warehouse-file-write", daemon=True)
    threads = [
        threading.Thread(target=consume, args=(i,), name=f"warehouse-copy-{i}", daemon=True) for i in range(consumers)
    ]
    writer.start()
    for c in threads:
        c.start()
    seen: dict[str, int] = {}
    where: dict[str, Any] = {}
    try:
        while pipeline and not write_done.wait(0.1) and not failures:
            for name, (path, length) in sorted(_complete_files(str(folder)).items()):
                if name not in seen:
                    seen[name], where[name] = length, path
                    todo.put(name)
        writer.join()
        if failures:
            raise failures[0]
        final = {
            p.getName(): (p, p.getFileSystem(hadoop_conf).getFileStatus(p).getLen()) for p in _data_files(spark, work)
        }
        for name, length in seen.items():
            if final.get(name, (None, -1))[1] != length:  # a retried task wrote other content
                raise RuntimeError(f"file {name} changed after it was loaded; the load is rolled back")
        for name, (path, length) in sorted(final.items()):
            where[name] = path
            if name not in seen:
                seen[name] = length
                todo.put(name)
    finally:
        for _ in threads:
            todo.put(None)
        if failures or not write_done.is_set():
            spark.sparkContext.cancelJobGroup(group)
        for c in threads:
            c.join()
        writer.join()
    if failures:
        raise failures[0]
    return sum(copied_rows), len(seen), write_seconds[0]


def _copy_csv(
    spark: SparkSession, df: DataFrame, work: str, sql: str, connections: Sequence[Any]
) -> tuple[int, int, float]:
    """CSV files streamed with ``sql`` (``COPY ... FROM STDIN``) through the JDBC driver's
    CopyManager of each connection, after the write: on a server that logs every write the
    connections and Spark compete for the same cores, and overlapping them measured slower."""
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    managers = [c.getCopyAPI() for c in connections]
    return _load_while_writing(
        spark,
        lambda uri, rows_per_file: _write_csv(df, uri, rows_per_file),
        work,
        lambda path: path.getFileSystem(hadoop_conf).open(path),
        lambda i, streams: sum(int(managers[i].copyIn(sql, stream, 1 << 20)) for stream in streams),
        len(connections),
        pipeline=False,
    )


def _ingest_parquet(
    spark: SparkSession, df: DataFrame, work: str, conn: _ArrowConnection, staging: TableName
) -> tuple[int, int, float]:
    """Parquet files in the local folder ``work``, each read by pyarrow as soon as Spark has
    finished it and sent on ``conn``, all in one binary COPY that waits for the next file (one
    connection: Postgres stores while Spark encodes; one COPY: no pause between files)."""
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq

    def copy(files: Iterator[Any]) -> int:
        first = next(files, None)
        if first is None:
            return 0
        table = pq.read_table(first)
        rest = (batch for source in files for batch in pq.read_table(source).to_batches())
        return conn.ingest(
            staging, pa.RecordBatchReader.from_batches(table.schema, itertools.chain(table.to_batches(), rest))
        )

    return _load_while_writing(
        spark,
        lambda uri, rows_per_file: _write_parquet(df, uri, rows_per_file),
        work,
        # a memory map stays readable when the committer moves the file
        lambda path: pa.memory_map(path if isinstance(path, str) else str(path.toUri().getPath())),
        lambda _, files: copy(files),
        1,
        pipeline=True,
    )


def _check_keys(df: DataFrame, keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise ValueError(f"--merge_keys {missing} are not columns of the presentation table ({df.columns})")
    null_key = (
        F.greatest(*[F.col(f"`{k}`").isNull().cast("int") for k in keys]) == 1
        if len(keys) > 1
        else F.col(f"`{keys[0]}`").isNull()
    )
    nulls = df.filter(null_key).limit(5).collect()
    if nulls:
        raise ValueError(
            f"merge keys {list(keys)} are NULL in rows of the presentation table, e.g. "
            f"{[r.asDict() for r in nulls[:3]]}"
        )
    dupes = df.groupBy(*[f"`{k}`" for k in keys]).count().filter("count > 1").limit(5).collect()
    if dupes:
        raise ValueError(
            f"merge keys {list(keys)} are not unique in the presentation table, e.g. {[r.asDict() for r in dupes]}"
        )


def _publish(
    conn: Any,
    target: TableName,
    staging: TableName,
    names: Sequence[str],
    existing: Any,
    diff: SchemaDiff,
    options: LoadOptions,
    engine: str,
    rows: int,
) -> dict[str, Any]:
    """The statements that make the staged rows visible (caller commits)."""
    if options.mode == "replace" or existing is None:
        _execute(conn, swap_statements(target, staging))
        if options.mode == "merge" and engine != "redshift":
            key_names = ", ".join(quote_postgres(k) for k in options.keys)
            _execute(
                conn,
                [
                    f"CREATE UNIQUE INDEX {quote_postgres(target.table + '__merge_key')} "
                    f"ON {target.postgres} ({key_names})"
                ],
            )
        return {"rows_replaced": 0, "rows_inserted": rows}
    _execute(conn, schema_change_statements(target, diff))
    replaced, written, _ = _execute(conn, merge_statements(target, staging, names, options.keys))
    return {"rows_replaced": replaced, "rows_inserted": written - replaced}


def _wal_level(conn: Any) -> str:
    return str(_query(conn, "SELECT current_setting('wal_level')")[0][0])


def load(
    spark: SparkSession,
    df: DataFrame,
    target: TableName,
    batch_id: str,
    connection: WarehouseConnection,
    options: LoadOptions,
) -> dict[str, Any]:
    """Load ``df`` into ``target`` (see the module docstring); returns counts for the metrics."""
    if options.mode not in ("replace", "merge"):
        raise ValueError(f"--mode must be replace or merge, got {options.mode!r}")
    if options.on_schema_change not in ("apply", "refuse"):
        raise ValueError(f"--on_schema_change must be apply or refuse, got {options.on_schema_change!r}")
    if options.mode == "merge":
        if not options.keys:
            raise ValueError("--mode merge needs --merge_keys")
        _check_keys(df, options.keys)
    if not options.work_uri:
        raise ValueError("the load needs a work folder (work_uri) for the files COPY reads")
    engine = connection.engine
    columns = [
        (validate_identifier(f.name, "presentation column"), warehouse_type(f.dataType, engine))
        for f in df.schema.fields
    ]
    names = [c for c, _ in columns]
    staging = TableName(
        target.namespace, validate_identifier(staging_table_name(target.table, batch_id), "staging table")
    )
    with _jdbc(spark, connection) as conn:
        existing = _existing_columns(conn, target)
        diff = schema_diff(existing, columns) if existing is not None else SchemaDiff()
        if diff and options.on_schema_change == "refuse":
            raise SchemaChangeRefused(
                f"warehouse table {target} differs from the presentation table and "
                f"on_schema_change is refuse: {diff.describe()}"
            )
        single = engine == "postgres" and (
            options.single_transaction if options.single_transaction is not None else _wal_level(conn) == "minimal"
        )
        # a merge's staging table is dropped after the upsert: Postgres need not log it
        create_staging = create_table_statement(
            staging, columns, unlogged=engine == "postgres" and options.mode == "merge" and existing is not None
        )
        _execute(
            conn,
            [
                f"CREATE SCHEMA IF NOT EXISTS {quote_postgres(target.namespace)}",
                f"DROP TABLE IF EXISTS {staging.postgres}",  # left over by a failed earlier run
                *([] if single else [create_staging]),
            ],
        )
        conn.commit()
    work = f"{options.work_uri.rstrip('/')}/{target.namespace}.{target.table}/{staging.table}"
    result: dict[str, Any] = {"mode": options.mode, "schema_changes": diff.describe() or None}
    copy_sql = (
        f"COPY {staging.postgres} ({', '.join(quote_postgres(c) for c in names)}) FROM STDIN "
        f"WITH (FORMAT csv{', FREEZE' if single else ''})"
    )
    # binary COPY of parquet files read by the driver: needs the files on the driver's disk
    binary = single and work.startswith("file:")
    result["copy_format"] = "binary" if binary else "csv" if engine == "postgres" else "parquet"
    try:
        if single:
            # One transaction creates the staging table, copies into it and publishes it: with
            # wal_level=minimal Postgres writes no WAL for a table created in the same transaction
            # (it syncs the file at commit instead). A failure anywhere rolls it all back; there is
            # no staging table to clean up. (CSV's COPY also FREEZEs, sparing readers the hint-bit
            # writes; ADBC's binary COPY has no such option, so the first reader sets them.)
            started = time.monotonic()
            with _arrow(connection) if binary else _jdbc(spark, connection) as conn:
                _execute(conn, [create_staging])
                rows, files, write_seconds = (
                    _ingest_parquet(spark, df, work, conn, staging)
                    if binary
                    else _copy_csv(spark, df, work, copy_sql, [conn])
                )
                result.update(
                    write_seconds=round(write_seconds, 3),
                    copy_files=files,
                    copy_seconds=round(time.monotonic() - started, 3),
                )
                started = time.monotonic()
                result.update(_publish(conn, target, staging, names, existing, diff, options, engine, rows))
                conn.commit()
            result.update(rows=rows, commit_seconds=round(time.monotonic() - started, 3))
            return result
        if engine == "redshift":
            with spark_settings(spark, {"spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS"}):
                df.select(*[F.col(f"`{c}`") for c in names]).write.mode("overwrite").parquet(work)
            with _jdbc(spark, connection) as conn:
                _execute(conn, [redshift_copy_statement(staging, names, work, options.iam_role)])
                conn.commit()
            copied = None
        else:  # Postgres that logs every write (e.g. a replica source): several connections at once
            started = time.monotonic()
            with contextlib.ExitStack() as stack:
                conns = [stack.enter_context(_jdbc(spark, connection)) for _ in range(max(1, options.parallelism))]
                copied, files, write_seconds = _copy_csv(spark, df, work, copy_sql, conns)
                for each in conns:
                    each.commit()
            result.update(
                write_seconds=round(write_seconds, 3),
                copy_files=files,
                copy_seconds=round(time.monotonic() - started, 3),
            )
        started = time.monotonic()
        with _jdbc(spark, connection) as conn:
            # the staging table is this load's alone: what COPY reported is what readers will see
            rows = _count(conn, staging) if copied is None else copied
            result.update(_publish(conn, target, staging, names, existing, diff, options, engine, rows))
            conn.commit()
        result.update(rows=rows, commit_seconds=round(time.monotonic() - started, 3))
    except BaseException:
        if not single:
            with _jdbc(spark, connection) as conn:  # do not leave the staging copy behind
                _execute(conn, [f"DROP TABLE IF EXISTS {staging.postgres}"])
                conn.commit()
        raise
    finally:
        with contextlib.suppress(Exception):  # cleaning the work folder must not hide the load's own outcome
            io.delete_path(spark, work)
    return result


def load_atomically(
    spark: SparkSession, df: DataFrame, target: TableName, batch_id: str, connection: WarehouseConnection, work_uri: str
) -> int:
    """Replace ``target`` with the rows of ``df`` in one visible step; returns the rows loaded."""
    return int(load(spark, df, target, batch_id, connection, LoadOptions(work_uri=work_uri))["rows"])
