"""A Spark job killed in the middle of an SCD2 commit leaves the table exactly as it was, and the
batch applied again afterwards lands exactly once.

This runs the template the way the local runner does (``spark-submit``, its own JVM) and kills
that process group with SIGKILL as soon as the batch's first new file appears in the table's
folder: written, not committed. Iceberg's commit is one swap of the table's metadata pointer in
the catalog, so a dead writer leaves only unreferenced files (``remove_orphan_files`` clears them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.runners import JobRequest
from lakehouse.runners.local_spark import LocalSparkRunner
from lakehouse.runners.spark_conf import local_spark_conf
from lakehouse_jobs import io
from lakehouse_jobs.identifiers import sanitize_batch_id
from lakehouse_jobs.templates import raw_to_stage_scd2

pytestmark = pytest.mark.integration

KEYS = 200_000


def _write_raw(spark: SparkSession, lake_uri: str, dataset: str, batch: str, value: str, day: int) -> None:
    """KEYS records, every key with ``value``: the second batch changes every key."""
    path = io.lake_path(lake_uri, "raw", dataset, f"_batch_id={sanitize_batch_id(batch)}")
    spark.range(KEYS).select(
        F.format_string("K%07d", "id").alias("key"),
        F.lit(value).alias("value"),
        F.lit(f"s3://landing/{dataset}/{batch}.csv").alias("_source_file"),
        F.lit(batch).alias("_batch_id"),
        F.lit(datetime(2026, 11, day, 6, tzinfo=UTC)).alias("_ingested_at"),
        (F.col("id") + 1).alias("_line_number"),
    ).write.mode("overwrite").parquet(path)


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_a_job_killed_mid_commit_leaves_the_table_as_it_was(
    spark: SparkSession, pg: Settings, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    dataset, table = f"killed_{unique}", f"stage.killed_{unique}"
    args = ["--lake_uri", lake_uri, "--dataset", dataset, "--target_table", table, "--keys", "key"]
    _write_raw(spark, lake_uri, dataset, "b1", "v0", 1)
    raw_to_stage_scd2.main(["--batch_id", "b1", "--metrics_uri", str(tmp_path / "b1.json"), *args])
    _write_raw(spark, lake_uri, dataset, "b2", "v1", 2)

    catalog = SqlCatalog(pg.catalog_name, uri=pg.catalog_dsn, warehouse=pg.catalog_warehouse_uri)
    before = catalog.load_table(table)
    folder = Path(before.location().removeprefix("file://")) / "data"
    files_before = _files(folder)

    runner = LocalSparkRunner(pg)
    props = tmp_path / "spark.conf"
    props.write_text("".join(f"{k} {v}\n" for k, v in local_spark_conf(pg).items()))
    request = JobRequest(
        dataset,
        "to_stage",
        "raw_to_stage_scd2",
        "raw_to_stage_scd2.py",
        "b2",
        "b2",
        {"dataset": dataset, "target_table": table, "keys": "key"},
    )
    job = subprocess.Popen(
        runner.command(request, props, tmp_path / "b2.json"),
        env=runner.job_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not (_files(folder) - files_before):
            assert job.poll() is None, f"the job ended ({job.returncode}) before writing anything: no kill happened"
            assert time.monotonic() < deadline, "the job wrote no file into the table in 600 s"
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    written = _files(folder) - files_before

    after_kill = catalog.load_table(table)
    assert after_kill.metadata.current_snapshot_id == before.metadata.current_snapshot_id, "a commit slipped through"
    rows = after_kill.scan(selected_fields=("key", "value", "_is_current")).to_arrow()
    assert rows.num_rows == KEYS and set(rows.column("value").to_pylist()) == {"v0"}
    assert written, "the kill was meant to land after the batch's first file was written"

    # the user's next step: the task is retried or cleared, which applies the same batch again
    metrics_file = tmp_path / "b2-again.json"
    raw_to_stage_scd2.main(["--batch_id", "b2", "--metrics_uri", str(metrics_file), *args])
    assert json.loads(metrics_file.read_text())["versions_closed"] == KEYS
    final = catalog.load_table(table)
    assert len(final.metadata.snapshots) == len(before.metadata.snapshots) + 1
    history = spark.table(table).groupBy("value", "_is_current").count().collect()
    assert {(r["value"], r["_is_current"], r["count"]) for r in history} == {("v0", False, KEYS), ("v1", True, KEYS)}
    referenced = {Path(f.file.file_path.removeprefix("file://")) for f in final.scan().plan_files()}
    assert not (referenced & written), "a file of the killed try is part of the table"
