"""SCD Type 2 history in an Iceberg table: one raw batch in, one commit out.

The contract is docs/scd2.md; ``tests/glue_templates/scd2_reference.py`` is its
plain-Python reference model and the property tests hold this module to it. The definition both
follow, because it makes every rule a consequence rather than a special case:

    A key's history is its events in sequence order with consecutive equal events collapsed.

An *event* is a record (its tracked content, hashed as ``_row_hash``) or a delete (a fixed marker
instead of a hash). The table is the collapsed form, so its rows can be turned back into events:
each version contributes one at its ``_valid_from``, and a version closed without a successor
(a hard delete) contributes a delete at its ``_valid_to``. Applying a batch = turning the affected
keys' rows back into events, adding the batch's records, collapsing again and writing the
difference. Hence:

* a new key opens a version, a tracked change closes the open one and opens another, a record equal
  to the version it falls in changes nothing, and a re-applied batch produces no difference, so no
  commit and no snapshot (rules 1-3);
* several records per key are ordered by ``sequence_by``; same key + same sequence value with
  different content is an error naming the key (rule 4); with no ``sequence_by`` every record of a
  batch has the batch's load time, so the key's last record in the file counts;
* a late record lands in the interval it belongs to and splits it; if it equals the next version,
  that version now starts earlier (its old row is replaced) - it never becomes current unless it is
  the latest (rule 5);
* deletes (``op`` mapped to D in ``cdc`` mode, a key missing from the batch in ``snapshot`` mode)
  close the open version; ``soft_delete`` also opens a tombstone (``_is_deleted``, only the key
  set, ``_row_hash`` NULL); a key that comes back opens a new version (rule 6);
* NULL is a value in the hash (rule 7); new columns are added, missing ones load as NULL, a type
  Iceberg cannot promote is refused before any write (rule 8);
* the whole difference (inserts, closes, in-place updates, replaced rows) is ONE commit: a row
  delta (see below), or on a table that cannot take one a ``MERGE INTO``; a failure after a schema
  change undoes the change (rule 9);
* composite keys are joined column by column; a NULL key is an error naming the row (rule 11);
* runs on one table are serialised by a Postgres advisory lock when the catalog is the JDBC
  catalog, the table must still be at the snapshot that was read when the commit starts, and the
  commit is validated as ``serializable`` (no data or delete files added since that snapshot), so
  a commit that slips in between fails Iceberg's conflict check (rule 12).

Columns left out of tracking are SCD1: a version shows the values of its latest event (old rows
count at their ``_valid_from``), so a later record with equal tracked columns updates them in place.

Speed: most records of a batch usually equal their key's open version. They are recognised by one
join with the open versions and never reach the commit, whose input is only the real difference.
The join compares the tracked values themselves wherever that is the same as comparing hashes (see
``_compare_values``), so only the records kept are hashed; otherwise it compares hashes as 32-byte
digests. Most of the rest need no history either: a key's one record later than its open version,
or a new key's record, is applied directly; the table's history is read only for keys that need it
(several records, late records, keys coming back after a hard delete). The joins that find the
changes also carry each stored row's position (``_file``, ``_pos``), so the commit finds the rows
it replaces in one scan by position, with no join on the key (a MERGE would join the table with the
difference again); the same scan checks that the keys taken as new have no rows. The rows to store
are written, the positions of the rows they replace are written as position delete files, and one
Iceberg row delta commits both (``_commit_row_delta``). That needs a table that keeps position
deletes in files and has no partitions, which is how this template creates tables (format 2,
merge-on-read); any other table gets the MERGE, its scan of the table cut down by a runtime bloom
filter of the source's keys before anything is shuffled.
"""

from __future__ import annotations

import json
import operator
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import reduce
from typing import Any, Literal

from pyspark.sql import Column, DataFrame, Observation, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    ByteType,
    DataType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse_jobs.identifiers import TableName, quote_spark, validate_identifier
from lakehouse_jobs.job import spark_settings

__all__ = [
    "DEFAULT_OP_MAPPING",
    "DELETED",
    "MODES",
    "SYSTEM_COLUMNS",
    "TABLE_PROPERTIES",
    "Scd2Error",
    "Scd2Result",
    "apply_changes",
    "row_hash",
]

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
MODES = ("cdc", "snapshot")
DELETED = "deleted"  # the event "hash" of a delete; not a hex digest, so it equals no row hash
DEFAULT_OP_MAPPING: dict[str, str] = {"I": "I", "U": "U", "D": "D"}
# merge-on-read: closing 10% of the keys writes position deletes instead of rewriting every data
# file those keys live in (copy-on-write rewrites a file even when the WHEN MATCHED condition is
# false, Iceberg issue 12558); serializable isolation makes a concurrent commit a conflict.
TABLE_PROPERTIES: dict[str, str] = {
    "format-version": "2",
    "write.merge.mode": "merge-on-read",
    "write.update.mode": "merge-on-read",
    "write.delete.mode": "merge-on-read",
    "write.merge.isolation-level": "serializable",
    "write.merge.distribution-mode": "none",
}
_MK = "__mk_"  # prefix of the merge-key copies of the key columns in the MERGE source
_SEQ, _LINE, _HASH, _OLD = "__seq", "__line", "__hash", "__old"
_PROBLEM = "__problem"  # cdc mode: the record is invalid (see _prepare); never dropped as unchanged
_DELETE = "__delete"  # the record is a delete (until _affected turns it into the DELETED "hash")


class Scd2Error(ValueError):
    """The batch cannot be applied as it is; raised before anything is written."""


@dataclass(frozen=True)
class Scd2Result:
    """What one batch did to the table."""

    rows_in: int  # records in the batch
    versions_inserted: int  # new rows (versions and tombstones)
    versions_closed: int  # open versions closed (by a change or a delete)
    versions_updated: int  # other rows changed in place: untracked columns, a late record's split
    versions_replaced: int  # rows removed because a late record moved their version's start
    committed: bool  # False when the batch changed nothing: no MERGE, no snapshot
    snapshot_id: int | None  # the table's current snapshot after the batch


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


def _all(conditions: Iterable[Column]) -> Column:
    return reduce(operator.and_, conditions)


def _any(conditions: Iterable[Column]) -> Column:
    return reduce(operator.or_, conditions)


def _describe(row: dict[str, Any], keys: Sequence[str]) -> str:
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


@dataclass(frozen=True)
class _SchemaChange:
    """What :func:`_ensure_table` did, so a failed batch can undo it (rule 9)."""

    created: bool
    added: tuple[str, ...]
    promoted: tuple[str, ...]


def _ensure_table(spark: SparkSession, table: TableName, data_fields: Sequence[StructField]) -> tuple[StructType, _SchemaChange]:
    """Create the table on first use; afterwards add new columns and promote widened types.

    Every check runs before the first ALTER, so an impossible type change leaves the table as is
    and the error names the column. Returns the table's schema after the changes.
    """
    if not spark.catalog.tableExists(str(table)):
        spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {quote_spark(table.namespace)}")
        columns = ", ".join(f"{quote_spark(f.name)} {f.dataType.simpleString()}" for f in (*data_fields, *SYSTEM_COLUMNS))
        properties = ", ".join(f"'{k}'='{v}'" for k, v in TABLE_PROPERTIES.items())
        spark.sql(f"CREATE TABLE {table.spark} ({columns}) USING iceberg TBLPROPERTIES ({properties})")
        return spark.table(table.spark).schema, _SchemaChange(True, (), ())
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
    change = _SchemaChange(False, tuple(f.name for f in additions), tuple(f.name for f in promotions))
    return spark.table(table.spark).schema, change


def _undo_schema_change(spark: SparkSession, table: TableName, change: _SchemaChange) -> None:
    """Put the table back as it was after a failed batch: drop what this batch created or added.

    A promotion (int→long) cannot be reversed in Iceberg; it is harmless (old readers see wider
    values) and is left in place.
    """
    if change.created:
        spark.sql(f"DROP TABLE IF EXISTS {table.spark} PURGE")
    elif change.added:
        for name in change.added:
            spark.sql(f"ALTER TABLE {table.spark} DROP COLUMN {quote_spark(name)}")


