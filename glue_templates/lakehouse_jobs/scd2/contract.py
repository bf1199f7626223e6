"""The SCD2 contract's checks and its hash: what a batch must be, and what makes two records equal.

Everything here is decided before Spark reads a row: parameters are checked and resolved into
:class:`Parameters` (which columns are keys, tracked, untracked), and ``row_hash`` is the one
definition of a version's content that the plan, the reference model and stored tables share. The
rules themselves are docs/scd2.md.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from typing import Any

from pyspark.sql import Column
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
    StructType,
    TimestampType,
)

from lakehouse_jobs.identifiers import validate_identifier
from lakehouse_jobs.scd2.columns import INGESTED_AT, LINE_NUMBER, SOURCE_FILE, SYSTEM_NAMES

__all__ = [
    "DEFAULT_OP_MAPPING",
    "DELETED",
    "MODES",
    "Parameters",
    "Scd2Error",
    "Scd2Result",
    "all_of",
    "any_of",
    "compare_values",
    "describe",
    "resolve_parameters",
    "row_hash",
    "sequence_column",
    "widens",
]

MODES = ("cdc", "snapshot")
DELETED = "deleted"  # the event "hash" of a delete; not a hex digest, so it equals no row hash
DEFAULT_OP_MAPPING: dict[str, str] = {"I": "I", "U": "U", "D": "D"}


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
    committed: bool  # False when the batch changed nothing: no commit, no snapshot
    snapshot_id: int | None  # the table's current snapshot after the batch


@dataclass(frozen=True)
class Parameters:
    """A batch's parameters, checked and resolved against its columns."""

    keys: tuple[str, ...]
    attributes: tuple[str, ...]  # the batch's data columns that are not keys (nor the op column)
    tracked: tuple[str, ...]  # attributes whose change opens a version
    untracked: tuple[str, ...]  # attributes updated in place (SCD1); never sequence_by
    sequence_by: str | None
    mode: str
    op_column: str | None
    op_mapping: dict[str, str]
    soft_delete: bool
    batch_id: str
    loaded_at: datetime


def resolve_parameters(
    columns: Sequence[str],
    keys: Sequence[str],
    sequence_by: str | None,
    batch_id: str,
    track_columns: Sequence[str] | None,
    track_except: Sequence[str] | None,
    loaded_at: datetime,
    mode: str,
    op_column: str | None,
    op_mapping: dict[str, str] | None,
    soft_delete: bool,
) -> Parameters:
    """Check the parameters against the batch's ``columns``; raises Scd2Error naming what is wrong.

    Columns starting with ``_`` are lineage, never data. The sequence column dates versions and
    differs on every record by nature, so it is never tracked (nor updated in place).
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
    for name in (*keys, *(track_columns or ()), *(track_except or ()), *([op_column] if op_column else [])):
        validate_identifier(name, "column")
    missing = [
        c
        for c in (
            *keys,
            *(track_columns or ()),
            *([sequence_by] if sequence_by else []),
            *([op_column] if op_column else []),
        )
        if c not in columns
    ]
    if missing:
        raise Scd2Error(f"columns {missing} are not in the batch (it has {list(columns)})")
    if sequence_by is None and INGESTED_AT not in columns:
        raise Scd2Error(f"no sequence_by given and the batch has no {INGESTED_AT} column")
    attributes = [c for c in columns if not c.startswith("_") and c not in keys and c != op_column]
    for name in attributes:
        validate_identifier(name, "column")
    overlap = [c for c in (track_columns or ()) if c in keys]
    if overlap:
        raise Scd2Error(f"track_columns {overlap} are keys; keys identify a version, they are not tracked")
    tracked = (
        list(track_columns)
        if track_columns
        else [c for c in attributes if c not in (track_except or ()) and c != sequence_by]
    )
    untracked = [c for c in attributes if c not in tracked and c != sequence_by]
    return Parameters(
        tuple(keys),
        tuple(attributes),
        tuple(tracked),
        tuple(untracked),
        sequence_by,
        mode,
        op_column,
        mapping,
        soft_delete,
        batch_id,
        loaded_at,
    )


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
        parts.append(
            F.when(text.isNotNull(), F.concat(F.lit(f"{name}="), F.length(text).cast("string"), F.lit(":"), text))
        )
    return F.sha2(F.concat_ws("\u001f", *parts), 256) if parts else F.sha2(F.lit(""), 256)


def all_of(conditions: Iterable[Column]) -> Column:
    return reduce(operator.and_, conditions)


def any_of(conditions: Iterable[Column]) -> Column:
    return reduce(operator.or_, conditions)


def describe(row: dict[str, Any], keys: Sequence[str]) -> str:
    """A record named the way a user finds it: file and line when known, plus its key."""
    where = f"{row.get(SOURCE_FILE)} line {row.get(LINE_NUMBER)}" if row.get(LINE_NUMBER) is not None else "the batch"
    return f"{where} (key {', '.join(f'{k}={row.get(k)!r}' for k in keys)})"


def sequence_column(batch: StructType, sequence_by: str) -> Column:
    """The sequence as a timestamp: it becomes ``_valid_from``, so it must be a point in time."""
    data_type = batch[sequence_by].dataType
    if isinstance(data_type, TimestampType):
        return F.col(sequence_by)
    if isinstance(data_type, (DateType, StringType)):
        return F.col(sequence_by).cast("timestamp")
    raise Scd2Error(
        f"sequence_by column {sequence_by!r} is {data_type.simpleString()}; "
        f"it must be a timestamp or date (it becomes _valid_from)"
    )


def widens(narrow: DataType, wide: DataType) -> bool:
    """Iceberg's legal type promotions (int→long, float→double, decimal precision up)."""
    if narrow == wide:
        return True
    if isinstance(narrow, IntegerType) and isinstance(wide, LongType):
        return True
    if isinstance(narrow, FloatType) and isinstance(wide, DoubleType):
        return True
    return (
        isinstance(narrow, DecimalType)
        and isinstance(wide, DecimalType)
        and narrow.scale == wide.scale
        and narrow.precision <= wide.precision
    )


# Types whose values are equal exactly when Spark renders them as the same string (what row_hash
# hashes), so comparing them is comparing hashes. Not floats (0.0 and -0.0 are equal but render
# differently), binaries (rendered lossily as UTF-8), or nested types (maps cannot be compared).
# Timestamps render in the session time zone (UTC in these jobs); in a zone with daylight saving,
# two instants an hour apart can render alike, and comparing values tells them apart.
_INTEGRAL_TYPES = (ByteType, ShortType, IntegerType, LongType)
_COMPARABLE_TYPES = (StringType, BooleanType, *_INTEGRAL_TYPES, DecimalType, DateType, TimestampType)


def compare_values(batch_schema: StructType, table_schema: StructType, tracked: Sequence[str]) -> bool:
    """Whether a record can be told equal to its open version by comparing tracked values.

    That is the same test as comparing ``_row_hash`` when every tracked column is of a type whose
    equality is its rendering's (integer widths and decimal precisions may differ between batch
    and table, scales may not) and the batch has every data column of the table (a column the
    batch lacks is NULL in its records but may be part of the stored hash). Then no record needs
    hashing to be recognised as unchanged, only the ones kept; otherwise hashes are compared.
    """
    batch_names = set(batch_schema.fieldNames())
    if any(f.name not in batch_names for f in table_schema.fields if f.name not in SYSTEM_NAMES):
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
