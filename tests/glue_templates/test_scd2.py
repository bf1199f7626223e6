"""The SCD2 row hash: NULL-safe, column-boundary-safe, stable when NULL columns are added."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from lakehouse_jobs.scd2 import row_hash

pytestmark = pytest.mark.integration


def test_row_hash_tells_null_empty_and_values_apart(spark: SparkSession) -> None:
    frame = spark.createDataFrame(
        [("a", "bc", None), ("ab", "c", None), (None, "x", None), ("", "x", None), ("x", "x", None),
         ("a", "bc", "z")],
        "p string, q string, extra string",
    )
    two = [r[0] for r in frame.select(row_hash(["p", "q"])).collect()]
    assert len(set(two)) == 5 and two[0] == two[5]  # ("a","bc") != ("ab","c"); NULL != '' != 'x'
    three = [r[0] for r in frame.select(row_hash(["q", "p", "extra"])).collect()]
    assert three[:5] == two[:5]  # an added column that is NULL (and column order) changes no hash
    assert three[5] != two[5]
