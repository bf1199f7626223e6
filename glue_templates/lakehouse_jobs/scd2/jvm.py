"""Every call the SCD2 template makes into Spark's or Iceberg's JVM, through py4j, in one place.

The row delta (row_delta.py) commits without a MERGE by writing what a MERGE would and committing it
with Iceberg's Java API; that needs some APIs Iceberg does not promise to keep. They are listed in
:data:`ROW_DELTA_APIS` and looked up before a batch commits: where one is missing, the batch is
committed by the MERGE instead, and a log line says which API and which Iceberg version.

Internal (or Java-only) APIs used, and why:

* ``org.apache.iceberg.spark.Spark3Util.loadIcebergTable``: the Iceberg table behind a Spark name
  (snapshot id, row count and layout without a Spark job), after ``SparkSession.setActiveSession``
  (the name resolves in the thread's active session); ``Table.operations().current()
  .formatVersion()`` because Glue 5.0's Iceberg 1.7 has no ``TableUtil.formatVersion``.
* ``org.apache.iceberg.spark.FileRewriteCoordinator`` (``get``, ``fetchNewFiles``,
  ``clearRewrite``) with the write option ``rewritten-file-scan-task-set-id``: Iceberg's Spark
  writer in the staging mode ``rewrite_data_files`` uses (files written, not committed).
* ``org.apache.iceberg.parquet.ParquetUtil.fileMetrics``, ``org.apache.iceberg.MetricsConfig
  .forPositionDelete``, ``org.apache.iceberg.FileMetadata.deleteFileBuilder`` and the field ids
  of ``org.apache.iceberg.MetadataColumns.DELETE_FILE_PATH`` / ``DELETE_FILE_POS``: to describe
  position delete files that Spark's own Parquet writer wrote.
* ``org.apache.iceberg.RowDelta`` (``validateFromSnapshot``, ``validateNoConflictingDataFiles``,
  ``validateNoConflictingDeleteFiles``, ``validateDataFilesExist``, ``validateDeletedFiles``,
  ``addRows``, ``addDeletes``): the commit, validated as a serializable MERGE is.
* ``org.apache.hadoop.fs.FileSystem`` (``listStatus``, ``delete``): the delete files written.
* ``SparkSession.internalCreateDataFrame`` and ``Dataset.queryExecution().toRdd()``: a
  checkpoint without its inherited size estimate, so the MERGE gets a runtime bloom filter (optional:
  without it the MERGE is planned without the filter).
* ``org.postgresql.Driver``: the advisory lock on the JDBC catalog's database (storage.table_lock).

Tested on Iceberg 1.10.2 and 1.9.2 (Spark 3.5.9): ``make test`` runs the SCD2 tests on both.
Glue 5.0 ships Iceberg 1.7.1 and Glue 5.1 ships 1.10.0 (see the README for what covers which).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from py4j.java_gateway import JavaClass
from pyspark.sql import DataFrame, SparkSession

from lakehouse_jobs.identifiers import TableName

__all__ = [
    "ROW_DELTA_APIS",
    "STAGED_WRITE_OPTION",
    "JavaApi",
    "Layout",
    "StagedWrite",
    "advisory_lock",
    "commit_row_delta",
    "current_snapshot_id",
    "delete_files",
    "file_location",
    "iceberg_version",
    "layout",
    "list_parquet_files",
    "load_table",
    "missing_apis",
    "new_data_location",
    "position_delete_field_ids",
    "position_delete_file",
    "remove_path",
    "total_records",
    "without_size_estimate",
]

#: the write option that makes Iceberg's Spark writer stage files for a rewrite instead of committing
STAGED_WRITE_OPTION = "rewritten-file-scan-task-set-id"


@dataclass(frozen=True)
class JavaApi:
    """A Java class and the public members of it that are called."""

    class_name: str
    members: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.class_name}.{{{', '.join(self.members)}}}"


ROW_DELTA_APIS: tuple[JavaApi, ...] = (
    JavaApi("org.apache.iceberg.spark.Spark3Util", ("loadIcebergTable",)),
    JavaApi("org.apache.iceberg.spark.FileRewriteCoordinator", ("get", "fetchNewFiles", "clearRewrite")),
    JavaApi("org.apache.iceberg.parquet.ParquetUtil", ("fileMetrics",)),
    JavaApi("org.apache.iceberg.MetricsConfig", ("forPositionDelete",)),
    JavaApi("org.apache.iceberg.FileMetadata", ("deleteFileBuilder",)),
    JavaApi("org.apache.iceberg.MetadataColumns", ("DELETE_FILE_PATH", "DELETE_FILE_POS")),
    JavaApi(
        "org.apache.iceberg.RowDelta",
        (
            "validateFromSnapshot",
            "validateNoConflictingDataFiles",
            "validateNoConflictingDeleteFiles",
            "validateDataFilesExist",
            "validateDeletedFiles",
            "addRows",
            "addDeletes",
        ),
    ),
)


def _jvm(spark: SparkSession) -> Any:
    return spark.sparkContext._jvm


def _java_class(spark: SparkSession, name: str) -> Any | None:
    """The py4j handle of a Java class, or None when the JVM has no such class."""
    node = _jvm(spark)
    for part in name.split("."):
        node = getattr(node, part)
    return node if isinstance(node, JavaClass) else None


#: what missing_apis found, per Spark application (a JVM's classes do not change while it runs)
_FOUND_MISSING: dict[tuple[str, tuple[JavaApi, ...]], list[str]] = {}


def missing_apis(spark: SparkSession, apis: Sequence[JavaApi]) -> list[str]:
    """Which of ``apis`` this JVM lacks, as ``Class.member`` (or ``Class``) names; looked up once
    per Spark application (each member is a py4j call)."""
    key = (str(spark.sparkContext.applicationId), tuple(apis))
    if key not in _FOUND_MISSING:
        _FOUND_MISSING[key] = _look_up_missing(spark, apis)
    return list(_FOUND_MISSING[key])


def _look_up_missing(spark: SparkSession, apis: Sequence[JavaApi]) -> list[str]:
    missing: list[str] = []
    for api in apis:
        java_class = _java_class(spark, api.class_name)
        if java_class is None:
            missing.append(api.class_name)
            continue
        lang_class = java_class._java_lang_class
        present = {str(m.getName()) for m in lang_class.getMethods()} | {
            str(f.getName()) for f in lang_class.getFields()
        }
        missing.extend(f"{api.class_name}.{member}" for member in api.members if member not in present)
    return missing


def iceberg_version(spark: SparkSession) -> str:
    """The Iceberg runtime's version, as its jar reports it ("unknown" if it cannot)."""
    build = _java_class(spark, "org.apache.iceberg.IcebergBuild")
    return str(build.version()) if build is not None else "unknown"