def _first(frame: DataFrame, condition: Column) -> dict[str, Any] | None:
    found = frame.filter(condition).limit(1).collect()
    return found[0].asDict() if found else None


def _prepare(batch: DataFrame, keys: Sequence[str], attributes: Sequence[str], sequence_by: str | None,
             op_column: str | None, op_mapping: dict[str, str], mode: str
             ) -> tuple[DataFrame, int, datetime | None, Callable[[], None] | None]:
    """Batch → events: keys, attributes, ``__seq``, ``__line``, ``_source_file``, ``__delete``.

    Records are checked for NULL keys, NULL or unparsable sequence values and op values the mapping
    does not know; the offending row is looked up only when there is one. In ``snapshot`` mode one
    Spark job checks and counts before anything else, because the batch's latest sequence value is
    the time of its deletes. In ``cdc`` mode the count comes from the files' metadata, and the
    events carry a ``__problem`` flag instead: a bad record is never taken for unchanged (see
    :func:`_affected`), so :func:`_apply` counts it with the difference, before anything is
    written, and then calls the returned function, which raises for the first. That saves a full
    read of the batch and a Spark job. Records are not collapsed here: :func:`_rebuild` orders
    them with the stored history in one sort, which also finds two different records at one
    sequence value. Nor are they hashed: :func:`_affected` hashes only the records it keeps.
    Returns the events, the number of records, the latest sequence value (snapshot mode) and, in
    cdc mode, the function that raises for the first bad record.
    """
    columns = set(batch.columns)
    line = F.col("_line_number").cast("long") if "_line_number" in columns else F.lit(None).cast("long")
    source = F.col("_source_file").cast("string") if "_source_file" in columns else F.lit(None).cast("string")
    sequence = _sequence_column(batch, sequence_by or "_ingested_at")
    op_value = F.col(op_column).cast("string") if op_column else F.lit("U")
    mapping = F.create_map(*[F.lit(x) for pair in op_mapping.items() for x in pair]) if op_column else None
    action = mapping[op_value] if mapping is not None else F.lit("U")
    named = batch.select(*keys, *attributes, sequence.alias(_SEQ), line.alias("_line_number"),
                         source.alias("_source_file"), op_value.alias("__op_value"), action.alias("__action"))
    problem = _any([*(F.col(k).isNull() for k in keys), F.col(_SEQ).isNull(), F.col("__action").isNull()])

    def raise_for_first_problem() -> None:
        bad = _first(named, problem)
        assert bad is not None, "a record was counted as bad but none is"
        nulls = [k for k in keys if bad[k] is None]
        if nulls:
            raise Scd2Error(f"NULL in key column(s) {nulls} at {_describe(bad, keys)}")
        if bad[_SEQ] is None:
            raise Scd2Error(f"sequence_by {sequence_by or '_ingested_at'!r} is NULL or not a timestamp at "
                            f"{_describe(bad, keys)}")
        raise Scd2Error(f"op_column {op_column!r} has value {bad['__op_value']!r} at {_describe(bad, keys)}, "
                        f"which op_mapping {op_mapping} does not map to I, U or D")

    deferred: Callable[[], None] | None = None
    latest: datetime | None = None
    if mode == "snapshot":
        stats = named.agg(F.count(F.lit(1)).alias("n"), F.max(_SEQ).alias("latest"),
                          F.sum(problem.cast("int")).alias("problems")).first()
        if stats is not None and stats["problems"]:
            raise_for_first_problem()
        rows_in = int(stats["n"]) if stats is not None else 0
        latest = stats["latest"] if stats is not None else None
    else:
        rows_in = named.count()  # parquet answers it from the file footers
        deferred = raise_for_first_problem
    # a delete carries only its key: the tombstone it may open has no attribute values
    is_delete = F.col("__action") == F.lit("D")
    events = named.select(
        *keys, *[F.when(~is_delete, F.col(c)).alias(c) for c in attributes],
        _SEQ, F.col("_line_number").alias(_LINE), "_source_file", is_delete.alias(_DELETE),
        *([problem.alias(_PROBLEM)] if deferred is not None else []))
    return events, rows_in, latest, deferred


# Types whose values are equal exactly when Spark renders them as the same string (what row_hash
# hashes), so comparing them is comparing hashes. Not floats (0.0 and -0.0 are equal but render
# differently), binaries (rendered lossily as UTF-8), or nested types (maps cannot be compared).
# Timestamps render in the session time zone (UTC in these jobs); in a zone with daylight saving,
# two instants an hour apart can render alike, and comparing values tells them apart.
_INTEGRAL_TYPES = (ByteType, ShortType, IntegerType, LongType)
_COMPARABLE_TYPES = (StringType, BooleanType, *_INTEGRAL_TYPES, DecimalType, DateType, TimestampType)


def _compare_values(batch_schema: StructType, table_schema: StructType, tracked: Sequence[str]) -> bool:
    """Whether a record can be told equal to its open version by comparing tracked values.

    That is the same test as comparing ``_row_hash`` when every tracked column is of a type whose
    equality is its rendering's (integer widths and decimal precisions may differ between batch
    and table, scales may not) and the batch has every data column of the table (a column the
    batch lacks is NULL in its records but may be part of the stored hash). Then no record needs
    hashing to be recognised as unchanged, only the ones kept; otherwise hashes are compared.
    """
    batch_names = set(batch_schema.fieldNames())
    if any(f.name not in batch_names for f in table_schema.fields if f.name not in _SYSTEM_NAMES):
        return False
    stored = {f.name: f.dataType for f in table_schema.fields}
    for name in tracked:
        mine, theirs = batch_schema[name].dataType, stored[name]
        if not (isinstance(mine, _COMPARABLE_TYPES) and isinstance(theirs, _COMPARABLE_TYPES)):
            return False
        if isinstance(mine, _INTEGRAL_TYPES) and isinstance(theirs, _INTEGRAL_TYPES):
            continue
        if isinstance(mine, DecimalType) and isinstance(theirs, DecimalType):
            if mine.scale != theirs.scale:
                return False
        elif type(mine) is not type(theirs):
            return False
    return True


def _deleted_digest() -> Column:
    """The delete marker as a digest: one byte, so it equals no SHA-256 digest (32 bytes)."""
    return F.lit(bytearray(b"\x00"))


