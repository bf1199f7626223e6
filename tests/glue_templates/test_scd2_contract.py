"""SCD2 contract rules that a random batch sequence does not reach: re-runs and concurrent runs
(rules 3, 12), failure atomicity (rules 8, 9), parameters declared in metadata and validated before
the job starts, and reading a stage table with Spark SQL, PyIceberg and time travel."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.flows import Flow, Template, validate_flow
from lakehouse_jobs import io, scd2
from lakehouse_jobs.args import COMMON_ARGS, JobArgumentError, parse_job_args
from lakehouse_jobs.identifiers import TableName, parse_table_name, sanitize_batch_id
from lakehouse_jobs.scd2 import Scd2Error, apply_changes, merge, plan, reads, row_delta, storage
from lakehouse_jobs.templates import raw_to_stage_scd2

pytestmark = pytest.mark.integration

D1, D2, D3 = datetime(2026, 11, 1, 6), datetime(2026, 11, 2, 6), datetime(2026, 11, 3, 6)
DDL = "invoice_id string, amount double, changed_at timestamp, _source_file string, _line_number bigint"


def _batch(spark: SparkSession, rows: list[tuple[Any, ...]], ddl: str = DDL) -> DataFrame:
    return spark.createDataFrame(rows, ddl)


def _snapshot(spark: SparkSession, table: str) -> int | None:
    jvm = spark.sparkContext._jvm
    iceberg = jvm.org.apache.iceberg.spark.Spark3Util.loadIcebergTable(spark._jsparkSession, table)
    iceberg.refresh()
    current = iceberg.currentSnapshot()
    return current.snapshotId() if current is not None else None


def _rows(spark: SparkSession, table: str) -> list[dict[str, Any]]:
    return [r.asDict() for r in spark.table(table).drop("_loaded_at").orderBy("invoice_id", "_valid_from").collect()]


def _table(unique: str, stem: str) -> tuple[str, TableName]:
    name = f"stage.{stem}_{unique}"
    return name, parse_table_name(name, "table")


B1 = [("A", 10.0, D1, "f1", 1), ("B", 20.0, D1, "f1", 2)]
B2 = [("A", 11.0, D2, "f2", 1), ("B", 20.0, D2, "f2", 2), ("C", 30.0, D2, "f2", 3)]


def test_rerun_and_two_concurrent_runs_add_no_version(spark: SparkSession, unique: str) -> None:
    name, table = _table(unique, "concurrent")
    apply_changes(spark, table, _batch(spark, B1), ["invoice_id"], "changed_at", "b1")
    results: list[scd2.Scd2Result] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(apply_changes(spark, table, _batch(spark, B2), ["invoice_id"], "changed_at", "b2"))
        except BaseException as exc:
            errors.append(exc)

    before = spark.sql(f"SELECT count(*) FROM {name}.snapshots").first()[0]
    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(r.committed for r in results) == [False, True]  # serialised: the second finds nothing to do
    assert spark.sql(f"SELECT count(*) FROM {name}.snapshots").first()[0] == before + 1
    rows = _rows(spark, name)
    assert [(r["invoice_id"], r["amount"], r["_is_current"]) for r in rows] == [
        ("A", 10.0, False),
        ("A", 11.0, True),
        ("B", 20.0, True),
        ("C", 30.0, True),
    ]

    snapshot = _snapshot(spark, name)
    rerun = apply_changes(spark, table, _batch(spark, B2), ["invoice_id"], "changed_at", "b2")
    assert (rerun.committed, rerun.versions_inserted, rerun.versions_closed) == (False, 0, 0)
    assert _snapshot(spark, name) == snapshot and _rows(spark, name) == rows


def test_a_commit_slipping_in_between_fails_instead_of_appending_twice(
    spark: SparkSession, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the lock (another catalog), a writer committing while the batch is computed makes the
    run fail before its MERGE, and a re-run then applies only what is left (rule 12)."""
    name, table = _table(unique, "slipped")
    apply_changes(spark, table, _batch(spark, B1), ["invoice_id"], "changed_at", "b1")
    original = plan.direct
    slipped: list[bool] = []

    def direct_then_commit(*args: Any, **kwargs: Any) -> DataFrame:
        if not slipped:
            slipped.append(True)
            apply_changes(spark, table, _batch(spark, [("Z", 1.0, D2, "other", 1)]), ["invoice_id"], "changed_at", "x")
        return original(*args, **kwargs)

    monkeypatch.setattr(storage, "table_lock", _no_lock)
    monkeypatch.setattr(plan, "direct", direct_then_commit)
    with pytest.raises(Scd2Error, match="changed while this batch was computed"):
        apply_changes(spark, table, _batch(spark, B2), ["invoice_id"], "changed_at", "b2")
    monkeypatch.setattr(plan, "direct", original)
    apply_changes(spark, table, _batch(spark, B2), ["invoice_id"], "changed_at", "b2")
    counts = spark.sql(f"SELECT invoice_id, count_if(_is_current) AS n FROM {name} GROUP BY invoice_id").collect()
    assert sorted((r["invoice_id"], r["n"]) for r in counts) == [("A", 1), ("B", 1), ("C", 1), ("Z", 1)]