def load_table(spark: SparkSession, table: TableName) -> Any:
    """The Iceberg ``Table`` behind a table name of the session's default catalog.

    The session is made the calling thread's active one first: Spark resolves the default catalog
    from the thread's active session, and a Python thread of its own (two batches, or a batch and
    maintain_table, at once) has none, so the name would resolve in the built-in catalog."""
    jvm = _jvm(spark)
    jvm.org.apache.spark.sql.SparkSession.setActiveSession(spark._jsparkSession)
    return jvm.org.apache.iceberg.spark.Spark3Util.loadIcebergTable(spark._jsparkSession, str(table))


def current_snapshot_id(spark: SparkSession, table: TableName) -> int | None:
    """The table's current snapshot id, freshly read from the catalog (None: no snapshot yet).

    Through the Java API rather than the ``.snapshots`` metadata table: that is a Spark job, and
    this is called around every commit."""
    iceberg = load_table(spark, table)
    iceberg.refresh()
    snapshot = iceberg.currentSnapshot()
    return int(snapshot.snapshotId()) if snapshot is not None else None


def total_records(spark: SparkSession, table: TableName) -> int:
    """Rows in the table's current snapshot, from its summary (no scan); 0 when unknown."""
    snapshot = load_table(spark, table).currentSnapshot()
    if snapshot is None:
        return 0
    total = snapshot.summary().get("total-records")
    return int(total) if total is not None else 0


@dataclass(frozen=True)
class Layout:
    """What of a table's layout the template looks at (see storage.py)."""

    partitioned: bool
    format_version: int
    properties: dict[str, str]
    sort_columns: tuple[str, ...]  # the sort order's source columns, in order ("" for a transform)


def layout(spark: SparkSession, table: TableName) -> Layout:
    iceberg = load_table(spark, table)
    schema = iceberg.schema()
    sort_columns = []
    for field in iceberg.sortOrder().fields():
        name = schema.findColumnName(field.sourceId())
        sort_columns.append(str(name) if field.transform().isIdentity() and name is not None else "")
    properties = {str(k): str(v) for k, v in dict(iceberg.properties()).items()}
    # through the table's operations: Glue 5.0's Iceberg (1.7) has no TableUtil.formatVersion
    return Layout(
        not bool(iceberg.spec().isUnpartitioned()),
        int(iceberg.operations().current().formatVersion()),
        properties,
        tuple(sort_columns),
    )


def position_delete_field_ids(spark: SparkSession) -> tuple[int, int]:
    """Iceberg's reserved field ids of a position delete file's ``file_path`` and ``pos``."""
    columns = _jvm(spark).org.apache.iceberg.MetadataColumns
    return int(columns.DELETE_FILE_PATH.fieldId()), int(columns.DELETE_FILE_POS.fieldId())


def new_data_location(iceberg: Any, name: str) -> str:
    """Where the table's location provider puts a new data file (or folder) named ``name``."""
    return str(iceberg.locationProvider().newDataLocation(name))


def _filesystem(spark: SparkSession, location: str) -> tuple[Any, Any]:
    path = _jvm(spark).org.apache.hadoop.fs.Path(location)
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def list_parquet_files(spark: SparkSession, directory: str) -> list[tuple[str, int]]:
    """The Parquet files Spark wrote into ``directory`` (location, size); anything else there (the
    writer's ``_SUCCESS`` marker) is deleted, so the folder holds only files of the table."""
    path, filesystem = _filesystem(spark, directory)
    found: list[tuple[str, int]] = []
    for status in filesystem.listStatus(path):
        if status.getPath().getName().endswith(".parquet"):
            found.append((str(status.getPath().toString()), int(status.getLen())))
        else:
            filesystem.delete(status.getPath(), False)
    return found


