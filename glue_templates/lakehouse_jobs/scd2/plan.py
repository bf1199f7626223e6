"""The common path of a batch, as DataFrame steps: find what changes, and apply the simple changes.

Most records of a batch equal their key's open version; :func:`affected` drops them with one join,
so every later step sees only the records that change something. Of those, a key's single record
later than its open version (or a new key's record) needs no history: :func:`direct` turns it into
the rows to write. Only the rest (several records per key, late records, keys coming back after a
delete) go through ``history``. Nothing here writes; ``apply`` materialises and commits.
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructField

from lakehouse_jobs.scd2 import columns as c
from lakehouse_jobs.scd2.contract import DELETED, Parameters, all_of, row_hash

__all__ = [
    "affected",
    "direct",
    "direct_rows",
    "mark_new_keys",
    "no_position",
    "take_unmatched_as_new",
    "unconfirmed_new_keys_marked",
]


def _deleted_digest() -> Column:
    """The delete marker as a digest: one byte, so it equals no SHA-256 digest (32 bytes)."""
    return F.lit(bytearray(b"\x00"))


def no_position() -> tuple[Column, Column]:
    """The position columns of a row that is not stored yet."""
    return F.lit(None).cast("long").alias(c.FILE_ID), F.lit(None).cast("long").alias(c.POS)


def affected(
    stored: DataFrame,
    records: DataFrame,
    params: Parameters,
    delete_at: datetime | None,
    compare_values: bool,
    positions: bool,
) -> DataFrame:
    """The events that can change the table: all records of keys that have at least one record not
    already equal to the key's open version, plus (snapshot mode) deletes for missing keys.

    A key's records are kept or dropped together: a record equal to the open version still matters
    when the same batch changes the key in between (A→B→A). The kept events get their HASH (hex,
    or the delete marker) and SAME (the record equals the open version it would follow); hashing
    only the kept ones saves most of the hashing when the tracked values can be compared instead
    (see contract.compare_values). ``stored`` is a reads.TableRead's rows; with ``positions``
    the kept events carry their open version's position (CUR_FILE_ID, CUR_POS).
    """
    keys, tracked, untracked = list(params.keys), params.tracked, params.untracked
    deleted = F.col(c.DELETE)
    position = [F.col(c.FILE_ID).alias(c.CUR_FILE_ID), F.col(c.POS).alias(c.CUR_POS)] if positions else []
    current_columns = [
        F.col(c.VALID_FROM).alias(c.CUR_FROM),
        F.col(c.IS_DELETED).alias(c.CUR_DELETED),
        *[F.col(u).alias(c.current(u)) for u in untracked],
        *position,
    ]
    open_versions = stored.filter(F.col(c.IS_CURRENT))
    if compare_values:
        current = open_versions.select(*keys, *current_columns, *[F.col(t).alias(c.current(t)) for t in tracked])
        equal_content = all_of([F.lit(True), *(F.col(t).eqNullSafe(F.col(c.current(t))) for t in tracked)])
        same = F.when(deleted, F.col(c.CUR_DELETED)).otherwise(~F.col(c.CUR_DELETED) & equal_content)
    else:
        # hashes compared as 32-byte digests, not 64-character hex: every record of the batch and
        # every open version crosses the shuffle, and the hash is most of a narrow row
        records = records.withColumn(c.DIGEST, F.when(deleted, _deleted_digest()).otherwise(F.unhex(row_hash(tracked))))
        current = open_versions.select(
            *keys,
            *current_columns,
            F.when(F.col(c.IS_DELETED), _deleted_digest()).otherwise(F.unhex(c.ROW_HASH)).alias(c.CUR_DIGEST),
        )
        same = F.col(c.DIGEST) == F.col(c.CUR_DIGEST)
    same = F.coalesce(F.col(c.CUR_FROM).isNotNull() & same, F.lit(False))
    kept_current = [
        c.CUR_FROM,
        c.CUR_DELETED,
        *(c.current(u) for u in untracked),
        *([c.CUR_FILE_ID, c.CUR_POS] if positions else []),
    ]
    event_columns = [name for name in records.columns if name != c.DIGEST]
    if params.mode == "snapshot":
        joined = records.withColumn(c.PRESENT, F.lit(True)).join(current, keys, "full_outer")
        missing = F.col(c.PRESENT).isNull()
        # a key absent from the snapshot whose open version is not already a tombstone: a delete
        deletes = joined.filter(missing & ~F.col(c.CUR_DELETED)).select(
            *keys,
            *[
                F.lit(None).cast(records.schema[name].dataType).alias(name)
                for name in event_columns
                if name not in (*keys, c.SEQ, c.DELETE, c.SOURCE_FILE, c.LINE)
            ],
            F.lit(delete_at).cast("timestamp").alias(c.SEQ),
            F.lit(None).cast("long").alias(c.LINE),
            F.lit(None).cast("string").alias(c.SOURCE_FILE),
            F.lit(True).alias(c.DELETE),
            *kept_current,
            F.lit(False).alias(c.SAME),
            F.lit(1).alias(c.RECORDS),
        )
        joined = joined.filter(~missing)
    else:
        joined = records.join(current, keys, "left")
        deletes = None
    untracked_equal = [F.col(u).eqNullSafe(F.col(c.current(u))) for u in untracked]
    unchanged = all_of(
        [
            same,
            F.col(c.SEQ) >= F.col(c.CUR_FROM),
            *untracked_equal,
            *([~F.col(c.PROBLEM)] if c.PROBLEM in records.columns else []),
        ]
    )
    by_key = Window.partitionBy(*keys)
    # few DataFrame calls on purpose: each one analyses the whole plan again on the driver
    pending = joined.withColumns(
        {
            c.SAME: same,
            c.CHANGES: F.max(F.when(unchanged, 0).otherwise(1)).over(by_key),
            c.RECORDS: F.count(F.lit(1)).over(by_key),
        }
    ).filter(F.col(c.CHANGES) == 1)
    if deletes is not None:
        pending = pending.select(*event_columns, *kept_current, c.SAME, c.RECORDS).unionByName(deletes)
    # one record, later than the key's open version: its effect needs no history (see direct);
    # one record of a key with no open version may be a new key, see mark_new_keys
    one = F.col(c.RECORDS) == 1
    simple = one & F.col(c.CUR_FROM).isNotNull() & (F.col(c.SEQ) > F.col(c.CUR_FROM))
    # hex, as stored. Where digests were compared, the kept records (a small part of the batch) are
    # hashed a second time instead of turning their digest back into hex: one way for both paths.
    return pending.select(
        *[name for name in event_columns if name != c.DELETE],
        *kept_current,
        c.SAME,
        c.RECORDS,
        F.when(deleted, F.lit(DELETED)).otherwise(row_hash(tracked)).alias(c.HASH),
        simple.alias(c.SIMPLE),
        (one & F.col(c.CUR_FROM).isNull()).alias(c.MAYBE_NEW),
    )


def take_unmatched_as_new(pending: DataFrame) -> DataFrame:
    """Every record of a key without an open version taken as a new key's, and made simple: right
    on an empty table; otherwise to be checked before the commit (see row_delta.read_changed_rows)."""
    return pending.withColumns({c.NEW: F.col(c.MAYBE_NEW), c.SIMPLE: F.col(c.SIMPLE) | F.col(c.MAYBE_NEW)})


def mark_new_keys(stored: DataFrame, pending: DataFrame, keys: tuple[str, ...], broadcast: bool) -> DataFrame:
    """Set NEW on the records of keys the table has no row for, and count them as simple.

    A key without an open version is either new or was hard-deleted earlier; only the latter has a
    history the record must be placed in. Telling them apart reads the stored rows' key columns
    only (a semi-join against the few candidate keys, broadcast when ``broadcast`` says they are
    few enough), instead of rebuilding every new key's history.
    """
    candidates = pending.filter(F.col(c.MAYBE_NEW)).select(*keys)
    if broadcast:
        candidates = F.broadcast(candidates)
    known = (
        stored.select(*keys)
        .join(candidates, list(keys), "left_semi")
        .distinct()
        .select(*keys, F.lit(True).alias(c.KNOWN))
    )
    new = F.col(c.MAYBE_NEW) & F.col(c.KNOWN).isNull()
    return pending.join(known, list(keys), "left").select(
        *[name for name in pending.columns if name != c.SIMPLE],
        new.alias(c.NEW),
        (F.col(c.SIMPLE) | new).alias(c.SIMPLE),
    )


def unconfirmed_new_keys_marked(
    stored: DataFrame, pending: DataFrame, keys: tuple[str, ...], broadcast: bool
) -> DataFrame:
    """``pending`` whose records without an open version were all taken as new keys, with them
    told apart instead (see :func:`mark_new_keys`). Taken as new, such a record was made simple;
    a record of a key with an open version never is one, so the two kinds of simple part again."""
    undone = pending.drop(c.NEW).withColumn(c.SIMPLE, F.col(c.SIMPLE) & ~F.col(c.MAYBE_NEW))
    return mark_new_keys(stored, undone, keys, broadcast)


def direct_rows(soft_delete: bool) -> tuple[Column, Column, Column]:
    """Which simple records (see :func:`direct`) give which rows: (an update of the key's open
    version, an update that closes it, a new version). One definition for :func:`direct`, which
    writes these rows, and the counting in ``apply``, so that counting them needs no job of its own."""
    # a new key (NEW: no row at all) has no open version to compare with or close
    same, new = F.col(c.SAME), F.col(c.NEW)
    deleted = F.col(c.HASH) == F.lit(DELETED)
    # deleting a key the table never had records nothing, not even a tombstone
    return ~new, ~new & ~same, ~same & (~deleted | (F.lit(soft_delete) & ~new))


def direct(simple: DataFrame, params: Parameters, data_fields: list[StructField]) -> DataFrame:
    """Difference rows for keys whose one record is later than their open version, or new keys.

    That is most changed keys of a batch, and for them the history rebuild reduces to: a record
    equal to the open version updates its untracked columns in place; any other closes the open
    version at the record's sequence value and opens a new version (a delete opens a tombstone only
    with ``soft_delete``). Computed with no history read, no sort: the same rows history.diff would
    give, which the property tests check against the reference model. An update row carries the
    open version's position (FILE_ID, POS) when the records do (see :func:`affected`).
    """
    keys, untracked = params.keys, params.untracked
    same = F.col(c.SAME)
    deleted = F.col(c.HASH) == F.lit(DELETED)
    updated, _, opens = direct_rows(params.soft_delete)
    batch_columns = set(params.attributes)
    merge_keys = [*[F.col(k).alias(c.merge_key(k)) for k in keys], F.col(c.CUR_FROM).alias(c.MK_VALID_FROM)]
    # the open row keeps its data; only untracked columns change (to the record's when equal)
    stored = [
        (F.when(same, F.col(f.name)).otherwise(F.col(c.current(f.name))) if f.name in untracked else F.lit(None))
        .cast(f.dataType)
        .alias(f.name)
        for f in data_fields
    ]
    no_lineage = [
        F.lit(None).cast("string").alias(c.ROW_HASH),
        F.lit(None).cast("string").alias(c.BATCH_ID),
        F.lit(None).cast("string").alias(c.SOURCE_FILE),
        F.lit(None).cast("timestamp").alias(c.LOADED_AT),
    ]
    known = c.CUR_POS in simple.columns
    position = [
        (F.col(current) if known else F.lit(None)).cast("long").alias(name)
        for current, name in ((c.CUR_FILE_ID, c.FILE_ID), (c.CUR_POS, c.POS))
    ]
    updates = simple.filter(updated).select(
        *merge_keys,
        F.lit("update").alias(c.ACTION),
        *keys,
        *stored,
        F.col(c.CUR_FROM).alias(c.VALID_FROM),
        F.when(~same, F.col(c.SEQ)).cast("timestamp").alias(c.VALID_TO),
        same.alias(c.IS_CURRENT),
        F.col(c.CUR_DELETED).alias(c.IS_DELETED),
        *no_lineage,
        (~same).alias(c.CLOSED),
        *position,
    )
    opened = simple.filter(opens).select(
        *[F.lit(None).cast(simple.schema[k].dataType).alias(c.merge_key(k)) for k in keys],
        F.lit(None).cast("timestamp").alias(c.MK_VALID_FROM),
        F.lit("insert").alias(c.ACTION),
        *keys,
        *[
            (F.col(f.name) if f.name in batch_columns else F.lit(None)).cast(f.dataType).alias(f.name)
            for f in data_fields
        ],
        F.col(c.SEQ).alias(c.VALID_FROM),
        F.lit(None).cast("timestamp").alias(c.VALID_TO),
        F.lit(True).alias(c.IS_CURRENT),
        deleted.alias(c.IS_DELETED),
        F.when(~deleted, F.col(c.HASH)).alias(c.ROW_HASH),
        F.lit(params.batch_id).alias(c.BATCH_ID),
        F.col(c.SOURCE_FILE),
        F.lit(params.loaded_at).cast("timestamp").alias(c.LOADED_AT),
        F.lit(False).alias(c.CLOSED),
        *no_position(),
    )
    return updates.unionByName(opened)
