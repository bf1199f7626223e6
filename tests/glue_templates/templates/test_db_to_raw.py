"""db_to_raw against the real test Postgres: incremental reads by watermark, the watermark committed
only after the raw write, and recovery from a failure between the two without gap or duplicate."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg2
import pytest
from pyspark.sql import SparkSession

from lakehouse.config import Settings
from lakehouse_jobs.templates import db_to_raw

pytestmark = pytest.mark.integration


@pytest.fixture
def source(pg: Settings, monkeypatch: pytest.MonkeyPatch, unique: str) -> tuple[Settings, str]:
    """A source table in the test Postgres, reachable through a secret handed over like the local runner does."""
    monkeypatch.setenv(
        "LAKEHOUSE_SECRETS_JSON",
        json.dumps(
            {
                "src": {
                    "host": pg.pg_host,
                    "port": pg.pg_port,
                    "dbname": pg.warehouse_db,
                    "username": pg.pg_user,
                    "password": pg.pg_password,
                }
            }
        ),
    )
    table = f"src_{unique}.orders"
    _sql(
        pg,
        f"CREATE SCHEMA src_{unique}; CREATE TABLE {table} (id int PRIMARY KEY, note text, "
        f"updated_at timestamp NOT NULL)",
    )
    return pg, table


def _sql(pg: Settings, sql: str) -> None:
    with psycopg2.connect(pg.warehouse_dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)


def _insert(pg: Settings, table: str, ids: range, minute: int) -> None:
    values = ", ".join(f"({i}, 'o''{i}', TIMESTAMP '2026-11-23 10:{minute:02d}:00.123456')" for i in ids)
    _sql(pg, f"INSERT INTO {table} VALUES {values}")


def _run(tmp_path: Path, lake_uri: str, dataset: str, table: str, batch: str, *extra: str) -> dict:
    metrics_file = tmp_path / f"{batch}.json"
    db_to_raw.main(
        [
            "--batch_id",
            batch,
            "--lake_uri",
            lake_uri,
            "--metrics_uri",
            str(metrics_file),
            "--dataset",
            dataset,
            "--source_table",
            table,
            "--watermark_column",
            "updated_at",
            "--secret_id",
            "src",
            *extra,
        ]
    )
    return json.loads(metrics_file.read_text())


def _ids(spark: SparkSession, lake_uri: str, dataset: str) -> list[int]:
    return sorted(r["id"] for r in spark.read.parquet(f"{lake_uri}/raw/{dataset}").collect())


def test_incremental_reads_and_recovery_without_gap_or_duplicate(
    spark: SparkSession,
    source: tuple[Settings, str],
    tmp_path: Path,
    lake_uri: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg, table = source
    dataset = f"db_{unique}"
    _insert(pg, table, range(1, 6), minute=1)
    first = _run(tmp_path, lake_uri, dataset, table, "b1")
    assert (first["rows_out"], first["watermark_from"], first["watermark_to"]) == (
        5,
        None,
        "2026-11-23 10:01:00.123456",
    )
    raw = spark.read.parquet(first["raw_path"])
    assert {"id", "note", "updated_at", "_source_file", "_batch_id", "_ingested_at"} <= set(raw.columns)
    assert sorted(r["note"] for r in raw.collect())[0] == "o'1"

    _insert(pg, table, range(6, 9), minute=2)
    real_commit = db_to_raw.commit_watermark
    calls: list[dict] = []

    def crash_on_commit(uri: str, state: dict) -> None:
        calls.append(state)
        if "pending" not in state:  # the raw write has happened: fail before the watermark commit
            raise RuntimeError("simulated crash after the raw write")
        real_commit(uri, state)

    monkeypatch.setattr(db_to_raw, "commit_watermark", crash_on_commit)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, lake_uri, dataset, table, "b2")
    monkeypatch.setattr(db_to_raw, "commit_watermark", real_commit)
    assert spark.read.parquet(f"{lake_uri}/raw/{dataset}/_batch_id=b2").count() == 3  # written, not committed
    state = json.loads(Path(first["watermark_uri"].removeprefix("file://")).read_text())
    assert state["watermark"] == "2026-11-23 10:01:00.123456" and state["pending"]["batch_id"] == "b2"

    _insert(pg, table, range(9, 11), minute=3)
    third = _run(tmp_path, lake_uri, dataset, table, "b3")  # the next run: reads from the committed watermark
    assert third["discarded_uncommitted_batch"] == "b2"
    assert (third["rows_out"], third["watermark_from"]) == (5, "2026-11-23 10:01:00.123456")
    assert _ids(spark, lake_uri, dataset) == list(range(1, 11))  # every row once: no gap, no duplicate

    again = _run(tmp_path, lake_uri, dataset, table, "b3")  # re-run of a committed batch: same rows
    assert (again["rows_out"], again["watermark_from"], again["watermark_to"]) == (
        5,
        third["watermark_from"],
        third["watermark_to"],
    )
    empty = _run(tmp_path, lake_uri, dataset, table, "b4")  # nothing new: empty batch, watermark kept
    assert (empty["rows_out"], empty["watermark_to"]) == (0, third["watermark_to"])
    assert _ids(spark, lake_uri, dataset) == list(range(1, 11))


def test_query_source_and_retry_of_the_failed_batch(
    spark: SparkSession,
    source: tuple[Settings, str],
    tmp_path: Path,
    lake_uri: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg, table = source
    dataset = f"dbq_{unique}"
    _insert(pg, table, range(1, 4), minute=1)
    query = f"SELECT id, upper(note) AS note, updated_at FROM {table} WHERE id <> 2"
    args = ("--query", query)
    metrics_file = tmp_path / "q.json"
    base = [
        "--lake_uri",
        lake_uri,
        "--metrics_uri",
        str(metrics_file),
        "--dataset",
        dataset,
        "--watermark_column",
        "id",
        "--secret_id",
        "src",
        *args,
    ]
    db_to_raw.main(["--batch_id", "q1", *base])
    assert json.loads(metrics_file.read_text())["watermark_to"] == "3"
    _insert(pg, table, range(4, 6), minute=2)
    real_commit = db_to_raw.commit_watermark
    monkeypatch.setattr(db_to_raw, "commit_watermark", _failing_after_pending(real_commit))
    with pytest.raises(RuntimeError):
        db_to_raw.main(["--batch_id", "q2", *base])
    monkeypatch.setattr(db_to_raw, "commit_watermark", real_commit)
    db_to_raw.main(["--batch_id", "q2", *base])  # Airflow retries the same batch: it overwrites its folder
    assert json.loads(metrics_file.read_text())["rows_out"] == 2
    assert _ids(spark, lake_uri, dataset) == [1, 3, 4, 5]
    with pytest.raises(ValueError, match="exactly one of"):
        db_to_raw.main(["--batch_id", "q3", *base, "--source_table", table])


def _failing_after_pending(real):
    def commit(uri: str, state: dict) -> None:
        if "pending" not in state:
            raise RuntimeError("simulated crash")
        real(uri, state)

    return commit
