"""The batch's commit as one ``MERGE INTO``: for tables that cannot take a row delta.

A table someone else created partitioned, a format 3 table, or an Iceberg runtime without an API
the row delta needs (jvm.py) gets this commit, which handles every layout. Its cost is the join of
the whole table with the difference; a runtime bloom filter of the difference's keys cuts the
table's rows down right after the scan, before anything is shuffled.
"""

from __future__ import annotations

import uuid

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakehouse_jobs.identifiers import TableName, quote_spark
from lakehouse_jobs.job import spark_settings
from lakehouse_jobs.scd2 import columns as c
from lakehouse_jobs.scd2 import jvm

__all__ = ["SESSION_CONF", "commit"]

# While the MERGE is planned: Spark injects a bloom filter of the source's merge keys into the table
# scan only when it thinks the join is a shuffle join and the scan is big.
SESSION_CONF: dict[str, str] = {
    "spark.sql.optimizer.runtime.bloomFilter.enabled": "true",
    "spark.sql.optimizer.runtime.bloomFilter.applicationSideScanSizeThreshold": "0",
    "spark.sql.optimizer.runtime.bloomFilter.creationSideThreshold": str(2**63 - 1),
    "spark.sql.autoBroadcastJoinThreshold": "-1",
}


def commit(
    spark: SparkSession,
    table: TableName,
    source: DataFrame,
    keys: tuple[str, ...],
    table_schema: StructType,
    untracked: tuple[str, ...],
    matched: int,
) -> None:
    """The single commit. Insert rows carry NULL merge keys, so ``=`` never matches them; the other
    (``matched``) rows match exactly one stored row by key and ``_valid_from``."""
    view = f"scd2_source_{uuid.uuid4().hex}"
    # A MERGE with an insert clause joins the table RIGHT OUTER the source, and Spark never
    # broadcasts the preserved side: every table row would be shuffled and sorted to meet the few
    # that match. A runtime bloom filter of the source's keys drops the others right after the
    # scan. Spark injects one only for a filtered source and a join it does not expect to
    # broadcast, hence the (always true) action filter and SESSION_CONF. A checkpoint keeps the
    # size Spark estimated for its plan (the product of the joins that computed it: more than Spark
    # accepts for a bloom filter's source, however few rows there are), hence the fresh frame.
    jvm.without_size_estimate(spark, source).filter(
        F.col(c.ACTION).isin("update", "delete", "insert")
    ).createOrReplaceTempView(view)
    try:
        on = " AND ".join(
            [
                *(f"t.{quote_spark(k)} = s.{quote_spark(c.merge_key(k))}" for k in keys),
                f"t.{c.VALID_FROM} = s.{c.MK_VALID_FROM}",
            ]
        )
        untracked_sets = "".join(f", t.{quote_spark(u)} = s.{quote_spark(u)}" for u in untracked)
        names = [f.name for f in table_schema.fields]
        insert_columns = ", ".join(quote_spark(n) for n in names)
        insert_values = ", ".join(f"s.{quote_spark(n)}" for n in names)
        # sized for the rows that match: 16 bits each keeps false positives near 0.05 %. One filter
        # per key column, none for _valid_from: a key's few versions cost nothing to let through,
        # a filter on it costs a hash of every row of the table (filters follow the ON's order)
        sizing = {
            "spark.sql.optimizer.runtime.bloomFilter.expectedNumItems": str(max(1, matched)),
            "spark.sql.optimizer.runtime.bloomFilter.numBits": str(min(1 << 26, max(1 << 16, 16 * matched))),
            "spark.sql.optimizer.runtimeFilter.number.threshold": str(len(keys)),
        }
        with spark_settings(spark, {**SESSION_CONF, **sizing}):
            spark.sql(f"""
            MERGE INTO {table.spark} AS t
            USING {quote_spark(view)} AS s
            ON {on}
            WHEN MATCHED AND s.{c.ACTION} = 'delete' THEN DELETE
            WHEN MATCHED AND s.{c.ACTION} = 'update' THEN UPDATE SET
                t.{c.VALID_TO} = s.{c.VALID_TO}, t.{c.IS_CURRENT} = s.{c.IS_CURRENT}{untracked_sets}
            WHEN NOT MATCHED AND s.{c.ACTION} = 'insert' THEN INSERT ({insert_columns}) VALUES ({insert_values})
        """)
    finally:
        spark.catalog.dropTempView(view)
