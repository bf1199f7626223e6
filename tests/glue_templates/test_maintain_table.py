"""maintain_table: compaction, snapshot expiry and orphan removal with Iceberg's own procedures, its
parameters declared in metadata, its documented schedule, and what happens when it meets a batch.

A compaction and an SCD2 batch on one table must never lose or duplicate a version. On the JDBC
catalog they take the same lock; without it (Glue's catalog) Iceberg's commit validation must make
the later of two conflicting commits fail, and the batch applied again must land exactly once. Both
orders are forced here deterministically, and the two are also run at once in threads.
"""

from __future__ import annotations

import ast
import json
import os
import re
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from pyspark.sql import DataFrame, SparkSession

from lakehouse.config import Settings
from lakehouse.flows import Template, validate_flow
from lakehouse.metadata.flow_documents import flow_from_document
from lakehouse_jobs.args import COMMON_ARGS, JobArgumentError, parse_job_args
from lakehouse_jobs.identifiers import TableName, parse_table_name
from lakehouse_jobs.scd2 import Scd2Error, apply_changes, jvm, plan, storage
from lakehouse_jobs.templates import maintain_table

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
D1, D2, D3 = datetime(2026, 11, 1, 6), datetime(2026, 11, 2, 6), datetime(2026, 11, 3, 6)
DDL = "invoice_id string, amount double, changed_at timestamp, _source_file string, _line_number bigint"
B1 = [("A", 10.0, D1, "f1", 1), ("B", 20.0, D1, "f1", 2)]
B2 = [("A", 11.0, D2, "f2", 1), ("C", 30.0, D2, "f2", 2)]
B3 = [("A", 12.0, D3, "f3", 1), ("D", 40.0, D3, "f3", 2)]
AFTER_B2 = [("A", 10.0, D1, D2), ("A", 11.0, D2, None), ("B", 20.0, D1, None), ("C", 30.0, D2, None)]
AFTER_B3 = [
    ("A", 10.0, D1, D2),
    ("A", 11.0, D2, D3),
    ("A", 12.0, D3, None),
    ("B", 20.0, D1, None),
    ("C", 30.0, D2, None),
    ("D", 40.0, D3, None),
]


def _apply(spark: SparkSession, table: TableName, rows: list[tuple[Any, ...]], batch_id: str) -> Any:
    return apply_changes(spark, table, spark.createDataFrame(rows, DDL), ["invoice_id"], "changed_at", batch_id)


def _history(spark: SparkSession, name: str, snapshot: int | None = None) -> list[tuple[Any, ...]]:
    version = f" VERSION AS OF {snapshot}" if snapshot is not None else ""
    return [
        (r["invoice_id"], r["amount"], r["_valid_from"], r["_valid_to"])
        for r in spark.sql(f"SELECT * FROM {name}{version} ORDER BY invoice_id, _valid_from").collect()
    ]


def _maintain(tmp_path: Path, lake_uri: str, name: str, *extra: str) -> dict[str, Any]:
    metrics = tmp_path / f"maintain-{time.monotonic_ns()}.json"
    maintain_table.main(
        ["--batch_id", "m", "--lake_uri", lake_uri, "--metrics_uri", str(metrics), "--table", name, *extra]
    )
    return json.loads(metrics.read_text())


def _table_with_history(spark: SparkSession, unique: str, stem: str) -> tuple[str, TableName]:
    name = f"stage.{stem}_{unique}"
    table = parse_table_name(name, "table")
    _apply(spark, table, B1, "b1")
    _apply(spark, table, B2, "b2")
    return name, table


class _NoLock:
    """The lock as it is on a catalog other than Postgres JDBC: none."""

    def __init__(self, *args: Any) -> None:
        pass

    def __enter__(self) -> bool:
        return False

    def __exit__(self, *args: Any) -> None:
        return None


