"""landing_to_raw against real files and the real Spark session."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakehouse_jobs import io
from lakehouse_jobs.identifiers import sanitize_batch_id
from lakehouse_jobs.metrics import JobFailure
from lakehouse_jobs.templates import landing_to_raw

pytestmark = pytest.mark.integration

INVOICE_REGEX = (
    r'^(?<invoice_date>\d{4}-\d{2}-\d{2}) INVOICE (?<invoice_id>INV-\d+) customer="(?<customer>[^"]*)" '
    r'item="(?<item>[^"]*)" qty=(?<quantity>\d+) amount=(?<amount>-?\d+\.\d{2}) (?<currency>[A-Z]{3})$'
)
INVOICE_SCHEMA = json.dumps(
    {"invoice_date": "date", "invoice_id": "string", "quantity": "int", "amount": "decimal(12,2)"}
)
INVOICES = """\
2026-11-01 INVOICE INV-1001 customer="Acme Corp" item="Office chairs" qty=4 amount=596.00 USD
2026-11-01 INVOICE INV-1002 customer="Globex" item="Printer toner" qty=10 amount=249.90 USD

INVOICE INV-1008 from Hooli, amount unreadable: see attached scan
2026-11-02 INVOICE INV-1003 customer="Initech" item="Standing desk" qty=1 amount=420.00 USD
2026-13-45 INVOICE INV-1004 customer="Initech" item="Desk lamp" qty=2 amount=40.00 USD
"""


def _run(tmp_path: Path, lake_uri: str, source: Path, dataset: str, batch: str, *extra: str) -> dict:
    metrics_file = tmp_path / f"{batch}.metrics.json"
    argv = [
        "--JOB_NAME",
        "ignored",
        "--flow_id",
        "invoices",
        "--task_id",
        "landing_to_raw",
        "--run_id",
        "r1",
        "--batch_id",
        batch,
        "--lake_uri",
        lake_uri,
        "--metrics_uri",
        str(metrics_file),
        "--source_uri",
        str(source),
        "--dataset",
        dataset,
        "--enable-metrics",
        "true",
        *extra,
    ]
    try:
        landing_to_raw.main(argv)
    finally:
        written = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
    return written


def _regex_args() -> list[str]:
    return ["--format", "regex", "--regex", INVOICE_REGEX, "--schema", INVOICE_SCHEMA, "--max_reject_ratio", "0.5"]


def test_regex_file_rows_rejects_lineage_and_idempotent_rerun(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    source = tmp_path / "invoices_2026-11-01.txt"
    source.write_text(INVOICES)
    dataset, batch = f"inv_{unique}", f"s3__invoices__{unique}:x+y"

    metrics = _run(tmp_path, lake_uri, source, dataset, batch, *_regex_args())

    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_rejected"]) == (5, 3, 2)
    assert "error" not in metrics
    raw = spark.read.parquet(metrics["raw_path"])
    assert raw.columns == [
        "invoice_date",
        "invoice_id",
        "customer",
        "item",
        "quantity",
        "amount",
        "currency",
        "_source_file",
        "_batch_id",
        "_ingested_at",
        "_line_number",
    ]
    types = dict(raw.dtypes)
    assert (types["invoice_date"], types["quantity"], types["amount"], types["_ingested_at"]) == (
        "date",
        "int",
        "decimal(12,2)",
        "timestamp",
    )
    rows = {r["invoice_id"]: r for r in raw.collect()}
    assert sorted(rows) == ["INV-1001", "INV-1002", "INV-1003"]
    assert rows["INV-1003"]["_line_number"] == 5  # the blank line still counts as a line of the file
    assert str(rows["INV-1002"]["amount"]) == "249.90"
    assert {r["_source_file"] for r in rows.values()} == {str(source)}
    assert {r["_batch_id"] for r in rows.values()} == {batch}
    assert ":" not in metrics["raw_path"].split("/raw/")[1]

    rejects = {r["_line_number"]: r for r in spark.read.json(metrics["rejects_path"]).collect()}
    assert sorted(rejects) == [4, 6]
    assert rejects[4]["_reason"] == "line does not match regex"
    assert rejects[4]["_raw_line"].startswith("INVOICE INV-1008")
    assert "invoice_date" in rejects[6]["_reason"] and "2026-13-45" in rejects[6]["_reason"]
    assert rejects[6]["_source_file"] == str(source)

    again = _run(tmp_path, lake_uri, source, dataset, batch, *_regex_args())
    assert (again["rows_out"], again["rows_rejected"]) == (3, 2)
    assert spark.read.parquet(again["raw_path"]).count() == 3
    assert spark.read.json(again["rejects_path"]).count() == 2


def test_csv_with_header_and_quotes(spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str) -> None:
    source = tmp_path / "customers.csv"
    source.write_text('Customer ID,Name,Credit Limit\n1,"Acme, Inc.",100.5\n2,Globex\n3,,7\n')
    metrics = _run(
        tmp_path,
        lake_uri,
        source,
        f"cust_{unique}",
        f"b_{unique}",
        "--format",
        "csv",
        "--schema",
        '{"customer_id": "int", "credit_limit": "double"}',
        "--max_reject_ratio",
        "0.4",
    )
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_rejected"]) == (3, 2, 1)
    rows = {r["customer_id"]: r for r in spark.read.parquet(metrics["raw_path"]).collect()}
    assert rows[1]["name"] == "Acme, Inc." and rows[1]["credit_limit"] == 100.5
    assert rows[3]["name"] is None and rows[3]["_line_number"] == 4
    [reject] = spark.read.json(metrics["rejects_path"]).collect()
    assert reject["_line_number"] == 3 and "expected 3" in reject["_reason"]


def test_csv_without_header_uses_columns(spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str) -> None:
    source = tmp_path / "pipes.txt"
    source.write_text("a|1\nb|2\n")
    metrics = _run(
        tmp_path,
        lake_uri,
        source,
        f"pipes_{unique}",
        f"b_{unique}",
        "--format",
        "csv",
        "--header",
        "false",
        "--delimiter",
        "|",
        "--columns",
        "code,value",
        "--schema",
        '{"value":"int"}',
    )
    assert metrics["rows_rejected"] == 0 and metrics["rejects_path"] is None
    assert sorted((r["code"], r["value"]) for r in spark.read.parquet(metrics["raw_path"]).collect()) == [
        ("a", 1),
        ("b", 2),
    ]


def _raw_batch(lake_uri: str, dataset: str, batch: str) -> str:
    return io.lake_path(lake_uri, "raw", dataset, f"_batch_id={sanitize_batch_id(batch)}")


def _metrics(tmp_path: Path, batch: str) -> dict:
    return json.loads((tmp_path / f"{batch}.metrics.json").read_text())


def _strict_regex_args() -> list[str]:
    return ["--format", "regex", "--regex", INVOICE_REGEX, "--schema", INVOICE_SCHEMA, "--max_reject_ratio", "0.1"]


def test_rejects_over_threshold_fail_keeping_rejects_and_writing_no_raw(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    source = tmp_path / "mostly_bad.txt"
    source.write_text(INVOICES)
    dataset, batch = f"bad_{unique}", f"b_{unique}"
    with pytest.raises(JobFailure) as failure:
        _run(tmp_path, lake_uri, source, dataset, batch, *_strict_regex_args())
    message = str(failure.value)
    assert str(source) in message and "2 of 5" in message and "nothing written to raw" in message
    metrics = _metrics(tmp_path, batch)
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_valid"], metrics["rows_rejected"]) == (5, 0, 3, 2)
    assert "max_reject_ratio" in metrics["error"] and metrics["raw_path"] is None
    assert metrics["error_summary"] == message  # already one line: the job's own message, no type prefix
    assert str(source) in metrics["error_summary"] and "\n" not in metrics["error_summary"]
    assert metrics["rejects_path"] in message
    rejects = {r["_line_number"]: r for r in spark.read.json(metrics["rejects_path"]).collect()}
    assert sorted(rejects) == [4, 6] and rejects[4]["_reason"] == "line does not match regex"
    assert "2026-13-45" in rejects[6]["_reason"] and rejects[6]["_raw_line"].startswith("2026-13-45 INVOICE")
    assert not io.path_exists(spark, _raw_batch(lake_uri, dataset, batch))


def test_failing_rerun_removes_the_batch_an_earlier_try_wrote(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    source = tmp_path / "invoices.txt"
    source.write_text(INVOICES)
    dataset, batch = f"rerun_{unique}", f"b_{unique}"
    first = _run(tmp_path, lake_uri, source, dataset, batch, *_regex_args())  # 2 of 5 rejected, 0.5 allows it
    assert first["raw_path"] == _raw_batch(lake_uri, dataset, batch)
    assert spark.read.parquet(first["raw_path"]).count() == 3

    with pytest.raises(JobFailure, match="2 of 5 lines rejected"):  # the same batch, a stricter ratio
        _run(tmp_path, lake_uri, source, dataset, batch, *_strict_regex_args())
    assert not io.path_exists(spark, first["raw_path"])
    failed = _metrics(tmp_path, batch)
    assert (failed["rows_in"], failed["rows_out"], failed["rows_rejected"]) == (5, 0, 2)
    assert spark.read.json(failed["rejects_path"]).count() == 2

    again = _run(tmp_path, lake_uri, source, dataset, batch, *_regex_args())  # and a passing try writes it again
    assert spark.read.parquet(again["raw_path"]).count() == 3


def test_empty_file_fails_naming_it(tmp_path: Path, spark: SparkSession, lake_uri: str, unique: str) -> None:
    source = tmp_path / "empty.txt"
    source.write_text("\n\n")
    with pytest.raises(JobFailure, match=r"empty\.txt is empty"):
        _run(tmp_path, lake_uri, source, f"empty_{unique}", f"b_{unique}", *_regex_args())
    metrics = _metrics(tmp_path, f"b_{unique}")
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_rejected"]) == (0, 0, 0)
    assert metrics["error_summary"] == f"landing file {source} is empty: it has no data lines"
    assert metrics["source_uri"] == str(source) and metrics["raw_path"] is None


def test_empty_file_after_a_good_run_of_the_batch_removes_its_raw(
    tmp_path: Path, spark: SparkSession, lake_uri: str, unique: str
) -> None:
    source = tmp_path / "invoices.txt"
    source.write_text(INVOICES)
    dataset, batch = f"gone_{unique}", f"b_{unique}"
    good = _run(tmp_path, lake_uri, source, dataset, batch, *_regex_args())
    assert io.path_exists(spark, good["raw_path"] + "/_SUCCESS")  # the marker a reader can rely on
    source.write_text("")
    with pytest.raises(JobFailure, match=r"invoices\.txt is empty"):
        _run(tmp_path, lake_uri, source, dataset, batch, *_regex_args())
    assert not io.path_exists(spark, good["raw_path"])
    assert "invoices.txt is empty" in _metrics(tmp_path, batch)["error_summary"]


def test_missing_file_and_bad_arguments_fail_clearly(tmp_path: Path, spark: SparkSession, lake_uri: str) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape("nope.txt")):
        _run(tmp_path, lake_uri, tmp_path / "nope.txt", "ds", "b1", *_regex_args())
    source = tmp_path / "x.txt"
    source.write_text("x\n")
    with pytest.raises(ValueError, match="--dataset"):
        _run(tmp_path, lake_uri, source, "Bad-Name", "b1", *_regex_args())
    with pytest.raises(ValueError, match="--schema names columns the file does not have"):
        _run(
            tmp_path,
            lake_uri,
            source,
            "ds",
            "b1",
            "--format",
            "regex",
            "--regex",
            r"(?P<a>x)",
            "--schema",
            '{"b": "int"}',
        )


def test_batch_time_dates_the_batch_the_same_on_every_rerun(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    source = tmp_path / "invoices.txt"
    source.write_text(INVOICES)
    dataset, batch = f"inv_{unique}", f"s3__invoices__{unique}"
    args = [*_regex_args(), "--batch_time", "2026-11-23T10:15:00+01:00"]
    first = _run(tmp_path, lake_uri, source, dataset, batch, *args)
    second = _run(tmp_path, lake_uri, source, dataset, batch, *args)
    stamps = {r["_ingested_at"] for r in spark.read.parquet(second["raw_path"]).select("_ingested_at").collect()}
    assert first["raw_path"] == second["raw_path"]
    assert [s.isoformat() for s in stamps] == ["2026-11-23T09:15:00"]  # UTC session time zone
