"""One batch against one table: read it at one snapshot, compute the difference, commit it once.

The table must still be at the snapshot read when the commit starts, and there are as few Spark
jobs as the plan allows, because on small batches their fixed cost is most of the time: records
are counted while they are materialised, and keys without an open version are taken as new where
checking them would cost a scan of its own (see :meth:`BatchRun.apply`). :class:`BatchRun` holds
what one batch knows, so the steps need not pass it around.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from lakehouse_jobs.identifiers import TableName
from lakehouse_jobs.job import spark_settings
from lakehouse_jobs.scd2 import columns as c
from lakehouse_jobs.scd2 import contract, history, jvm, merge, plan, reads, row_delta
from lakehouse_jobs.scd2.contract import Parameters, Scd2Error, Scd2Result
from lakehouse_jobs.scd2.events import Events

__all__ = ["ROWS_PER_SHUFFLE_PARTITION", "BatchRun"]

log = logging.getLogger("lakehouse_jobs.scd2")

ROWS_PER_SHUFFLE_PARTITION = 250_000


@contextmanager
def _shuffle_partitions(spark: SparkSession, rows: int) -> Iterator[int]:
    """Size shuffles to the work for the duration of one batch, then restore the session's value.

    Every shuffle stage costs a task per partition; a small batch spread over the session's default
    (sized for big jobs) pays that overhead several times per stage for nothing. Never more than the
    session's own setting, never fewer than one partition.
    """
    configured = int(spark.conf.get("spark.sql.shuffle.partitions", "200") or "200")
    wanted = max(1, min(configured, -(-rows // ROWS_PER_SHUFFLE_PARTITION)))
    with spark_settings(spark, {"spark.sql.shuffle.partitions": str(wanted)}):
        yield wanted


@dataclass(frozen=True)
class _Tally:
    """What the records a batch keeps will do, counted while they are materialised."""

    direct_updates: int  # simple records that update their key's open version ...
    direct_closes: int  # ... of which close it
    direct_inserts: int  # simple records that open a version
    complex: int  # records whose key's history must be rebuilt
    problems: int  # cdc mode: bad records
    maybe_new: int  # records of keys without an open version


@dataclass(frozen=True)
class _Difference:
    """The rows to write (``source``: ACTION insert / update / delete) and how many of each."""

    source: DataFrame
    inserted: int
    updated: int  # update rows: closes and in-place changes
    closed: int
    replaced: int
    rebuilt_history: bool  # some rows come from history.diff (and may be closed history)

    @property
    def matched(self) -> int:
        """Stored rows the commit changes."""
        return self.updated + self.replaced

    @property
    def committed(self) -> bool:
        return bool(self.inserted or self.matched)


@dataclass
class BatchRun:
    """One batch against one table; :meth:`apply` is the whole of it after the checks."""

    spark: SparkSession
    table: TableName
    params: Parameters
    events: Events
    table_schema: StructType
    read_snapshot: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.read_snapshot = jvm.current_snapshot_id(self.spark, self.table)

    @cached_property
    def data_fields(self) -> list[StructField]:
        """The table's data columns other than the keys."""
        return [f for f in self.table_schema.fields if f.name not in c.SYSTEM_NAMES and f.name not in self.params.keys]

    @cached_property
    def row_delta(self) -> bool:
        """Whether this batch commits as a row delta (else MERGE), said in the log when not."""
        unsupported = row_delta.unsupported_reason(self.spark, self.table)
        if unsupported is not None:  # a runtime without an API is worth a warning; a layout is a choice
            log.log(
                logging.WARNING if unsupported.by_runtime else logging.INFO,
                "scd2: %s is committed with MERGE, not a row delta: %s",
                self.table,
                unsupported.reason,
            )
        return unsupported is None

    def apply(self) -> Scd2Result:
        """Read at one snapshot, compute the difference, commit it if there is one.

        Records of keys without an open version are new keys, or keys hard-deleted earlier (see
        plan.mark_new_keys). On an empty table all are new. When the table is read whole, before a
        row delta they are taken as new, and the commit's own read of the table checks that none is
        there, which saves a scan of the table and a job; if one is, they are told apart and the
        difference is computed again. A slice (reads.read_for_batch) is cheap to read twice, so
        there they are told apart at once.
        """
        spark, params, events = self.spark, self.params, self.events
        table_rows = jvm.total_records(spark, self.table) if self.read_snapshot is not None else 0
        sliced = reads.reads_slice(self.read_snapshot, params.mode, events.rows_in, table_rows)
        with _shuffle_partitions(spark, events.rows_in * 2 if sliced else events.rows_in + table_rows):
            read = reads.read_for_batch(
                spark, self.table, self.read_snapshot, events.frame, params.keys, events.rows_in, sliced
            )
            compare_values = contract.compare_values(events.frame.schema, self.table_schema, params.tracked)
            pending = plan.affected(
                read.rows, events.frame, params, events.delete_at, compare_values, positions=self.row_delta
            )
            unconfirmed = self.read_snapshot is not None and self.row_delta and not read.sliced
            if self.read_snapshot is None or unconfirmed:
                pending = plan.take_unmatched_as_new(pending)
            else:
                pending = plan.mark_new_keys(
                    read.rows,
                    pending.localCheckpoint(eager=True),
                    params.keys,
                    broadcast=events.rows_in <= reads.BROADCAST_ROWS,
                )
            pending, tally = self._materialise(pending)
            if unconfirmed and tally.maybe_new > reads.BROADCAST_ROWS:  # too many to check by broadcast
                pending, tally = self._told_apart(read, pending, broadcast=False)
                unconfirmed = False
            difference = self._difference(read, pending, tally)
            changed_rows: DataFrame | None = None
            if self.row_delta and (difference.matched or (unconfirmed and tally.maybe_new)):
                new_keys = (
                    pending.filter(F.col(c.MAYBE_NEW)).select(*params.keys) if unconfirmed and tally.maybe_new else None
                )
                changed_rows, found, known = self._changed_rows(read, difference, new_keys)
                if known:  # a key taken as new has rows after all: told apart, and computed again
                    pending, tally = self._told_apart(read, pending, broadcast=tally.maybe_new <= reads.BROADCAST_ROWS)
                    difference = self._difference(read, pending, tally)
                    changed_rows, found = None, 0
                    if difference.matched:
                        changed_rows, found, _ = self._changed_rows(read, difference, None)
                if changed_rows is not None and found != difference.matched:
                    changed_rows = None  # a file id is a hash: two files with one id match too many rows
            if difference.committed:
                self._commit(difference, changed_rows)
        return Scd2Result(
            events.rows_in,
            difference.inserted,
            difference.closed,
            difference.updated - difference.closed,
            difference.replaced,
            difference.committed,
            jvm.current_snapshot_id(spark, self.table),
        )

    def _materialise(self, pending: DataFrame) -> tuple[DataFrame, _Tally]:
        """``pending`` checkpointed, counted in the same job (an observation, no job of its own):
        what the direct difference will write, how many records need their key's history, how many
        are bad (cdc mode, before anything else) and how many have no open version."""
        tally = Observation()  # unnamed: a unique name, so concurrent runs in one session never mix
        simple = F.col(c.SIMPLE)
        updated, closes, opens = plan.direct_rows(self.params.soft_delete)
        pending = pending.observe(
            tally,
            F.count_if(simple & updated).alias("update"),
            F.count_if(simple & closes).alias("closed"),
            F.count_if(simple & opens).alias("insert"),
            F.count_if(~simple).alias("complex"),
            F.count_if(F.col(c.PROBLEM) if self.events.checked_later else F.lit(False)).alias("problem"),
            F.count_if(F.col(c.MAYBE_NEW)).alias("maybe_new"),
        ).localCheckpoint(eager=True)
        seen = tally.get
        return pending, _Tally(
            int(seen["update"]),
            int(seen["closed"]),
            int(seen["insert"]),
            int(seen["complex"]),
            int(seen["problem"]),
            int(seen["maybe_new"]),
        )

    def _told_apart(self, read: reads.TableRead, pending: DataFrame, broadcast: bool) -> tuple[DataFrame, _Tally]:
        """``pending`` with its records taken as new told apart from returning keys, materialised."""
        return self._materialise(plan.unconfirmed_new_keys_marked(read.rows, pending, self.params.keys, broadcast))

    def _difference(self, read: reads.TableRead, pending: DataFrame, tally: _Tally) -> _Difference:
        """The rows to write. Bad records (cdc) and same-sequence conflicts are refused here, before
        anything is written. Only when some keys need their history is any history read."""
        params = self.params
        direct = plan.direct(pending.filter(F.col(c.SIMPLE)), params, self.data_fields).withColumn(
            c.LINE_NUMBER, F.lit(None).cast("long")
        )
        if tally.problems:
            assert self.events.raise_for_first_problem is not None
            self.events.raise_for_first_problem()
        if not tally.complex:
            return _Difference(direct, tally.direct_inserts, tally.direct_updates, tally.direct_closes, 0, False)
        events = [*params.keys, *params.attributes, c.SEQ, c.LINE, c.SOURCE_FILE, c.HASH]
        runs, conflicts = history.rebuild(
            read.rows,
            pending.filter(~F.col(c.SIMPLE)).select(*events),
            params,
            self.table_schema,
            positions=self.row_delta,
        )
        conflict_rows = conflicts.select(
            *[F.col(k).alias(c.merge_key(k)) for k in params.keys],
            F.col(c.SEQ).alias(c.MK_VALID_FROM),
            F.when(F.col(c.WITH_TABLE), F.lit("conflict_table")).otherwise(F.lit("conflict")).alias(c.ACTION),
            *params.keys,
            *[F.lit(None).cast(f.dataType).alias(f.name) for f in self.data_fields],
            *[
                (
                    F.col(c.SEQ)
                    if f.name == c.VALID_FROM
                    else F.col(c.SOURCE_FILE)
                    if f.name == c.SOURCE_FILE
                    else F.lit(None).cast(f.dataType)
                ).alias(f.name)
                for f in c.SYSTEM_COLUMNS
            ],
            F.lit(False).alias(c.CLOSED),
            F.col(c.LINE).alias(c.LINE_NUMBER),
            *plan.no_position(),
        )
        source = (
            history.diff(runs, params, self.data_fields)
            .withColumn(c.LINE_NUMBER, F.lit(None).cast("long"))
            .unionByName(direct)
            .unionByName(conflict_rows)
            .localCheckpoint(eager=True)
        )
        counts = {
            r[c.ACTION]: (int(r["n"]), int(r["closed"] or 0))
            for r in source.groupBy(c.ACTION)
            .agg(F.count(F.lit(1)).alias("n"), F.sum(F.col(c.CLOSED).cast("int")).alias("closed"))
            .collect()
        }
        if "conflict" in counts or "conflict_table" in counts:
            found = source.filter(F.col(c.ACTION).startswith("conflict")).limit(1).collect()
            bad = found[0].asDict()
            if bad[c.ACTION] == "conflict":
                raise Scd2Error(
                    f"two records with the same key and the same {params.sequence_by} {bad[c.VALID_FROM]} "
                    f"but different content, at {contract.describe(bad, params.keys)}"
                )
            raise Scd2Error(
                f"{self.table} already has a version from {bad[c.VALID_FROM]} with different content than "
                f"{contract.describe(bad, params.keys)}: same key and sequence value, different content"
            )
        updated, closed = counts.get("update", (0, 0))
        return _Difference(
            source, counts.get("insert", (0, 0))[0], updated, closed, counts.get("delete", (0, 0))[0], True
        )

    def _changed_rows(
        self, read: reads.TableRead, difference: _Difference, new_keys: DataFrame | None
    ) -> tuple[DataFrame | None, int, int]:
        return row_delta.read_changed_rows(
            read.rows,
            difference.source,
            self.params.keys,
            self.params.untracked,
            difference.matched,
            new_keys,
            reads.BROADCAST_ROWS,
            only_open=not difference.rebuilt_history and new_keys is None,
        )

    def _commit(self, difference: _Difference, changed_rows: DataFrame | None) -> None:
        """The single commit, if the table is still at the snapshot the batch was computed from."""
        spark, table = self.spark, self.table
        now = jvm.current_snapshot_id(spark, table)
        if now != self.read_snapshot:
            raise Scd2Error(
                f"{table} changed while this batch was computed (snapshot {self.read_snapshot} → {now}): "
                f"another run committed; re-run this batch, it will apply only what is left"
            )
        spark.sql(f"REFRESH TABLE {table.spark}")
        if self.row_delta and (changed_rows is not None or not difference.matched):
            row_delta.commit(
                spark,
                table,
                self.read_snapshot,
                difference.source,
                self.table_schema,
                changed_rows,
                rows_written=difference.inserted + difference.updated,
                rows_deleted=difference.matched,
            )
        else:
            merge.commit(
                spark,
                table,
                difference.source,
                self.params.keys,
                self.table_schema,
                self.params.untracked,
                difference.matched,
            )
