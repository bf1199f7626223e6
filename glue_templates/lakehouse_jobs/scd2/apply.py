"""``apply_changes``: one batch, start to end, under the table's lock.

The order matters more than any single step: everything that can refuse the batch runs before the
first write (parameters here, bad records and conflicts in batch.py), the table's schema follows
the batch and is put back if the batch fails (rule 9), and the rest is :class:`batch.BatchRun`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession

from lakehouse_jobs.identifiers import TableName
from lakehouse_jobs.scd2 import batch, contract, storage
from lakehouse_jobs.scd2.contract import Scd2Error, Scd2Result
from lakehouse_jobs.scd2.events import prepare

__all__ = ["apply_changes"]


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
    mode: str = "cdc",
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
    params = contract.resolve_parameters(
        batch_df.columns,
        keys,
        sequence_by,
        batch_id,
        track_columns,
        track_except,
        loaded_at or datetime.now(UTC),
        mode,
        op_column,
        op_mapping,
        soft_delete,
    )
    with storage.table_lock(spark, table):
        if spark.catalog.tableExists(str(table)):
            spark.sql(f"REFRESH TABLE {table.spark}")  # see commits made while waiting for the lock
        events = prepare(batch_df, params)
        if params.mode == "snapshot" and events.rows_in == 0:
            raise Scd2Error(
                "the snapshot batch is empty; refusing to delete every key (load an empty "
                "snapshot deliberately by deleting through mode 'cdc')"
            )
        data_fields = [batch_df.schema[name] for name in (*params.keys, *params.attributes)]
        table_schema, change = storage.ensure_table(spark, table, data_fields, params.keys)
        try:
            if not change.created:
                storage.ensure_layout(spark, table, params.keys)
            return batch.BatchRun(spark, table, params, events, table_schema).apply()
        except BaseException:
            storage.undo_schema_change(spark, table, change)
            raise
