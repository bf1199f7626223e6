"""How the Postgres load copies: on a wal_level=minimal server one transaction sends each parquet
file with binary COPY (ADBC) as soon as Spark has finished it, elsewhere several connections copy
CSV files after the write; every row lands exactly once and nothing is left behind."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from pyspark.sql import SparkSession

from lakehouse.config import Settings
from lakehouse_jobs import io, warehouse
from lakehouse_jobs.identifiers import TableName
from lakehouse_jobs.warehouse import LoadOptions, connection_from_env, load

pytestmark = pytest.mark.integration


def _query(settings: Settings, sql: str) -> list[tuple]:
    with psycopg2.connect(settings.warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_complete_files_follow_the_committer_layout(tmp_path: Path) -> None:
    job = tmp_path / "_temporary" / "0"
    attempt = job / "_temporary" / "attempt_202611230000_0001_m_000000_0"
    task = job / "task_202611230000_0001_m_000001"
    for folder in (attempt, task, tmp_path / "elsewhere"):
        folder.mkdir(parents=True)
    (attempt / "part-00000-u-c000.csv").write_text("1\n")
    (attempt / "part-00000-u-c001.csv").write_text("2\n")  # still being written: the newest
    (attempt / "part-00000-u-c002.csv").write_text("")
    (task / "part-00001-u-c000.csv").write_text("3\n")
    (task / "part-00001-u-c001.csv").write_text("")  # empty: nothing to copy
    (tmp_path / "elsewhere" / "part-00002-u-c000.csv").write_text("4\n")  # not the committer's

    found = warehouse._complete_files(str(io.local_path(tmp_path.as_uri())))

    assert found == {
        "part-00000-u-c000.csv": (str(attempt / "part-00000-u-c000.csv"), 2),
        "part-00000-u-c001.csv": (str(attempt / "part-00000-u-c001.csv"), 2),
        "part-00001-u-c000.csv": (str(task / "part-00001-u-c000.csv"), 2),
    }
    assert warehouse._complete_files(str(tmp_path / "missing")) == {}
    assert str(io.local_path("file:/tmp/a%20b")) == str(io.local_path("file:///tmp/a%20b")) == "/tmp/a b"


@pytest.mark.parametrize("single", [True, False], ids=["one transaction", "parallel connections"])
def test_every_row_lands_exactly_once(
    spark: SparkSession,
    warehouse_env: Settings,
    tmp_path: Path,
    unique: str,
    single: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warehouse, "_ROWS_PER_FILE", 150)  # many small files per task
    target = TableName(f"wh_{unique}", "events")
    df = spark.range(0, 6000, numPartitions=3).selectExpr("id", "concat('e', id) AS label")
    options = LoadOptions(work_uri=(tmp_path / "work").as_uri(), single_transaction=single)

    first = load(spark, df, target, f"b1_{unique}", connection_from_env(), options)
    merged = load(
        spark,
        spark.range(5990, 6010, numPartitions=2).selectExpr("id", "concat('m', id) AS label"),
        target,
        f"b2_{unique}",
        connection_from_env(),
        LoadOptions(mode="merge", keys=("id",), work_uri=options.work_uri, single_transaction=single),
    )

    assert (first["rows"], first["copy_files"]) == (6000, 3 * 14 if single else 3)  # copied as written: small files
    assert (first["copy_format"], merged["copy_format"]) == ("binary", "binary") if single else ("csv", "csv")
    assert (merged["rows"], merged["rows_replaced"], merged["rows_inserted"]) == (20, 10, 10)
    assert _query(
        warehouse_env,
        f"SELECT count(*), count(DISTINCT id), min(id), max(id), count(*) FILTER (WHERE label LIKE 'm%') FROM {target}",
    ) == [(6010, 6010, 0, 6009, 20)]
    assert _query(
        warehouse_env, f"SELECT table_name FROM information_schema.tables WHERE table_schema = 'wh_{unique}'"
    ) == [("events",)]
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]  # the work files are removed


def test_the_local_stack_skips_the_wal_for_the_load(warehouse_env: Settings) -> None:
    assert _query(warehouse_env, "SHOW wal_level") == [("minimal",)]


_EVERY_TYPE = """
    SELECT * FROM VALUES
      (CAST(-128 AS tinyint), CAST(-32768 AS smallint), 2147483647, 9223372036854775807, CAST(1.5 AS float),
       CAST(1e300 AS double), CAST(-0.5 AS decimal(12,2)),
       CAST(-1234567890123456789012345678.0123456789 AS decimal(38,10)),
       'tab\\there, "quote",\\nnewline \\\\ back, ünïcode', DATE'1969-12-31', TIMESTAMP'1969-07-20 20:17:40.000001',
       TIMESTAMP_NTZ'2000-01-01 00:00:00', true, X'00FF0A', array(1, NULL), map('k', 1),
       named_struct('a', 'x', 'b', 2)),
      (NULL, NULL, NULL, NULL, NULL, CAST('NaN' AS double), NULL, NULL, '', NULL, NULL, NULL, false, X'', array(),
       map(), named_struct('a', NULL, 'b', NULL)),
      (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, DATE'2100-02-28', TIMESTAMP'2026-03-29 02:30:00',
       NULL, NULL, NULL, NULL, NULL, NULL)
    AS t(tiny, small, i, big, f, d, amount, wide, label, day, at, ntz, flag, raw, nums, kv, info)"""


def test_binary_and_csv_loads_store_the_same_values(
    spark: SparkSession, warehouse_env: Settings, tmp_path: Path, unique: str
) -> None:
    # a session time zone other than UTC: timestamps are the session's wall-clock time either way
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "Europe/Berlin")
    try:
        df = spark.sql(_EVERY_TYPE)
        loads = {
            single: load(
                spark,
                df,
                TableName(f"wh_{unique}", "binary" if single else "csv"),
                f"b_{unique}",
                connection_from_env(),
                LoadOptions(work_uri=(tmp_path / "work").as_uri(), single_transaction=single),
            )
            for single in (True, False)
        }
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)

    assert [(r["rows"], r["copy_format"]) for r in loads.values()] == [(3, "binary"), (3, "csv")]
    schema = f"wh_{unique}"
    assert _query(
        warehouse_env, f"SELECT count(*) FROM (SELECT * FROM {schema}.binary EXCEPT ALL SELECT * FROM {schema}.csv) d"
    ) == [(0,)]
    assert _query(
        warehouse_env, f"SELECT count(*) FROM (SELECT * FROM {schema}.csv EXCEPT ALL SELECT * FROM {schema}.binary) d"
    ) == [(0,)]
    rows = sorted(_query(warehouse_env, f"SELECT * FROM {schema}.binary"), key=lambda r: (r[12] is None, r[12]))
    assert rows[1][:13] == (
        -128,
        -32768,
        2147483647,
        9223372036854775807,
        1.5,
        1e300,
        Decimal("-0.50"),
        Decimal("-1234567890123456789012345678.0123456789"),
        'tab\there, "quote",\nnewline \\ back, ünïcode',
        date(1969, 12, 31),
        datetime(1969, 7, 20, 20, 17, 40, 1),
        datetime(2000, 1, 1),
        True,
    )
    assert (bytes(rows[1][13]), rows[1][14], rows[1][15], rows[1][16]) == (
        b"\x00\xff\n",
        [1, None],
        {"k": 1},
        {"a": "x", "b": 2},
    )
    assert rows[0][:5] == (None,) * 5 and str(rows[0][5]) == "nan" and rows[0][6:10] == (None, None, "", None)
    assert (rows[0][12], bytes(rows[0][13]), rows[0][14:]) == (False, b"", ([], {}, {}))  # to_json skips NULL fields
    # 02:30 does not exist in Berlin that night: Spark's timestamp is 03:30 there, and both loads say so
    assert rows[2][9:11] == (date(2100, 2, 28), datetime(2026, 3, 29, 3, 30))
    assert rows[2][:9] + rows[2][11:] == (None,) * 15
    types = _query(
        warehouse_env,
        "SELECT data_type FROM information_schema.columns WHERE table_schema = "
        f"'{schema}' AND table_name = 'binary' ORDER BY ordinal_position",
    )
    assert [t for (t,) in types] == [
        "smallint",
        "smallint",
        "integer",
        "bigint",
        "real",
        "double precision",
        "numeric",
        "numeric",
        "text",
        "date",
        "timestamp without time zone",
        "timestamp without time zone",
        "boolean",
        "bytea",
        "jsonb",
        "jsonb",
        "jsonb",
    ]


def test_decimals_of_every_shape_keep_their_value(
    spark: SparkSession, warehouse_env: Settings, tmp_path: Path, unique: str
) -> None:
    shapes = {
        "d4_4": (4, 4),
        "d5_1": (5, 1),
        "d12_2": (12, 2),
        "d18_0": (18, 0),
        "d18_9": (18, 9),
        "d18_18": (18, 18),
        "d19_2": (19, 2),
        "d38_10": (38, 10),
    }
    values = [
        "0",
        "-0",
        "1",
        "-1",
        "0.1",
        "-0.0001",
        "9999.5",
        "123456789012345678",
        "-99999999.999999999",
        "0.123456789012345678",
        "12345678901234567.8",
        "-1234567890123456789012345678.0123456789",
        None,
    ]
    rows = [
        f"({i}, " + ", ".join(f"CAST({v or 'NULL'} AS decimal({p},{q}))" for p, q in shapes.values()) + ")"
        for i, v in enumerate(values)
    ]
    # a value that does not fit a shape is NULL there (Spark's cast outside ANSI mode)
    df = spark.sql(f"SELECT * FROM VALUES {', '.join(rows)} AS t(id, {', '.join(shapes)})")
    for single in (True, False):
        load(
            spark,
            df,
            TableName(f"wh_{unique}", "binary" if single else "csv"),
            f"b_{unique}",
            connection_from_env(),
            LoadOptions(work_uri=(tmp_path / "work").as_uri(), single_transaction=single),
        )

    expected = sorted(tuple(r) for r in df.collect())
    assert sum(v is not None for row in expected for v in row[1:]) > 50  # most values fit most shapes
    for table in ("binary", "csv"):
        assert sorted(_query(warehouse_env, f"SELECT * FROM wh_{unique}.{table}")) == expected


@pytest.mark.parametrize("single", [True, False], ids=["one transaction", "parallel connections"])
@pytest.mark.parametrize("mode", ["replace", "merge"])
def test_a_failed_load_leaves_the_target_as_it_was(
    spark: SparkSession,
    warehouse_env: Settings,
    tmp_path: Path,
    unique: str,
    single: bool,
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warehouse, "_ROWS_PER_FILE", 150)  # files loaded before the failure
    target = TableName(f"wh_{unique}", "events")
    options = LoadOptions(
        mode=mode,
        keys=("id",) if mode == "merge" else (),
        work_uri=(tmp_path / "work").as_uri(),
        single_transaction=single,
    )
    load(
        spark,
        spark.range(0, 3000, numPartitions=2).selectExpr("id", "concat('e', id) AS label"),
        target,
        f"b1_{unique}",
        connection_from_env(),
        options,
    )
    failing = spark.range(0, 6000, numPartitions=3).selectExpr(
        "id", "CASE WHEN id = 5999 THEN raise_error('the last row fails') ELSE concat('f', id) END AS label"
    )

    with pytest.raises(Exception, match="the last row fails"):
        load(spark, failing, target, f"b2_{unique}", connection_from_env(), options)

    assert _query(
        warehouse_env, f"SELECT count(*), min(id), max(id), count(*) FILTER (WHERE label LIKE 'e%') FROM {target}"
    ) == [(3000, 0, 2999, 3000)]
    assert _query(
        warehouse_env, f"SELECT table_name FROM information_schema.tables WHERE table_schema = 'wh_{unique}'"
    ) == [("events",)]
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