class _no_lock:
    def __init__(self, *args: Any) -> None:
        pass

    def __enter__(self) -> bool:
        return False

    def __exit__(self, *args: Any) -> None:
        return None


def test_a_type_the_table_cannot_take_fails_naming_the_column_and_changes_nothing(
    spark: SparkSession, unique: str
) -> None:
    name, table = _table(unique, "badtype")
    apply_changes(spark, table, _batch(spark, B1), ["invoice_id"], "changed_at", "b1")
    snapshot, schema, rows = _snapshot(spark, name), spark.table(name).schema, _rows(spark, name)
    bad = _batch(
        spark,
        [("A", "eleven", D2, "f2", 1, "north")],
        "invoice_id string, amount string, changed_at timestamp, _source_file string, _line_number bigint, "
        "region string",
    )
    with pytest.raises(Scd2Error, match=r"column 'amount' .* is double but the batch has string"):
        apply_changes(spark, table, bad, ["invoice_id"], "changed_at", "b2")
    assert _snapshot(spark, name) == snapshot
    assert spark.table(name).schema == schema  # the new column 'region' was not added either
    assert _rows(spark, name) == rows


RAW_OP_DDL = (
    "invoice_id string, amount double, changed_at string, op string, _source_file string, "
    "_line_number bigint, region string"
)  # sequence values as the raw layer has them: strings


