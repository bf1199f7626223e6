"""The batch's commit as one Iceberg row delta, on tables that can take one.

A MERGE finds the stored rows it changes by joining the table with its source on the key. Here the
plan already knows each changed row's position (data file and row number), so the rows are read
back by position, their old positions are written as a position delete file, the rows to store
are written by Iceberg's own Spark writer in its staging mode, and one row delta commits both,
validated as a serializable MERGE would be. Tables that cannot take it get merge.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakehouse_jobs.identifiers import TableName
from lakehouse_jobs.scd2 import columns as c
from lakehouse_jobs.scd2 import jvm

__all__ = [
    "ROWS_PER_FILE",
    "Unsupported",
    "commit",
    "read_changed_rows",
    "unsupported_reason",
    "write_position_deletes",
]

#: rows per data or delete file a commit writes, at most: a batch's few changes go into one file of
#: each kind rather than one per Spark partition (each file is another read for every later scan)
ROWS_PER_FILE = 250_000


@dataclass(frozen=True)
class Unsupported:
    """Why a table is committed by the MERGE rather than a row delta."""

    reason: str
    by_runtime: bool  # the Iceberg runtime lacks an API the row delta calls (else: the table's layout)


def unsupported_reason(spark: SparkSession, table: TableName) -> Unsupported | None:
    """Why ``table`` cannot be committed by a row delta in this JVM (None: it can).

    The table must keep position deletes in files (format 2; format 3 wants deletion vectors) and
    be unpartitioned (a delete file then needs no partition value), and the Iceberg runtime must
    have every internal API the commit calls (jvm.ROW_DELTA_APIS)."""
    missing = jvm.missing_apis(spark, jvm.ROW_DELTA_APIS)
    if missing:
        return Unsupported(f"Iceberg {jvm.iceberg_version(spark)} lacks {', '.join(missing)}", by_runtime=True)
    layout = jvm.layout(spark, table)
    if layout.partitioned:
        return Unsupported("the table is partitioned", by_runtime=False)
    if layout.format_version != 2:
        return Unsupported(f"the table has format version {layout.format_version}", by_runtime=False)
    return None


def read_changed_rows(
    stored: DataFrame,
    source: DataFrame,
    keys: tuple[str, ...],
    untracked: tuple[str, ...],
    matched: int,
    new_keys: DataFrame | None,
    broadcast_rows: int,
    only_open: bool,
) -> tuple[DataFrame | None, int, int]:
    """One scan of ``stored`` (a reads.TableRead's rows) for what a row delta needs to know of
    it: the stored rows the batch changes, and whether any key taken as new (``new_keys``) is there.

    Each source row that changes a stored row carries that row's position (FILE_ID, POS), so the
    rows are found by position: the (broadcast) positions joined to the scan, no shuffle of the
    table. Each comes with FILE (its data file), CHANGE (``update`` or ``delete``) and what the
    change sets (``new_value(column)``). With ``only_open`` only open versions can change (no
    history was rebuilt, no key is unconfirmed), so closed history is not read at all.

    Returns (those rows, materialised, or None when ``matched`` is 0: then only ``new_keys`` is
    looked for; how many were found; how many rows the table has of ``new_keys``).
    """
    scan = stored.filter(F.col(c.IS_CURRENT)) if only_open else stored
    changed = known = F.lit(False)
    if matched:
        changes = source.filter(F.col(c.ACTION).isin("update", "delete")).select(
            c.FILE_ID,
            c.POS,
            F.col(c.ACTION).alias(c.CHANGE),
            *[F.col(name).alias(c.new_value(name)) for name in (c.VALID_TO, c.IS_CURRENT, *untracked)],
        )
        scan = scan.join(F.broadcast(changes) if matched <= broadcast_rows else changes, [c.FILE_ID, c.POS], "left")
        changed = F.col(c.CHANGE).isNotNull()
    if new_keys is not None:  # as many as broadcast_rows at most, see apply
        scan = scan.join(F.broadcast(new_keys.select(*keys, F.lit(True).alias(c.KNOWN))), list(keys), "left")
        known = F.col(c.KNOWN).isNotNull()
    if not matched:  # only the check (a filter on a constant false would drop an observation)
        return None, 0, scan.filter(known).count()
    counted = Observation()
    rows = (
        scan.filter(changed | known)
        .observe(counted, F.count_if(changed).alias("changed"), F.count_if(known).alias("known"))
        .filter(changed)
        .drop(*([c.KNOWN] if new_keys is not None else []))
        .localCheckpoint(eager=True)
    )
    observed = counted.get
    return rows, int(observed["changed"]), int(observed["known"])


def _few_files(frame: DataFrame, rows: int) -> DataFrame:
    """``frame`` in as few partitions (so files) as ROWS_PER_FILE allows; no shuffle."""
    return frame.coalesce(max(1, -(-rows // ROWS_PER_FILE)))  # coalesce never adds partitions


def commit(
    spark: SparkSession,
    table: TableName,
    read_snapshot: int | None,
    source: DataFrame,
    table_schema: StructType,
    changed_rows: DataFrame | None,
    rows_written: int,
    rows_deleted: int,
) -> None:
    """The batch's single commit: new rows added; a stored row that changes deleted at its position
    and added again as it is now; a replaced row deleted at its position.

    ``changed_rows`` are the stored rows the batch changes, as :func:`read_changed_rows` found them
    (None: it changes none); ``rows_written`` and ``rows_deleted`` count the rows and positions the
    commit adds: they are written in as few files as ROWS_PER_FILE allows, sorted by the table's sort
    order. A file of a commit that fails is deleted again, unless the commit's outcome is unknown
    (then the files may be in the table).
    """
    names = [f.name for f in table_schema.fields]
    added = source.filter(F.col(c.ACTION) == "insert").select(*names)
    delete_files: list[Any] = []
    referenced: list[str] = []
    iceberg = jvm.load_table(spark, table)
    staged = jvm.StagedWrite(spark, iceberg)
    written: list[str] = []
    committing = False
    try:
        if changed_rows is not None:
            # what the MERGE's UPDATE would set; the rest of the row is as stored (NULL in a column
            # that this batch added, if the snapshot read does not show it)
            read = set(changed_rows.columns)
            changed = changed_rows.filter(F.col(c.CHANGE) == "update").select(
                *[
                    (
                        F.col(c.new_value(f.name))
                        if c.new_value(f.name) in read
                        else F.col(f.name)
                        if f.name in read
                        else F.lit(None).cast(f.dataType)
                    ).alias(f.name)
                    for f in table_schema.fields
                ]
            )
            added = added.unionByName(changed)
            delete_files, referenced = write_position_deletes(
                spark, iceberg, _few_files(changed_rows, rows_deleted), written
            )
        option, file_set = staged.option
        _few_files(added, rows_written).writeTo(table.spark).option(option, file_set).append()
        data_files = staged.new_files()
        written.extend(jvm.file_location(f) for f in data_files)
        committing = True
        jvm.commit_row_delta(spark, iceberg, read_snapshot, data_files, delete_files, referenced)
    except BaseException as exc:
        # after an unknown commit state the files may be in the table: keep them
        if not (committing and "CommitStateUnknownException" in str(exc)):
            jvm.delete_files(iceberg, written)
        raise
    finally:
        staged.close()


def write_position_deletes(
    spark: SparkSession, iceberg: Any, deletes: DataFrame, written: list[str]
) -> tuple[list[Any], list[str]]:
    """Write the positions of ``deletes`` (FILE, POS) as position delete files in the table's data
    location, each sorted by file and position as the spec asks; returns Iceberg's descriptions of
    them and the data files they reference. Each file written is appended to ``written`` as soon
    as it exists, so a failure after it can delete it."""
    found = Observation()
    path_id, pos_id = jvm.position_delete_field_ids(spark)
    frame = deletes.select(
        F.col(c.FILE).alias("file_path", metadata={"parquet.field.id": path_id}),
        F.col(c.POS).alias("pos", metadata={"parquet.field.id": pos_id}),
    )
    directory = jvm.new_data_location(iceberg, f"position-deletes-{uuid.uuid4().hex}")
    try:
        # counted while written, as JSON: an observed array comes back to Python as a Scala object;
        # no shuffle: the rows are few, and each file written is sorted in itself, as the spec asks
        frame.observe(found, F.to_json(F.collect_set("file_path")).alias("files")).sortWithinPartitions(
            "file_path", "pos"
        ).write.parquet(directory)
    except BaseException:
        jvm.remove_path(spark, directory)  # what the failed job left, if anything
        raise
    referenced: list[str] = json.loads(found.get["files"])
    files = jvm.list_parquet_files(spark, directory)
    written.extend(location for location, _ in files)
    return [jvm.position_delete_file(spark, iceberg, location, size) for location, size in files], referenced