def remove_path(spark: SparkSession, location: str) -> None:
    """Delete a file or folder (what a failed write left), if it exists."""
    path, filesystem = _filesystem(spark, location)
    filesystem.delete(path, True)


def position_delete_file(spark: SparkSession, iceberg: Any, location: str, size: int) -> Any:
    """Iceberg's description of a position delete file, with metrics (so a scan applies it only to
    the data files its bounds cover)."""
    jvm = _jvm(spark)
    metrics_config = jvm.org.apache.iceberg.MetricsConfig.forPositionDelete(iceberg)
    metrics = jvm.org.apache.iceberg.parquet.ParquetUtil.fileMetrics(
        iceberg.io().newInputFile(location), metrics_config
    )
    return (
        jvm.org.apache.iceberg.FileMetadata.deleteFileBuilder(iceberg.spec())
        .ofPositionDeletes()
        .withPath(location)
        .withFormat("parquet")
        .withFileSizeInBytes(size)
        .withMetrics(metrics)
        .build()
    )


class StagedWrite:
    """Iceberg's Spark writer in staging mode: a DataFrame written with :attr:`option` produces data
    files that are not committed; :meth:`new_files` hands them over, :meth:`close` forgets them."""

    def __init__(self, spark: SparkSession, iceberg: Any) -> None:
        self._spark = spark
        self._iceberg = iceberg
        self._coordinator = _jvm(spark).org.apache.iceberg.spark.FileRewriteCoordinator.get()
        self.file_set = f"scd2-{uuid.uuid4().hex}"

    @property
    def option(self) -> tuple[str, str]:
        return STAGED_WRITE_OPTION, self.file_set

    def new_files(self) -> list[Any]:
        return list(
            _jvm(self._spark).java.util.ArrayList(self._coordinator.fetchNewFiles(self._iceberg, self.file_set))
        )

    def close(self) -> None:
        self._coordinator.clearRewrite(self._iceberg, self.file_set)


def file_location(content_file: Any) -> str:
    return str(content_file.location())


def commit_row_delta(
    spark: SparkSession,
    iceberg: Any,
    read_snapshot: int | None,
    data_files: Sequence[Any],
    delete_files: Sequence[Any],
    referenced: Sequence[str],
) -> None:
    """One Iceberg row delta: ``data_files`` added, ``delete_files`` added; validated against every
    commit since ``read_snapshot`` as a serializable MERGE is (no data or delete files added since,
    the data files the deletes point at still there)."""
    jvm = _jvm(spark)
    delta = iceberg.newRowDelta()
    if read_snapshot is not None:
        delta = delta.validateFromSnapshot(read_snapshot)
    delta = (
        delta.validateNoConflictingDataFiles()
        .validateNoConflictingDeleteFiles()
        .validateDataFilesExist(jvm.java.util.ArrayList(list(referenced)))
        .validateDeletedFiles()
    )
    for data_file in data_files:
        delta = delta.addRows(data_file)
    for delete_file in delete_files:
        delta = delta.addDeletes(delete_file)
    delta = delta.set("spark.app.id", spark.sparkContext.applicationId)  # as Spark's own commits say
    delta.commit()


def delete_files(iceberg: Any, locations: Sequence[str]) -> None:
    """Delete files through the table's FileIO (what a failed commit wrote)."""
    io = iceberg.io()
    for location in locations:
        io.deleteFile(location)


def without_size_estimate(spark: SparkSession, checkpoint: DataFrame) -> DataFrame:
    """The same rows with no inherited size estimate (see merge.py); the checkpoint itself where
    Spark has no such internal method."""
    jdf = checkpoint._jdf
    try:
        fresh = spark._jsparkSession.internalCreateDataFrame(jdf.queryExecution().toRdd(), jdf.schema(), False)
    except Exception:
        return checkpoint
    return DataFrame(fresh, spark)


@contextmanager
def advisory_lock(spark: SparkSession, uri: str, user: str | None, password: str | None, name: str) -> Iterator[None]:
    """Hold Postgres' session advisory lock named ``name`` on the database at JDBC ``uri``, through
    the JVM's Postgres driver (on the classpath because the JDBC catalog needs it). The lock ends
    with its connection, so a killed job cannot leave it held."""
    jvm = _jvm(spark)
    properties = jvm.java.util.Properties()
    for key, value in (("user", user), ("password", password)):
        if value is not None:
            properties.setProperty(key, value)
    connection = jvm.org.postgresql.Driver().connect(uri, properties)
    if connection is None:
        raise RuntimeError(f"the Postgres driver refused the catalog URI {uri!r}")
    try:
        statement = connection.prepareStatement("SELECT pg_advisory_lock(hashtextextended(?, 0))")
        statement.setString(1, name)
        statement.execute()
        statement.close()
        yield
    finally:
        connection.close()  # releases the session-level advisory lock
