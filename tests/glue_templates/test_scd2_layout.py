"""The stage table's layout and how a batch reads it: a batch costs what it changes.

Tables the template creates are sorted by ``(_is_current, keys)`` within their files; a batch
much smaller than its table reads only its slice (key ranges pushed into the scan, then a
broadcast semi-join), so it never opens a data file outside its keys' ranges, which is shown here
by deleting such a file from disk before the batch. Tables the template created before this layout
are migrated; tables someone else created are left as they are. Every call into the JVM's internals
goes through one adapter, and a missing internal API sends the batch to the MERGE, saying so.
"""

from __future__ import annotations

import ast
import logging
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession

from lakehouse.stack.jars import iceberg_runtime
from lakehouse_jobs.identifiers import TableName, parse_table_name
from lakehouse_jobs.scd2 import SYSTEM_COLUMNS, apply_changes, jvm, reads, storage

pytestmark = pytest.mark.integration

D1, D2, D3 = datetime(2026, 11, 1, 6), datetime(2026, 11, 2, 6), datetime(2026, 11, 3, 6)
DDL = "invoice_id string, amount double, changed_at timestamp, _source_file string, _line_number bigint"
PACKAGE = Path(__file__).resolve().parents[2] / "glue_templates" / "lakehouse_jobs" / "scd2"


def _table(unique: str, stem: str) -> tuple[str, TableName]:
    name = f"stage.{stem}_{unique}"
    return name, parse_table_name(name, "table")


