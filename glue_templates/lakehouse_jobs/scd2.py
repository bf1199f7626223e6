"""SCD Type 2 history in an Iceberg table: one raw batch in, one commit out.

The contract is shared/design/SCD2.md. What this module implements today:

* new keys open a version, tracked changes close the open version and open a new one, records
  equal (by ``_row_hash``) to the open version change nothing (rules 1-3);
* several records per key in one batch are applied in ``sequence_by`` order, consecutive
  duplicates collapse, same key + same sequence value + different content is an error (rule 4);
  without ``sequence_by`` every record of a batch has the batch's load time, so only the key's
  last record in the file (highest ``_line_number``) counts;
* NULL is a value in the hash, and adding a column that is NULL does not change a hash (rule 7);
* new columns are added to the table, missing ones load as NULL, type changes are widened when
  Iceberg can promote them and refused otherwise, before any data is written (rule 8);
* everything lands in ONE ``MERGE INTO`` (rule 9): its source is the new versions (merge key NULL,
  so they never match and are inserted) unioned with one row per key whose open version must be
  closed or updated in place (merge key = the key, matching only the ``_is_current`` row);
* a re-applied batch is recognised (its versions already exist with the same sequence value and
  hash, or equal the open version) and runs no MERGE at all: no new snapshot (rule 3);
* columns left out of tracking are SCD1: a change updates the open version in place;
* composite keys are joined column by column, and a NULL key is an error naming the row (rule 11).

Not yet: deletes / ``op`` columns / snapshot mode (rule 6) and placing late records into history
(rule 5). A record older than its key's open version is refused with an error naming the key
before anything is written, so nothing is silently lost or misplaced; those rules extend
:func:`_classify`, where records are compared with the table.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import reduce
from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    DataType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse_jobs.identifiers import TableName, quote_spark, validate_identifier

__all__ = ["SYSTEM_COLUMNS", "Scd2Error", "Scd2Result", "apply_changes", "row_hash"]

SYSTEM_COLUMNS: tuple[StructField, ...] = (
    StructField("_valid_from", TimestampType()),
    StructField("_valid_to", TimestampType()),
    StructField("_is_current", BooleanType()),
    StructField("_is_deleted", BooleanType()),
    StructField("_row_hash", StringType()),
    StructField("_batch_id", StringType()),
    StructField("_source_file", StringType()),
    StructField("_loaded_at", TimestampType()),
)
_SYSTEM_NAMES = tuple(f.name for f in SYSTEM_COLUMNS)
_MERGE_KEY = "__mk_"  # prefix of the merge-key copies of the key columns in the MERGE source
_SEQ, _LINE, _GROUP = "__seq", "__line", "__group"


class Scd2Error(ValueError):
    """The batch cannot be applied as it is; raised before anything is written."""


@dataclass(frozen=True)
class Scd2Result:
    """What one batch did to the table."""

    rows_in: int  # records in the batch
    versions_inserted: int  # new versions opened
    versions_closed: int  # open versions closed by a change
    versions_updated: int  # open versions updated in place (untracked columns only)
    committed: bool  # False when the batch changed nothing: no MERGE, no snapshot


def row_hash(columns: Sequence[str]) -> Column:
    """SHA-256 over the tracked columns, null-safe and stable when columns are added.

    Each non-NULL value is encoded as ``name=<length>:<value>`` and NULLs are left out, so NULL,
    '' and 'x' all differ, no value can imitate a column boundary, and a column added later that is
    NULL leaves old hashes valid. Columns are taken in name order, not table order. Values are
    compared as Spark renders them as strings (timestamps in the session time zone, UTC here).
    """
    parts = []
    for name in sorted(columns):
        text = F.col(name).cast("string")
        parts.append(F.when(text.isNotNull(), F.concat(F.lit(f"{name}="), F.length(text).cast("string"), F.lit(":"), text)))
    return F.sha2(F.concat_ws("\u001f", *parts), 256) if parts else F.sha2(F.lit(""), 256)


def _any(conditions: Iterable[Column]) -> Column:
    return reduce(operator.or_, conditions)


def _describe(row: dict[str, object], keys: Sequence[str]) -> str:
    """A record named the way a user finds it: file and line when known, plus its key."""
    where = f"{row.get('_source_file')} line {row.get('_line_number')}" if row.get("_line_number") is not None else "the batch"
    return f"{where} (key {', '.join(f'{k}={row.get(k)!r}' for k in keys)})"


def _sequence_column(batch: DataFrame, sequence_by: str) -> Column:
    """The sequence as a timestamp: it becomes ``_valid_from``, so it must be a point in time."""
    data_type = batch.schema[sequence_by].dataType
    if isinstance(data_type, TimestampType):
        return F.col(sequence_by)
    if isinstance(data_type, (DateType, StringType)):
        return F.col(sequence_by).cast("timestamp")
    raise Scd2Error(f"sequence_by column {sequence_by!r} is {data_type.simpleString()}; "
                    f"it must be a timestamp or date (it becomes _valid_from)")


def _widens(narrow: DataType, wide: DataType) -> bool:
    """Iceberg's legal type promotions (int→long, float→double, decimal precision up)."""
    if narrow == wide:
        return True
    if isinstance(narrow, IntegerType) and isinstance(wide, LongType):
        return True
    if isinstance(narrow, FloatType) and isinstance(wide, DoubleType):
        return True
    return (isinstance(narrow, DecimalType) and isinstance(wide, DecimalType)
            and narrow.scale == wide.scale and narrow.precision <= wide.precision)


