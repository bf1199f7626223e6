"""The stage table: how it is created and laid out, how its schema follows the batches, and who
may write it.

A batch must cost what it changes, not what the table holds (docs/scd2.md, "What a batch costs").
Tables this template creates are sorted by ``(_is_current, keys)`` within each data file (no
shuffle per write; compaction sorts across files) in small row groups, so Iceberg's min/max
statistics let a batch skip closed history and the key ranges it does not touch (reads.py).
Tables it created before that layout are migrated in metadata; tables it did not create are left
as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql.types import (
    StructField,
    StructType,
)

from lakehouse_jobs.identifiers import TableName, quote_spark
from lakehouse_jobs.scd2 import columns as c
from lakehouse_jobs.scd2 import jvm
from lakehouse_jobs.scd2.contract import Scd2Error, widens

__all__ = [
    "LAYOUT_PROPERTY",
    "LAYOUT_VERSION",
    "LEGACY_TABLE_PROPERTIES",
    "TABLE_PROPERTIES",
    "SchemaChange",
    "ensure_layout",
    "ensure_table",
    "table_lock",
    "undo_schema_change",
]

log = logging.getLogger("lakehouse_jobs.scd2")

LAYOUT_PROPERTY = "lakehouse.scd2.layout"  # set on tables this template created or migrated
LAYOUT_VERSION = "2"  # 1 (no marker): unsorted, 128 MB row groups; 2: sorted by (_is_current, keys), 16 MB row groups

# merge-on-read: closing 10% of the keys writes position deletes instead of rewriting every data
# file those keys live in (copy-on-write rewrites a file even when the WHEN MATCHED condition is
# false, Iceberg issue 12558); serializable isolation makes a concurrent commit a conflict.
LEGACY_TABLE_PROPERTIES: dict[str, str] = {
    "format-version": "2",
    "write.merge.mode": "merge-on-read",
    "write.update.mode": "merge-on-read",
    "write.delete.mode": "merge-on-read",
    "write.merge.isolation-level": "serializable",
    "write.merge.distribution-mode": "none",
}
# Writes are sorted by the table's sort order within each task (distribution none: no shuffle of a
# batch's rows by range); 16 MB row groups keep a skipped key range small in a large file.
TABLE_PROPERTIES: dict[str, str] = {
    **LEGACY_TABLE_PROPERTIES,
    "write.distribution-mode": "none",
    "write.parquet.row-group-size-bytes": str(16 << 20),
}


@dataclass(frozen=True)
class SchemaChange:
    """What :func:`ensure_table` did, so a failed batch can undo it (rule 9)."""

    created: bool
    added: tuple[str, ...]
    promoted: tuple[str, ...]


def _sort_order(keys: Sequence[str]) -> str:
    return ", ".join(quote_spark(name) for name in (c.IS_CURRENT, *keys))


def ensure_table(
    spark: SparkSession, table: TableName, data_fields: Sequence[StructField], keys: Sequence[str]
) -> tuple[StructType, SchemaChange]:
    """Create the table on first use; afterwards add new columns and promote widened types.

    Every check runs before the first ALTER, so an impossible type change leaves the table as is
    and the error names the column. Returns the table's schema after the changes.
    """
    if not spark.catalog.tableExists(str(table)):
        spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {quote_spark(table.namespace)}")
        columns = ", ".join(
            f"{quote_spark(f.name)} {f.dataType.simpleString()}" for f in (*data_fields, *c.SYSTEM_COLUMNS)
        )
        properties = ", ".join(f"'{k}'='{v}'" for k, v in {**TABLE_PROPERTIES, LAYOUT_PROPERTY: LAYOUT_VERSION}.items())
        spark.sql(f"CREATE TABLE {table.spark} ({columns}) USING iceberg TBLPROPERTIES ({properties})")
        try:
            spark.sql(f"ALTER TABLE {table.spark} WRITE LOCALLY ORDERED BY {_sort_order(keys)}")
        except BaseException:
            spark.sql(f"DROP TABLE IF EXISTS {table.spark} PURGE")
            raise
        return spark.table(table.spark).schema, SchemaChange(True, (), ())
    existing = {f.name: f.dataType for f in spark.table(table.spark).schema.fields}
    additions: list[StructField] = []
    promotions: list[StructField] = []
    for field in data_fields:
        current = existing.get(field.name)
        if current is None:
            additions.append(field)
        elif widens(field.dataType, current):
            continue  # same type, or narrower: cast on insert
        elif widens(current, field.dataType):
            promotions.append(field)
        else:
            raise Scd2Error(
                f"column {field.name!r} of {table} is {current.simpleString()} but the batch has "
                f"{field.dataType.simpleString()}; Iceberg cannot promote that type"
            )
    for field in promotions:
        spark.sql(
            f"ALTER TABLE {table.spark} ALTER COLUMN {quote_spark(field.name)} TYPE {field.dataType.simpleString()}"
        )
    if additions:
        columns = ", ".join(f"{quote_spark(f.name)} {f.dataType.simpleString()}" for f in additions)
        spark.sql(f"ALTER TABLE {table.spark} ADD COLUMNS ({columns})")
    change = SchemaChange(False, tuple(f.name for f in additions), tuple(f.name for f in promotions))
    return spark.table(table.spark).schema, change


def undo_schema_change(spark: SparkSession, table: TableName, change: SchemaChange) -> None:
    """Put the table back as it was after a failed batch: drop what this batch created or added.

    A promotion (int→long) cannot be reversed in Iceberg; it is harmless (old readers see wider
    values) and is left in place.
    """
    if change.created:
        spark.sql(f"DROP TABLE IF EXISTS {table.spark} PURGE")
    elif change.added:
        for name in change.added:
            spark.sql(f"ALTER TABLE {table.spark} DROP COLUMN {quote_spark(name)}")


def ensure_layout(spark: SparkSession, table: TableName, keys: Sequence[str]) -> bool:
    """Bring a table this template created before layout 2 to it: the sort order and write
    properties (metadata only: files already written keep their order until maintain_table
    compacts them). A table someone else created is left exactly as it is. Returns whether the
    table was migrated."""
    layout = jvm.layout(spark, table)
    if layout.properties.get(LAYOUT_PROPERTY) == LAYOUT_VERSION:
        return False
    created_by_template = layout.properties.get(LAYOUT_PROPERTY) is not None or (
        not layout.partitioned
        and layout.format_version == 2
        and not layout.sort_columns
        and all(layout.properties.get(k) == v for k, v in LEGACY_TABLE_PROPERTIES.items() if k != "format-version")
    )
    if not created_by_template:
        return False
    spark.sql(f"ALTER TABLE {table.spark} WRITE LOCALLY ORDERED BY {_sort_order(keys)}")
    properties = {k: v for k, v in TABLE_PROPERTIES.items() if k != "format-version"}
    assignments = ", ".join(f"'{k}'='{v}'" for k, v in {**properties, LAYOUT_PROPERTY: LAYOUT_VERSION}.items())
    spark.sql(f"ALTER TABLE {table.spark} SET TBLPROPERTIES ({assignments})")
    log.info(
        "scd2: %s migrated to layout %s (sorted by %s); maintain_table re-sorts its older files",
        table,
        LAYOUT_VERSION,
        _sort_order(keys),
    )
    return True


@contextmanager
def table_lock(spark: SparkSession, table: TableName) -> Iterator[bool]:
    """Serialise runs on one table (SCD2 batches and maintain_table) with a Postgres advisory lock
    held on the catalog database, reusing the catalog's JDBC settings. Yields False when the catalog
    is not a Postgres JDBC catalog (Glue's catalog, a REST catalog): then the orchestrator's pool
    serialises runs and Iceberg's conflict check is the guard."""
    catalog = spark.conf.get("spark.sql.defaultCatalog", "spark_catalog")
    prefix = f"spark.sql.catalog.{catalog}"
    uri = spark.conf.get(f"{prefix}.uri", "") or ""
    if not uri.startswith("jdbc:postgresql:"):
        yield False
        return
    with jvm.advisory_lock(
        spark,
        uri,
        spark.conf.get(f"{prefix}.jdbc.user", None),
        spark.conf.get(f"{prefix}.jdbc.password", None),
        f"lakehouse.scd2:{catalog}.{table}",
    ):
        yield True
