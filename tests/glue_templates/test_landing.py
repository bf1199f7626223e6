"""Line parsing pieces: the regex rewrite (pure Python) and exact line numbers across Spark splits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakehouse_jobs.landing import compile_line_regex, normalize_header, number_lines


def test_named_groups_in_both_spellings_become_numbered_columns() -> None:
    regex = compile_line_regex(r"(?<invoice_id>INV-\d+) (?:x|y) (\w+) (?P<amount>\d+\.\d{2})(?<=\d)(?!z)")
    assert regex.columns == (("invoice_id", 1), ("amount", 3))
    assert "?<invoice_id>" not in regex.pattern and "?P<" not in regex.pattern
    match = re.match(regex.pattern, "INV-7 x abc 12.50")
    assert match and (match.group(1), match.group(3)) == ("INV-7", "12.50")
    assert re.match(regex.pattern, "INV-7 x abc 12.50 trailing") is None  # the whole line must match


def test_escaped_parentheses_and_classes_are_not_groups() -> None:
    regex = compile_line_regex(r"\((?<a>[(<]+)\) [^)](?<b>.)")
    assert regex.columns == (("a", 1), ("b", 2))


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"(\d+)", "needs named groups"),
        (r"(?<InvoiceId>\d+)", "lower-case column name"),
        (r"(?<a>\d)(?<a>\d)", "used twice"),
        (r"(?<a>\d)\k<a>", "back-references"),
        (r"(?<a>[\d)", "not a valid regular expression"),
    ],
)
def test_bad_patterns_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_line_regex(pattern)


def test_header_cells_become_snake_case_columns() -> None:
    assert normalize_header([" Invoice ID", "Amount (EUR)", "2nd line"]) == ["invoice_id", "amount_eur", "c_2nd_line"]
    with pytest.raises(ValueError, match="repeats column 'a_b'"):
        normalize_header(["a b", "A-B"])


@pytest.mark.integration
def test_line_numbers_are_exact_when_the_file_is_split(spark: SparkSession, tmp_path: Path) -> None:
    source = tmp_path / "many.txt"
    source.write_text("".join(f"row {i:04d}\n" for i in range(1, 401)))
    previous = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "512")  # 4000 bytes: 8 splits of ~50 lines
    try:
        lines = number_lines(spark, source.as_uri())
        assert lines.rdd.getNumPartitions() >= 8
        rows = lines.collect()
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous)
    assert sorted((r["_line_number"], r["_raw_line"]) for r in rows) == [(i, f"row {i:04d}") for i in range(1, 401)]