def _ensure_table(spark: SparkSession, table: TableName, data_fields: Sequence[StructField]) -> StructType:
    """Create the table on first use; afterwards add new columns and promote widened types.

    Every check runs before the first ALTER, so an impossible type change leaves the table as is.
    Returns the table's schema after the changes.
    """
    if not spark.catalog.tableExists(str(table)):
        spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {quote_spark(table.namespace)}")
        columns = ", ".join(f"{quote_spark(f.name)} {f.dataType.simpleString()}" for f in (*data_fields, *SYSTEM_COLUMNS))
        spark.sql(f"CREATE TABLE IF NOT EXISTS {table.spark} ({columns}) USING iceberg "
                  f"TBLPROPERTIES ('format-version'='2')")
        return spark.table(table.spark).schema
    existing = {f.name: f.dataType for f in spark.table(table.spark).schema.fields}
    additions: list[StructField] = []
    promotions: list[StructField] = []
    for field in data_fields:
        current = existing.get(field.name)
        if current is None:
            additions.append(field)
        elif _widens(field.dataType, current):
            continue  # same type, or narrower: cast on insert
        elif _widens(current, field.dataType):
            promotions.append(field)
        else:
            raise Scd2Error(f"column {field.name!r} of {table} is {current.simpleString()} but the batch has "
                            f"{field.dataType.simpleString()}; Iceberg cannot promote that type")
    for field in promotions:
        spark.sql(f"ALTER TABLE {table.spark} ALTER COLUMN {quote_spark(field.name)} TYPE {field.dataType.simpleString()}")
    if additions:
        columns = ", ".join(f"{quote_spark(f.name)} {f.dataType.simpleString()}" for f in additions)
        spark.sql(f"ALTER TABLE {table.spark} ADD COLUMNS ({columns})")
    return spark.table(table.spark).schema


def _first_problem(frame: DataFrame, condition: Column) -> dict[str, object] | None:
    found = frame.filter(condition).limit(1).collect()
    return found[0].asDict() if found else None


def _prepare(batch: DataFrame, keys: Sequence[str], attributes: Sequence[str], tracked: Sequence[str],
             sequence_by: str | None) -> DataFrame:
    """Batch → ``keys, attributes, __seq, __line, _source_file, _row_hash``, one row per (key, seq).

    Validates NULL keys and sequence values, and same-sequence conflicts, naming the record.
    """
    columns = set(batch.columns)
    line = F.col("_line_number").cast("long") if "_line_number" in columns else F.lit(None).cast("long")
    source = F.col("_source_file").cast("string") if "_source_file" in columns else F.lit(None).cast("string")
    sequence = _sequence_column(batch, sequence_by or "_ingested_at")
    prepared = batch.select(*keys, *attributes, sequence.alias(_SEQ), line.alias(_LINE), source.alias("_source_file"),
                            row_hash(tracked).alias("_row_hash"))
    named = prepared.withColumnRenamed(_LINE, "_line_number")
    bad = _first_problem(named, _any(F.col(k).isNull() for k in keys))
    if bad:
        missing = [k for k in keys if bad[k] is None]
        raise Scd2Error(f"NULL in key column(s) {missing} at {_describe(bad, keys)}")
    bad = _first_problem(named, F.col(_SEQ).isNull())
    if bad:
        raise Scd2Error(f"sequence_by {sequence_by or '_ingested_at'!r} is NULL or not a timestamp at {_describe(bad, keys)}")
    by_key = Window.partitionBy(*keys)
    if sequence_by is None:
        # every record has the batch's load time; the last one in the file is the state at load
        prepared = prepared.withColumn("__last", F.max(_LINE).over(by_key)) \
            .filter(F.col("__last").isNull() | (F.col(_LINE) == F.col("__last"))).drop("__last")
    by_key_seq = Window.partitionBy(*keys, _SEQ)
    checked = prepared.withColumn("__variants", F.size(F.collect_set("_row_hash").over(by_key_seq)))
    bad = _first_problem(checked.withColumnRenamed(_LINE, "_line_number"), F.col("__variants") > 1)
    if bad:
        raise Scd2Error(f"two records with the same key and the same {sequence_by or '_ingested_at'} "
                        f"{bad[_SEQ]} but different content, at {_describe(bad, keys)}")
    latest_line = Window.partitionBy(*keys, _SEQ).orderBy(F.col(_LINE).desc_nulls_last())
    return checked.drop("__variants").withColumn("__n", F.row_number().over(latest_line)).filter("__n = 1").drop("__n")


