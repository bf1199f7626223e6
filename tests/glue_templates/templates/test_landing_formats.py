"""landing_to_raw for every format (CSV, JSON, JSON Lines, parquet, fixed-width, regex), gzip,
encodings, inferred and stored schemas, rejects and broken files, against the real Spark session."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakehouse_jobs import io
from lakehouse_jobs.identifiers import sanitize_batch_id
from lakehouse_jobs.metrics import JobFailure
from lakehouse_jobs.templates import landing_to_raw

pytestmark = pytest.mark.integration


def _run(tmp_path: Path, lake_uri: str, source: Path, dataset: str, batch: str, *extra: str) -> dict:
    metrics_file = tmp_path / f"{batch}.metrics.json"
    argv = [
        "--flow_id",
        "f",
        "--task_id",
        "to_raw",
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
        *extra,
    ]
    landing_to_raw.main(argv)
    return json.loads(metrics_file.read_text())


def _failure(tmp_path: Path, lake_uri: str, source: Path, dataset: str, batch: str, *extra: str) -> tuple[str, dict]:
    with pytest.raises(JobFailure) as failure:
        _run(tmp_path, lake_uri, source, dataset, batch, *extra)
    return str(failure.value), json.loads((tmp_path / f"{batch}.metrics.json").read_text())


def _raw_batch(lake_uri: str, dataset: str, batch: str) -> str:
    return io.lake_path(lake_uri, "raw", dataset, f"_batch_id={sanitize_batch_id(batch)}")


def _gz(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


def _rows(spark: SparkSession, metrics: dict, key: str) -> dict:
    return {r[key]: r.asDict() for r in spark.read.parquet(metrics["raw_path"]).collect()}


def _rejects(spark: SparkSession, metrics: dict) -> dict:
    return {r["_line_number"]: r.asDict() for r in spark.read.json(metrics["rejects_path"]).collect()}


def test_csv_gzip_latin1_semicolons_single_quotes_declared_columns(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    text = "1;'Café; Paris';12,5\n2;'Zoë';7\n3;broken\n"
    source = _gz(tmp_path / "shops.csv.gz", text.encode("latin-1"))
    metrics = _run(
        tmp_path,
        lake_uri,
        source,
        f"shops_{unique}",
        f"b_{unique}",
        "--format",
        "csv",
        "--header",
        "false",
        "--columns",
        "shop_id,name,score",
        "--delimiter",
        ";",
        "--quote",
        "'",
        "--encoding",
        "latin-1",
        "--schema",
        '{"shop_id": "int"}',
        "--max_reject_ratio",
        "0.5",
    )
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_rejected"]) == (3, 2, 1)
    rows = _rows(spark, metrics, "shop_id")
    assert rows[1]["name"] == "Café; Paris" and rows[1]["score"] == "12,5" and rows[2]["name"] == "Zoë"
    [reject] = _rejects(spark, metrics).values()
    assert reject["_line_number"] == 3 and "expected 3" in reject["_reason"] and reject["_raw_line"] == "3;broken"


def test_csv_schema_inferred_stored_and_checked_next_run(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    dataset = f"orders_{unique}"
    first = tmp_path / "orders1.csv"
    first.write_text(
        "\ufeffOrder ID,Order Date,Amount,Paid,Note\n1,2026-11-01,10.50,true,a\n"
        "2,2026-11-02,7,false,\n3,2026-11-03,1000.25,TRUE,x\n"
    )
    metrics = _run(tmp_path, lake_uri, first, dataset, f"b1_{unique}", "--format", "csv")
    assert metrics["schema_source"] == "inferred"
    assert metrics["schema"] == {
        "order_id": "bigint",
        "order_date": "date",
        "amount": "decimal(18,2)",
        "paid": "boolean",
        "note": "string",
    }
    stored = json.loads(Path(metrics["schema_uri"].removeprefix("file://")).read_text())
    assert [c["name"] for c in stored["columns"]] == ["order_id", "order_date", "amount", "paid", "note"]
    raw = spark.read.parquet(metrics["raw_path"])
    assert dict(raw.dtypes)["amount"] == "decimal(18,2)" and dict(raw.dtypes)["order_date"] == "date"

    second = tmp_path / "orders2.csv"  # same columns; one value no longer fits the stored type
    second.write_text("Order ID,Order Date,Amount,Paid,Note\n4,2026-11-04,3.25,false,y\n5,yesterday,1,true,z\n")
    again = _run(tmp_path, lake_uri, second, dataset, f"b2_{unique}", "--format", "csv", "--max_reject_ratio", "0.5")
    assert again["schema_source"] == "stored" and again["rows_rejected"] == 1
    reject = _rejects(spark, again)[3]
    assert "order_date" in reject["_reason"] and "yesterday" in reject["_reason"]

    third = tmp_path / "orders3.csv"  # a changed set of columns fails, naming them
    third.write_text("Order ID,Order Date,Amount,Channel\n6,2026-11-05,1.00,web\n")
    message, failed = _failure(tmp_path, lake_uri, third, dataset, f"b3_{unique}", "--format", "csv")
    assert "orders3.csv" in message and "stored schema" in message
    assert "['paid', 'note']" in message and "['channel']" in message and "error" in failed
    assert (failed["missing_columns"], failed["new_columns"]) == (["paid", "note"], ["channel"])
    assert failed["error_summary"] == message and failed["source_uri"] == str(third)

    # the same mismatch in a re-run of batch b2, which had passed: b2's raw rows are gone with the failure
    _failure(tmp_path, lake_uri, third, dataset, f"b2_{unique}", "--format", "csv")
    assert not io.path_exists(spark, again["raw_path"])
    assert spark.read.parquet(metrics["raw_path"]).count() == 3  # another batch of the dataset is untouched


def test_json_lines_gzip_nested_paths_and_rejects(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    lines = [
        {"id": 1, "customer": {"name": "Acme", "address": {"city": "Paris"}}, "items": [{"sku": "A"}, {"sku": "B"}]},
        "not json at all",
        {"id": 2, "customer": {"name": "Globex"}, "items": []},
        {"id": "x3", "customer": {"name": "Initech", "address": {"city": "Austin"}}, "items": [{"sku": "C"}]},
    ]
    body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    source = _gz(tmp_path / "events.jsonl.gz", body.encode())
    metrics = _run(
        tmp_path,
        lake_uri,
        source,
        f"ev_{unique}",
        f"b_{unique}",
        "--format",
        "jsonl",
        "--json_paths",
        json.dumps(
            {"id": "id", "customer_name": "customer.name", "city": "customer.address.city", "first_sku": "items[0].sku"}
        ),
        "--schema",
        '{"id": "int"}',
        "--max_reject_ratio",
        "0.5",
    )
    assert (metrics["rows_in"], metrics["rows_rejected"]) == (4, 2)
    rows = _rows(spark, metrics, "id")
    assert rows[1]["customer_name"] == "Acme" and rows[1]["city"] == "Paris" and rows[1]["first_sku"] == "A"
    assert rows[2]["city"] is None and rows[2]["first_sku"] is None and rows[2]["_line_number"] == 3
    rejects = _rejects(spark, metrics)
    assert rejects[2]["_reason"] == "not a JSON object" and rejects[2]["_raw_line"] == "not json at all"
    assert "column id" in rejects[4]["_reason"] and "x3" in rejects[4]["_reason"]


def test_json_document_top_level_keys_inferred(spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str) -> None:
    source = tmp_path / "people.json"
    source.write_text(
        json.dumps(
            [
                {"Id": 1, "Name": "Ann", "Tags": {"a": 1}},
                {"Id": 2, "Name": "Bob"},
                42,
                {"Id": 3, "Name": "Cy", "Tags": {"b": 2}},
            ],
            indent=2,
        )
    )
    metrics = _run(
        tmp_path, lake_uri, source, f"people_{unique}", f"b_{unique}", "--format", "json", "--max_reject_ratio", "0.3"
    )
    assert (metrics["rows_in"], metrics["rows_rejected"]) == (4, 1)
    assert metrics["schema"] == {"id": "bigint", "name": "string", "tags": "string"}
    rows = _rows(spark, metrics, "id")
    assert rows[1]["tags"] == '{"a":1}' and rows[2]["tags"] is None and rows[3]["_line_number"] == 4
    assert _rejects(spark, metrics)[3]["_reason"] == "not a JSON object"

    truncated = tmp_path / "cut.json"
    truncated.write_text(source.read_text()[:40])
    message, _ = _failure(tmp_path, lake_uri, truncated, f"cut_{unique}", f"c_{unique}", "--format", "json")
    assert "cut.json" in message and "truncated or malformed" in message
    not_json = tmp_path / "table.json"
    not_json.write_text("id,name\n1,Ann\n")
    message, _ = _failure(tmp_path, lake_uri, not_json, f"nj_{unique}", f"n_{unique}", "--format", "json")
    assert "table.json is not JSON" in message


def test_parquet_gzip_codec_with_cast_rejects_and_broken_files(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    folder = tmp_path / "pq"
    spark.createDataFrame(
        [("1", "Ann", 1.5), ("two", "Bob", 2.5), ("3", None, None)], "Customer_ID string, name string, score double"
    ).coalesce(1).write.option("compression", "gzip").parquet(str(folder))
    [part] = folder.glob("part-*.parquet")
    source = tmp_path / "customers.parquet"
    part.rename(source)
    metrics = _run(
        tmp_path,
        lake_uri,
        source,
        f"pq_{unique}",
        f"b_{unique}",
        "--format",
        "parquet",
        "--schema",
        '{"customer_id": "int"}',
        "--max_reject_ratio",
        "0.5",
    )
    assert (metrics["rows_in"], metrics["rows_rejected"]) == (3, 1)
    rows = _rows(spark, metrics, "customer_id")
    assert rows[1]["name"] == "Ann" and rows[3]["score"] is None and rows[3]["_line_number"] == 3
    reject = _rejects(spark, metrics)[2]
    assert "two" in reject["_reason"] and json.loads(reject["_raw_line"])["name"] == "Bob"

    truncated = tmp_path / "cut.parquet"
    truncated.write_bytes(source.read_bytes()[:-30])
    message, _ = _failure(tmp_path, lake_uri, truncated, f"pqc_{unique}", f"c_{unique}", "--format", "parquet")
    assert "cut.parquet is truncated" in message
    csv_file = tmp_path / "really.csv"
    csv_file.write_text("a,b\n1,2\n")
    message, _ = _failure(tmp_path, lake_uri, csv_file, f"pqw_{unique}", f"w_{unique}", "--format", "parquet")
    assert "really.csv is not a parquet file" in message
    message, _ = _failure(tmp_path, lake_uri, source, f"pqx_{unique}", f"x_{unique}", "--format", "csv")
    assert "customers.parquet is a parquet file, not csv" in message


def test_fixed_width_gzip_and_short_lines(spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str) -> None:
    body = "00001Acme      0012.50\n00002Globex    0100.00   \n00003Init\n00004          0003.00\n"
    source = _gz(tmp_path / "accounts.dat.gz", body.encode())
    metrics = _run(
        tmp_path,
        lake_uri,
        source,
        f"fw_{unique}",
        f"b_{unique}",
        "--format",
        "fixed_width",
        "--widths",
        '{"account": 5, "name": 10, "balance": 7}',
        "--schema",
        '{"account": "int", "balance": "decimal(7,2)"}',
        "--max_reject_ratio",
        "0.3",
    )
    assert (metrics["rows_in"], metrics["rows_rejected"]) == (4, 1)
    rows = _rows(spark, metrics, "account")
    assert rows[1]["name"] == "Acme" and str(rows[2]["balance"]) == "100.00" and rows[4]["name"] is None
    assert _rejects(spark, metrics)[3]["_reason"] == "line has 9 characters, expected 22"


def test_regex_gzip(spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str) -> None:
    source = _gz(tmp_path / "app.log.gz", b"2026-11-01 INFO started\n2026-11-01 WARN disk 91%\ngarbage\n")
    regex = r"(?<day>\d{4}-\d{2}-\d{2}) (?<level>[A-Z]+) (?<message>.*)"
    dataset, batch = f"log_{unique}", f"b_{unique}"
    message, metrics = _failure(tmp_path, lake_uri, source, dataset, batch, "--format", "regex", "--regex", regex)
    # default max_reject_ratio is 0: one reject fails the run after counting; rejects kept, nothing in raw
    assert "1 of 3 lines rejected" in message and "app.log.gz" in message
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_valid"], metrics["rows_rejected"]) == (3, 0, 2, 1)
    assert metrics["raw_path"] is None and not io.path_exists(spark, _raw_batch(lake_uri, dataset, batch))
    assert _rejects(spark, metrics)[3]["_raw_line"] == "garbage"
    assert not io.path_exists(spark, io.lake_path(lake_uri, "raw", dataset, "_schema.json"))  # nothing stored

    passed = _run(
        tmp_path, lake_uri, source, dataset, batch, "--format", "regex", "--regex", regex, "--max_reject_ratio", "0.5"
    )
    assert sorted(r["level"] for r in spark.read.parquet(passed["raw_path"]).collect()) == ["INFO", "WARN"]
    assert dict(spark.read.parquet(passed["raw_path"]).dtypes)["day"] == "date"  # inferred


def test_invalid_utf8_lines_are_rejects(spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str) -> None:
    source = tmp_path / "mixed.csv"
    source.write_bytes("id,name\n1,Zoë\n2,".encode() + "Zoë".encode("latin-1") + b"\n")
    metrics = _run(
        tmp_path, lake_uri, source, f"u8_{unique}", f"b_{unique}", "--format", "csv", "--max_reject_ratio", "0.5"
    )
    assert metrics["rows_rejected"] == 1 and _rows(spark, metrics, "id")[1]["name"] == "Zoë"
    assert "not valid UTF-8" in _rejects(spark, metrics)[3]["_reason"]


@pytest.mark.parametrize(
    ("name", "content", "fmt", "problem"),
    [
        ("empty.csv", b"", "csv", "empty.csv is empty (0 bytes)"),
        ("blank.jsonl", b"\n\n", "jsonl", "blank.jsonl is empty"),
        ("plain.csv.gz", b"a,b\n1,2\n", "csv", "plain.csv.gz is named .gz but is not gzip-compressed"),
        ("hidden.csv", gzip.compress(b"a,b\n1,2\n"), "csv", "hidden.csv is gzip-compressed but its name does not end"),
        (
            "cut.csv.gz",
            gzip.compress(b"".join(b"%d,row %d\n" % (i, i) for i in range(20000)))[:3000],
            "csv",
            "cut.csv.gz is truncated",
        ),
        ("empty.json.gz", gzip.compress(b""), "json", "empty.json.gz is"),
    ],
)
def test_broken_files_fail_naming_file_and_problem(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str, name: str, content: bytes, fmt: str, problem: str
) -> None:
    source = tmp_path / name
    source.write_bytes(content)
    dataset, batch = f"bad_{unique}", f"b_{unique}"
    good = tmp_path / "good.csv"
    good.write_text("1,2\n")
    first = _run(tmp_path, lake_uri, good, dataset, batch, "--format", "csv", "--header", "false", "--columns", "a,b")
    message, metrics = _failure(
        tmp_path, lake_uri, source, dataset, batch, "--format", fmt, "--header", "false", "--columns", "a,b"
    )
    assert problem in message and problem.split(" ")[0] in metrics["error"]
    assert problem in metrics["error_summary"] and "\n" not in metrics["error_summary"]
    assert metrics["source_uri"] == str(source) and metrics["raw_path"] is None
    assert not io.path_exists(spark, first["raw_path"])  # the batch's earlier good rows went with the failure
