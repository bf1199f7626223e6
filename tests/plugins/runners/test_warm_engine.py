"""The warm engine with real Spark drivers: one run's settings, temporary views and secrets never
reach the next run on the same driver; every run sees commits made meanwhile by another engine;
a task that leaves mid-run stops its Spark work; a crashed driver fails its run and is replaced."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from lakehouse.config import Settings
from lakehouse.runners import JobFailedError, JobRequest
from lakehouse.runners.local_spark import LocalSparkRunner
from lakehouse.runners.spark_pool import SparkPool, pool_socket, pool_status, request_run

pytestmark = pytest.mark.integration

PROBE = """
import json, os, sys, time
from pyspark.sql import SparkSession
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
spark = SparkSession.builder.getOrCreate()
report = {"pid": os.getpid(), "conf_before": spark.conf.get("spark.lakehouse.probe", "unset"),
          "had_view": spark.catalog.tableExists("probe_view"),
          "secrets": os.environ.get("LAKEHOUSE_SECRETS_JSON")}
spark.conf.set("spark.lakehouse.probe", args["--flow_id"])
spark.range(1).createOrReplaceTempView("probe_view")
if args.get("--table"):
    report["rows"] = spark.table(args["--table"]).count()
if args.get("--sql"):
    spark.sql(args["--sql"])
with open(args["--metrics_uri"], "w") as out:
    json.dump(report, out)
print("probe done", flush=True)
"""

SLOW = """
import os
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
print(f"slow started pid={os.getpid()}", flush=True)
spark.range(10**13).selectExpr("sum(id * id)").collect()
"""

CRASH = """
import os, signal
print(f"crashing pid={os.getpid()}", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(scope="module")
def warm(pg: Settings, jars: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One real driver on its own short home (Unix socket paths are short), the session's Postgres."""
    home = Path(os.environ["LAKEHOUSE_HOME"]) / "warm"
    settings = pg.model_copy(update={"home": home})
    pool = SparkPool(settings, size=1, max_runs=50, max_rss_mb=8192)
    threading.Thread(target=pool.serve_forever, args=(pool_socket(settings),), daemon=True).start()
    deadline = time.monotonic() + 300
    while not (pool_status(settings) or {}).get("ready"):
        assert time.monotonic() < deadline, "the warm driver never became ready"
        time.sleep(0.5)
    yield settings
    pool.stop()


def probe(
    settings: Settings, scripts: Path, flow_id: str, secrets: dict[str, Any] | None = None, **arguments: str
) -> dict[str, Any]:
    script = scripts / "probe.py"
    script.write_text(PROBE)
    request = JobRequest(flow_id, "probe", "probe", str(script), "r1", "b1", dict(arguments), secrets=secrets or {})
    return LocalSparkRunner(settings, mode="warm").run(request).metrics


def test_a_run_never_sees_the_settings_views_or_secrets_of_the_run_before(warm: Settings, tmp_path: Path) -> None:
    first = probe(warm, tmp_path, "first", secrets={"shop": {"password": "pw-1"}})
    second = probe(warm, tmp_path, "second")
    assert first["pid"] == second["pid"]  # the same warm driver served both
    assert json.loads(first["secrets"]) == {"shop": {"password": "pw-1"}}
    assert first["had_view"] is False
    assert (second["conf_before"], second["had_view"], second["secrets"]) == ("unset", False, None)


def test_every_run_sees_the_commits_made_before_it(warm: Settings, tmp_path: Path) -> None:
    table = f"stage.warm_{uuid.uuid4().hex[:8]}"
    probe(warm, tmp_path, "create", sql=f"CREATE TABLE {table} (id bigint) USING iceberg")
    probe(warm, tmp_path, "insert", sql=f"INSERT INTO {table} VALUES (1)")
    assert probe(warm, tmp_path, "read", table=table)["rows"] == 1
    catalog = SqlCatalog(warm.catalog_name, uri=warm.catalog_dsn, warehouse=warm.catalog_warehouse_uri)
    catalog.load_table(table).append(pa.table({"id": pa.array([2], pa.int64())}))  # another engine commits
    assert probe(warm, tmp_path, "read", table=table)["rows"] == 2


def _pid(line: str) -> int:
    return int(line.split("pid=")[1].split()[0])


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_task_that_leaves_mid_run_stops_its_spark_work(warm: Settings, tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(SLOW)
    started: list[int] = []

    def leave(line: str) -> None:
        if "slow started" in line:
            started.append(_pid(line))
            raise TimeoutError("the task timed out")  # what Airflow's timeout or a kill does: the task leaves

    with pytest.raises(TimeoutError):
        request_run(warm, {"script": str(script), "argv": [], "env": {}, "run_id": "slow"}, leave)
    assert started and _gone(started[0]), "the driver running the abandoned job is still there"
    assert probe(warm, tmp_path, "after")["pid"] != started[0]  # a new driver serves the next run


def test_a_crashed_driver_fails_its_run_clearly_and_is_replaced(warm: Settings, tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    request = JobRequest("f", "crash", "crash", str(script), "r1", "b1")
    with pytest.raises(JobFailedError, match=r"the warm Spark driver died during the run .*it is replaced"):
        LocalSparkRunner(warm, mode="warm").run(request)
    assert probe(warm, tmp_path, "after")["conf_before"] == "unset"