def _classify(spark: SparkSession, table: TableName, records: DataFrame, keys: Sequence[str],
              untracked: Sequence[str]) -> DataFrame:
    """Compare records with the table: drop what it already holds, refuse what cannot be applied yet.

    Each record is matched to the version whose interval covers its sequence value. Equal hash in a
    closed version: already applied (a re-run), dropped. Equal hash in the open version: kept, it may
    update untracked columns in place. Different hash at exactly a version's start: a conflict.
    Different hash inside a closed interval, or before the key's first version: a late record.

    Returns the remaining records with ``__group``: 0 = continues the key's open version (tracked
    columns equal), 1.. = a new version each, in sequence order; plus the open version's
    ``__cur_from`` and ``__cur_*`` untracked values.
    """
    target = spark.table(table.spark)
    history = target.select(
        *[F.col(k).alias(f"__h_{k}") for k in keys], F.col("_valid_from").alias("__vf"),
        F.col("_valid_to").alias("__vt"), F.col("_row_hash").alias("__hist_hash"), F.col("_is_current").alias("__hist_open"))
    covers = reduce(operator.and_, [F.col(k) == F.col(f"__h_{k}") for k in keys]) & (F.col(_SEQ) >= F.col("__vf")) & (
        F.col("__vt").isNull() | (F.col(_SEQ) < F.col("__vt")))
    current = target.filter(F.col("_is_current")).select(
        *keys, F.col("_valid_from").alias("__cur_from"), F.col("_row_hash").alias("__cur_hash"),
        *[F.col(c).alias(f"__cur_{c}") for c in untracked])
    joined = records.join(history, covers, "left").drop(*[f"__h_{k}" for k in keys]) \
        .join(current, list(keys), "left").withColumnRenamed(_LINE, "_line_number")
    same = F.col("__hist_hash") == F.col("_row_hash")
    bad = _first_problem(joined, ~same & (F.col(_SEQ) == F.col("__vf")))
    if bad:
        raise Scd2Error(f"{table} already has a version from {bad[_SEQ]} with different content for "
                        f"{_describe(bad, keys)}: same key and sequence value, different content")
    late = (F.col("__vf").isNull() & F.col("__cur_from").isNotNull()) | (~same & ~F.col("__hist_open"))
    bad = _first_problem(joined, late)
    if bad:
        raise Scd2Error(f"late record at {_describe(bad, keys)}: its sequence value {bad[_SEQ]} falls before the "
                        f"open version (from {bad['__cur_from']}) and differs from the history there; placing late "
                        f"records in history is not supported yet")
    pending = joined.filter(F.col("__vf").isNull() | F.col("__hist_open")).withColumnRenamed("_line_number", _LINE) \
        .drop("__vf", "__vt", "__hist_hash", "__hist_open")
    order = Window.partitionBy(*keys).orderBy(_SEQ)
    previous = F.coalesce(F.lag("_row_hash").over(order), F.when(F.row_number().over(order) == 1, F.col("__cur_hash")))
    starts = F.when(previous.isNull() | (previous != F.col("_row_hash")), 1).otherwise(0)
    grouped = pending.withColumn("__starts", starts)
    running = Window.partitionBy(*keys).orderBy(_SEQ).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    return grouped.withColumn(_GROUP, F.sum("__starts").over(running)).drop("__starts")


