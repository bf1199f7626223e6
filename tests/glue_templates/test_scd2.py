"""The SCD2 row hash: NULL-safe, column-boundary-safe, stable when NULL columns are added, and
when tracked values may be compared instead of hashes."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakehouse_jobs.scd2 import row_hash
from lakehouse_jobs.scd2.contract import compare_values

pytestmark = pytest.mark.integration


def test_row_hash_tells_null_empty_and_values_apart(spark: SparkSession) -> None:
    frame = spark.createDataFrame(
        [("a", "bc", None), ("ab", "c", None), (None, "x", None), ("", "x", None), ("x", "x", None), ("a", "bc", "z")],
        "p string, q string, extra string",
    )
    two = [r[0] for r in frame.select(row_hash(["p", "q"])).collect()]
    assert len(set(two)) == 5 and two[0] == two[5]  # ("a","bc") != ("ab","c"); NULL != '' != 'x'
    three = [r[0] for r in frame.select(row_hash(["q", "p", "extra"])).collect()]
    assert three[:5] == two[:5]  # an added column that is NULL (and column order) changes no hash
    assert three[5] != two[5]


# Per type the template compares by value: the batch's type, the table's (maybe wider) type, and
# values every pair of which is checked.
COMPARABLE_SAMPLES: dict[str, tuple[str, str, list[Any]]] = {
    "string": ("string", "string", [None, "", "a", "A", "a ", "é", "e\u0301"]),
    "boolean": ("boolean", "boolean", [None, True, False]),
    "integers": ("int", "bigint", [None, 0, -1, 1, 2**31 - 1]),
    "decimals": (
        "decimal(6,2)",
        "decimal(12,2)",
        [None, Decimal("0.00"), Decimal("-0.00"), Decimal("1.10"), Decimal("-1.10"), Decimal("1234.50")],
    ),
    "date": ("date", "date", [None, date(1, 1, 1), date(1582, 10, 15), date(2026, 11, 24)]),
    "timestamp": (
        "timestamp",
        "timestamp",
        [None, datetime(2026, 11, 24, 1, 2, 3), datetime(2026, 11, 24, 1, 2, 3, 1), datetime(1900, 1, 1)],
    ),
}


@pytest.mark.parametrize("case", sorted(COMPARABLE_SAMPLES))
def test_comparable_types_are_equal_exactly_when_their_hashes_are(spark: SparkSession, case: str) -> None:
    """Why the template may compare tracked values instead of hashes (see ``contract.compare_values``):
    for these types, a batch value equals a stored one (of the table's, maybe wider, type) exactly
    when their ``row_hash`` values are equal."""
    batch_type, stored_type, values = COMPARABLE_SAMPLES[case]
    pairs = spark.createDataFrame(
        [(i, a, j, b) for i, a in enumerate(values) for j, b in enumerate(values)],
        f"i int, a {batch_type}, j int, b {batch_type}",
    ).select("i", F.col("a").alias("v"), "j", F.col("b").cast(stored_type).alias("b"))
    checked = (
        pairs.select(
            "i",
            "j",
            F.col("v").eqNullSafe(F.col("b")).alias("equal"),
            row_hash(["v"]).alias("ha"),
            F.col("b").alias("v"),
        )
        .select("i", "j", "equal", "ha", row_hash(["v"]).alias("hb"))
        .collect()
    )
    assert len(checked) == len(values) ** 2
    disagreeing = [(values[r["i"]], values[r["j"]]) for r in checked if r["equal"] != (r["ha"] == r["hb"])]
    assert disagreeing == []
    assert sum(r["equal"] for r in checked) >= len(values)  # every value equals itself, at least


def test_floats_are_compared_by_hash_because_equal_values_can_render_differently(spark: SparkSession) -> None:
    row = (
        spark.createDataFrame([(0.0, -0.0)], "a double, b double")
        .select(F.col("a").eqNullSafe(F.col("b")).alias("equal"), row_hash(["a"]).alias("v"), F.col("b").alias("a"))
        .select("equal", "v", row_hash(["a"]).alias("w"))
        .first()
    )
    assert row is not None and row["equal"] and row["v"] != row["w"]


def _schema(spark: SparkSession, ddl: str) -> StructType:
    return spark.createDataFrame([], ddl).schema


SYSTEM_DDL = (
    ", _valid_from timestamp, _valid_to timestamp, _is_current boolean, _is_deleted boolean, "
    "_row_hash string, _batch_id string, _source_file string, _loaded_at timestamp"
)


@pytest.mark.parametrize(
    ("batch", "table", "tracked", "by_value"),
    [
        (
            "k string, v string, n int, d decimal(6,2), t timestamp",
            "k string, v string, n bigint, d decimal(9,2), t timestamp",
            ["v", "n", "d", "t"],
            True,
        ),
        ("k string, v string, x double", "k string, v string, x double", ["v"], True),  # x is untracked
        ("k string, v string, x double", "k string, v string, x double", ["v", "x"], False),
        ("k string, v string, b binary", "k string, v string, b binary", ["v", "b"], False),
        ("k string, v array<string>", "k string, v array<string>", ["v"], False),
        ("k string, d decimal(6,2)", "k string, d decimal(6,3)", ["d"], False),  # scales differ: renders differ
        ("k string, v string", "k string, v string, gone string", ["v"], False),  # the batch lacks a column
        ("k string, v date", "k string, v timestamp", ["v"], False),
    ],
    ids=[
        "widened",
        "untracked-float",
        "tracked-float",
        "binary",
        "array",
        "scale",
        "missing-column",
        "date-vs-timestamp",
    ],
)
def test_tracked_values_are_compared_only_where_that_equals_comparing_hashes(
    spark: SparkSession, batch: str, table: str, tracked: list[str], by_value: bool
) -> None:
    assert compare_values(_schema(spark, batch), _schema(spark, table + SYSTEM_DDL), tracked) is by_value
