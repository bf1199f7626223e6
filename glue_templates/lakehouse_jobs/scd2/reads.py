"""How one batch reads the stage table: whole, or only its slice, at one snapshot.

A batch much smaller than its table reads only the rows of its own keys: key ranges pushed into
the scan let Iceberg skip every data file and row group whose min/max statistics miss them, and a
broadcast semi-join with the batch's keys keeps the rest from being shuffled. The slice is
materialised once and every later step reads it instead of the table. A full extract (or a
snapshot batch, where every missing key is a delete) reads the table whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ByteType,
    DateType,
    DecimalType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    TimestampType,
)

from lakehouse_jobs.identifiers import TableName
from lakehouse_jobs.scd2 import columns as c
from lakehouse_jobs.scd2.contract import any_of

__all__ = [
    "BROADCAST_ROWS",
    "MAX_KEY_RANGES",
    "SLICE_MAX_SHARE",
    "TableRead",
    "key_filter",
    "read_for_batch",
    "read_table",
    "reads_slice",
]

BROADCAST_ROWS = 2_000_000  # key sets up to this many rows are broadcast to a join (tens of MB)
SLICE_MAX_SHARE = 0.25  # a batch up to this share of the table's rows reads only its slice
MAX_KEY_RANGES = 32  # key ranges pushed into a slice's scan
RANGE_KEYS_MAX = 200_000  # batches up to this many records get several ranges (their keys are collected)


@dataclass(frozen=True)
class TableRead:
    """The table as one batch reads it, at one snapshot.

    ``rows`` has the table's columns plus each row's position (FILE_ID, POS, FILE), which is how
    the row delta finds a row again. When ``sliced`` it holds only the rows of the batch's keys,
    materialised (every later step reads it instead of the table); otherwise it is the table.
    """

    rows: DataFrame
    snapshot_id: int | None
    sliced: bool


def read_table(spark: SparkSession, table: TableName, snapshot_id: int | None) -> DataFrame:
    """The table at ``snapshot_id`` with each row's position (only valid on the table itself,
    before any join: Iceberg's metadata columns resolve only there)."""
    frame = (
        spark.table(table.spark)
        if snapshot_id is None
        else spark.read.option("snapshot-id", snapshot_id).table(str(table))
    )
    return frame.select(
        "*",
        F.xxhash64(c.ICEBERG_FILE).alias(c.FILE_ID),
        F.col(c.ICEBERG_POS).alias(c.POS),
        F.col(c.ICEBERG_FILE).alias(c.FILE),
    )


def reads_slice(snapshot_id: int | None, mode: str, rows_in: int, table_rows: int) -> bool:
    """Whether a batch reads only its slice of the table: in cdc mode, when it is small next to the
    table (in snapshot mode every key missing from the batch is a delete, so all of the table counts)."""
    return (
        snapshot_id is not None
        and mode == "cdc"
        and rows_in <= BROADCAST_ROWS
        and rows_in <= SLICE_MAX_SHARE * table_rows
    )


def read_for_batch(
    spark: SparkSession,
    table: TableName,
    snapshot_id: int | None,
    records: DataFrame,
    keys: Sequence[str],
    rows_in: int,
    sliced: bool,
) -> TableRead:
    """The table as this batch reads it: whole, or (``sliced``) the rows of the batch's keys, found
    by key ranges Iceberg uses to skip files and row groups, then a broadcast semi-join with the
    batch's keys, and materialised."""
    rows = read_table(spark, table, snapshot_id)
    if not sliced:
        return TableRead(rows, snapshot_id, sliced=False)
    batch_keys = records.select(*keys).where(~any_of(F.col(k).isNull() for k in keys)).distinct()
    ranges = key_filter(records, keys[0], rows_in)
    scan = rows.filter(ranges) if ranges is not None else rows
    sliced_rows = scan.join(F.broadcast(batch_keys), list(keys), "left_semi").localCheckpoint(eager=True)
    return TableRead(sliced_rows, snapshot_id, sliced=True)


_INTEGRAL = (ByteType, ShortType, IntegerType, LongType)


def key_filter(records: DataFrame, key: str, rows_in: int) -> Column | None:
    """A filter on the first key column that every record's key passes and Iceberg can use to skip
    files and row groups: at most MAX_KEY_RANGES ranges of the batch's key values, cut at the widest
    gaps between them. Without a way to measure gaps (a batch over RANGE_KEYS_MAX records), one
    range from the smallest to the largest value; for a key type without order or distance (floats,
    booleans, binaries), no filter.

    Timestamps and dates travel as numbers (microseconds, days) and back as literals, so no value is
    shifted by a time zone on the way through Python.
    """
    data_type = records.schema[key].dataType
    column = F.col(key)
    back: Callable[[Column], Column] | None  # the number back into the key's type
    if isinstance(data_type, TimestampType):
        value, back = F.unix_micros(column), F.timestamp_micros
    elif isinstance(data_type, DateType):
        value, back = F.unix_date(column), F.date_from_unix_date
    elif isinstance(data_type, (*_INTEGRAL, DecimalType, StringType)):
        value, back = column, None
    else:
        return None
    present = records.select(value.alias("v")).where(F.col("v").isNotNull())
    if rows_in > RANGE_KEYS_MAX:
        bounds = present.agg(F.min("v").alias("lo"), F.max("v").alias("hi")).first()
        ranges = [] if bounds is None or bounds["lo"] is None else [(bounds["lo"], bounds["hi"])]
    else:
        ranges = _ranges(sorted(r["v"] for r in present.distinct().collect()))
    if not ranges:
        return F.lit(False)  # no record has a key: nothing of the table can match

    def literal(v: Any) -> Column:
        return back(F.lit(v)) if back is not None else F.lit(v)

    return any_of(
        [(column == literal(lo)) if lo == hi else column.between(literal(lo), literal(hi)) for lo, hi in ranges]
    )


def _distance(value: Any) -> float:
    """How far apart two key values are, roughly: strings by their first eight bytes."""
    if isinstance(value, str):
        return float(int.from_bytes(value.encode("utf-8")[:8].ljust(8, b"\0"), "big"))
    if isinstance(value, Decimal):
        return float(value)
    return float(value)


def _ranges(values: list[Any]) -> list[tuple[Any, Any]]:
    """``values`` (sorted, distinct) as at most MAX_KEY_RANGES (low, high) ranges covering all of
    them, cut at the widest gaps."""
    if not values:
        return []
    gaps = sorted(range(1, len(values)), key=lambda i: _distance(values[i]) - _distance(values[i - 1]), reverse=True)[
        : MAX_KEY_RANGES - 1
    ]
    ranges, start = [], 0
    for cut in sorted(gaps):
        ranges.append((values[start], values[cut - 1]))
        start = cut
    ranges.append((values[start], values[-1]))
    return ranges