def _affected(spark: SparkSession, target: DataFrame, records: DataFrame, keys: Sequence[str],
              tracked: Sequence[str], untracked: Sequence[str], mode: str, delete_at: datetime | None,
              compare_values: bool, positions: bool) -> DataFrame:
    """The events that can change the table: all records of keys that have at least one record not
    already equal to the key's open version, plus (snapshot mode) deletes for missing keys.

    A key's records are kept or dropped together: a record equal to the open version still matters
    when the same batch changes the key in between (A→B→A). The kept events get their ``__hash``
    (hex, or the delete marker) and ``__same`` (the record equals the open version it would
    follow); most records are dropped here, so hashing only the kept ones saves most of the hashing
    when the tracked values can be compared instead (see :func:`_compare_values`).

    With ``positions`` the kept events also carry their open version's position in the table
    (``__cur_file_id``, ``__cur_pos``, see :func:`_position`), which is how a row delta finds the
    rows it changes (see :func:`_read_changed_rows`).
    """
    deleted = F.col(_DELETE)
    position = [c.alias(f"__cur_{c_name}") for c, c_name in zip(_position(), ("file_id", "pos"))] if positions else []
    current_columns = [F.col("_valid_from").alias("__cur_from"), F.col("_is_deleted").alias("__cur_deleted"),
                       *[F.col(c).alias(f"__cur_{c}") for c in untracked], *position]
    if compare_values:
        current = target.filter(F.col("_is_current")).select(
            *keys, *current_columns, *[F.col(c).alias(f"__cur_{c}") for c in tracked])
        equal_content = _all([F.lit(True), *(F.col(c).eqNullSafe(F.col(f"__cur_{c}")) for c in tracked)])
        same = F.when(deleted, F.col("__cur_deleted")).otherwise(~F.col("__cur_deleted") & equal_content)
    else:
        # hashes compared as 32-byte digests, not 64-character hex: every record of the batch and
        # every open version crosses the shuffle, and the hash is most of a narrow row
        records = records.withColumn("__digest", F.when(deleted, _deleted_digest())
                                     .otherwise(F.unhex(row_hash(tracked))))
        current = target.filter(F.col("_is_current")).select(
            *keys, *current_columns,
            F.when(F.col("_is_deleted"), _deleted_digest()).otherwise(F.unhex("_row_hash")).alias("__cur_digest"))
        same = F.col("__digest") == F.col("__cur_digest")
    same = F.coalesce(F.col("__cur_from").isNotNull() & same, F.lit(False))
    kept_current = ["__cur_from", "__cur_deleted", *(f"__cur_{c}" for c in untracked),
                    *(["__cur_file_id", "__cur_pos"] if positions else [])]
    event_columns = [c for c in records.columns if c != "__digest"]
    if mode == "snapshot":
        joined = records.withColumn("__present", F.lit(True)).join(current, list(keys), "full_outer")
        missing = F.col("__present").isNull()
        # a key absent from the snapshot whose open version is not already a tombstone: a delete
        deletes = joined.filter(missing & ~F.col("__cur_deleted")).select(
            *keys, *[F.lit(None).cast(records.schema[c].dataType).alias(c) for c in event_columns
                     if c not in (*keys, _SEQ, _DELETE, "_source_file", _LINE)],
            F.lit(delete_at).cast("timestamp").alias(_SEQ), F.lit(None).cast("long").alias(_LINE),
            F.lit(None).cast("string").alias("_source_file"), F.lit(True).alias(_DELETE),
            *kept_current, F.lit(False).alias("__same"), F.lit(1).alias("__n"))
        joined = joined.filter(~missing)
    else:
        joined = records.join(current, list(keys), "left")
        deletes = None
    untracked_equal = [F.col(c).eqNullSafe(F.col(f"__cur_{c}")) for c in untracked]
    unchanged = _all([same, F.col(_SEQ) >= F.col("__cur_from"), *untracked_equal,
                      *([~F.col(_PROBLEM)] if _PROBLEM in records.columns else [])])
    by_key = Window.partitionBy(*keys)
    # few DataFrame calls on purpose: each one analyses the whole plan again on the driver
    pending = joined.withColumns({"__same": same, "__changes": F.max(F.when(unchanged, 0).otherwise(1)).over(by_key),
                                  "__n": F.count(F.lit(1)).over(by_key)}).filter(F.col("__changes") == 1)
    if deletes is not None:
        pending = pending.select(*event_columns, *kept_current, "__same", "__n").unionByName(deletes)
    # one record, later than the key's open version: its effect needs no history (see _direct);
    # one record of a key with no open version may be a new key, see _mark_new_keys
    one = F.col("__n") == 1
    simple = one & F.col("__cur_from").isNotNull() & (F.col(_SEQ) > F.col("__cur_from"))
    # hex, as stored. Where digests were compared, the kept records (a small part of the batch) are
    # hashed a second time instead of turning their digest back into hex: one way for both paths.
    return pending.select(*[c for c in event_columns if c != _DELETE], *kept_current, "__same", "__n",
                          F.when(deleted, F.lit(DELETED)).otherwise(row_hash(tracked)).alias(_HASH),
                          simple.alias("__simple"), (one & F.col("__cur_from").isNull()).alias("__maybe_new"))


def _mark_new_keys(target: DataFrame, pending: DataFrame, keys: Sequence[str], broadcast: bool) -> DataFrame:
    """Set ``__new`` on the records of keys the table has no row for, and count them as simple.

    A key without an open version is either new or was hard-deleted earlier; only the latter has a
    history the record must be placed in. Telling them apart reads the table's key columns only
    (a semi-join against the few candidate keys, broadcast when ``broadcast`` says they are few
    enough), instead of rebuilding every new key's history from a read of the whole table.
    """
    candidates = pending.filter(F.col("__maybe_new")).select(*keys)
    if broadcast:
        candidates = F.broadcast(candidates)
    known = target.select(*keys).join(candidates, list(keys), "left_semi").distinct() \
        .select(*keys, F.lit(True).alias("__known"))
    new = F.col("__maybe_new") & F.col("__known").isNull()
    return pending.join(known, list(keys), "left").select(
        *[c for c in pending.columns if c != "__simple"], new.alias("__new"), (F.col("__simple") | new).alias("__simple"))


def _unconfirmed_new_keys_marked(target: DataFrame, pending: DataFrame, keys: Sequence[str], broadcast: bool
                                 ) -> DataFrame:
    """``pending`` whose records without an open version were all taken as new keys, with them
    told apart instead (see :func:`_mark_new_keys`). Taken as new, such a record was made simple;
    a record of a key with an open version never is one, so the two kinds of simple part again."""
    undone = pending.drop("__new").withColumn("__simple", F.col("__simple") & ~F.col("__maybe_new"))
    return _mark_new_keys(target, undone, keys, broadcast)


def _direct_rows(soft_delete: bool) -> tuple[Column, Column, Column]:
    """Which simple records (see :func:`_direct`) give which MERGE rows: (an update of the key's
    open version, an update that closes it, a new version). One definition for :func:`_direct`,
    which writes these rows, and :func:`_apply`, which counts them in the job that checkpoints the
    records, so that counting them needs no job of its own."""
    # a new key (``__new``: no row at all) has no open version to compare with or close
    same, new = F.col("__same"), F.col("__new")
    deleted = F.col(_HASH) == F.lit(DELETED)
    # deleting a key the table never had records nothing, not even a tombstone
    return ~new, ~new & ~same, ~same & (~deleted | (F.lit(soft_delete) & ~new))


def _direct(simple: DataFrame, keys: Sequence[str], data_fields: Sequence[StructField], attributes: Sequence[str],
            untracked: Sequence[str], soft_delete: bool, batch_id: str, loaded_at: datetime) -> DataFrame:
    """MERGE source rows for keys whose one record is later than their open version.

    That is most changed keys of a batch, and for them the history rebuild reduces to: a record
    equal to the open version updates its untracked columns in place; any other closes the open
    version at the record's sequence value and opens a new version (a delete opens a tombstone only
    with ``soft_delete``). Computed with no history read, no sort: the same rows :func:`_diff`
    would give, which the property tests check against the reference model.

    An update row carries the open version's position (``__file_id``, ``__pos``) when the records
    do (see :func:`_affected`).
    """
    same = F.col("__same")
    deleted = F.col(_HASH) == F.lit(DELETED)
    updated, _, opens = _direct_rows(soft_delete)
    batch_columns = set(attributes)
    mk = [*[F.col(k).alias(f"{_MK}{k}") for k in keys], F.col("__cur_from").alias(f"{_MK}valid_from")]
    # the open row keeps its data; only untracked columns change (to the record's when equal)
    stored = [(F.when(same, F.col(f.name)).otherwise(F.col(f"__cur_{f.name}")) if f.name in untracked
               else F.lit(None)).cast(f.dataType).alias(f.name) for f in data_fields]
    no_lineage = [F.lit(None).cast("string").alias("_row_hash"), F.lit(None).cast("string").alias("_batch_id"),
                  F.lit(None).cast("string").alias("_source_file"), F.lit(None).cast("timestamp").alias("_loaded_at")]
    known = "__cur_pos" in simple.columns
    position = [(F.col(f"__cur_{name}") if known else F.lit(None)).cast("long").alias(f"__{name}") for name in ("file_id", "pos")]
    updates = simple.filter(updated).select(
        *mk, F.lit("update").alias("__action"), *keys, *stored,
        F.col("__cur_from").alias("_valid_from"), F.when(~same, F.col(_SEQ)).cast("timestamp").alias("_valid_to"),
        same.alias("_is_current"), F.col("__cur_deleted").alias("_is_deleted"), *no_lineage,
        (~same).alias("__closed"), *position)
    opened = simple.filter(opens).select(
        *[F.lit(None).cast(simple.schema[k].dataType).alias(f"{_MK}{k}") for k in keys],
        F.lit(None).cast("timestamp").alias(f"{_MK}valid_from"), F.lit("insert").alias("__action"), *keys,
        *[(F.col(f.name) if f.name in batch_columns else F.lit(None)).cast(f.dataType).alias(f.name)
          for f in data_fields],
        F.col(_SEQ).alias("_valid_from"), F.lit(None).cast("timestamp").alias("_valid_to"),
        F.lit(True).alias("_is_current"), deleted.alias("_is_deleted"),
        F.when(~deleted, F.col(_HASH)).alias("_row_hash"), F.lit(batch_id).alias("_batch_id"),
        F.col("_source_file"), F.lit(loaded_at).cast("timestamp").alias("_loaded_at"), F.lit(False).alias("__closed"),
        *_no_position())
    return updates.unionByName(opened)


