"""raw_to_stage_scd2 end to end: raw parquet batches in, Iceberg SCD2 history out."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from lakehouse_jobs import io
from lakehouse_jobs.identifiers import sanitize_batch_id
from lakehouse_jobs.scd2 import Scd2Error
from lakehouse_jobs.templates import raw_to_stage_scd2

pytestmark = pytest.mark.integration

T1 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
T2 = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)


def _write_raw(
    spark: SparkSession,
    lake_uri: str,
    dataset: str,
    batch: str,
    ingested_at: datetime,
    rows: list[dict[str, Any]],
    ddl: str | None = None,
) -> None:
    """A raw batch as landing_to_raw leaves it: data columns plus the lineage columns."""
    records = [
        {
            **row,
            "_source_file": f"s3://landing/{dataset}/{batch}.txt",
            "_batch_id": batch,
            "_ingested_at": ingested_at,
            "_line_number": i,
        }
        for i, row in enumerate(rows, start=1)
    ]
    schema = (
        f"{ddl}, _source_file string, _batch_id string, _ingested_at timestamp, _line_number bigint" if ddl else None
    )
    path = io.lake_path(lake_uri, "raw", dataset, f"_batch_id={sanitize_batch_id(batch)}")
    spark.createDataFrame(records, schema).write.mode("overwrite").parquet(path)


def _apply(tmp_path: Path, lake_uri: str, dataset: str, table: str, batch: str, *extra: str) -> dict[str, Any]:
    metrics_file = tmp_path / f"{sanitize_batch_id(batch)}.json"
    raw_to_stage_scd2.main(
        [
            "--batch_id",
            batch,
            "--lake_uri",
            lake_uri,
            "--metrics_uri",
            str(metrics_file),
            "--dataset",
            dataset,
            "--target_table",
            table,
            "--keys",
            "invoice_id",
            *extra,
        ]
    )
    return json.loads(metrics_file.read_text())


def _versions(spark: SparkSession, table: str) -> list[dict[str, Any]]:
    return [r.asDict() for r in spark.table(table).orderBy("invoice_id", "_valid_from").collect()]


def _snapshot_count(spark: SparkSession, table: str) -> int:
    return spark.sql(f"SELECT count(*) FROM {table}.snapshots").first()[0]


def test_changed_unchanged_new_keys_and_idempotent_rerun(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    dataset, table = f"inv_{unique}", f"stage.inv_{unique}"
    _write_raw(
        spark,
        lake_uri,
        dataset,
        "b1",
        T1,
        [
            {"invoice_id": "A", "amount": 10.0, "customer": "acme"},
            {"invoice_id": "B", "amount": 20.0, "customer": "globex"},
            {"invoice_id": "C", "amount": 30.0, "customer": None},
        ],
    )
    first = _apply(tmp_path, lake_uri, dataset, table, "b1")
    assert (first["rows_in"], first["rows_out"], first["versions_closed"]) == (3, 3, 0)

    _write_raw(
        spark,
        lake_uri,
        dataset,
        "b2",
        T2,
        [
            {"invoice_id": "A", "amount": 11.0, "customer": "acme"},  # changed
            {"invoice_id": "B", "amount": 20.0, "customer": "globex"},  # unchanged
            {"invoice_id": "D", "amount": 40.0, "customer": "hooli"},  # new
        ],
    )
    before_b2 = _snapshot_count(spark, table)
    second = _apply(tmp_path, lake_uri, dataset, table, "b2")
    assert (second["rows_in"], second["rows_out"], second["versions_closed"]) == (3, 2, 1)
    assert _snapshot_count(spark, table) == before_b2 + 1  # closes and inserts in one commit

    rows = _versions(spark, table)
    assert len(rows) == 5 and sum(r["_is_current"] for r in rows) == 4
    assert not any(r["_is_deleted"] for r in rows)
    a_old, a_new = [r for r in rows if r["invoice_id"] == "A"]
    assert (a_old["amount"], a_old["_is_current"], a_new["amount"], a_new["_is_current"]) == (10.0, False, 11.0, True)
    assert a_old["_valid_to"] == a_new["_valid_from"] == T2.replace(tzinfo=None)
    assert a_old["_valid_from"] == T1.replace(tzinfo=None) and a_new["_valid_to"] is None
    assert (a_old["_batch_id"], a_new["_batch_id"]) == ("b1", "b2")
    b = [r for r in rows if r["invoice_id"] == "B"]
    assert len(b) == 1 and b[0]["_batch_id"] == "b1" and b[0]["_valid_to"] is None
    assert spark.table(table).columns[:3] == ["invoice_id", "amount", "customer"]
    assert spark.table(table).columns[3:] == [
        "_valid_from",
        "_valid_to",
        "_is_current",
        "_is_deleted",
        "_row_hash",
        "_batch_id",
        "_source_file",
        "_loaded_at",
    ]

    snapshots = _snapshot_count(spark, table)
    rerun = _apply(tmp_path, lake_uri, dataset, table, "b2")
    assert (rerun["rows_out"], rerun["versions_closed"], rerun["committed"]) == (0, 0, False)
    assert _versions(spark, table) == rows
    assert _snapshot_count(spark, table) == snapshots
    assert spark.sql(f"DESCRIBE TABLE EXTENDED {table}").filter("col_name = 'Provider'").first()[1] == "iceberg"


def test_several_records_per_key_in_sequence_order(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    dataset, table = f"seq_{unique}", f"stage.seq_{unique}"
    _write_raw(
        spark,
        lake_uri,
        dataset,
        "b1",
        T1,
        [
            {"invoice_id": "A", "status": "paid", "changed_at": "2026-11-01T12:00:00"},
            {"invoice_id": "A", "status": "open", "changed_at": "2026-11-01T09:00:00"},
            {"invoice_id": "A", "status": "open", "changed_at": "2026-11-01T10:00:00"},  # consecutive duplicate
            {"invoice_id": "B", "status": "open", "changed_at": "2026-11-01T09:00:00"},
        ],
    )
    metrics = _apply(tmp_path, lake_uri, dataset, table, "b1", "--sequence_by", "changed_at")
    assert metrics["rows_out"] == 3
    a = [r for r in _versions(spark, table) if r["invoice_id"] == "A"]
    assert [
        (r["status"], r["_valid_from"].hour, r["_valid_to"] and r["_valid_to"].hour, r["_is_current"]) for r in a
    ] == [("open", 9, 12, False), ("paid", 12, None, True)]

    rerun = _apply(tmp_path, lake_uri, dataset, table, "b1", "--sequence_by", "changed_at")
    assert rerun["rows_out"] == 0 and len(_versions(spark, table)) == 3


def test_same_key_same_sequence_different_content_is_an_error(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    dataset, table = f"tie_{unique}", f"stage.tie_{unique}"
    _write_raw(
        spark,
        lake_uri,
        dataset,
        "b1",
        T1,
        [
            {"invoice_id": "A", "status": "open", "changed_at": "2026-11-01T09:00:00"},
            {"invoice_id": "A", "status": "paid", "changed_at": "2026-11-01T09:00:00"},
        ],
    )
    with pytest.raises(Scd2Error, match=r"same key and the same changed_at.*invoice_id='A'"):
        _apply(tmp_path, lake_uri, dataset, table, "b1", "--sequence_by", "changed_at")
    assert not spark.catalog.tableExists(table)


def test_null_key_is_an_error_naming_the_row(spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str) -> None:
    dataset, table = f"nullkey_{unique}", f"stage.nullkey_{unique}"
    _write_raw(
        spark,
        lake_uri,
        dataset,
        "b1",
        T1,
        [
            {"invoice_id": "A", "amount": 1.0},
            {"invoice_id": None, "amount": 2.0},
        ],
    )
    with pytest.raises(Scd2Error, match=r"NULL in key column\(s\) \['invoice_id'\] at s3://landing/.*b1\.txt line 2"):
        _apply(tmp_path, lake_uri, dataset, table, "b1")
    metrics = json.loads((tmp_path / "b1.json").read_text())
    assert "line 2" in metrics["error"]


def test_nulls_new_columns_and_untracked_columns(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    dataset, table = f"evo_{unique}", f"stage.evo_{unique}"
    _write_raw(
        spark,
        lake_uri,
        dataset,
        "b1",
        T1,
        [
            {"invoice_id": "A", "customer": None, "note": "n1"},
            {"invoice_id": "B", "customer": "x", "note": "n1"},
        ],
        ddl="invoice_id string, customer string, note string",
    )
    _apply(tmp_path, lake_uri, dataset, table, "b1", "--track_except", "note")
    _write_raw(
        spark,
        lake_uri,
        dataset,
        "b2",
        T2,
        [
            {"invoice_id": "A", "customer": "", "note": "n1", "region": None},  # NULL -> '' is a change
            {"invoice_id": "B", "customer": "x", "note": "n2", "region": None},  # only untracked note changed
        ],
        ddl="invoice_id string, customer string, note string, region string",
    )
    metrics = _apply(tmp_path, lake_uri, dataset, table, "b2", "--track_except", "note")
    assert (metrics["rows_out"], metrics["versions_closed"], metrics["versions_updated"]) == (1, 1, 1)
    rows = _versions(spark, table)
    assert "region" in spark.table(table).columns and all(r["region"] is None for r in rows)
    assert [(r["customer"], r["_is_current"]) for r in rows if r["invoice_id"] == "A"] == [(None, False), ("", True)]
    [b] = [r for r in rows if r["invoice_id"] == "B"]
    assert (b["note"], b["_batch_id"], b["_is_current"]) == ("n2", "b1", True)