def _batch(spark: SparkSession, rows: list[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, DDL)


def _history(spark: SparkSession, name: str, where: str = "true") -> list[tuple[Any, ...]]:
    return [
        (r["invoice_id"], r["amount"], r["_valid_from"], r["_valid_to"], r["_is_current"])
        for r in spark.table(name).where(where).orderBy("invoice_id", "_valid_from").collect()
    ]


def _record_merges(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    merges: list[str] = []
    original_sql = SparkSession.sql

    def recording_sql(self: SparkSession, query: str, *args: Any, **kwargs: Any) -> DataFrame:
        if query.lstrip().startswith("MERGE"):
            merges.append(query)
        return original_sql(self, query, *args, **kwargs)

    monkeypatch.setattr(SparkSession, "sql", recording_sql)
    return merges


def test_a_new_table_is_sorted_by_current_and_keys_and_marked(spark: SparkSession, unique: str) -> None:
    _, table = _table(unique, "layout")
    apply_changes(spark, table, _batch(spark, [("A", 1.0, D1, "f1", 1)]), ["invoice_id"], "changed_at", "b1")
    layout = jvm.layout(spark, table)
    assert layout.sort_columns == ("_is_current", "invoice_id") and not layout.partitioned
    assert layout.properties[storage.LAYOUT_PROPERTY] == storage.LAYOUT_VERSION
    assert {k: layout.properties.get(k) for k in storage.TABLE_PROPERTIES if k != "format-version"} == {
        k: v for k, v in storage.TABLE_PROPERTIES.items() if k != "format-version"
    }


def test_a_table_the_template_created_before_is_migrated_and_keeps_its_history(
    spark: SparkSession, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table as the template used to create it (no sort order, no layout mark) gets the layout on
    its next batch, in metadata only; its rows and the batch's result are as they would have been."""
    name, table = _table(unique, "legacy")
    columns = ", ".join(
        f"{f.name} {f.dataType.simpleString()}"
        for f in (*spark.createDataFrame([], DDL).drop("_source_file", "_line_number").schema.fields, *SYSTEM_COLUMNS)
    )
    properties = ", ".join(f"'{k}'='{v}'" for k, v in storage.LEGACY_TABLE_PROPERTIES.items())
    spark.sql(f"CREATE TABLE {name} ({columns}) USING iceberg TBLPROPERTIES ({properties})")
    monkeypatch.setattr(storage, "ensure_layout", lambda *args: False)  # the template as it was
    apply_changes(
        spark,
        table,
        _batch(spark, [("A", 1.0, D1, "f1", 1), ("B", 2.0, D1, "f1", 2)]),
        ["invoice_id"],
        "changed_at",
        "b1",
    )
    assert jvm.layout(spark, table).sort_columns == ()
    monkeypatch.undo()
    apply_changes(
        spark,
        table,
        _batch(spark, [("A", 1.5, D2, "f2", 1), ("C", 3.0, D2, "f2", 2)]),
        ["invoice_id"],
        "changed_at",
        "b2",
    )
    layout = jvm.layout(spark, table)
    assert layout.sort_columns == ("_is_current", "invoice_id")
    assert layout.properties[storage.LAYOUT_PROPERTY] == storage.LAYOUT_VERSION
    assert _history(spark, name) == [
        ("A", 1.0, D1, D2, False),
        ("A", 1.5, D2, None, True),
        ("B", 2.0, D1, None, True),
        ("C", 3.0, D2, None, True),
    ]


def test_a_table_someone_else_created_is_left_as_it_is(spark: SparkSession, unique: str) -> None:
    name, table = _table(unique, "foreign")
    columns = ", ".join(
        f"{f.name} {f.dataType.simpleString()}"
        for f in (*spark.createDataFrame([], DDL).drop("_source_file", "_line_number").schema.fields, *SYSTEM_COLUMNS)
    )
    spark.sql(f"CREATE TABLE {name} ({columns}) USING iceberg TBLPROPERTIES ('format-version'='2')")
    before = jvm.layout(spark, table)
    apply_changes(spark, table, _batch(spark, [("A", 1.0, D1, "f1", 1)]), ["invoice_id"], "changed_at", "b1")
    apply_changes(spark, table, _batch(spark, [("A", 2.0, D2, "f2", 1)]), ["invoice_id"], "changed_at", "b2")
    after = jvm.layout(spark, table)
    assert after.sort_columns == before.sort_columns == ()
    assert storage.LAYOUT_PROPERTY not in after.properties
    assert _history(spark, name) == [("A", 1.0, D1, D2, False), ("A", 2.0, D2, None, True)]


def _key(i: int) -> str:
    return f"K{i:05d}"


def test_a_small_batch_never_opens_a_data_file_outside_its_keys(spark: SparkSession, unique: str) -> None:
    """Two loads write two sets of data files, for keys K00000-K00399 and K10000-K10399. With the
    first set's files deleted from disk, a batch for keys of the second set (changes, a late record,
    a delete and its return, a new key) still applies: its reads of the table never open a file
    outside its keys' ranges, so its cost does not grow with the rest of the table."""
    name, table = _table(unique, "slice")
    low = [(_key(i), float(i), D1, "low", i) for i in range(400)]
    high = [(_key(10_000 + i), float(i), D1, "high", i) for i in range(400)]
    apply_changes(spark, table, _batch(spark, low), ["invoice_id"], "changed_at", "low")
    low_files = {r[0] for r in spark.sql(f"SELECT file_path FROM {name}.files").collect()}
    apply_changes(spark, table, _batch(spark, high), ["invoice_id"], "changed_at", "high")
    for location in low_files:
        Path(location.removeprefix("file:")).unlink()
    late = datetime(2026, 10, 31, 6)
    batch = [
        (_key(10_000), 100.0, D2, "b", 1),
        (_key(10_001), 101.0, D2, "b", 2),  # changed
        (_key(10_002), 2.0, D3, "b", 3),  # unchanged
        (_key(10_003), 103.0, late, "b", 4),  # late: goes into history before D1
        (_key(10_004), 104.0, D2, "b", 5),
        (_key(10_004), 4.0, D3, "b", 6),  # changed and back
        (_key(10_500), 500.0, D2, "b", 7),
    ]  # new
    seen: list[reads.TableRead] = []
    original = reads.read_for_batch

    def recording_read(*args: Any, **kwargs: Any) -> reads.TableRead:
        seen.append(original(*args, **kwargs))
        return seen[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reads, "read_for_batch", recording_read)
        result = apply_changes(spark, table, _batch(spark, batch), ["invoice_id"], "changed_at", "b")
    assert [read.sliced for read in seen] == [True]
    assert sorted(r["invoice_id"] for r in seen[0].rows.collect()) == [_key(10_000 + i) for i in range(5)]
    assert (result.versions_inserted, result.versions_closed) == (6, 3)
    history = _history(spark, name, f"invoice_id >= '{_key(10_000)}' AND invoice_id <= '{_key(10_004)}'")
    assert history == [
        (_key(10_000), 0.0, D1, D2, False),
        (_key(10_000), 100.0, D2, None, True),
        (_key(10_001), 1.0, D1, D2, False),
        (_key(10_001), 101.0, D2, None, True),
        (_key(10_002), 2.0, D1, None, True),
        (_key(10_003), 103.0, late, D1, False),
        (_key(10_003), 3.0, D1, None, True),
        (_key(10_004), 4.0, D1, D2, False),
        (_key(10_004), 104.0, D2, D3, False),
        (_key(10_004), 4.0, D3, None, True),
    ]
    assert _history(spark, name, f"invoice_id = '{_key(10_500)}'") == [(_key(10_500), 500.0, D2, None, True)]


@pytest.mark.parametrize(
    ("ddl", "values", "outside"),
    [
        ("k bigint", [5, 7, 1000, 1003, -50], [6, 500, 2000, -51]),
        ("k string", ["b", "ba", "x", "xy", "é"], ["a", "c", "y", "f"]),
        ("k date", [date(2026, 1, 1), date(2026, 1, 3), date(2030, 5, 5)], [date(2026, 1, 2), date(2028, 1, 1)]),
        (
            "k timestamp",
            [datetime(2026, 1, 1, 0, 0, 0, 1), datetime(2026, 3, 29, 2, 30), datetime(2026, 10, 25, 1, 30)],
            [datetime(2026, 1, 1), datetime(2026, 6, 1)],
        ),
        ("k decimal(10,2)", [Decimal("1.10"), Decimal("1.20"), Decimal("99.99")], [Decimal("1.11"), Decimal("50.00")]),
    ],
    ids=["bigint", "string", "date", "timestamp", "decimal"],
)
def test_the_key_ranges_pushed_into_a_slice_hold_every_key_of_the_batch(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch, ddl: str, values: list[Any], outside: list[Any]
) -> None:
    """Each batch key passes the filter, and values in the gaps between them do not (with few
    ranges allowed, the widest gaps are the ones cut)."""
    monkeypatch.setattr(reads, "MAX_KEY_RANGES", len(values))
    records = spark.createDataFrame([(v,) for v in values], ddl)
    condition = reads.key_filter(records, "k", len(values))
    assert condition is not None
    kept = spark.createDataFrame([(v,) for v in [*values, *outside]], ddl).where(condition).collect()
    assert sorted(r["k"] for r in kept) == sorted(values)


def test_key_ranges_are_cut_at_the_widest_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reads, "MAX_KEY_RANGES", 3)
    assert reads._ranges([1, 2, 3, 100, 101, 1000]) == [(1, 3), (100, 101), (1000, 1000)]
    assert reads._ranges(["a1", "a2", "m", "z9"]) == [("a1", "a2"), ("m", "m"), ("z9", "z9")]
    assert reads._ranges([]) == []


def test_without_a_measurable_key_a_slice_has_no_range_filter(spark: SparkSession) -> None:
    records = spark.createDataFrame([(1.5,), (2.5,)], "k double")
    assert reads.key_filter(records, "k", 2) is None


def test_a_missing_internal_api_sends_the_batch_to_the_merge_and_says_so(
    spark: SparkSession, unique: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name, table = _table(unique, "noapi")
    apply_changes(spark, table, _batch(spark, [("A", 1.0, D1, "f1", 1)]), ["invoice_id"], "changed_at", "b1")
    monkeypatch.setattr(
        jvm,
        "ROW_DELTA_APIS",
        (
            *jvm.ROW_DELTA_APIS,
            jvm.JavaApi("org.apache.iceberg.NoSuchThing", ("x",)),
            jvm.JavaApi("org.apache.iceberg.RowDelta", ("noSuchMethod",)),
        ),
    )
    merges = _record_merges(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="lakehouse_jobs.scd2"):
        result = apply_changes(
            spark,
            table,
            _batch(spark, [("A", 2.0, D2, "f2", 1), ("B", 3.0, D2, "f2", 2)]),
            ["invoice_id"],
            "changed_at",
            "b2",
        )
    monkeypatch.undo()
    assert len(merges) == 1 and (result.versions_inserted, result.versions_closed) == (2, 1)
    [line] = [r.getMessage() for r in caplog.records if "MERGE" in r.getMessage()]
    assert (
        f"Iceberg {iceberg_runtime().version} lacks org.apache.iceberg.NoSuchThing, "
        f"org.apache.iceberg.RowDelta.noSuchMethod"
        in line
        and str(table) in line
    )
    assert _history(spark, name) == [("A", 1.0, D1, D2, False), ("A", 2.0, D2, None, True), ("B", 3.0, D2, None, True)]


def test_the_jvm_runs_the_selected_iceberg_runtime_and_it_has_every_api_the_row_delta_needs(
    spark: SparkSession,
) -> None:
    """``make test`` runs this file on each runtime (LAKEHOUSE_ICEBERG_VERSION): that the JVM really
    loaded the one selected is what makes the second run evidence for it."""
    assert jvm.iceberg_version(spark) == iceberg_runtime().version
    assert jvm.missing_apis(spark, jvm.ROW_DELTA_APIS) == []


def test_only_the_adapter_reaches_into_the_jvm() -> None:
    """py4j handles (``_jvm``, ``_jsparkSession``, ``_jdf``, ``_jsc``) appear in jvm.py only."""
    reaching = {"_jvm", "_jsparkSession", "_jdf", "_jsc", "_gateway"}
    found = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "jvm.py":
            continue
        names = {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}
        if names & reaching:
            found[path.name] = sorted(names & reaching)
    assert found == {}
    templates = PACKAGE.parent / "templates"
    for path in (templates / "raw_to_stage_scd2.py", templates / "maintain_table.py"):
        names = {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}
        assert not names & reaching, path.name


def test_every_module_of_the_package_says_why_and_stays_small() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.name} has no module docstring"
        assert len(path.read_text().splitlines()) <= 400, f"{path.name} is not small any more"
        literals = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("__")
            and node.value.isidentifier()
        ]
        if path.name != "columns.py":
            assert literals == [], f"{path.name} names working columns as literals: {literals}"


def test_a_slice_is_read_only_by_a_cdc_batch_much_smaller_than_its_table() -> None:
    assert reads.reads_slice(1, "cdc", 1_000, 1_000_000)
    assert not reads.reads_slice(1, "snapshot", 1_000, 1_000_000)  # every missing key is a delete
    assert not reads.reads_slice(None, "cdc", 1_000, 0)  # nothing to read yet
    assert not reads.reads_slice(1, "cdc", 900_000, 1_000_000)  # a full extract: read it whole
    assert not reads.reads_slice(1, "cdc", reads.BROADCAST_ROWS + 1, 100 * reads.BROADCAST_ROWS)