def _position() -> tuple[Column, Column]:
    """A stored row's position, as :func:`_read_changed_rows` finds the row again: its data file, as
    a 64-bit hash of the file's location (8 bytes instead of a long path in every row the joins
    shuffle), and its row number in that file. Only valid on the table itself, before any join."""
    return F.xxhash64("_file"), F.col("_pos")


def _no_position() -> tuple[Column, Column]:
    return F.lit(None).cast("long").alias("__file_id"), F.lit(None).cast("long").alias("__pos")


def _rebuild(target: DataFrame, pending: DataFrame, keys: Sequence[str], attributes: Sequence[str],
             untracked: Sequence[str], sequence_by: str | None, table_schema: StructType, batch_id: str,
             loaded_at: datetime, positions: bool) -> tuple[DataFrame, DataFrame]:
    """The affected keys' stored rows turned back into events and merged with the batch's.

    Events are ordered by sequence value, then the table's own event first (a re-applied record
    changes nothing), then the file's latest line first. At one sequence value only the first event
    counts; a later one with other content is a conflict: with the stored history always, between
    two records of the batch only when ``sequence_by`` orders them (without it, the file's last
    line is the key's state at load time). Returns (events with ``__run`` numbers, conflicts).
    With ``positions`` the stored rows' events carry their positions (``__old_file_id``,
    ``__old_pos``).
    """
    data_fields = [f for f in table_schema.fields if f.name not in _SYSTEM_NAMES and f.name not in keys]
    data_names = [f.name for f in data_fields]
    affected_keys = pending.select(*keys).distinct()
    # metadata columns resolve only on the table itself: taken before the join
    position = _position() if positions else _no_position()
    stored = target.select("*", *[c.alias(f"__old_{name}") for c, name in zip(position, ("file_id", "pos"))])
    history = stored.join(affected_keys, list(keys), "left_semi")
    successor = Window.partitionBy(*keys).orderBy("_valid_from")
    history = history.withColumn("__next_from", F.lead("_valid_from").over(successor))
    no_old = (F.lit(None).cast("timestamp").alias("__old_from"), F.lit(None).cast("timestamp").alias("__old_to"),
              F.lit(None).cast("boolean").alias("__old_current"), F.lit(None).cast("long").alias("__old_file_id"),
              F.lit(None).cast("long").alias("__old_pos"))
    old_events = history.select(
        *keys, *data_names, F.col("_valid_from").alias(_SEQ),
        F.when(F.col("_is_deleted"), F.lit(DELETED)).otherwise(F.col("_row_hash")).alias(_HASH),
        F.lit(0).alias("__prio"), F.lit(None).cast("long").alias(_LINE), F.col("_valid_from").alias("__old_from"),
        F.col("_valid_to").alias("__old_to"), F.col("_is_current").alias("__old_current"), "__old_file_id", "__old_pos",
        "_batch_id", "_source_file", "_loaded_at")
    # a version closed with nothing starting at its end was hard-deleted there: a delete event
    gaps = history.filter(F.col("_valid_to").isNotNull() & (F.col("__next_from").isNull()
                                                            | (F.col("__next_from") != F.col("_valid_to")))).select(
        *keys, *[F.lit(None).cast(f.dataType).alias(f.name) for f in data_fields], F.col("_valid_to").alias(_SEQ),
        F.lit(DELETED).alias(_HASH), F.lit(0).alias("__prio"), F.lit(None).cast("long").alias(_LINE), *no_old,
        F.lit(None).cast("string").alias("_batch_id"), F.lit(None).cast("string").alias("_source_file"),
        F.lit(None).cast("timestamp").alias("_loaded_at"))
    batch_columns = set(attributes)
    new_events = pending.select(
        *keys, *[(F.col(f.name) if f.name in batch_columns else F.lit(None)).cast(f.dataType).alias(f.name)
                 for f in data_fields],
        _SEQ, _HASH, F.lit(1).alias("__prio"), F.col(_LINE), *no_old, F.lit(batch_id).alias("_batch_id"),
        F.col("_source_file"), F.lit(loaded_at).cast("timestamp").alias("_loaded_at"))
    events = old_events.unionByName(gaps).unionByName(new_events)
    order = Window.partitionBy(*keys).orderBy(_SEQ, "__prio", F.col(_LINE).desc_nulls_last())
    events = events.withColumn("__prev_seq", F.lag(_SEQ).over(order)) \
        .withColumn("__prev_hash", F.lag(_HASH).over(order)).withColumn("__prev_prio", F.lag("__prio").over(order))
    same_seq = F.col("__prev_seq").eqNullSafe(F.col(_SEQ))
    differs = same_seq & ~F.col("__prev_hash").eqNullSafe(F.col(_HASH))
    with_table = F.col("__prev_prio") == 0
    # materialised once: the conflicts and the runs below both read it (Spark would otherwise
    # recompute the history join and this sort for each of the MERGE source's branches)
    events = events.withColumn("__dup", same_seq) \
        .withColumn("__conflict", differs & (with_table | F.lit(sequence_by is not None))) \
        .withColumn("__with_table", with_table).localCheckpoint(eager=True)
    conflicts = events.filter(F.col("__conflict")).select(*keys, _SEQ, _LINE, "_source_file", "__with_table")
    kept = events.filter(~F.col("__dup"))
    # the sequence values left are distinct per key, so this running sum numbers the runs
    starts = F.when(F.lag(_HASH).over(Window.partitionBy(*keys).orderBy(_SEQ)).eqNullSafe(F.col(_HASH)), 0).otherwise(1)
    running = Window.partitionBy(*keys).orderBy(_SEQ).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    runs = kept.drop("__prev_seq", "__prev_hash", "__prev_prio", "__dup", "__conflict", "__with_table").withColumn("__starts", starts) \
        .withColumn("__run", F.sum("__starts").over(running))
    return runs, conflicts


_OLD_ROW = ("__old_from", "__old_file_id", "__old_pos")  # a stored row: its _valid_from and position


