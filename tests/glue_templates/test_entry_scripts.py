"""The entry scripts run as real jobs: one ``spark-submit glue_templates/landing_to_raw.py`` run.

Everything else calls ``main`` in-process; this proves the thin script, its import of the library
from the script's own folder (no PYTHONPATH) and the exit status work the way the local runner and
Glue use them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakehouse.config import Settings
from lakehouse.runners.spark_conf import local_spark_conf

pytestmark = pytest.mark.integration

TEMPLATES = Path(__file__).resolve().parents[2] / "glue_templates"


def test_spark_submit_runs_landing_to_raw(spark: SparkSession, pg: Settings, tmp_path: Path, unique: str) -> None:
    source = tmp_path / "inv.txt"
    source.write_text("INV-1 10.00\nINV-2 oops\nINV-3 30.50\n")
    properties = tmp_path / "spark.conf"
    properties.write_text("".join(f"{k} {v}\n" for k, v in local_spark_conf(pg).items()))
    metrics_file = tmp_path / "metrics.json"
    spark_submit = Path(sys.executable).with_name("spark-submit")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable})
    argv = [
        str(spark_submit if spark_submit.exists() else "spark-submit"),
        "--properties-file",
        str(properties),
        str(TEMPLATES / "landing_to_raw.py"),
        "--JOB_NAME",
        "glue-adds-this",
        "--flow_id",
        "f",
        "--task_id",
        "landing_to_raw",
        "--run_id",
        "r",
        "--batch_id",
        f"submit_{unique}",
        "--lake_uri",
        pg.lake_uri,
        "--metrics_uri",
        str(metrics_file),
        "--source_uri",
        str(source),
        "--dataset",
        f"submit_{unique}",
        "--format",
        "regex",
        "--regex",
        r"(?<invoice_id>INV-\d+) (?<amount>\S+)",
        "--schema",
        '{"amount": "decimal(10,2)"}',
        "--max_reject_ratio",
        "0.5",
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[landing_to_raw] ok rows_in=3 rows_out=2 rows_rejected=1" in done.stdout
    metrics = json.loads(metrics_file.read_text())
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_rejected"]) == (3, 2, 1)
    assert sorted(r["invoice_id"] for r in spark.read.parquet(metrics["raw_path"]).collect()) == ["INV-1", "INV-3"]

    argv[argv.index("--max_reject_ratio") + 1] = "0.1"
    failed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert failed.returncode != 0
    assert "1 of 3 lines rejected" in failed.stdout + failed.stderr
    assert "max_reject_ratio" in json.loads(metrics_file.read_text())["error"]
