"""The SCD2 contract (docs/scd2.md) as a small plain-Python model: no Spark, no shortcuts.

It is what the property tests hold ``lakehouse_jobs.scd2`` to. The model states the contract's
definition directly - a key's history is its events in sequence order, consecutive equal events
collapsed - and recomputes every key that has records, without the template's "unchanged record"
fast path, so that optimisation is checked too.

A table is a list of row dicts with the data columns and the system columns (``_loaded_at`` is left
out: it is wall-clock time). Values are strings, ints or None; sequence values are datetimes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

DELETED = "deleted"
Row = dict[str, Any]


class ReferenceError(ValueError):
    """The batch must be refused; ``kind`` says why (the template raises for the same reason)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Params:
    keys: Sequence[str]
    sequence_by: str | None = None
    mode: str = "cdc"
    op_column: str | None = None
    op_mapping: dict[str, str] = field(default_factory=lambda: {"I": "I", "U": "U", "D": "D"})
    soft_delete: bool = False
    track_columns: Sequence[str] | None = None
    track_except: Sequence[str] | None = None


def row_hash(record: Row, tracked: Sequence[str]) -> str:
    """Same encoding as the template: ``name=<len>:<text>`` of non-NULL values, in name order."""
    parts = [
        f"{name}={len(str(record[name]))}:{record[name]}" for name in sorted(tracked) if record.get(name) is not None
    ]
    return hashlib.sha256("\u001f".join(parts).encode("utf-8")).hexdigest()


@dataclass
class _Event:
    seq: datetime
    hash: str
    prio: int  # 0: from the table (wins at an equal sequence value), 1: from the batch
    data: Row
    old: Row | None = None  # the stored row this event stands for
    lineage: tuple[str | None, str | None] = (None, None)  # _batch_id, _source_file


def apply(
    table: list[Row], columns: list[str], batch: list[Row], batch_columns: list[str], params: Params, batch_id: str
) -> tuple[list[Row], list[str]]:
    """One batch → the new table rows and data columns. Raises ReferenceError for a refused batch.

    ``batch`` rows carry the data columns plus ``_seq`` (the sequence value, already a datetime),
    ``_line_number`` and ``_source_file``.
    """
    keys = list(params.keys)
    attributes = [c for c in batch_columns if c not in keys and c != params.op_column]
    tracked = (
        list(params.track_columns)
        if params.track_columns
        else [c for c in attributes if c not in (params.track_except or ()) and c != params.sequence_by]
    )
    untracked = [c for c in attributes if c not in tracked and c != params.sequence_by]
    # validation, in file order
    for record in batch:
        if any(record.get(k) is None for k in keys):
            raise ReferenceError("null_key", f"NULL key at line {record['_line_number']}")
        if record["_seq"] is None:
            raise ReferenceError("null_sequence", f"NULL sequence at line {record['_line_number']}")
        if params.op_column and params.op_mapping.get(record.get(params.op_column)) is None:
            raise ReferenceError("bad_op", f"unmapped op at line {record['_line_number']}")
    if params.mode == "snapshot" and not batch:
        raise ReferenceError("empty_snapshot", "empty snapshot")
    new_columns = columns + [c for c in [*keys, *attributes] if c not in columns]
    by_key: dict[tuple[Any, ...], list[_Event]] = defaultdict(list)
    lines: dict[tuple[Any, ...], list[tuple[datetime, int, _Event]]] = defaultdict(list)
    for record in batch:
        is_delete = params.op_column is not None and params.op_mapping[record[params.op_column]] == "D"
        data = {c: (None if is_delete else record.get(c)) for c in attributes}
        event = _Event(
            record["_seq"],
            DELETED if is_delete else row_hash(record, tracked),
            1,
            data,
            lineage=(batch_id, record.get("_source_file")),
        )
        lines[tuple(record[k] for k in keys)].append((record["_seq"], record["_line_number"], event))
    for key, found in lines.items():
        found.sort(key=lambda item: (item[0], -item[1]))  # per sequence value, the file's last line first
        for i, (seq, _line, event) in enumerate(found):
            if i and found[i - 1][0] == seq:
                if params.sequence_by is not None and found[i - 1][2].hash != event.hash:
                    raise ReferenceError("same_sequence", f"key {key}: two records at {seq}")
                continue
            by_key[key].append(event)
    rows_by_key: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for row in table:
        rows_by_key[tuple(row[k] for k in keys)].append(row)
    if params.mode == "snapshot":
        delete_at = max(r["_seq"] for r in batch)
        for key, rows in rows_by_key.items():
            current = [r for r in rows if r["_is_current"]]
            if key not in lines and current and not current[0]["_is_deleted"]:
                by_key[key].append(
                    _Event(delete_at, DELETED, 1, {c: None for c in attributes}, lineage=(batch_id, None))
                )
    result = [r for key, rows in rows_by_key.items() if key not in by_key for r in rows]
    for key, new_events in by_key.items():
        result.extend(
            _rebuild(key, rows_by_key.get(key, []), new_events, keys, new_columns, untracked, params, batch_id)
        )
    return result, new_columns