def _diff(events: DataFrame, keys: Sequence[str], data_fields: Sequence[StructField], untracked: Sequence[str],
          soft_delete: bool) -> DataFrame:
    """Collapsed runs → versions, compared with the rows they came from."""
    first_fields = [f.name for f in data_fields if f.name not in untracked]
    runs = events.groupBy(*keys, "__run").agg(
        F.min(_SEQ).alias("_valid_from"),
        F.min_by(F.struct(*first_fields, _HASH, "__old_from", "__old_to", "__old_current", "__old_file_id",
                          "__old_pos", "_batch_id", "_source_file", "_loaded_at"), F.col(_SEQ)).alias("__first"),
        F.max_by(F.struct(*[F.col(c) for c in untracked], F.lit(0).alias("__pad")), F.col(_SEQ)).alias("__last"),
        F.min_by(F.struct(*[F.col(c) for c in untracked], F.lit(0).alias("__pad")), F.col(_SEQ)).alias("__first_untracked"),
    )
    successor = Window.partitionBy(*keys).orderBy("__run")
    # materialised: the inserts, updates and replaced rows below are three readers of it
    runs = runs.withColumn("_valid_to", F.lead("_valid_from").over(successor)) \
        .withColumn("_is_current", F.lead("_valid_from").over(successor).isNull()).localCheckpoint(eager=True)
    deleted = F.col("__first." + _HASH) == F.lit(DELETED)
    old = F.col("__first.__old_from").isNotNull()
    # a delete run becomes a tombstone when soft_delete asks (or one is already stored); never as
    # a key's first run: deleting a key the table never had records nothing
    keep = ~deleted | ((F.col("__run") > 1) & (F.lit(soft_delete) | old))
    versions = runs.filter(keep)
    data_values = [F.col(f"__first.{f.name}").alias(f.name) if f.name not in untracked
                   else F.col(f"__last.{f.name}").alias(f.name) for f in data_fields]
    inserts = versions.filter(~old).select(
        *[F.lit(None).cast(events.schema[k].dataType).alias(f"{_MK}{k}") for k in keys],
        F.lit(None).cast("timestamp").alias(f"{_MK}valid_from"), F.lit("insert").alias("__action"), *keys,
        *data_values, "_valid_from", "_valid_to", "_is_current", deleted.alias("_is_deleted"),
        F.when(~deleted, F.col("__first." + _HASH)).alias("_row_hash"), F.col("__first._batch_id").alias("_batch_id"),
        F.col("__first._source_file").alias("_source_file"), F.col("__first._loaded_at").alias("_loaded_at"),
        F.lit(False).alias("__closed"), *_no_position())
    changed_untracked = [~F.col(f"__last.{c}").eqNullSafe(F.col(f"__first_untracked.{c}")) for c in untracked]
    differs = _any([~F.col("_valid_to").eqNullSafe(F.col("__first.__old_to")),
                    F.col("_is_current") != F.col("__first.__old_current"), *changed_untracked])
    updates = versions.filter(old & differs).select(
        *[F.col(k).alias(f"{_MK}{k}") for k in keys], F.col("_valid_from").alias(f"{_MK}valid_from"),
        F.lit("update").alias("__action"), *keys, *data_values, "_valid_from", "_valid_to", "_is_current",
        deleted.alias("_is_deleted"), F.lit(None).cast("string").alias("_row_hash"),
        F.lit(None).cast("string").alias("_batch_id"), F.lit(None).cast("string").alias("_source_file"),
        F.lit(None).cast("timestamp").alias("_loaded_at"),
        (F.col("__first.__old_current") & ~F.col("_is_current")).alias("__closed"),
        F.col("__first.__old_file_id").alias("__file_id"), F.col("__first.__old_pos").alias("__pos"))
    # a stored row whose event is no longer a run's first (a late record now starts its version),
    # or a stored tombstone that is now a key's first run, is replaced
    dropped_runs = runs.filter(~keep & old).select(*keys, *[F.col(f"__first.{c}").alias(c) for c in _OLD_ROW])
    swallowed = events.filter(F.col("__old_from").isNotNull() & (F.col("__starts") == 0)).select(*keys, *_OLD_ROW)
    deletes = dropped_runs.unionByName(swallowed).select(
        *[F.col(k).alias(f"{_MK}{k}") for k in keys], F.col("__old_from").alias(f"{_MK}valid_from"),
        F.lit("delete").alias("__action"), *keys, *[F.lit(None).cast(f.dataType).alias(f.name) for f in data_fields],
        *[F.lit(None).cast(f.dataType).alias(f.name) for f in SYSTEM_COLUMNS], F.lit(False).alias("__closed"),
        F.col("__old_file_id").alias("__file_id"), F.col("__old_pos").alias("__pos"))
    return inserts.unionByName(updates).unionByName(deletes)


def _current_snapshot(spark: SparkSession, table: TableName) -> int | None:
    """The table's current snapshot id, freshly read from the catalog (None: no snapshot yet).

    Asked through Iceberg's Java API rather than the ``.history`` metadata table: that is a Spark
    job, and this is called around every commit.
    """
    iceberg = _iceberg_table(spark, table)
    iceberg.refresh()
    snapshot = iceberg.currentSnapshot()
    return int(snapshot.snapshotId()) if snapshot is not None else None


ROWS_PER_SHUFFLE_PARTITION = 250_000
BROADCAST_ROWS = 2_000_000  # key sets up to this many rows are broadcast to a join (tens of MB)


def _table_rows(spark: SparkSession, table: TableName) -> int:
    """Rows in the table's current snapshot, from its summary (no scan); 0 when unknown."""
    snapshot = _iceberg_table(spark, table).currentSnapshot()
    if snapshot is None:
        return 0
    total = snapshot.summary().get("total-records")
    return int(total) if total is not None else 0


