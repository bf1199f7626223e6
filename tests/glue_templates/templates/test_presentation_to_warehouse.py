"""presentation_to_warehouse into the real test Postgres: loads, replaces, never shows half a table."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from pyspark.sql import SparkSession

from lakehouse.config import Settings
from lakehouse_jobs.templates import presentation_to_warehouse

pytestmark = pytest.mark.integration


def _source(spark: SparkSession, name: str, rows: int) -> None:
    spark.sql("CREATE NAMESPACE IF NOT EXISTS presentation")
    spark.sql(
        f"CREATE OR REPLACE TABLE {name} USING iceberg AS "
        f"SELECT id, concat('day ', id) AS label, CAST(id * 1.5 AS decimal(12,2)) AS total FROM range({rows})"
    )


def _load(tmp_path: Path, lake_uri: str, source: str, target: str, batch: str) -> dict:
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
        ]
    )
    return json.loads(metrics_file.read_text())


def _query(settings: Settings, sql: str) -> list[tuple]:
    with psycopg2.connect(settings.warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_loads_then_replaces_atomically(
    spark: SparkSession, warehouse_env: Settings, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    source, schema = f"presentation.daily_{unique}", f"wh_{unique}"
    target = f"{schema}.daily"
    _source(spark, source, 3)

    first = _load(tmp_path, lake_uri, source, target, "scheduled__2026-11-23T00:00:00+00:00")

    assert first["rows_out"] == 3
    assert _query(warehouse_env, f"SELECT id, label, total FROM {target} ORDER BY id") == [
        (0, "day 0", 0),
        (1, "day 1", 1.5),
        (2, "day 2", 3),
    ]

    _source(spark, source, 500)
    counts: list[int] = []
    errors: list[str] = []
    done = threading.Event()

    def read_continuously() -> None:
        conn = psycopg2.connect(warehouse_env.warehouse_dsn)
        conn.autocommit = True
        deadline = time.monotonic() + 60
        try:
            with conn.cursor() as cur:
                while not done.is_set() and time.monotonic() < deadline:
                    try:
                        cur.execute(f"SELECT count(*) FROM {target}")
                        counts.append(cur.fetchone()[0])
                    except psycopg2.Error as exc:
                        errors.append(str(exc))
        finally:
            conn.close()

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        second = _load(tmp_path, lake_uri, source, target, "b2")
    finally:
        done.set()
        reader.join(timeout=70)
    counts.append(_query(warehouse_env, f"SELECT count(*) FROM {target}")[0][0])

    assert second["rows_out"] == 500
    assert errors == []
    assert set(counts) <= {3, 500} and counts[-1] == 500 and len(counts) > 1
    leftovers = _query(
        warehouse_env,
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}' ORDER BY table_name",
    )
    assert leftovers == [("daily",)]


def test_refuses_unsafe_names_and_missing_connection(
    spark: SparkSession, tmp_path: Path, lake_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="--target_table"):
        _load(tmp_path, lake_uri, "presentation.x", 'public.x"; DROP TABLE y; --', "b1")
    monkeypatch.delenv("LAKEHOUSE_WAREHOUSE_JDBC_URL", raising=False)
    with pytest.raises(ValueError, match="--secret_id"):
        _load(tmp_path, lake_uri, "presentation.x", "public.x", "b1")
