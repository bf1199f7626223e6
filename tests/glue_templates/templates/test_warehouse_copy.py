"""How the Postgres load copies: on a wal_level=minimal server one transaction copies each file as
soon as Spark has finished it, elsewhere several connections copy after the write; every row lands
exactly once and nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest
from pyspark.sql import SparkSession

from lakehouse.config import Settings
from lakehouse_jobs import warehouse
from lakehouse_jobs.identifiers import TableName
from lakehouse_jobs.warehouse import LoadOptions, connection_from_env, load

pytestmark = pytest.mark.integration


def _query(settings: Settings, sql: str) -> list[tuple]:
    with psycopg2.connect(settings.warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_complete_files_follow_the_committer_layout(spark: SparkSession, tmp_path: Path) -> None:
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

    found = warehouse._complete_files(spark, tmp_path.as_uri())

    assert {name: length for name, (_, length) in found.items()} == {
        "part-00000-u-c000.csv": 2, "part-00000-u-c001.csv": 2, "part-00001-u-c000.csv": 2}
    assert warehouse._complete_files(spark, (tmp_path / "missing").as_uri()) == {}


@pytest.mark.parametrize("single", [True, False], ids=["one transaction", "parallel connections"])
def test_every_row_lands_exactly_once(
        spark: SparkSession, warehouse_env: Settings, tmp_path: Path, unique: str, single: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warehouse, "_ROWS_PER_FILE", 150)  # many small files per task
    target = TableName(f"wh_{unique}", "events")
    df = spark.range(0, 6000, numPartitions=3).selectExpr("id", "concat('e', id) AS label")
    options = LoadOptions(work_uri=(tmp_path / "work").as_uri(), single_transaction=single)

    first = load(spark, df, target, f"b1_{unique}", connection_from_env(), options)
    merged = load(spark, spark.range(5990, 6010, numPartitions=2).selectExpr("id", "concat('m', id) AS label"),
                  target, f"b2_{unique}", connection_from_env(),
                  LoadOptions(mode="merge", keys=("id",), work_uri=options.work_uri, single_transaction=single))

    assert (first["rows"], first["copy_files"]) == (6000, 3 * 14 if single else 3)  # copied as written: small files
    assert (merged["rows"], merged["rows_replaced"], merged["rows_inserted"]) == (20, 10, 10)
    assert _query(warehouse_env, f"SELECT count(*), count(DISTINCT id), min(id), max(id), "
                                 f"count(*) FILTER (WHERE label LIKE 'm%') FROM {target}") == [(6010, 6010, 0, 6009, 20)]
    assert _query(warehouse_env, "SELECT table_name FROM information_schema.tables "
                                 f"WHERE table_schema = 'wh_{unique}'") == [("events",)]
    assert not list((tmp_path / "work").rglob("*.csv"))  # the work files are removed


def test_the_local_stack_skips_the_wal_for_the_load(warehouse_env: Settings) -> None:
    assert _query(warehouse_env, "SHOW wal_level") == [("minimal",)]