@contextmanager
def _shuffle_partitions(spark: SparkSession, rows: int) -> Iterator[int]:
    """Size shuffles to the batch for the duration of one apply, then restore the session's value.

    Every shuffle stage costs a task per partition; a small batch spread over the session's default
    (sized for big jobs) pays that overhead several times per stage for nothing. Never more than the
    session's own setting, never fewer than one partition.
    """
    configured = int(spark.conf.get("spark.sql.shuffle.partitions", "200") or "200")
    wanted = max(1, min(configured, -(-rows // ROWS_PER_SHUFFLE_PARTITION)))
    with spark_settings(spark, {"spark.sql.shuffle.partitions": str(wanted)}):
        yield wanted


# While the MERGE is planned: Spark injects a bloom filter of the source's merge keys into the table
# scan only when it thinks the join is a shuffle join and the scan is big; see _merge.
_MERGE_SESSION_CONF: dict[str, str] = {
    "spark.sql.optimizer.runtime.bloomFilter.enabled": "true",
    "spark.sql.optimizer.runtime.bloomFilter.applicationSideScanSizeThreshold": "0",
    "spark.sql.optimizer.runtime.bloomFilter.creationSideThreshold": str(2**63 - 1),
    "spark.sql.autoBroadcastJoinThreshold": "-1",
}


def _without_size_estimate(spark: SparkSession, checkpoint: DataFrame) -> DataFrame:
    """The same rows with no inherited size estimate, so the MERGE gets its bloom filter.

    A checkpoint keeps the size Spark estimated for its plan, and Spark estimates a join as the
    product of its inputs' sizes: after the joins that computed the difference, that is more than
    the largest size Spark accepts for a bloom filter's source, however few rows there are. Falls
    back to the checkpoint itself (the MERGE is then planned without the filter, still correct)
    where Spark has no such internal method.
    """
    jdf = checkpoint._jdf
    try:
        fresh = spark._jsparkSession.internalCreateDataFrame(  # type: ignore[attr-defined]
            jdf.queryExecution().toRdd(), jdf.schema(), False)
    except Exception:  # noqa: BLE001 - an internal API; without it the plan only loses the filter
        return checkpoint
    return DataFrame(fresh, spark)


@contextmanager
def _table_lock(spark: SparkSession, table: TableName) -> Iterator[bool]:
    """Serialise runs on one table with a Postgres advisory lock held on the catalog database.

    The catalog's own JDBC connection settings are reused through the JVM's Postgres driver (it is
    on the classpath because the JDBC catalog needs it). Yields False when the catalog is not a
    Postgres JDBC catalog (Glue's catalog, a REST catalog): then the orchestrator's pool serialises
    runs and Iceberg's conflict check is the guard. The lock ends with its connection, so a killed
    job cannot leave it held.
    """
    catalog = spark.conf.get("spark.sql.defaultCatalog", "spark_catalog")
    prefix = f"spark.sql.catalog.{catalog}"
    uri = spark.conf.get(f"{prefix}.uri", "") or ""
    if not uri.startswith("jdbc:postgresql:"):
        yield False
        return
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    properties = jvm.java.util.Properties()
    for key in ("user", "password"):
        value = spark.conf.get(f"{prefix}.jdbc.{key}", None)
        if value is not None:
            properties.setProperty(key, value)
    connection = jvm.org.postgresql.Driver().connect(uri, properties)
    if connection is None:
        raise RuntimeError(f"the Postgres driver refused the catalog URI {uri!r}")
    try:
        statement = connection.prepareStatement("SELECT pg_advisory_lock(hashtextextended(?, 0))")
        statement.setString(1, f"lakehouse.scd2:{catalog}.{table}")
        statement.execute()
        statement.close()
        yield True
    finally:
        connection.close()  # releases the session-level advisory lock


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
    mode: Literal["cdc", "snapshot"] = "cdc",
    op_column: str | None = None,
    op_mapping: dict[str, str] | None = None,
    soft_delete: bool = False,
) -> Scd2Result:
    """Apply one batch of records to the SCD2 table ``table`` in a single Iceberg commit.

    Args:
        spark: session whose default catalog holds ``table`` (created, merge-on-read, if missing).
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
        mode: ``cdc`` (records are changes) or ``snapshot`` (the batch is the full current state;
            keys missing from it are deleted at the batch's latest sequence value).
        op_column: ``cdc`` only: column saying whether a record is an insert, update or delete.
        op_mapping: the op column's values → ``I``/``U``/``D`` (default identity); an unmapped
            value is an error naming the row.
        soft_delete: a delete also opens a tombstone version (``_is_deleted`` true).

    Returns:
        Counts of what changed; ``committed`` is False when nothing did (no snapshot is written).

    Raises:
        Scd2Error: before any write, for NULL keys, same-sequence conflicts, unknown op values,
            unknown columns or a type change Iceberg cannot promote.
    """
    if not keys:
        raise Scd2Error("keys must name at least one column")
    if len(set(keys)) != len(keys):
        raise Scd2Error(f"keys {list(keys)} name a column twice")
    if track_columns and track_except:
        raise Scd2Error("give track_columns or track_except, not both")
    if mode not in MODES:
        raise Scd2Error(f"mode must be one of {list(MODES)}, got {mode!r}")
    if op_column and mode != "cdc":
        raise Scd2Error("op_column is for mode 'cdc'; in 'snapshot' mode a key missing from the batch is the delete")
    mapping = dict(op_mapping) if op_mapping else dict(DEFAULT_OP_MAPPING)
    wrong = {k: v for k, v in mapping.items() if v not in ("I", "U", "D")}
    if wrong:
        raise Scd2Error(f"op_mapping must map op values to 'I', 'U' or 'D'; these do not: {wrong}")
    columns = batch_df.columns
    for name in (*keys, *(track_columns or ()), *(track_except or ()), *([op_column] if op_column else [])):
        validate_identifier(name, "column")
    missing = [c for c in (*keys, *(track_columns or ()), *([sequence_by] if sequence_by else []),
                           *([op_column] if op_column else [])) if c not in columns]
    if missing:
        raise Scd2Error(f"columns {missing} are not in the batch (it has {columns})")
    if sequence_by is None and "_ingested_at" not in columns:
        raise Scd2Error("no sequence_by given and the batch has no _ingested_at column")
    attributes = [c for c in columns if not c.startswith("_") and c not in keys and c != op_column]
    for name in attributes:
        validate_identifier(name, "column")
    overlap = [c for c in (track_columns or ()) if c in keys]
    if overlap:
        raise Scd2Error(f"track_columns {overlap} are keys; keys identify a version, they are not tracked")
    # the sequence column differs on every record by nature: it dates versions, it does not make them
    tracked = list(track_columns) if track_columns else [
        c for c in attributes if c not in (track_except or ()) and c != sequence_by]
    untracked = [c for c in attributes if c not in tracked and c != sequence_by]
    loaded_at = loaded_at or datetime.now(timezone.utc)

    with _table_lock(spark, table):
        if spark.catalog.tableExists(str(table)):
            spark.sql(f"REFRESH TABLE {table.spark}")  # see commits made while waiting for the lock
        records, rows_in, delete_at, raise_for_first_problem = _prepare(
            batch_df, keys, attributes, sequence_by, op_column, mapping, mode)
        if mode == "snapshot" and rows_in == 0:
            raise Scd2Error("the snapshot batch is empty; refusing to delete every key (load an empty "
                            "snapshot deliberately by deleting through mode 'cdc')")
        data_fields = [batch_df.schema[c] for c in (*keys, *attributes)]
        table_schema, change = _ensure_table(spark, table, data_fields)
        try:
            with _shuffle_partitions(spark, rows_in + _table_rows(spark, table)):
                return _apply(spark, table, records, keys, attributes, tracked, untracked, sequence_by,
                              table_schema, batch_id, loaded_at, mode, soft_delete, delete_at, rows_in,
                              raise_for_first_problem)
        except BaseException:
            _undo_schema_change(spark, table, change)
            raise


def _apply(spark: SparkSession, table: TableName, records: DataFrame, keys: Sequence[str],
           attributes: Sequence[str], tracked: Sequence[str], untracked: Sequence[str], sequence_by: str | None,
           table_schema: StructType, batch_id: str, loaded_at: datetime, mode: str, soft_delete: bool,
           delete_at: datetime | None, rows_in: int, raise_for_first_problem: Callable[[], None] | None
           ) -> Scd2Result:
    """Read at one snapshot, compute the difference, commit it if there is one.

    The records that can change anything are found by one join with the open versions; keys with
    one record later than their open version, and new keys, are applied directly; only the rest
    (several records per key, late records, keys coming back) have their history read and rebuilt.
    When every changed key is simple (the usual batch), the difference is computed straight from the
    checkpointed records, and counted while they are checkpointed (an observation, no job of its
    own); otherwise it is materialised once (a local checkpoint) for the counts and the MERGE.
    Small Spark jobs cost more in planning and scheduling than in work here, so there are as few as
    the plan allows.
    """
    read_snapshot = _current_snapshot(spark, table)
    target = spark.table(table.spark) if read_snapshot is None else \
        spark.read.option("snapshot-id", read_snapshot).table(str(table))
    # the records that can change anything: usually a small part of the batch, read once from here
    compare_values = _compare_values(records.schema, table_schema, tracked)
    row_delta = _row_delta_supported(spark, table)
    pending = _affected(spark, target, records, keys, tracked, untracked, mode, delete_at, compare_values,
                        positions=row_delta)
    # Records of keys without an open version: new keys, or keys hard-deleted earlier (see
    # _mark_new_keys). On an empty table all are new. Before a row delta they are taken as new, and
    # the commit's own read of the table (see _read_changed_rows) checks that none is in the table,
    # which saves a scan of the table and a job; if one is, they are told apart and it all goes again.
    unconfirmed = read_snapshot is not None and row_delta
    if read_snapshot is None or row_delta:
        pending = pending.withColumns({"__new": F.col("__maybe_new"), "__simple": F.col("__simple") | F.col("__maybe_new")})
    else:
        pending = _mark_new_keys(target, pending.localCheckpoint(eager=True), keys, broadcast=rows_in <= BROADCAST_ROWS)
    data_fields = [f for f in table_schema.fields if f.name not in _SYSTEM_NAMES and f.name not in keys]
    while True:
        # counted in the job that materialises the records: what the direct difference will write, how
        # many records need their key's history, and (cdc mode) how many are bad, before anything else
        tally = Observation()  # unnamed: a unique name, so concurrent runs in one session never mix
        simple = F.col("__simple")
        updated, closes, opens = _direct_rows(soft_delete)
        pending = pending.observe(
            tally, F.count_if(simple & updated).alias("update"), F.count_if(simple & closes).alias("closed"),
            F.count_if(simple & opens).alias("insert"), F.count_if(~simple).alias("complex"),
            F.count_if(F.col(_PROBLEM) if raise_for_first_problem is not None else F.lit(False)).alias("problem"),
            F.count_if(F.col("__maybe_new")).alias("maybe_new"),
        ).localCheckpoint(eager=True)
        observed = tally.get
        counts = {action: (int(observed[action]), int(observed["closed"]) if action == "update" else 0)
                  for action in ("update", "insert", "complex", "problem") if observed[action]}
        maybe_new = int(observed["maybe_new"])
        if unconfirmed and maybe_new > BROADCAST_ROWS:  # too many to check by broadcast: told apart now
            pending, unconfirmed = _unconfirmed_new_keys_marked(target, pending, keys, broadcast=False), False
            continue
        diff = _direct(pending.filter(F.col("__simple")), keys, data_fields, attributes, untracked, soft_delete,
                       batch_id, loaded_at).withColumn("_line_number", F.lit(None).cast("long"))
        if "problem" in counts:
            assert raise_for_first_problem is not None
            raise_for_first_problem()
        source = diff
        if "complex" in counts:  # only then is any history read: several records, late records, returning keys
            events = [*keys, *attributes, _SEQ, _LINE, "_source_file", _HASH]
            runs, conflicts = _rebuild(target, pending.filter(~F.col("__simple")).select(*events), keys,
                                       attributes, untracked, sequence_by, table_schema, batch_id, loaded_at, row_delta)
            conflict_rows = conflicts.select(
                *[F.col(k).alias(f"{_MK}{k}") for k in keys], F.col(_SEQ).alias(f"{_MK}valid_from"),
                F.when(F.col("__with_table"), F.lit("conflict_table")).otherwise(F.lit("conflict")).alias("__action"),
                *keys, *[F.lit(None).cast(f.dataType).alias(f.name) for f in data_fields],
                *[(F.col(_SEQ) if f.name == "_valid_from" else F.col("_source_file") if f.name == "_source_file"
                   else F.lit(None).cast(f.dataType)).alias(f.name) for f in SYSTEM_COLUMNS],
                F.lit(False).alias("__closed"), F.col(_LINE).alias("_line_number"),
                *_no_position())
            diff = _diff(runs, keys, data_fields, untracked, soft_delete) \
                .withColumn("_line_number", F.lit(None).cast("long")).unionByName(diff).unionByName(conflict_rows)
            source = diff.localCheckpoint(eager=True)
            counts = _count_actions(source)
        if "conflict" in counts or "conflict_table" in counts:
            bad = _first(source, F.col("__action").startswith("conflict"))
            assert bad is not None
            if bad["__action"] == "conflict":
                raise Scd2Error(f"two records with the same key and the same {sequence_by} {bad['_valid_from']} but "
                                f"different content, at {_describe(bad, keys)}")
            raise Scd2Error(f"{table} already has a version from {bad['_valid_from']} with different content than "
                            f"{_describe(bad, keys)}: same key and sequence value, different content")
        inserted = counts.get("insert", (0, 0))[0]
        updates, closed = counts.get("update", (0, 0))
        replaced = counts.get("delete", (0, 0))[0]
        committed = bool(inserted or updates or replaced)
        matched = updates + replaced  # stored rows the commit changes
        changed_rows: DataFrame | None = None
        if (row_delta and matched) or (unconfirmed and maybe_new):
            new_keys = pending.filter(F.col("__maybe_new")).select(*keys) if unconfirmed and maybe_new else None
            changed_rows, found, known = _read_changed_rows(target, source, keys, untracked, matched, new_keys)
            if known:  # a key taken as new has rows after all: told apart, and computed again
                pending, unconfirmed = _unconfirmed_new_keys_marked(
                    target, pending, keys, broadcast=maybe_new <= BROADCAST_ROWS), False
                continue
            if found != matched:
                changed_rows = None  # a file id is a hash: two files with one id match too many rows
        break
    if committed:
        now = _current_snapshot(spark, table)
        if now != read_snapshot:
            raise Scd2Error(f"{table} changed while this batch was computed (snapshot {read_snapshot} → {now}): "
                            f"another run committed; re-run this batch, it will apply only what is left")
        spark.sql(f"REFRESH TABLE {table.spark}")
        if row_delta and (changed_rows is not None or not matched):
            _commit_row_delta(spark, table, read_snapshot, source, table_schema, changed_rows)
        else:
            _merge(spark, table, source, keys, table_schema, untracked, matched)
    return Scd2Result(rows_in, inserted, closed, updates - closed, replaced, committed, _current_snapshot(spark, table))


# Iceberg's reserved field ids of a position delete file's columns (the spec's file_path and pos)
_POSITION_DELETE_IDS = {"file_path": 2147483546, "pos": 2147483545}


def _iceberg_table(spark: SparkSession, table: TableName) -> Any:
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    return jvm.org.apache.iceberg.spark.Spark3Util.loadIcebergTable(spark._jsparkSession, str(table))  # type: ignore[attr-defined]


def _row_delta_supported(spark: SparkSession, table: TableName) -> bool:
    """Whether a batch can be committed by :func:`_commit_row_delta`: the table keeps
    position deletes in files (format 2; format 3 wants deletion vectors) and is unpartitioned (a
    delete file then needs no partition value). Tables this template creates are both; any other
    table is changed through the MERGE, which handles every layout."""
    iceberg = _iceberg_table(spark, table)
    # through the table's operations: Glue 5.0's Iceberg (1.7) has no TableUtil.formatVersion
    return bool(iceberg.spec().isUnpartitioned()) and int(iceberg.operations().current().formatVersion()) == 2


def _read_changed_rows(target: DataFrame, source: DataFrame, keys: Sequence[str], untracked: Sequence[str],
                       matched: int, new_keys: DataFrame | None) -> tuple[DataFrame | None, int, int]:
    """One scan of the table at the snapshot read, for what a row delta needs to know of it: the
    stored rows the batch changes, and whether any key taken as new (``new_keys``) is there.

    A MERGE finds the stored rows it changes by joining the whole table with its source on the key
    (a shuffle and a sort of every table row its bloom filter lets through). Here each source row
    that changes a stored row already carries that row's position (``__file_id``, ``__pos``), from
    the joins that found the change, so the rows are found by position, with the (broadcast)
    positions joined to the scan and no shuffle of the table. Each comes with ``__file`` (its data
    file), ``__change`` (``update`` or ``delete``) and what the change sets (``__new_<column>``).

    Returns (those rows, materialised, or None when ``matched`` is 0: then only ``new_keys`` is
    looked for; how many were found; how many rows the table has of ``new_keys``).
    """
    file_id, pos = _position()
    scan = target.select("*", file_id.alias("__file_id"), pos.alias("__pos"), F.col("_file").alias("__file"))
    changed = known = F.lit(False)
    if matched:
        changes = source.filter(F.col("__action").isin("update", "delete")).select(
            "__file_id", "__pos", F.col("__action").alias("__change"),
            *[F.col(c).alias(f"__new_{c}") for c in ("_valid_to", "_is_current", *untracked)])
        scan = scan.join(F.broadcast(changes) if matched <= BROADCAST_ROWS else changes, ["__file_id", "__pos"], "left")
        changed = F.col("__change").isNotNull()
    if new_keys is not None:  # as many as BROADCAST_ROWS at most, see _apply
        scan = scan.join(F.broadcast(new_keys.select(*keys, F.lit(True).alias("__known"))), list(keys), "left")
        known = F.col("__known").isNotNull()
    if not matched:  # only the check (a filter on a constant false would drop an observation)
        return None, 0, scan.filter(known).count()
    counted = Observation()
    rows = scan.filter(changed | known) \
        .observe(counted, F.count_if(changed).alias("changed"), F.count_if(known).alias("known")) \
        .filter(changed).drop(*(["__known"] if new_keys is not None else [])).localCheckpoint(eager=True)
    observed = counted.get
    return rows, int(observed["changed"]), int(observed["known"])


def _commit_row_delta(spark: SparkSession, table: TableName, read_snapshot: int | None, source: DataFrame,
                      table_schema: StructType, changed_rows: DataFrame | None) -> None:
    """The batch's single commit, without a MERGE: the same change as :func:`_merge`'s, as one
    Iceberg row delta. New rows are added; a stored row that changes is deleted at its position and
    added again as it is now; a replaced row is deleted at its position.

    ``changed_rows`` are the stored rows the batch changes, as :func:`_read_changed_rows` found
    them (None: it changes none). The rows are written by Iceberg's Spark writer in its staging
    mode (the one ``rewrite_data_files`` uses: written, not committed), the position deletes by
    Spark's Parquet writer with Iceberg's field ids, and both are committed together, validated as
    a serializable MERGE is against commits since ``read_snapshot``. A file of a commit that fails
    is deleted again.
    """
    names = [f.name for f in table_schema.fields]
    added = source.filter(F.col("__action") == "insert").select(*names)
    delete_files: list[Any] = []
    referenced: list[str] = []
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    iceberg = _iceberg_table(spark, table)
    coordinator = jvm.org.apache.iceberg.spark.FileRewriteCoordinator.get()
    file_set = f"scd2-{uuid.uuid4().hex}"
    written: list[str] = []
    committing = False
    try:
        if changed_rows is not None:
            # what the MERGE's UPDATE sets; the rest of the row is as stored (NULL in a column that
            # this batch added, if the snapshot read does not show it)
            read = set(changed_rows.columns)
            changed = changed_rows.filter(F.col("__change") == "update").select(*[
                (F.col(f"__new_{f.name}") if f"__new_{f.name}" in read
                 else F.col(f.name) if f.name in read else F.lit(None).cast(f.dataType)).alias(f.name)
                for f in table_schema.fields])
            added = added.unionByName(changed)
            delete_files, referenced = _write_position_deletes(spark, iceberg, changed_rows, written)
        added.writeTo(table.spark).option("rewritten-file-scan-task-set-id", file_set).append()
        data_files = list(jvm.java.util.ArrayList(coordinator.fetchNewFiles(iceberg, file_set)))
        written.extend(str(f.location()) for f in data_files)
        delta = iceberg.newRowDelta()
        if read_snapshot is not None:
            delta = delta.validateFromSnapshot(read_snapshot)
        delta = delta.validateNoConflictingDataFiles().validateNoConflictingDeleteFiles() \
            .validateDataFilesExist(jvm.java.util.ArrayList(referenced)).validateDeletedFiles()
        for data_file in data_files:
            delta = delta.addRows(data_file)
        for delete_file in delete_files:
            delta = delta.addDeletes(delete_file)
        delta = delta.set("spark.app.id", spark.sparkContext.applicationId)  # as Spark's own commits say
        committing = True
        delta.commit()
    except BaseException as exc:
        # after an unknown commit state the files may be in the table: keep them
        if not (committing and "CommitStateUnknownException" in str(exc)):
            for location in written:
                iceberg.io().deleteFile(location)
        raise
    finally:
        coordinator.clearRewrite(iceberg, file_set)


def _write_position_deletes(spark: SparkSession, iceberg: Any, deletes: DataFrame, written: list[str]
                            ) -> tuple[list[Any], list[str]]:
    """Write the positions of ``deletes`` (``__file``, ``__pos``) as position delete files in the table's data
    location, each sorted by file and position as the spec asks; returns Iceberg's descriptions of them
    (with metrics, so a scan applies each only to the data files its bounds cover) and the data
    files they reference. Each file written is appended to ``written`` as soon as it exists."""
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    found = Observation()
    frame = deletes.select(*[F.col(source).alias(name, metadata={"parquet.field.id": field_id})
                             for source, (name, field_id) in zip(("__file", "__pos"), _POSITION_DELETE_IDS.items())])
    directory = str(iceberg.locationProvider().newDataLocation(f"position-deletes-{uuid.uuid4().hex}"))
    path = jvm.org.apache.hadoop.fs.Path(directory)
    filesystem = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # type: ignore[attr-defined]
    try:
        # counted while written, as JSON: an observed array comes back to Python as a Scala object
        # no shuffle: the rows are few, and each file written is sorted in itself, as the spec asks
        frame.observe(found, F.to_json(F.collect_set("file_path")).alias("files")) \
            .sortWithinPartitions("file_path", "pos").write.parquet(directory)
    except BaseException:
        filesystem.delete(path, True)  # what the failed job left, if anything
        raise
    referenced: list[str] = json.loads(found.get["files"])
    statuses = []
    for status in filesystem.listStatus(path):
        if status.getPath().getName().endswith(".parquet"):
            statuses.append(status)
            written.append(str(status.getPath().toString()))
        else:  # the writer's _SUCCESS marker: nothing of the table's
            filesystem.delete(status.getPath(), False)
    metrics_config = jvm.org.apache.iceberg.MetricsConfig.forPositionDelete(iceberg)
    delete_files = []
    for status in statuses:
        location = str(status.getPath().toString())
        metrics = jvm.org.apache.iceberg.parquet.ParquetUtil.fileMetrics(iceberg.io().newInputFile(location), metrics_config)
        delete_files.append(jvm.org.apache.iceberg.FileMetadata.deleteFileBuilder(iceberg.spec()).ofPositionDeletes()
                            .withPath(location).withFormat("parquet").withFileSizeInBytes(status.getLen())
                            .withMetrics(metrics).build())
    return delete_files, referenced


def _count_actions(source: DataFrame) -> dict[str, tuple[int, int]]:
    """MERGE source rows per ``__action``: (rows, rows that close an open version)."""
    return {r["__action"]: (int(r["n"]), int(r["closed"] or 0)) for r in source.groupBy("__action").agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.col("__closed").cast("int")).alias("closed")).collect()}


