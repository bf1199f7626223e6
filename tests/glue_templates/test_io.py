"""Landing objects, lake paths and metrics files; S3 through moto (in-process, no network)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from pyspark.sql import SparkSession

from lakehouse_jobs import io
from lakehouse_jobs.metrics import write_metrics


@pytest.fixture
def fake_s3(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="landing")
        yield client


def test_lake_path_joins_and_turns_local_paths_into_uris(tmp_path: Path) -> None:
    assert io.lake_path("s3://bucket/lake/", "raw", "inv") == "s3://bucket/lake/raw/inv"
    assert io.lake_path("file:///data/lake", "raw") == "file:///data/lake/raw"
    assert io.lake_path(str(tmp_path), "raw") == f"{tmp_path.as_uri()}/raw"


def test_metrics_written_locally_and_to_s3(tmp_path: Path, fake_s3) -> None:
    write_metrics(str(tmp_path / "m" / "a.json"), {"rows_in": 1})
    write_metrics((tmp_path / "b.json").as_uri(), {"rows_in": 2})
    write_metrics("s3://landing/_metrics/c.json", {"rows_in": 3})
    write_metrics(None, {"rows_in": 4})  # no destination: nothing to do, no error
    assert json.loads((tmp_path / "m" / "a.json").read_text()) == {"rows_in": 1}
    assert json.loads((tmp_path / "b.json").read_text()) == {"rows_in": 2}
    body = fake_s3.get_object(Bucket="landing", Key="_metrics/c.json")["Body"].read()
    assert json.loads(body) == {"rows_in": 3}


def test_localize_input_stages_s3_objects_and_cleans_up(spark: SparkSession, fake_s3) -> None:
    assert spark.conf.get(io.STAGE_S3_CONF) == "true"  # as the local runner configures it
    fake_s3.put_object(Bucket="landing", Key="invoices/2026/inv1.txt", Body=b"line one\nline two\n")
    with io.localize_input(spark, "s3://landing/invoices/2026/inv1.txt") as readable:
        assert readable.startswith("file://") and readable.endswith("/inv1.txt")
        assert [r.value for r in spark.read.text(readable).collect()] == ["line one", "line two"]
        staged = Path(readable.removeprefix("file://"))
    assert not staged.exists()


def test_localize_input_passes_local_files_and_refuses_missing_ones(spark: SparkSession, tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("x\n")
    with io.localize_input(spark, str(source)) as readable:
        assert readable == source.as_uri()
    with (
        pytest.raises(FileNotFoundError, match=re.escape("missing.txt")),
        io.localize_input(spark, str(tmp_path / "missing.txt")),
    ):
        pass


def test_read_text_and_file_head_locally_and_on_s3(tmp_path: Path, fake_s3) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(b"0123456789")
    assert io.file_head(str(source), length=4, tail=3) == (b"0123", b"789", 10)
    assert io.file_head(source.as_uri(), length=100) == (b"0123456789", b"", 10)
    fake_s3.put_object(Bucket="landing", Key="a/f.bin", Body=b"0123456789")
    fake_s3.put_object(Bucket="landing", Key="a/empty.bin", Body=b"")
    assert io.file_head("s3://landing/a/f.bin", length=4, tail=3) == (b"0123", b"789", 10)
    assert io.file_head("s3://landing/a/empty.bin") == (b"", b"", 0)
    io.write_text("s3://landing/_watermarks/x.json", '{"w": 1}')
    assert io.read_text("s3://landing/_watermarks/x.json") == '{"w": 1}'
    assert io.read_text("s3://landing/_watermarks/missing.json") is None
    assert io.read_text(str(tmp_path / "missing.json")) is None
