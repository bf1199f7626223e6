"""The Glue-style argument parser: pure Python, no Spark session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lakehouse_jobs.args import COMMON_ARGS, ArgSpec, JobArgumentError, parse_job_args
from lakehouse_jobs.templates import stage_to_presentation

SPEC = [
    ArgSpec("dataset", required=True),
    ArgSpec("header", "bool", default=True),
    ArgSpec("ratio", "float", default=0.0),
    ArgSpec("limit", "int"),
    ArgSpec("schema", "json"),
    ArgSpec("keys", "list"),
]


def test_types_defaults_and_glue_reserved_arguments() -> None:
    argv = [
        "--JOB_ID",
        "j_1",
        "--dataset",
        "invoices",
        "--job-bookmark-option",
        "job-bookmark-disable",
        "--header",
        "False",
        "--ratio",
        "0.25",
        "--limit=7",
        "--schema",
        '{"a": "int"}',
        "--keys",
        "invoice_id, line_no",
        "--enable-metrics",
        "--TempDir",
        "s3://tmp/x",
    ]
    args = parse_job_args(argv, SPEC)
    assert args == {
        "dataset": "invoices",
        "header": False,
        "ratio": 0.25,
        "limit": 7,
        "schema": {"a": "int"},
        "keys": ["invoice_id", "line_no"],
    }


def test_absent_optional_arguments_get_defaults() -> None:
    assert parse_job_args(["--dataset", "d"], SPEC) == {
        "dataset": "d",
        "header": True,
        "ratio": 0.0,
        "limit": None,
        "schema": None,
        "keys": None,
    }


def test_values_may_start_with_a_dash_and_lists_may_be_json() -> None:
    args = parse_job_args(["--dataset", "--weird--", "--ratio", "-1.5", "--keys", '["a", "b,c"]'], SPEC)
    assert (args["dataset"], args["ratio"], args["keys"]) == ("--weird--", -1.5, ["a", "b,c"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "missing required argument --dataset"),
        (["--dataset", "d", "--header", "maybe"], "--header must be true or false"),
        (["--dataset", "d", "--ratio", "lots"], "--ratio must be a number"),
        (["--dataset", "d", "--limit", "1.5"], "--limit must be an integer"),
        (["--dataset", "d", "--schema", "{bad"], "--schema is not valid JSON"),
        (["--dataset", "d", "--keys", " , "], "--keys must name at least one item"),
        (["--dataset", "d", "--dataset", "e"], "--dataset was given twice"),
        (["--dataset"], "--dataset needs a value"),
    ],
)
def test_errors_name_the_argument(argv: list[str], message: str) -> None:
    with pytest.raises(JobArgumentError, match=message):
        parse_job_args(argv, SPEC)


def test_common_arguments_require_batch_and_lake() -> None:
    with pytest.raises(JobArgumentError, match="--batch_id"):
        parse_job_args(["--lake_uri", "file:///x"], COMMON_ARGS)
    args = parse_job_args(["--batch_id", "b", "--lake_uri", "s3://lake/x", "--flow_id", "f"], COMMON_ARGS)
    assert (args["batch_id"], args["lake_uri"], args["flow_id"], args["metrics_uri"]) == ("b", "s3://lake/x", "f", None)


def test_a_template_reports_bad_arguments_in_its_metrics(tmp_path: Path) -> None:
    metrics_file = tmp_path / "m.json"
    with pytest.raises(JobArgumentError, match="--batch_id"):
        stage_to_presentation.main(["--metrics_uri", str(metrics_file), "--sql", "SELECT 1"])
    metrics = json.loads(metrics_file.read_text())
    assert "missing required argument --batch_id" in metrics["error"] and "rows_out" not in metrics  # unknown, not 0
