"""A raw batch turned into events: keys, attributes, sequence value, line, delete flag.

Bad records (NULL key, unparsable sequence value, an op value the mapping does not know) must fail
the batch naming the record, but reading the whole batch once just to check it costs a Spark job.
In ``cdc`` mode the check rides along instead: each event carries a problem flag that the plan
counts with the difference, before anything is written (see :class:`Events`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lakehouse_jobs.scd2.columns import DELETE, INGESTED_AT, LINE, LINE_NUMBER, OP, OP_VALUE, PROBLEM, SEQ, SOURCE_FILE
from lakehouse_jobs.scd2.contract import Parameters, Scd2Error, any_of, describe, sequence_column

__all__ = ["Events", "prepare"]


@dataclass(frozen=True)
class Events:
    """The batch as events, and what is known of it before the plan runs."""

    frame: DataFrame  # keys, attributes, SEQ, LINE, _source_file, DELETE (and PROBLEM in cdc mode)
    rows_in: int  # records in the batch
    delete_at: datetime | None  # snapshot mode: the batch's latest sequence value, when missing keys are deleted
    raise_for_first_problem: Callable[[], None] | None  # cdc mode: raises Scd2Error naming the first bad record

    @property
    def checked_later(self) -> bool:
        """Whether bad records are flagged (PROBLEM) rather than already refused."""
        return self.raise_for_first_problem is not None


def _first(frame: DataFrame, condition: Column) -> dict[str, Any] | None:
    found = frame.filter(condition).limit(1).collect()
    return found[0].asDict() if found else None


def prepare(batch: DataFrame, params: Parameters) -> Events:
    """Batch → events. Records are not collapsed here (the history rebuild orders them with the
    stored history in one sort, which also finds two different records at one sequence value), nor
    hashed (the plan hashes only the records it keeps).

    In ``snapshot`` mode one Spark job checks and counts first, because the batch's latest sequence
    value is the time of its deletes. In ``cdc`` mode the count comes from the files' metadata and
    the events carry PROBLEM instead (never dropped as unchanged, see plan.affected).
    """
    keys = params.keys
    columns = set(batch.columns)
    line = F.col(LINE_NUMBER).cast("long") if LINE_NUMBER in columns else F.lit(None).cast("long")
    source = F.col(SOURCE_FILE).cast("string") if SOURCE_FILE in columns else F.lit(None).cast("string")
    sequence_name = params.sequence_by or INGESTED_AT
    sequence = sequence_column(batch.schema, sequence_name)
    op_value = F.col(params.op_column).cast("string") if params.op_column else F.lit("U")
    mapping = (
        F.create_map(*[F.lit(x) for pair in params.op_mapping.items() for x in pair]) if params.op_column else None
    )
    op = mapping[op_value] if mapping is not None else F.lit("U")
    named = batch.select(
        *keys,
        *params.attributes,
        sequence.alias(SEQ),
        line.alias(LINE_NUMBER),
        source.alias(SOURCE_FILE),
        op_value.alias(OP_VALUE),
        op.alias(OP),
    )
    problem = any_of([*(F.col(k).isNull() for k in keys), F.col(SEQ).isNull(), F.col(OP).isNull()])

    def raise_for_first_problem() -> None:
        bad = _first(named, problem)
        assert bad is not None, "a record was counted as bad but none is"
        nulls = [k for k in keys if bad[k] is None]
        if nulls:
            raise Scd2Error(f"NULL in key column(s) {nulls} at {describe(bad, keys)}")
        if bad[SEQ] is None:
            raise Scd2Error(f"sequence_by {sequence_name!r} is NULL or not a timestamp at {describe(bad, keys)}")
        raise Scd2Error(
            f"op_column {params.op_column!r} has value {bad[OP_VALUE]!r} at {describe(bad, keys)}, "
            f"which op_mapping {params.op_mapping} does not map to I, U or D"
        )

    deferred: Callable[[], None] | None = None
    latest: datetime | None = None
    if params.mode == "snapshot":
        stats = named.agg(
            F.count(F.lit(1)).alias("n"), F.max(SEQ).alias("latest"), F.sum(problem.cast("int")).alias("problems")
        ).first()
        if stats is not None and stats["problems"]:
            raise_for_first_problem()
        rows_in = int(stats["n"]) if stats is not None else 0
        latest = stats["latest"] if stats is not None else None
    else:
        rows_in = named.count()  # parquet answers it from the file footers
        deferred = raise_for_first_problem
    # a delete carries only its key: the tombstone it may open has no attribute values
    is_delete = F.col(OP) == F.lit("D")
    events = named.select(
        *keys,
        *[F.when(~is_delete, F.col(c)).alias(c) for c in params.attributes],
        SEQ,
        F.col(LINE_NUMBER).alias(LINE),
        SOURCE_FILE,
        is_delete.alias(DELETE),
        *([problem.alias(PROBLEM)] if deferred is not None else []),
    )
    return Events(events, rows_in, latest, deferred)