def _merge_source(grouped: DataFrame, keys: Sequence[str], attributes: Sequence[str], tracked: Sequence[str],
                  untracked: Sequence[str], sequence_by: str | None, table_schema: StructType, batch_id: str,
                  loaded_at: datetime) -> DataFrame:
    """The rows of the one MERGE: ``__action`` 'insert' (new versions) or 'match' (open versions)."""
    in_group = Window.partitionBy(*keys, _GROUP)
    last_in_group = Window.partitionBy(*keys, _GROUP).orderBy(F.col(_SEQ).desc())
    versions = grouped.withColumn("__from", F.min(_SEQ).over(in_group))
    if sequence_by and sequence_by not in tracked:
        # a version keeps the sequence value it started with, matching its _valid_from
        first_in_group = Window.partitionBy(*keys, _GROUP).orderBy(_SEQ) \
            .rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
        versions = versions.withColumn(sequence_by, F.first(sequence_by).over(first_in_group))
    versions = versions.withColumn("__n", F.row_number().over(last_in_group)).filter("__n = 1").drop("__n")
    # otherwise the last record of a group supplies its untracked (SCD1) columns and lineage
    new_versions = versions.filter(F.col(_GROUP) >= 1)
    successor = Window.partitionBy(*keys).orderBy(_GROUP)
    batch_columns = {*keys, *attributes}
    inserts = new_versions.select(
        *[F.lit(None).cast(grouped.schema[k].dataType).alias(f"{_MERGE_KEY}{k}") for k in keys],
        F.lit("insert").alias("__action"),
        *[(F.col(f.name) if f.name in batch_columns else F.lit(None)).cast(f.dataType).alias(f.name)
          for f in table_schema.fields if f.name not in _SYSTEM_NAMES],
        F.col("__from").alias("_valid_from"),
        F.lead("__from").over(successor).alias("_valid_to"),
        F.lead("__from").over(successor).isNull().alias("_is_current"),
        F.lit(False).alias("_is_deleted"),
        F.col("_row_hash"),
        F.lit(batch_id).alias("_batch_id"),
        F.col("_source_file"),
        F.lit(loaded_at).alias("_loaded_at"),
    )
    # per key with an open version: close it at the first new version, and/or update untracked columns
    closes = new_versions.filter(F.col("__cur_from").isNotNull()).groupBy(*keys).agg(F.min("__from").alias("__close_at"))
    continued = versions.filter(F.col(_GROUP) == 0)
    if untracked:
        changed = _any(~F.col(c).eqNullSafe(F.col(f"__cur_{c}")) for c in untracked)
        continued = continued.filter(changed)
    else:
        continued = continued.limit(0)
    updates = continued.select(*keys, F.lit(True).alias("__set_untracked"), *untracked)
    matches = closes.join(updates, list(keys), "full_outer")
    match_rows = matches.select(
        *[F.col(k).alias(f"{_MERGE_KEY}{k}") for k in keys],
        F.lit("match").alias("__action"),
        *[(F.col(f.name) if f.name in untracked else F.lit(None)).cast(f.dataType).alias(f.name)
          for f in table_schema.fields if f.name not in _SYSTEM_NAMES],
        F.col("__close_at").alias("_valid_from"),  # the closing time travels in _valid_from
        *[F.lit(None).cast(f.dataType).alias(f.name) for f in SYSTEM_COLUMNS[1:]],
        F.coalesce(F.col("__set_untracked"), F.lit(False)).alias("__set_untracked"),
    )
    return inserts.withColumn("__set_untracked", F.lit(False)).unionByName(match_rows)