@pytest.mark.parametrize(
    ("bad_record", "message"),
    [
        ((None, 1.0, "2026-11-02T06:00:00", "U"), r"NULL in key column\(s\) \['invoice_id'\] at f2 line 2"),
        (
            ("C", 1.0, "yesterday", "U"),
            r"sequence_by 'changed_at' is NULL or not a timestamp at f2 line 2 "
            r"\(key invoice_id='C'\)",
        ),
        (
            ("C", 1.0, "2026-11-02T06:00:00", "X"),
            r"op_column 'op' has value 'X' at f2 line 2 \(key invoice_id='C'\), "
            r"which op_mapping .* does not map",
        ),
    ],
)
def test_a_bad_record_in_cdc_mode_is_named_and_changes_nothing(
    spark: SparkSession, unique: str, bad_record: tuple[Any, ...], message: str
) -> None:
    """In cdc mode records are checked with the difference, not by a read of the batch first (see
    ``_prepare``), so after the table took the batch's new column: the error still names the record,
    and the table keeps its snapshot, rows and schema. A bad record equal to its open version is not
    dropped as unchanged."""
    name, table = _table(unique, "badrecord")
    first = [
        ("A", 10.0, "2026-11-01T06:00:00", "I", "f1", 1, None),
        ("B", 20.0, "2026-11-01T06:00:00", "I", "f1", 2, None),
    ]
    apply_changes(
        spark,
        table,
        _batch(spark, first, RAW_OP_DDL).drop("region"),
        ["invoice_id"],
        "changed_at",
        "b1",
        op_column="op",
    )
    snapshot, schema, rows = _snapshot(spark, name), spark.table(name).schema, _rows(spark, name)
    # line 1 changes A, line 2 is the bad record, line 3 repeats B unchanged
    batch = _batch(
        spark,
        [
            ("A", 11.0, "2026-11-02T06:00:00", "U", "f2", 1, "north"),
            (*bad_record, "f2", 2, "south"),
            ("B", 20.0, "2026-11-02T06:00:00", "U", "f2", 3, None),
        ],
        RAW_OP_DDL,
    )
    with pytest.raises(Scd2Error, match=message):
        apply_changes(spark, table, batch, ["invoice_id"], "changed_at", "b2", op_column="op")
    assert _snapshot(spark, name) == snapshot
    assert spark.table(name).schema == schema  # 'region' was added for the batch and dropped again
    assert _rows(spark, name) == rows
    # the same bad record alone, equal to an open version in everything but its op value
    unchanged_but_bad = _batch(spark, [("B", 20.0, "2026-11-02T06:00:00", "X", "f3", 7, None)], RAW_OP_DDL).drop(
        "region"
    )
    with pytest.raises(Scd2Error, match=r"op_column 'op' has value 'X' at f3 line 7"):
        apply_changes(spark, table, unchanged_but_bad, ["invoice_id"], "changed_at", "b3", op_column="op")
    assert _snapshot(spark, name) == snapshot


def _files_on_disk(spark: SparkSession, table: str) -> set[str]:
    """Every file under the table's data directory (Hadoop's .crc checksum files aside)."""
    jvm = spark.sparkContext._jvm
    location = jvm.org.apache.iceberg.spark.Spark3Util.loadIcebergTable(spark._jsparkSession, table).location()
    data = Path(str(location).removeprefix("file:")) / "data"
    return {p.as_uri() for p in data.rglob("*") if p.is_file() and not p.name.endswith(".crc")}


def _files_of_table(spark: SparkSession, table: str) -> set[str]:
    return {
        Path(r[0].removeprefix("file:")).as_uri()
        for r in spark.sql(f"SELECT file_path FROM {table}.all_files").collect()
    }


