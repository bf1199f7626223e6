"""presentation_to_warehouse modes against the real test Postgres: COPY load of every column type,
merge (upsert in one transaction), schema-change policy; Redshift at the SQL-generation level."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from pyspark.sql import SparkSession

from lakehouse.config import Settings
from lakehouse_jobs.identifiers import TableName
from lakehouse_jobs.templates import presentation_to_warehouse
from lakehouse_jobs.warehouse import (
    SchemaChangeRefused,
    merge_statements,
    redshift_copy_statement,
    schema_change_statements,
    schema_diff,
    swap_statements,
    warehouse_type,
)

ROLE = "arn:aws:iam::123456789012:role/redshift-copy"


def _load(tmp_path: Path, lake_uri: str, source: str, target: str, batch: str, *extra: str) -> dict:
    metrics_file = tmp_path / f"{batch}.json"
    presentation_to_warehouse.main(
        [
            "--batch_id",
            batch,
            "--lake_uri",
            lake_uri,
            "--metrics_uri",
            str(metrics_file),
            "--source_table",
            source,
            "--target_table",
            target,
            *extra,
        ]
    )
    return json.loads(metrics_file.read_text())


def _query(settings: Settings, sql: str) -> list[tuple]:
    with psycopg2.connect(settings.warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def _table(spark: SparkSession, name: str, select: str) -> None:
    spark.sql("CREATE NAMESPACE IF NOT EXISTS presentation")
    spark.sql(f"CREATE OR REPLACE TABLE {name} USING iceberg AS {select}")


@pytest.mark.integration
def test_copy_load_keeps_every_type_exactly(
    spark: SparkSession, warehouse_env: Settings, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    source, target = f"presentation.types_{unique}", f"wh_{unique}.types"
    _table(
        spark,
        source,
        """
        SELECT * FROM VALUES
          (1, 'plain', CAST(12.34 AS decimal(12,2)), DATE'2026-11-01', TIMESTAMP'2026-11-01 10:15:30.123456',
           true, CAST(1.5 AS double), X'00FF', array(1, 2), named_struct('a', 'x', 'b', 2)),
          (2, 'comma, "quote" and\nnewline \\\\ back', CAST(-0.5 AS decimal(12,2)), NULL, NULL, false, NULL, NULL,
           NULL, NULL),
          (3, '', NULL, DATE'1999-12-31', TIMESTAMP'2026-01-01 00:00:00', NULL, CAST('NaN' AS double), X'', array(),
           named_struct('a', NULL, 'b', NULL)),
          (4, NULL, CAST(0 AS decimal(12,2)), NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (5, '  padded  ', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
        AS t(id, label, amount, day, at, flag, score, payload, nums, info)""",
    )

    metrics = _load(tmp_path, lake_uri, source, target, f"b_{unique}")

    assert (metrics["rows_out"], metrics["mode"]) == (5, "replace")
    types = dict(
        _query(
            warehouse_env,
            "SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = 'wh_{unique}' AND table_name = 'types'",
        )
    )
    assert types == {
        "id": "integer",
        "label": "text",
        "amount": "numeric",
        "day": "date",
        "at": "timestamp without time zone",
        "flag": "boolean",
        "score": "double precision",
        "payload": "bytea",
        "nums": "jsonb",
        "info": "jsonb",
    }
    rows = {r[0]: r[1:] for r in _query(warehouse_env, f"SELECT * FROM {target}")}
    assert rows[1][:6] == (
        "plain",
        Decimal("12.34"),
        date(2026, 11, 1),
        datetime(2026, 11, 1, 10, 15, 30, 123456),
        True,
        1.5,
    )
    assert bytes(rows[1][6]) == b"\x00\xff" and rows[1][7] == [1, 2] and rows[1][8] == {"a": "x", "b": 2}
    assert rows[2][0] == 'comma, "quote" and\nnewline \\ back' and rows[2][1] == Decimal("-0.50")
    assert rows[2][2:] == (None, None, False, None, None, None, None)
    assert rows[3][0] == "" and rows[4][0] is None  # empty string and NULL stay different
    assert str(rows[3][5]) == "nan" and bytes(rows[3][6]) == b"" and rows[3][7] == []
    assert rows[5][0] == "  padded  "


@pytest.mark.integration
def test_merge_upserts_by_key_in_one_transaction(
    spark: SparkSession, warehouse_env: Settings, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    source, target = f"presentation.cust_{unique}", f"wh_{unique}.customers"
    merge = ("--mode", "merge", "--merge_keys", "region,id")
    _table(
        spark,
        source,
        "SELECT * FROM VALUES ('eu', 1, 'Ann', 10), ('eu', 2, 'Bob', 20), ('us', 1, 'Cy', 30) "
        "AS t(region, id, name, score)",
    )
    first = _load(tmp_path, lake_uri, source, target, f"m1_{unique}", *merge)
    assert (first["rows_out"], first["rows_inserted"], first["rows_replaced"]) == (3, 3, 0)

    _table(
        spark, source, "SELECT * FROM VALUES ('eu', 2, 'Bobby', 21), ('us', 2, 'Di', 40) AS t(region, id, name, score)"
    )
    second = _load(tmp_path, lake_uri, source, target, f"m2_{unique}", *merge)
    assert (second["rows_out"], second["rows_inserted"], second["rows_replaced"]) == (2, 1, 1)
    assert _query(warehouse_env, f"SELECT region, id, name, score FROM {target} ORDER BY region, id") == [
        ("eu", 1, "Ann", 10),
        ("eu", 2, "Bobby", 21),
        ("us", 1, "Cy", 30),
        ("us", 2, "Di", 40),
    ]

    # a schema change that cannot be applied (text -> int) rolls the whole merge back
    _table(spark, source, "SELECT * FROM VALUES ('eu', 1, 7, 11) AS t(region, id, name, score)")
    with pytest.raises(Exception, match=r"(?i)invalid input syntax"):
        _load(tmp_path, lake_uri, source, target, f"m3_{unique}", *merge)
    assert _query(warehouse_env, f"SELECT name, score FROM {target} WHERE region = 'eu' AND id = 1") == [("Ann", 10)]

    _table(spark, source, "SELECT * FROM VALUES ('eu', 1, 'A', 1), ('eu', 1, 'B', 2) AS t(region, id, name, score)")
    with pytest.raises(ValueError, match=r"not unique.*'region': 'eu', 'id': 1"):
        _load(tmp_path, lake_uri, source, target, f"m4_{unique}", *merge)
    leftovers = _query(
        warehouse_env, f"SELECT table_name FROM information_schema.tables WHERE table_schema = 'wh_{unique}'"
    )
    assert leftovers == [("customers",)]


@pytest.mark.integration
def test_schema_changes_applied_or_refused(
    spark: SparkSession, warehouse_env: Settings, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    source, target = f"presentation.evo_{unique}", f"wh_{unique}.evo"
    _table(spark, source, "SELECT * FROM VALUES (1, 'a', 5) AS t(id, name, old_col)")
    _load(tmp_path, lake_uri, source, target, f"e1_{unique}", "--mode", "merge", "--merge_keys", "id")

    _table(spark, source, "SELECT * FROM VALUES (2, 'b', CAST(2.5 AS decimal(10,2))) AS t(id, name, new_col)")
    with pytest.raises(SchemaChangeRefused) as refused:
        _load(
            tmp_path,
            lake_uri,
            source,
            target,
            f"e2_{unique}",
            "--mode",
            "merge",
            "--merge_keys",
            "id",
            "--on_schema_change",
            "refuse",
        )
    assert "new column new_col numeric(10,2)" in str(refused.value) and "column old_col is gone" in str(refused.value)
    assert _query(warehouse_env, f"SELECT count(*) FROM {target}") == [(1,)]

    applied = _load(tmp_path, lake_uri, source, target, f"e3_{unique}", "--mode", "merge", "--merge_keys", "id")
    assert "new column new_col" in applied["schema_changes"]
    assert _query(warehouse_env, f"SELECT id, name, old_col, new_col FROM {target} ORDER BY id") == [
        (1, "a", 5, None),
        (2, "b", None, Decimal("2.50")),
    ]

    with pytest.raises(SchemaChangeRefused, match="column old_col is gone"):
        _load(tmp_path, lake_uri, source, target, f"e4_{unique}", "--on_schema_change", "refuse")
    replaced = _load(tmp_path, lake_uri, source, target, f"e5_{unique}")  # replace + apply: new shape
    assert replaced["rows_out"] == 1
    assert [
        c
        for (c,) in _query(
            warehouse_env,
            "SELECT column_name FROM information_schema.columns WHERE "
            f"table_schema = 'wh_{unique}' ORDER BY ordinal_position",
        )
    ] == ["id", "name", "new_col"]


def test_redshift_sql_generation() -> None:
    target, staging = TableName("presentation", "daily"), TableName("presentation", "daily__load_b1")
    assert redshift_copy_statement(staging, ["day", "total"], "s3://bucket/tmp/wh/presentation.daily/x", ROLE) == (
        'COPY "presentation"."daily__load_b1" ("day", "total") FROM \'s3://bucket/tmp/wh/presentation.daily/x/\' '
        f"IAM_ROLE '{ROLE}' FORMAT AS PARQUET"
    )
    assert swap_statements(target, staging) == [
        'DROP TABLE IF EXISTS "presentation"."daily"',
        'ALTER TABLE "presentation"."daily__load_b1" RENAME TO "daily"',
    ]
    assert merge_statements(target, staging, ["day", "total"], ["day"]) == [
        'DELETE FROM "presentation"."daily" USING "presentation"."daily__load_b1" '
        'WHERE "daily"."day" = "daily__load_b1"."day"',
        'INSERT INTO "presentation"."daily" ("day", "total") '
        'SELECT "day", "total" FROM "presentation"."daily__load_b1"',
        'DROP TABLE "presentation"."daily__load_b1"',
    ]
    with pytest.raises(ValueError, match="--iam_role"):
        redshift_copy_statement(staging, ["day"], "s3://bucket/x", "role'; DROP TABLE x; --")
    with pytest.raises(ValueError, match="--temp_uri"):
        redshift_copy_statement(staging, ["day"], "file:///tmp/x", ROLE)


def test_warehouse_types_and_schema_diff() -> None:
    from pyspark.sql import types as T

    assert warehouse_type(T.StringType(), "redshift") == "character varying(65535)"
    assert warehouse_type(T.DecimalType(12, 2)) == "numeric(12,2)"
    assert warehouse_type(T.ArrayType(T.IntegerType()), "redshift") == "super"
    diff = schema_diff(
        [("id", "integer"), ("name", "text"), ("gone", "text")], [("id", "bigint"), ("name", "text"), ("added", "date")]
    )
    assert diff.describe() == "new column added date; column gone is gone; column id changes type integer -> bigint"
    assert schema_change_statements(TableName("s", "t"), diff) == [
        'ALTER TABLE "s"."t" ADD COLUMN "added" date',
        'ALTER TABLE "s"."t" ALTER COLUMN "id" TYPE bigint USING "id"::bigint',
        'ALTER TABLE "s"."t" ALTER COLUMN "gone" DROP NOT NULL',
    ]