def _merge(spark: SparkSession, table: TableName, source: DataFrame, keys: Sequence[str],
           table_schema: StructType, untracked: Sequence[str], matched: int) -> None:
    """The single commit. Insert rows carry NULL merge keys, so ``=`` never matches them; the other
    (``matched``) rows match exactly one stored row by key and ``_valid_from``."""
    view = f"scd2_source_{uuid.uuid4().hex}"
    # A MERGE with an insert clause joins the table RIGHT OUTER the source, and Spark never
    # broadcasts the preserved side: every table row would be shuffled and sorted to meet the few
    # that match. A runtime bloom filter of the source's keys drops the others right after the
    # scan. Spark injects one only for a filtered source and a join it does not expect to
    # broadcast, hence the (always true) action filter and _MERGE_SESSION_CONF.
    _without_size_estimate(spark, source).filter(F.col("__action").isin("update", "delete", "insert")) \
        .createOrReplaceTempView(view)
    try:
        on = " AND ".join([*(f"t.{quote_spark(k)} = s.{quote_spark(_MK + k)}" for k in keys),
                           f"t._valid_from = s.{_MK}valid_from"])
        untracked_sets = "".join(f", t.{quote_spark(c)} = s.{quote_spark(c)}" for c in untracked)
        names = [f.name for f in table_schema.fields]
        insert_columns = ", ".join(quote_spark(n) for n in names)
        insert_values = ", ".join(f"s.{quote_spark(n)}" for n in names)
        # sized for the rows that match: 16 bits each keeps false positives near 0.05 %. One filter
        # per key column, none for _valid_from: a key's few versions cost nothing to let through,
        # a filter on it costs a hash of every row of the table (filters follow the ON's order)
        sizing = {"spark.sql.optimizer.runtime.bloomFilter.expectedNumItems": str(max(1, matched)),
                  "spark.sql.optimizer.runtime.bloomFilter.numBits": str(min(1 << 26, max(1 << 16, 16 * matched))),
                  "spark.sql.optimizer.runtimeFilter.number.threshold": str(len(keys))}
        with spark_settings(spark, {**_MERGE_SESSION_CONF, **sizing}):
            spark.sql(f"""
            MERGE INTO {table.spark} AS t
            USING {quote_spark(view)} AS s
            ON {on}
            WHEN MATCHED AND s.__action = 'delete' THEN DELETE
            WHEN MATCHED AND s.__action = 'update' THEN UPDATE SET
                t._valid_to = s._valid_to, t._is_current = s._is_current{untracked_sets}
            WHEN NOT MATCHED AND s.__action = 'insert' THEN INSERT ({insert_columns}) VALUES ({insert_values})
        """)
    finally:
        spark.catalog.dropTempView(view)