def _record_merges(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The MERGE statements Spark is given from now on (until ``monkeypatch.undo()``)."""
    merges: list[str] = []
    original_sql = SparkSession.sql

    def recording_sql(self: SparkSession, query: str, *args: Any, **kwargs: Any) -> DataFrame:
        if query.lstrip().startswith("MERGE"):
            merges.append(query)
        return original_sql(self, query, *args, **kwargs)

    monkeypatch.setattr(SparkSession, "sql", recording_sql)
    return merges


@pytest.mark.parametrize("commit", ["row_delta", "merge"])
def test_a_batch_failing_inside_its_commit_leaves_table_schema_and_files_as_before(
    spark: SparkSession, unique: str, monkeypatch: pytest.MonkeyPatch, commit: str
) -> None:
    """The commit's Spark job dies while writing (a task raising mid-way): no commit, the column the
    batch added is dropped again (rule 9), and no file the failed batch wrote is left behind. The
    row delta fails right after writing its position delete files; the MERGE (a table that cannot
    take a row delta) inside its own write."""
    name, table = _table(unique, f"midway_{commit}")
    apply_changes(spark, table, _batch(spark, B1), ["invoice_id"], "changed_at", "b1")
    snapshot, schema, rows = _snapshot(spark, name), spark.table(name).schema, _rows(spark, name)
    files = _files_on_disk(spark, name)

    @F.udf("string")
    def explode(value: str | None) -> str | None:
        raise RuntimeError("disk full while writing")

    if commit == "merge":
        original_merge = merge.commit

        def failing_merge(spark_: SparkSession, table_: TableName, source: DataFrame, *args: Any) -> None:
            original_merge(spark_, table_, source.withColumn("_batch_id", explode(F.col("_batch_id"))), *args)

        monkeypatch.setattr(
            row_delta,
            "unsupported_reason",
            lambda *args: row_delta.Unsupported("the test asks for the MERGE", by_runtime=False),
        )
        monkeypatch.setattr(merge, "commit", failing_merge)
    else:
        original_write = row_delta.write_position_deletes

        def failing_write(spark_: SparkSession, iceberg: Any, deletes: DataFrame, written: list[str]) -> Any:
            original_write(spark_, iceberg, deletes, written)
            assert written
            raise RuntimeError("disk full while writing")

        monkeypatch.setattr(row_delta, "write_position_deletes", failing_write)
    evolved = _batch(
        spark, [("A", 12.0, D2, "f2", 1, "north"), ("D", 40.0, D2, "f2", 2, "south")], DDL + ", region string"
    )
    with pytest.raises(Exception, match="disk full while writing"):
        apply_changes(spark, table, evolved, ["invoice_id"], "changed_at", "b2")
    assert _snapshot(spark, name) == snapshot
    assert spark.table(name).schema == schema
    assert _rows(spark, name) == rows
    assert _files_on_disk(spark, name) == files == _files_of_table(spark, name)


def test_a_batch_is_committed_as_one_row_delta_of_its_rows_and_their_old_positions(
    spark: SparkSession, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a table the template created, a batch commits without a MERGE: one snapshot that adds the
    new and changed rows as data files and the changed rows' old positions as one position delete
    file, and leaves no file on disk that the table does not list."""
    name, table = _table(unique, "row_delta")
    apply_changes(spark, table, _batch(spark, B1), ["invoice_id"], "changed_at", "b1")
    before = _snapshot(spark, name)
    merges = _record_merges(monkeypatch)
    result = apply_changes(spark, table, _batch(spark, B2), ["invoice_id"], "changed_at", "b2")
    monkeypatch.undo()
    assert merges == []
    assert (result.versions_inserted, result.versions_closed) == (2, 1)
    (snapshot,) = spark.sql(
        f"SELECT snapshot_id, parent_id, operation, summary FROM {name}.snapshots WHERE parent_id = {before}"
    ).collect()
    assert snapshot["snapshot_id"] == result.snapshot_id and snapshot["operation"] == "overwrite"
    summary = snapshot["summary"]
    # A closed (a rewritten copy) and A's new version and C: 3 rows added; A's old position deleted
    assert (summary["added-records"], summary["added-position-deletes"], summary["added-delete-files"]) == (
        "3",
        "1",
        "1",
    )
    assert [
        (r["invoice_id"], r["amount"], r["_valid_to"], r["_is_current"], r["_batch_id"], r["_source_file"])
        for r in _rows(spark, name)
    ] == [
        ("A", 10.0, D2, False, "b1", "f1"),
        ("A", 11.0, None, True, "b2", "f2"),
        ("B", 20.0, None, True, "b1", "f1"),
        ("C", 30.0, None, True, "b2", "f2"),
    ]
    assert _files_on_disk(spark, name) == _files_of_table(spark, name)
    # PyIceberg applies the position delete file too: test_stage_table_reads_with_spark_sql_pyiceberg...


def test_a_partitioned_table_is_changed_by_the_merge(
    spark: SparkSession, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table a user created partitioned cannot take the row delta (its position deletes would need
    partition values): the same batches are committed by MERGE, with the same result."""
    name, table = _table(unique, "partitioned")
    columns = ", ".join(
        f"{f.name} {f.dataType.simpleString()}"
        for f in (
            *spark.createDataFrame([], DDL).drop("_source_file", "_line_number").schema.fields,
            *scd2.SYSTEM_COLUMNS,
        )
    )
    properties = ", ".join(f"'{k}'='{v}'" for k, v in scd2.TABLE_PROPERTIES.items())
    spark.sql(
        f"CREATE TABLE {name} ({columns}) USING iceberg PARTITIONED BY (bucket(4, invoice_id)) "
        f"TBLPROPERTIES ({properties})"
    )
    merges = _record_merges(monkeypatch)
    apply_changes(spark, table, _batch(spark, B1), ["invoice_id"], "changed_at", "b1")
    result = apply_changes(spark, table, _batch(spark, B2), ["invoice_id"], "changed_at", "b2")
    monkeypatch.undo()
    assert len(merges) == 2 and (result.versions_inserted, result.versions_closed) == (2, 1)
    assert [(r["invoice_id"], r["amount"], r["_valid_to"], r["_is_current"]) for r in _rows(spark, name)] == [
        ("A", 10.0, D2, False),
        ("A", 11.0, None, True),
        ("B", 20.0, None, True),
        ("C", 30.0, None, True),
    ]


def _catalogue_template(settings: Settings) -> Template:
    with psycopg2.connect(settings.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_jsonb(t) FROM lakehouse.templates t WHERE template_id = 'raw_to_stage_scd2'")
        (row,) = cur.fetchone()
    return Template.from_row(row)


def test_parameters_are_declared_in_metadata_and_validated_before_the_job_starts(pg: Settings) -> None:
    template = _catalogue_template(pg)
    declared = {(p.name, p.type, p.required) for p in template.parameters}
    assert declared == {(s.name, s.type, s.required) for s in raw_to_stage_scd2.SPEC}
    assert template.spec("mode").choices == ("cdc", "snapshot")  # type: ignore[union-attr]

    def problems(parameters: dict[str, Any]) -> list[str]:
        flow = Flow.from_row(
            {
                "flow_id": "f",
                "tasks": [
                    {
                        "flow_id": "f",
                        "task_id": "to_stage",
                        "template_id": "raw_to_stage_scd2",
                        "parameters": {"dataset": "d", "target_table": "stage.t", "keys": ["id"], **parameters},
                    }
                ],
            }
        )
        return [str(p) for p in validate_flow(flow, {"raw_to_stage_scd2": template})]

    assert (
        problems(
            {
                "mode": "cdc",
                "op_column": "op",
                "op_mapping": {"c": "I", "u": "U", "d": "D"},
                "soft_delete": True,
                "sequence_by": "changed_at",
                "track_except": ["note"],
            }
        )
        == []
    )
    assert problems({"mode": "snapshot", "soft_delete": True}) == []
    assert problems({"mode": "scd"}) == [
        "flow 'f': flow_tasks[to_stage].parameters.mode: must be one of ['cdc', 'snapshot'], got 'scd'"
    ]
    assert problems({"mode": "snapshot", "op_column": "op"}) == [
        "flow 'f': flow_tasks[to_stage].parameters.op_column: needs 'mode' in ['cdc'], got 'snapshot'"
    ]
    assert problems({"op_mapping": {"c": "I"}}) == [
        "flow 'f': flow_tasks[to_stage].parameters.op_mapping: needs 'op_column' to be given"
    ]
    assert problems({"op_column": "op", "op_mapping": {"c": "X"}}) == [
        "flow 'f': flow_tasks[to_stage].parameters.op_mapping: values must be among ['I', 'U', 'D'], got ['X']"
    ]
    assert len(problems({"track_columns": ["a"], "track_except": ["b"]})) == 2
    assert problems({"soft_delete": "yes"})[0].endswith("expected bool, got str 'yes'")


def test_a_hand_run_job_refuses_bad_combinations_before_reading(tmp_path: Path) -> None:
    """The template repeats the cross-parameter checks for jobs started without the orchestrator."""
    base = [
        "--batch_id",
        "b",
        "--lake_uri",
        tmp_path.as_uri(),
        "--dataset",
        "d",
        "--target_table",
        "stage.t",
        "--keys",
        "id",
    ]
    for extra, message in [
        (["--mode", "snapshot", "--op_column", "op"], "--op_column is for --mode cdc"),
        (["--mode", "full"], "--mode must be one of"),
        (["--op_mapping", '{"c": "I"}'], "--op_mapping needs --op_column"),
        (["--op_column", "op", "--op_mapping", '{"c": "X"}'], "--op_mapping must be a JSON object"),
        (["--track_columns", "a", "--track_except", "b"], "not both"),
    ]:
        args = parse_job_args([*base, *extra], (*COMMON_ARGS, *raw_to_stage_scd2.SPEC))
        with pytest.raises(JobArgumentError, match=message):
            raw_to_stage_scd2.validate(args)


def _write_raw(
    spark: SparkSession,
    lake_uri: str,
    dataset: str,
    batch: str,
    rows: list[tuple[Any, ...]],
    ddl: str,
    ingested_at: datetime = D3,
) -> None:
    path = io.lake_path(lake_uri, "raw", dataset, f"_batch_id={sanitize_batch_id(batch)}")
    frame = (
        spark.createDataFrame(rows, ddl)
        .withColumn("_source_file", F.lit(f"s3://landing/{dataset}/{batch}.csv"))
        .withColumn("_line_number", F.monotonically_increasing_id() + 1)
        .withColumn("_ingested_at", F.lit(ingested_at).cast("timestamp"))
    )
    frame.write.mode("overwrite").parquet(path)


def _main(tmp_path: Path, lake_uri: str, batch: str, *args: str) -> dict[str, Any]:
    metrics = tmp_path / f"{batch}.json"
    raw_to_stage_scd2.main(["--batch_id", batch, "--lake_uri", lake_uri, "--metrics_uri", str(metrics), *args])
    return json.loads(metrics.read_text())


def test_cdc_mode_with_op_mapping_and_soft_delete(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    """The README's cdc example: Debezium-style op letters, deletes kept as tombstones."""
    dataset, name = f"cdc_{unique}", f"stage.cdc_{unique}"
    ddl = "customer_id string, email string, op string, ts timestamp"
    args = [
        "--dataset",
        dataset,
        "--target_table",
        name,
        "--keys",
        "customer_id",
        "--sequence_by",
        "ts",
        "--mode",
        "cdc",
        "--op_column",
        "op",
        "--op_mapping",
        '{"c": "I", "u": "U", "d": "D"}',
        "--soft_delete",
        "true",
    ]
    _write_raw(
        spark, lake_uri, dataset, "b1", [("c1", "a@x", "c", D1), ("c2", "b@x", "c", D1), ("c1", "a2@x", "u", D2)], ddl
    )
    _main(tmp_path, lake_uri, "b1", *args)
    _write_raw(spark, lake_uri, dataset, "b2", [("c2", None, "d", D3)], ddl)
    metrics = _main(tmp_path, lake_uri, "b2", *args)
    assert (metrics["versions_closed"], metrics["rows_out"]) == (1, 1)
    rows = [
        (r["customer_id"], r["email"], r["_is_current"], r["_is_deleted"])
        for r in spark.table(name).orderBy("customer_id", "_valid_from").collect()
    ]
    assert rows == [
        ("c1", "a@x", False, False),
        ("c1", "a2@x", True, False),
        ("c2", "b@x", False, False),
        ("c2", None, True, True),
    ]
    assert "op" not in spark.table(name).columns


def test_snapshot_mode_deletes_missing_keys(spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str) -> None:
    """The README's snapshot example: each file is the full table; a key missing from it is closed."""
    dataset, name = f"snap_{unique}", f"stage.snap_{unique}"
    ddl = "product_id string, price double"
    args = ["--dataset", dataset, "--target_table", name, "--keys", "product_id", "--mode", "snapshot"]
    _write_raw(spark, lake_uri, dataset, "b1", [("p1", 1.0), ("p2", 2.0), ("p3", 3.0)], ddl, D1)
    _main(tmp_path, lake_uri, "b1", *args)
    _write_raw(spark, lake_uri, dataset, "b2", [("p1", 1.0), ("p3", 3.5)], ddl, D2)
    metrics = _main(tmp_path, lake_uri, "b2", *args)
    assert (metrics["versions_closed"], metrics["rows_out"]) == (2, 1)  # p2 deleted, p3 changed
    current = {r["product_id"]: r["price"] for r in spark.table(name).where("_is_current").collect()}
    assert current == {"p1": 1.0, "p3": 3.5}
    [p2] = spark.table(name).where("product_id = 'p2'").collect()
    assert (p2["_valid_to"], p2["_is_current"], p2["_is_deleted"]) == (D2, False, False)  # closed at load time


def test_stage_table_reads_with_spark_sql_pyiceberg_and_time_travel(
    spark: SparkSession, pg: Settings, unique: str
) -> None:
    from pyiceberg.catalog.sql import SqlCatalog

    name, table = _table(unique, "readers")
    first = apply_changes(spark, table, _batch(spark, B1), ["invoice_id"], "changed_at", "b1")
    apply_changes(spark, table, _batch(spark, B2), ["invoice_id"], "changed_at", "b2")

    current = spark.sql(f"SELECT invoice_id, amount FROM {name} WHERE _is_current ORDER BY invoice_id").collect()
    assert [tuple(r) for r in current] == [("A", 11.0), ("B", 20.0), ("C", 30.0)]
    as_of = spark.sql(
        f"SELECT invoice_id, amount FROM {name} VERSION AS OF {first.snapshot_id} WHERE _is_current ORDER BY invoice_id"
    ).collect()
    assert [tuple(r) for r in as_of] == [("A", 10.0), ("B", 20.0)]

    catalog = SqlCatalog(pg.catalog_name, uri=pg.catalog_dsn, warehouse=pg.catalog_warehouse_uri)
    iceberg = catalog.load_table(name)
    history = iceberg.scan(selected_fields=("invoice_id", "amount", "_is_current")).to_arrow().to_pylist()
    assert sorted((r["invoice_id"], r["amount"], r["_is_current"]) for r in history) == [
        ("A", 10.0, False),
        ("A", 11.0, True),
        ("B", 20.0, True),
        ("C", 30.0, True),
    ]
    earlier = iceberg.scan(snapshot_id=first.snapshot_id, selected_fields=("invoice_id", "amount")).to_arrow()
    assert sorted(tuple(r.values()) for r in earlier.to_pylist()) == [("A", 10.0), ("B", 20.0)]


OP_DDL = "invoice_id string, amount double, changed_at timestamp, op string, _source_file string, _line_number bigint"


def test_new_keys_returning_keys_and_unknown_deletes(
    spark: SparkSession, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct path for keys the table has no open version of: a new key opens a version, a
    hard-deleted key coming back opens one after its gap (its history kept), and deleting a key the
    table never had records nothing, not even a tombstone with ``soft_delete``.

    Such keys are first taken as new when the batch reads the whole table; the row delta's read of
    the table checks that, and only a batch where one of them has rows after all tells them apart
    with a read of its own. (A batch that reads only its slice tells them apart at once: see
    test_scd2_layout.test_a_small_batch_never_opens_a_data_file_outside_its_keys.)"""
    name, table = _table(unique, "newkeys")
    monkeypatch.setattr(reads, "reads_slice", lambda *args: False)
    told_apart: list[str] = []
    batch = ""  # the batch being applied
    original_mark = plan.mark_new_keys

    def recording_mark(*args: Any, **kwargs: Any) -> DataFrame:
        told_apart.append(batch)
        return original_mark(*args, **kwargs)

    monkeypatch.setattr(plan, "mark_new_keys", recording_mark)

    def apply(rows: list[tuple[Any, ...]], batch_id: str, soft_delete: bool = False) -> Any:
        nonlocal batch
        batch = batch_id
        return apply_changes(
            spark,
            table,
            _batch(spark, rows, OP_DDL),
            ["invoice_id"],
            "changed_at",
            batch_id,
            op_column="op",
            soft_delete=soft_delete,
        )

    apply([("A", 10.0, D1, "I", "f1", 1), ("B", 20.0, D1, "I", "f1", 2)], "b1")
    apply([("B", None, D2, "D", "f2", 1)], "b2")
    result = apply([("B", 25.0, D3, "U", "f3", 1), ("C", 30.0, D3, "I", "f3", 2), ("X", None, D3, "D", "f3", 3)], "b3")
    assert (result.versions_inserted, result.versions_closed) == (2, 0)
    rows = [
        (r["invoice_id"], r["amount"], r["_valid_from"], r["_valid_to"], r["_is_current"], r["_is_deleted"])
        for r in _rows(spark, name)
    ]
    assert rows == [
        ("A", 10.0, D1, None, True, False),
        ("B", 20.0, D1, D2, False, False),
        ("B", 25.0, D3, None, True, False),
        ("C", 30.0, D3, None, True, False),
    ]
    # a late record for the deleted interval is placed in the history, never made current
    late = datetime(2026, 11, 1, 18)
    apply([("B", 21.0, late, "U", "f4", 1)], "b4")
    rows = [
        (r["invoice_id"], r["amount"], r["_valid_from"], r["_valid_to"], r["_is_current"])
        for r in _rows(spark, name)
        if r["invoice_id"] == "B"
    ]
    assert rows == [("B", 20.0, D1, late, False), ("B", 21.0, late, D2, False), ("B", 25.0, D3, None, True)]
    # with soft_delete, deleting keys the table never had changes nothing: no commit
    before = _snapshot(spark, name)
    result = apply([("X", None, D3, "D", "f5", 1), ("Y", None, D3, "D", "f5", 2)], "b5", soft_delete=True)
    assert not result.committed and _snapshot(spark, name) == before
    # C and X were new and the table empty before b1; only b3's B had rows
    assert told_apart == ["b3"]


def test_the_merge_scan_is_filtered_by_the_source_keys_and_session_settings_come_back(
    spark: SparkSession, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a table that cannot take a row delta, the MERGE's table scan carries a runtime bloom
    filter of the batch's keys, so table rows the batch does not touch are dropped before the
    shuffle; the settings that make Spark plan it are the session's own again afterwards."""
    name, table = _table(unique, "bloom")
    apply_changes(spark, table, _batch(spark, B1), ["invoice_id"], "changed_at", "b1")
    plans: list[str] = []
    original_sql = SparkSession.sql

    def explaining_sql(self: SparkSession, query: str, *args: Any, **kwargs: Any) -> DataFrame:
        if query.lstrip().startswith("MERGE"):
            plans.append(original_sql(self, "EXPLAIN " + query).collect()[0][0])
        return original_sql(self, query, *args, **kwargs)

    settings = [
        *merge.SESSION_CONF,
        "spark.sql.optimizer.runtime.bloomFilter.expectedNumItems",
        "spark.sql.optimizer.runtime.bloomFilter.numBits",
    ]
    before = {key: spark.conf.get(key, None) for key in settings}
    monkeypatch.setattr(
        row_delta,
        "unsupported_reason",
        lambda *args: row_delta.Unsupported("a table that needs the MERGE", by_runtime=False),
    )
    monkeypatch.setattr(SparkSession, "sql", explaining_sql)
    result = apply_changes(spark, table, _batch(spark, B2), ["invoice_id"], "changed_at", "b2")
    monkeypatch.undo()
    assert result.committed and len(plans) == 1
    scan_filter = [line for line in plans[0].splitlines() if "might_contain" in line and "invoice_id" in line]
    assert scan_filter, plans[0]
    assert {key: spark.conf.get(key, None) for key in settings} == before
    assert [(r["invoice_id"], r["_is_current"]) for r in _rows(spark, name)] == [
        ("A", False),
        ("A", True),
        ("B", True),
        ("C", True),
    ]
