"""Keys that need their history: several records in one batch, late records, keys coming back.

The definition the contract follows, taken literally: a key's history is its events in sequence
order with consecutive equal events collapsed. :func:`rebuild` turns the key's stored rows back
into events (a version is an event at its ``_valid_from``; a version closed with nothing after it
is also a delete at its ``_valid_to``), adds the batch's, and numbers the runs of equal events;
:func:`diff` turns the runs back into versions and compares them with the rows they came from.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from lakehouse_jobs.scd2 import columns as c
from lakehouse_jobs.scd2.contract import DELETED, Parameters, any_of
from lakehouse_jobs.scd2.plan import no_position

__all__ = ["diff", "rebuild"]

_OLD_ROW = (c.OLD_FROM, c.OLD_FILE_ID, c.OLD_POS)  # a stored row: its _valid_from and position


def rebuild(
    stored: DataFrame, pending: DataFrame, params: Parameters, table_schema: StructType, positions: bool
) -> tuple[DataFrame, DataFrame]:
    """The affected keys' stored rows turned back into events and merged with the batch's.

    Events are ordered by sequence value, then the table's own event first (a re-applied record
    changes nothing), then the latest file and its latest line first. At one sequence value only the first event
    counts; a later one with other content is a conflict: with the stored history always, between
    two records of the batch only when ``sequence_by`` orders them (without it, the file's last
    line is the key's state at load time). Returns (events with RUN numbers, conflicts). With
    ``positions`` the stored rows' events carry their positions (OLD_FILE_ID, OLD_POS).
    """
    keys = list(params.keys)
    data_fields = [f for f in table_schema.fields if f.name not in c.SYSTEM_NAMES and f.name not in keys]
    data_names = [f.name for f in data_fields]
    affected_keys = pending.select(*keys).distinct()
    position = (
        [F.col(c.FILE_ID).alias(c.OLD_FILE_ID), F.col(c.POS).alias(c.OLD_POS)]
        if positions
        else [F.lit(None).cast("long").alias(c.OLD_FILE_ID), F.lit(None).cast("long").alias(c.OLD_POS)]
    )
    history = stored.select(*keys, *data_names, *(name for name in c.SYSTEM_NAMES), *position).join(
        affected_keys, keys, "left_semi"
    )
    successor = Window.partitionBy(*keys).orderBy(c.VALID_FROM)
    history = history.withColumn(c.NEXT_FROM, F.lead(c.VALID_FROM).over(successor))
    no_old = (
        F.lit(None).cast("timestamp").alias(c.OLD_FROM),
        F.lit(None).cast("timestamp").alias(c.OLD_TO),
        F.lit(None).cast("boolean").alias(c.OLD_CURRENT),
        F.lit(None).cast("long").alias(c.OLD_FILE_ID),
        F.lit(None).cast("long").alias(c.OLD_POS),
    )
    old_events = history.select(
        *keys,
        *data_names,
        F.col(c.VALID_FROM).alias(c.SEQ),
        F.when(F.col(c.IS_DELETED), F.lit(DELETED)).otherwise(F.col(c.ROW_HASH)).alias(c.HASH),
        F.lit(0).alias(c.PRIO),
        F.lit(None).cast("long").alias(c.LINE),
        F.col(c.VALID_FROM).alias(c.OLD_FROM),
        F.col(c.VALID_TO).alias(c.OLD_TO),
        F.col(c.IS_CURRENT).alias(c.OLD_CURRENT),
        c.OLD_FILE_ID,
        c.OLD_POS,
        c.BATCH_ID,
        c.SOURCE_FILE,
        c.LOADED_AT,
    )
    # a version closed with nothing starting at its end was hard-deleted there: a delete event
    ends_alone = F.col(c.VALID_TO).isNotNull() & (
        F.col(c.NEXT_FROM).isNull() | (F.col(c.NEXT_FROM) != F.col(c.VALID_TO))
    )
    gaps = history.filter(ends_alone).select(
        *keys,
        *[F.lit(None).cast(f.dataType).alias(f.name) for f in data_fields],
        F.col(c.VALID_TO).alias(c.SEQ),
        F.lit(DELETED).alias(c.HASH),
        F.lit(0).alias(c.PRIO),
        F.lit(None).cast("long").alias(c.LINE),
        *no_old,
        F.lit(None).cast("string").alias(c.BATCH_ID),
        F.lit(None).cast("string").alias(c.SOURCE_FILE),
        F.lit(None).cast("timestamp").alias(c.LOADED_AT),
    )
    batch_columns = set(params.attributes)
    new_events = pending.select(
        *keys,
        *[
            (F.col(f.name) if f.name in batch_columns else F.lit(None)).cast(f.dataType).alias(f.name)
            for f in data_fields
        ],
        c.SEQ,
        c.HASH,
        F.lit(1).alias(c.PRIO),
        F.col(c.LINE),
        *no_old,
        F.lit(params.batch_id).alias(c.BATCH_ID),
        F.col(c.SOURCE_FILE),
        F.lit(params.loaded_at).cast("timestamp").alias(c.LOADED_AT),
    )
    events = old_events.unionByName(gaps).unionByName(new_events)
    # at one sequence value: the table's event, then the batch's latest file (files of a micro-batch
    # with the same event time: the name sorting last), then that file's latest line
    order = Window.partitionBy(*keys).orderBy(
        c.SEQ, c.PRIO, F.col(c.SOURCE_FILE).desc_nulls_last(), F.col(c.LINE).desc_nulls_last()
    )
    events = events.withColumns(
        {
            c.PREV_SEQ: F.lag(c.SEQ).over(order),
            c.PREV_HASH: F.lag(c.HASH).over(order),
            c.PREV_PRIO: F.lag(c.PRIO).over(order),
        }
    )
    same_seq = F.col(c.PREV_SEQ).eqNullSafe(F.col(c.SEQ))
    differs = same_seq & ~F.col(c.PREV_HASH).eqNullSafe(F.col(c.HASH))
    with_table = F.col(c.PREV_PRIO) == 0
    # materialised once: the conflicts and the runs below both read it (Spark would otherwise
    # recompute the history join and this sort for each of the difference's branches)
    events = events.withColumns(
        {
            c.DUP: same_seq,
            c.CONFLICT: differs & (with_table | F.lit(params.sequence_by is not None)),
            c.WITH_TABLE: with_table,
        }
    ).localCheckpoint(eager=True)
    conflicts = events.filter(F.col(c.CONFLICT)).select(*keys, c.SEQ, c.LINE, c.SOURCE_FILE, c.WITH_TABLE)
    kept = events.filter(~F.col(c.DUP))
    # the sequence values left are distinct per key, so this running sum numbers the runs
    starts = F.when(
        F.lag(c.HASH).over(Window.partitionBy(*keys).orderBy(c.SEQ)).eqNullSafe(F.col(c.HASH)), 0
    ).otherwise(1)
    running = Window.partitionBy(*keys).orderBy(c.SEQ).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    runs = (
        kept.drop(c.PREV_SEQ, c.PREV_HASH, c.PREV_PRIO, c.DUP, c.CONFLICT, c.WITH_TABLE)
        .withColumn(c.STARTS, starts)
        .withColumn(c.RUN, F.sum(c.STARTS).over(running))
    )
    return runs, conflicts


def diff(events: DataFrame, params: Parameters, data_fields: list[StructField]) -> DataFrame:
    """Collapsed runs → versions, compared with the rows they came from: difference rows (ACTION
    insert, update or delete), in the same shape as plan.direct's."""
    keys, untracked = list(params.keys), params.untracked
    first_fields = [f.name for f in data_fields if f.name not in untracked]
    runs = events.groupBy(*keys, c.RUN).agg(
        F.min(c.SEQ).alias(c.VALID_FROM),
        F.min_by(
            F.struct(
                *first_fields,
                c.HASH,
                c.OLD_FROM,
                c.OLD_TO,
                c.OLD_CURRENT,
                c.OLD_FILE_ID,
                c.OLD_POS,
                c.BATCH_ID,
                c.SOURCE_FILE,
                c.LOADED_AT,
            ),
            F.col(c.SEQ),
        ).alias(c.FIRST),
        F.max_by(F.struct(*[F.col(u) for u in untracked], F.lit(0).alias(c.PAD)), F.col(c.SEQ)).alias(c.LAST),
        F.min_by(F.struct(*[F.col(u) for u in untracked], F.lit(0).alias(c.PAD)), F.col(c.SEQ)).alias(
            c.FIRST_UNTRACKED
        ),
    )
    successor = Window.partitionBy(*keys).orderBy(c.RUN)
    # materialised: the inserts, updates and replaced rows below are three readers of it
    runs = runs.withColumns(
        {c.VALID_TO: F.lead(c.VALID_FROM).over(successor), c.IS_CURRENT: F.lead(c.VALID_FROM).over(successor).isNull()}
    ).localCheckpoint(eager=True)

    def first(name: str) -> str:
        return f"{c.FIRST}.{name}"

    deleted = F.col(first(c.HASH)) == F.lit(DELETED)
    old = F.col(first(c.OLD_FROM)).isNotNull()
    # a delete run becomes a tombstone when soft_delete asks (or one is already stored); never as
    # a key's first run: deleting a key the table never had records nothing
    keep = ~deleted | ((F.col(c.RUN) > 1) & (F.lit(params.soft_delete) | old))
    versions = runs.filter(keep)
    data_values = [
        F.col(first(f.name)).alias(f.name) if f.name not in untracked else F.col(f"{c.LAST}.{f.name}").alias(f.name)
        for f in data_fields
    ]
    inserts = versions.filter(~old).select(
        *[F.lit(None).cast(events.schema[k].dataType).alias(c.merge_key(k)) for k in keys],
        F.lit(None).cast("timestamp").alias(c.MK_VALID_FROM),
        F.lit("insert").alias(c.ACTION),
        *keys,
        *data_values,
        c.VALID_FROM,
        c.VALID_TO,
        c.IS_CURRENT,
        deleted.alias(c.IS_DELETED),
        F.when(~deleted, F.col(first(c.HASH))).alias(c.ROW_HASH),
        F.col(first(c.BATCH_ID)).alias(c.BATCH_ID),
        F.col(first(c.SOURCE_FILE)).alias(c.SOURCE_FILE),
        F.col(first(c.LOADED_AT)).alias(c.LOADED_AT),
        F.lit(False).alias(c.CLOSED),
        *no_position(),
    )
    changed_untracked = [~F.col(f"{c.LAST}.{u}").eqNullSafe(F.col(f"{c.FIRST_UNTRACKED}.{u}")) for u in untracked]
    differs = any_of(
        [
            ~F.col(c.VALID_TO).eqNullSafe(F.col(first(c.OLD_TO))),
            F.col(c.IS_CURRENT) != F.col(first(c.OLD_CURRENT)),
            *changed_untracked,
        ]
    )
    updates = versions.filter(old & differs).select(
        *[F.col(k).alias(c.merge_key(k)) for k in keys],
        F.col(c.VALID_FROM).alias(c.MK_VALID_FROM),
        F.lit("update").alias(c.ACTION),
        *keys,
        *data_values,
        c.VALID_FROM,
        c.VALID_TO,
        c.IS_CURRENT,
        deleted.alias(c.IS_DELETED),
        F.lit(None).cast("string").alias(c.ROW_HASH),
        F.lit(None).cast("string").alias(c.BATCH_ID),
        F.lit(None).cast("string").alias(c.SOURCE_FILE),
        F.lit(None).cast("timestamp").alias(c.LOADED_AT),
        (F.col(first(c.OLD_CURRENT)) & ~F.col(c.IS_CURRENT)).alias(c.CLOSED),
        F.col(first(c.OLD_FILE_ID)).alias(c.FILE_ID),
        F.col(first(c.OLD_POS)).alias(c.POS),
    )
    # a stored row whose event is no longer a run's first (a late record now starts its version),
    # or a stored tombstone that is now a key's first run, is replaced
    dropped_runs = runs.filter(~keep & old).select(*keys, *[F.col(first(name)).alias(name) for name in _OLD_ROW])
    swallowed = events.filter(F.col(c.OLD_FROM).isNotNull() & (F.col(c.STARTS) == 0)).select(*keys, *_OLD_ROW)
    deletes = dropped_runs.unionByName(swallowed).select(
        *[F.col(k).alias(c.merge_key(k)) for k in keys],
        F.col(c.OLD_FROM).alias(c.MK_VALID_FROM),
        F.lit("delete").alias(c.ACTION),
        *keys,
        *[F.lit(None).cast(f.dataType).alias(f.name) for f in data_fields],
        *[F.lit(None).cast(f.dataType).alias(f.name) for f in c.SYSTEM_COLUMNS],
        F.lit(False).alias(c.CLOSED),
        F.col(c.OLD_FILE_ID).alias(c.FILE_ID),
        F.col(c.OLD_POS).alias(c.POS),
    )
    return inserts.unionByName(updates).unionByName(deletes)