def apply_changes(
    spark: SparkSession,
    table: TableName,
    batch_df: DataFrame,
    keys: Sequence[str],
    sequence_by: str | None,
    batch_id: str,
    track_columns: Sequence[str] | None = None,
    track_except: Sequence[str] | None = None,
    loaded_at: datetime | None = None,
) -> Scd2Result:
    """Apply one batch of records to the SCD2 table ``table`` in a single Iceberg commit.

    Args:
        spark: session whose default catalog holds ``table`` (created, format v2, if missing).
        table: validated ``namespace.table``.
        batch_df: the records; data columns plus optional lineage columns ``_source_file``,
            ``_line_number``, ``_ingested_at`` (columns starting with ``_`` are never data).
        keys: business key columns, compared column by column; NULL is an error.
        sequence_by: column ordering the changes (timestamp, date or ISO string); ``None`` uses
            ``_ingested_at``, the load time of the batch.
        batch_id: recorded in ``_batch_id`` of the versions this batch opens.
        track_columns: columns whose change opens a new version (default: all data columns).
        track_except: columns excluded from tracking (alternative to ``track_columns``).
        loaded_at: ``_loaded_at`` of new versions (default: now, UTC).

    Returns:
        Counts of what changed; ``committed`` is False when nothing did (no snapshot is written).

    Raises:
        Scd2Error: before any write, for NULL keys, same-sequence conflicts, late records, unknown
            columns or a type change Iceberg cannot promote.
    """
    if not keys:
        raise Scd2Error("keys must name at least one column")
    if track_columns and track_except:
        raise Scd2Error("give track_columns or track_except, not both")
    columns = batch_df.columns
    for name in (*keys, *(track_columns or ()), *(track_except or ())):
        validate_identifier(name, "column")
    missing = [c for c in (*keys, *(track_columns or ()), *([sequence_by] if sequence_by else [])) if c not in columns]
    if missing:
        raise Scd2Error(f"columns {missing} are not in the batch (it has {columns})")
    if sequence_by is None and "_ingested_at" not in columns:
        raise Scd2Error("no sequence_by given and the batch has no _ingested_at column")
    attributes = [c for c in columns if not c.startswith("_") and c not in keys]
    for name in attributes:
        validate_identifier(name, "column")
    # the sequence column differs on every record by nature: it dates versions, it does not make them
    tracked = list(track_columns) if track_columns else [
        c for c in attributes if c not in (track_except or ()) and c != sequence_by]
    untracked = [c for c in attributes if c not in tracked and c != sequence_by]
    loaded_at = loaded_at or datetime.now(timezone.utc)

    records = _prepare(batch_df, keys, attributes, tracked, sequence_by).persist()
    try:
        rows_in = batch_df.count()
        data_fields = [batch_df.schema[c] for c in (*keys, *attributes)]
        table_schema = _ensure_table(spark, table, data_fields)
        grouped = _classify(spark, table, records, keys, untracked)
        source = _merge_source(grouped, keys, attributes, tracked, untracked, sequence_by, table_schema,
                               batch_id, loaded_at).persist()
        try:
            counts = {r["__action"]: (r["n"], r["closes"], r["updates"]) for r in source.groupBy("__action").agg(
                F.count(F.lit(1)).alias("n"),
                F.count("_valid_from").alias("closes"),
                F.sum(F.col("__set_untracked").cast("int")).alias("updates"),
            ).collect()}
            inserted = counts.get("insert", (0, 0, 0))[0]
            closed = counts.get("match", (0, 0, 0))[1]
            updated = int(counts.get("match", (0, 0, 0))[2] or 0)
            if inserted or closed or updated:
                _merge(spark, table, source, keys, table_schema, untracked)
        finally:
            source.unpersist()
    finally:
        records.unpersist()
    return Scd2Result(rows_in, inserted, closed, updated, committed=bool(inserted or closed or updated))


def _merge(spark: SparkSession, table: TableName, source: DataFrame, keys: Sequence[str],
           table_schema: StructType, untracked: Sequence[str]) -> None:
    """The single commit. Insert rows carry NULL merge keys, so ``=`` never matches them."""
    view = f"scd2_source_{uuid.uuid4().hex}"
    source.createOrReplaceTempView(view)
    try:
        on = " AND ".join(f"t.{quote_spark(k)} = s.{quote_spark(_MERGE_KEY + k)}" for k in keys)
        untracked_sets = "".join(
            f", t.{quote_spark(c)} = CASE WHEN s.__set_untracked THEN s.{quote_spark(c)} ELSE t.{quote_spark(c)} END"
            for c in untracked)
        names = [f.name for f in table_schema.fields]
        insert_columns = ", ".join(quote_spark(n) for n in names)
        insert_values = ", ".join(f"s.{quote_spark(n)}" for n in names)
        spark.sql(f"""
            MERGE INTO {table.spark} AS t
            USING {quote_spark(view)} AS s
            ON {on} AND t._is_current
            WHEN MATCHED AND s.__action = 'match' THEN UPDATE SET
                t._valid_to = s._valid_from,
                t._is_current = s._valid_from IS NULL{untracked_sets}
            WHEN NOT MATCHED AND s.__action = 'insert' THEN INSERT ({insert_columns}) VALUES ({insert_values})
        """)
    finally:
        spark.catalog.dropTempView(view)