def _catalogue_template(settings: Settings) -> Template:
    with psycopg2.connect(settings.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_jsonb(t) FROM lakehouse.templates t WHERE template_id = 'maintain_table'")
        (row,) = cur.fetchone()
    return Template.from_row(row)


def test_parameters_are_declared_in_metadata_and_the_documented_schedule_is_valid(pg: Settings) -> None:
    template = _catalogue_template(pg)
    assert template.script_location == "maintain_table.py"
    assert {(p.name, p.type, p.required, p.default) for p in template.parameters} == {
        (s.name, s.type, s.required, s.default) for s in maintain_table.SPEC
    }
    doc = (ROOT / "docs" / "scd2.md").read_text()
    section = doc[doc.index("## Maintenance") :]
    document = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1))  # type: ignore[union-attr]
    flow = flow_from_document(document)
    assert flow.schedule and [t.template_id for t in flow.tasks] == ["maintain_table"]
    assert validate_flow(flow, {"maintain_table": template}) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--snapshot_retention_days", "0"], "--snapshot_retention_days must be above 0"),
        (["--retain_last", "0"], "--retain_last must be at least 1"),
        (["--orphan_file_age_days", "0.5"], "--orphan_file_age_days must be at least 1"),
        (["--delete_file_threshold", "0"], "--delete_file_threshold must be at least 1"),
    ],
)
def test_a_hand_run_job_refuses_bad_values_before_spark(tmp_path: Path, extra: list[str], message: str) -> None:
    args = parse_job_args(
        ["--batch_id", "b", "--lake_uri", tmp_path.as_uri(), "--table", "stage.t", *extra],
        (*COMMON_ARGS, *maintain_table.SPEC),
    )
    with pytest.raises(JobArgumentError, match=message):
        maintain_table.validate(args)


def test_the_entry_script_only_calls_its_template() -> None:
    tree = ast.parse((ROOT / "glue_templates" / "maintain_table.py").read_text())
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [
        ("lakehouse_jobs.templates", ["maintain_table"])
    ]


def _data_folder(spark: SparkSession, table: TableName) -> Path:
    return Path(jvm.load_table(spark, table).location().removeprefix("file:")) / "data"


