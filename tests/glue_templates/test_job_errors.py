"""A failed job says why in one line: ``error_summary`` and the failure metrics ``run_template`` writes.

The orchestrator stores that line in the task's audit row, so it must name the file, row or field
as the job's own message does and never carry a JVM stack trace or a query plan.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession

from lakehouse_jobs.args import ArgSpec, JobArgumentError
from lakehouse_jobs.job import run_template
from lakehouse_jobs.metrics import SUMMARY_MAX_CHARS, JobFailure, error_summary, summary_line

REJECTED = (
    "landing file s3://landing/customers/bad/malformed.csv: 3 of 5 lines rejected (60.0%), more than "
    "max_reject_ratio 0.0; nothing written to raw, rejects written to s3://lake/rejects/customers/_batch_id=b1"
)
QUALITY_REPORT = (
    "quality checks on stage.orders: 2 of 6 failed\n"
    "- unique(order_id): 2 duplicate keys\n"
    '    {"order_id": 7}\n'
    "\n"
    "- not_null(amount): 1 null\n"
    "report: file:///lake/_quality/stage.orders/_batch_id=b1.json"
)
JAVA_TEXT = (
    "An error occurred while calling o123.save.\n"
    ": org.apache.iceberg.exceptions.CommitFailedException: Cannot commit stage.orders: metadata is stale\n"
    "\tat org.apache.iceberg.BaseMetastoreTableOperations.commit(BaseMetastoreTableOperations.java:120)\n"
    "\tat org.apache.iceberg.SnapshotProducer.commit(SnapshotProducer.java:400)\n"
    "Caused by: java.sql.SQLException: connection reset\n"
)


class FakeJavaError(Py4JJavaError):
    """A Py4JJavaError with a fixed text: the real one asks the JVM for its text on ``str()``."""

    def __init__(self, text: str | None, errmsg: str = "An error occurred while calling o1.x.\n") -> None:
        Exception.__init__(self, errmsg)
        self.errmsg, self.text = errmsg, text

    def __str__(self) -> str:
        if self.text is None:
            raise ConnectionError("the Java gateway is gone")
        return self.text


def _is_one_line(summary: str) -> bool:
    return summary.splitlines() == [summary] and len(summary) <= SUMMARY_MAX_CHARS


def test_job_failure_is_its_own_message_without_type() -> None:
    assert error_summary(JobFailure(REJECTED, {"rows_in": 5})) == REJECTED


def test_multi_line_job_failure_joins_non_empty_lines() -> None:
    summary = error_summary(JobFailure(QUALITY_REPORT))
    assert summary == (
        "quality checks on stage.orders: 2 of 6 failed; - unique(order_id): 2 duplicate keys; "
        '{"order_id": 7}; - not_null(amount): 1 null; '
        "report: file:///lake/_quality/stage.orders/_batch_id=b1.json"
    )


def test_validation_errors_keep_their_message_only() -> None:
    assert (
        error_summary(ValueError("--format must be one of csv, json, got 'xml'"))
        == "--format must be one of csv, json, got 'xml'"
    )
    assert (
        error_summary(JobArgumentError("missing required argument --batch_id\n(the batch)"))
        == "missing required argument --batch_id; (the batch)"
    )


def test_library_value_errors_and_others_name_their_type_and_first_line() -> None:
    decode = json.JSONDecodeError("Expecting value", "{x", 1)
    assert error_summary(decode) == "JSONDecodeError: Expecting value: line 1 column 2 (char 1)"
    assert (
        error_summary(FileNotFoundError("source file /x/nope.csv does not exist"))
        == "FileNotFoundError: source file /x/nope.csv does not exist"
    )
    assert error_summary(RuntimeError("\n\n  first real line  \nsecond line")) == "RuntimeError: first real line"
    assert error_summary(KeyError("amount")) == "KeyError: 'amount'"
    assert error_summary(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_long_message_is_cut_with_an_ellipsis() -> None:
    summary = error_summary(JobFailure("landing file x.csv: " + "bad value; " * 200))
    assert len(summary) == SUMMARY_MAX_CHARS and summary.endswith("…") and summary.startswith("landing file x.csv")
    exact = "x" * SUMMARY_MAX_CHARS
    assert error_summary(ValueError(exact)) == exact


def test_no_line_break_of_any_kind_survives() -> None:
    summary = error_summary(JobFailure("a\r\nb\rc\u2028d\x0be"))
    assert summary == "a; b; c; d; e" and _is_one_line(summary)


def test_py4j_error_is_the_java_exception_line_without_package() -> None:
    assert (
        error_summary(FakeJavaError(JAVA_TEXT))
        == "CommitFailedException: Cannot commit stage.orders: metadata is stale"
    )
    bare = "An error occurred while calling o9.run.\n: java.lang.NullPointerException\n\tat a.b.C.d(C.java:1)\n"
    assert error_summary(FakeJavaError(bare)) == "NullPointerException"
    inner = "An error occurred while calling o9.run.\n: org.example.Outer$BadThing: no\n"
    assert error_summary(FakeJavaError(inner)) == "Outer$BadThing: no"


def test_py4j_error_without_a_java_line_or_without_a_jvm_still_summarises() -> None:
    assert error_summary(FakeJavaError("something odd happened\nmore")) == "FakeJavaError: something odd happened"
    # the JVM died with the job: str() fails, py4j's own message is what is left
    assert error_summary(FakeJavaError(None)) == "FakeJavaError: An error occurred while calling o1.x."


def test_summary_line_prints_the_summary() -> None:
    line = summary_line(
        "quality_check",
        {
            "rows_in": 6,
            "rows_out": 6,
            "rows_rejected": 0,
            "error": f"JobFailure: {QUALITY_REPORT}",
            "error_summary": error_summary(JobFailure(QUALITY_REPORT)),
        },
    )
    assert line.startswith("[quality_check] FAILED rows_in=6 rows_out=6 rows_rejected=0 error=quality checks on")
    assert "; - unique(order_id)" in line and "\n" not in line
    older = summary_line("x", {"error": "ValueError: first\nsecond"})  # metrics without the key
    assert older == "[x] FAILED error=ValueError: first"


def test_bad_arguments_write_the_summary_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics_file = tmp_path / "m.json"

    def body(spark: SparkSession, args: dict) -> dict:
        raise AssertionError("not reached")

    with pytest.raises(JobArgumentError):
        run_template(
            "some_template",
            ["--lake_uri", "file:///lake", "--metrics_uri", str(metrics_file)],
            [ArgSpec("dataset")],
            body,
        )
    metrics = json.loads(metrics_file.read_text())
    assert metrics["error"].startswith("JobArgumentError: missing required argument --batch_id")
    assert metrics["error_summary"].startswith("missing required argument --batch_id")
    # counts the job never reached are unknown (NULL in the audit row), not 0
    assert not {"rows_in", "rows_out", "rows_rejected"} & set(metrics)
    assert "error=missing required argument --batch_id" in capsys.readouterr().out


@pytest.mark.integration
def test_real_analysis_exception_is_class_and_first_line(spark: SparkSession) -> None:
    with pytest.raises(AnalysisException) as caught:
        spark.sql("SELECT * FROM stage.no_such_table_xyz").collect()
    summary = error_summary(caught.value)
    assert summary.startswith("AnalysisException: [TABLE_OR_VIEW_NOT_FOUND]")
    assert "no_such_table_xyz" in summary and _is_one_line(summary)
    assert "UnresolvedRelation" not in summary and "JVM stacktrace" not in summary


@pytest.mark.integration
def test_real_py4j_java_error_is_the_java_line(spark: SparkSession, tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(Py4JJavaError) as caught:
        spark.sparkContext._jvm.java.io.FileInputStream(str(missing))
    assert error_summary(caught.value) == f"FileNotFoundException: {missing} (No such file or directory)"


@pytest.mark.integration
def test_failed_body_writes_counts_error_and_summary(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics_file = tmp_path / "m.json"

    def body(spark: SparkSession, args: dict) -> dict:
        raise JobFailure(QUALITY_REPORT, {"rows_in": 6, "rows_out": 6, "checks_failed": 2})

    with pytest.raises(JobFailure):
        run_template(
            "quality_check",
            ["--batch_id", "b1", "--lake_uri", "file:///lake", "--flow_id", "f", "--metrics_uri", str(metrics_file)],
            [],
            body,
        )
    metrics = json.loads(metrics_file.read_text())
    assert metrics["error"] == f"JobFailure: {QUALITY_REPORT}"
    assert metrics["error_summary"] == error_summary(JobFailure(QUALITY_REPORT))
    assert (metrics["rows_in"], metrics["rows_out"], metrics["checks_failed"]) == (6, 6, 2)
    assert "rows_rejected" not in metrics  # the job did not report it: unknown, not 0
    assert (metrics["template"], metrics["batch_id"], metrics["flow_id"]) == ("quality_check", "b1", "f")
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == summary_line("quality_check", metrics) and "error=quality checks on stage.orders" in out[-1]