def _rebuild(
    key: tuple[Any, ...],
    rows: list[Row],
    new_events: list[_Event],
    keys: list[str],
    columns: list[str],
    untracked: list[str],
    params: Params,
    batch_id: str,
) -> list[Row]:
    """One key: stored rows back to events, add the batch's, collapse, and turn runs into rows."""
    rows = sorted(rows, key=lambda r: r["_valid_from"])
    starts = {r["_valid_from"] for r in rows}
    events: list[_Event] = []
    for row in rows:
        events.append(
            _Event(
                row["_valid_from"],
                DELETED if row["_is_deleted"] else row["_row_hash"],
                0,
                {c: row.get(c) for c in columns if c not in keys},
                old=row,
            )
        )
        if row["_valid_to"] is not None and row["_valid_to"] not in starts:
            events.append(_Event(row["_valid_to"], DELETED, 0, {}))  # a hard delete left a gap here
    events.extend(new_events)
    events.sort(key=lambda e: (e.seq, e.prio))
    kept: list[_Event] = []
    for event in events:
        if kept and kept[-1].seq == event.seq:
            if kept[-1].hash != event.hash:
                raise ReferenceError("conflict", f"key {key}: stored version at {event.seq} differs")
            continue
        kept.append(event)
    runs: list[list[_Event]] = []
    for event in kept:
        if runs and runs[-1][-1].hash == event.hash:
            runs[-1].append(event)
        else:
            runs.append([event])
    out: list[Row] = []
    for i, run in enumerate(runs):
        first, last = run[0], run[-1]
        deleted = first.hash == DELETED
        if deleted and not (i > 0 and (params.soft_delete or first.old is not None)):
            continue
        row: Row = dict(zip(keys, key, strict=True))
        for c in columns:
            if c in keys:
                continue
            source = last if c in untracked else first
            row[c] = None if deleted else source.data.get(c)
        row["_valid_from"] = first.seq
        row["_valid_to"] = runs[i + 1][0].seq if i + 1 < len(runs) else None
        row["_is_current"] = i + 1 == len(runs)
        row["_is_deleted"] = deleted
        row["_row_hash"] = None if deleted else first.hash
        if first.old is not None:
            row["_batch_id"], row["_source_file"] = first.old["_batch_id"], first.old["_source_file"]
        else:
            row["_batch_id"], row["_source_file"] = first.lineage
        out.append(row)
    return out


def check_invariants(table: list[Row], keys: Sequence[str]) -> None:
    """Rule 10: per key at most one current row, intervals ordered without overlap, gaps only
    after a delete, ``_valid_to`` > ``_valid_from``; only the last row may be open."""
    by_key: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for row in table:
        by_key[tuple(row[k] for k in keys)].append(row)
    for key, rows in by_key.items():
        rows.sort(key=lambda r: r["_valid_from"])
        assert sum(bool(r["_is_current"]) for r in rows) <= 1, f"key {key}: several current rows"
        for i, row in enumerate(rows):
            assert row["_valid_to"] is None or row["_valid_to"] > row["_valid_from"], f"key {key}: empty interval"
            assert (row["_valid_to"] is None) == bool(row["_is_current"]), f"key {key}: open/current disagree"
            if i + 1 < len(rows):
                following = rows[i + 1]
                assert row["_valid_to"] is not None, f"key {key}: an open version is not the last"
                assert row["_valid_to"] <= following["_valid_from"], f"key {key}: overlapping versions"
                if row["_valid_to"] < following["_valid_from"]:
                    assert not row["_is_deleted"], f"key {key}: a gap after a tombstone"