def test_maintenance_compacts_expires_within_retention_and_removes_only_old_orphans(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    name, table = _table_with_history(spark, unique, "maintained")
    first = spark.sql(f"SELECT min_by(snapshot_id, committed_at) FROM {name}.snapshots").first()[0]
    old_orphan, young_orphan = (
        _data_folder(spark, table) / "orphan-old.parquet",
        _data_folder(spark, table) / "orphan-young.parquet",
    )
    for orphan in (old_orphan, young_orphan):
        orphan.write_bytes(b"not a table file")
    three_days_ago = time.time() - 3 * 86400
    os.utime(old_orphan, (three_days_ago, three_days_ago))

    report = _maintain(tmp_path, lake_uri, name, "--rewrite_all", "true")
    before, after = report["files_before"], report["files_after"]
    assert before["delete_files"] >= 1 and after["delete_files"] == 0
    assert after["data_files"] < before["data_files"]
    assert report["rows_in"] == report["rows_out"] == 4
    assert _history(spark, name) == AFTER_B2
    assert (report["orphan_files_removed"], old_orphan.exists(), young_orphan.exists()) == (1, False, True)
    # within the retention every snapshot is kept: time travel to the first still works
    assert _history(spark, name, first) == [("A", 10.0, D1, None), ("B", 20.0, D1, None)]

    time.sleep(2)
    report = _maintain(tmp_path, lake_uri, name, "--snapshot_retention_days", str(1 / 86400), "--retain_last", "1")
    assert spark.sql(f"SELECT count(*) FROM {name}.snapshots").first()[0] == 1
    assert report["expire_snapshots"]["deleted_data_files_count"] >= 1  # the files compaction replaced
    with pytest.raises(Exception, match=str(first)):
        _history(spark, name, first)
    assert _history(spark, name) == AFTER_B2


def test_a_compaction_committed_while_a_batch_is_computed_makes_the_batch_fail_then_land_once(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lock (another catalog): the compaction commits after the batch read the table; the batch
    refuses to commit (its snapshot is gone), and applied again it lands exactly once."""
    name, table = _table_with_history(spark, unique, "compacted_between")
    monkeypatch.setattr(storage, "table_lock", _NoLock)
    original = plan.direct
    compacted: list[dict[str, Any]] = []

    def direct_then_compact(*args: Any, **kwargs: Any) -> DataFrame:
        if not compacted:
            compacted.append(_maintain(tmp_path, lake_uri, name, "--rewrite_all", "true", "--remove_orphans", "false"))
        return original(*args, **kwargs)

    monkeypatch.setattr(plan, "direct", direct_then_compact)
    with pytest.raises(Scd2Error, match="changed while this batch was computed"):
        _apply(spark, table, B3, "b3")
    assert compacted[0]["files_after"]["delete_files"] == 0
    assert _history(spark, name) == AFTER_B2
    monkeypatch.setattr(plan, "direct", original)
    _apply(spark, table, B3, "b3")
    assert _history(spark, name) == AFTER_B3


def test_a_compaction_committed_just_before_the_row_delta_fails_the_row_delta_validation(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrowest window: after the batch checked the snapshot, before its row delta commits.
    Iceberg's validation refuses the row delta (the files its deletes point at were rewritten), the
    files it wrote are deleted, and the batch applied again lands exactly once."""
    name, table = _table_with_history(spark, unique, "compacted_at_commit")
    monkeypatch.setattr(storage, "table_lock", _NoLock)
    original = jvm.commit_row_delta

    def compact_then_commit(*args: Any, **kwargs: Any) -> None:
        _maintain(tmp_path, lake_uri, name, "--rewrite_all", "true", "--remove_orphans", "false")
        original(*args, **kwargs)

    monkeypatch.setattr(jvm, "commit_row_delta", compact_then_commit)
    with pytest.raises(Exception, match="ValidationException"):
        _apply(spark, table, B3, "b3")
    monkeypatch.setattr(jvm, "commit_row_delta", original)
    assert _history(spark, name) == AFTER_B2
    on_disk = {p.as_uri() for p in _data_folder(spark, table).rglob("*.parquet")}
    of_table = {
        Path(r[0].removeprefix("file:")).as_uri()
        for r in spark.sql(f"SELECT file_path FROM {name}.all_files").collect()
    }
    assert on_disk == of_table  # the failed batch's files are gone
    _apply(spark, table, B3, "b3")
    assert _history(spark, name) == AFTER_B3


@pytest.mark.parametrize("locked", [True, False], ids=["lock", "no-lock"])
def test_a_batch_and_a_compaction_at_once_lose_and_duplicate_no_version(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str, monkeypatch: pytest.MonkeyPatch, locked: bool
) -> None:
    """Both started together, in whatever order they interleave: with the lock both succeed; without
    it one may fail Iceberg's conflict check. Whatever failed is run again; then the table has each
    version exactly once."""
    name, table = _table_with_history(spark, unique, f"at_once_{'lock' if locked else 'nolock'}")
    if not locked:
        monkeypatch.setattr(storage, "table_lock", _NoLock)
    failures: dict[str, BaseException] = {}

    def batch() -> None:
        try:
            _apply(spark, table, B3, "b3")
        except BaseException as exc:
            failures["batch"] = exc

    def compaction() -> None:
        try:
            _maintain(tmp_path, lake_uri, name, "--rewrite_all", "true", "--remove_orphans", "false")
        except BaseException as exc:
            failures["compaction"] = exc

    threads = [threading.Thread(target=batch), threading.Thread(target=compaction)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if locked:
        assert failures == {}
    for what, error in failures.items():  # only a conflict may fail a run
        assert re.search(
            r"changed while this batch was computed|ValidationException|CommitFailedException", f"{error}"
        ), f"{what}: {error}"
    if "batch" in failures:
        _apply(spark, table, B3, "b3")
    assert _history(spark, name) == AFTER_B3  # each version once: none lost, none twice
