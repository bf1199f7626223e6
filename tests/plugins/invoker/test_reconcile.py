"""Reconciliation (moto S3, the real ledger): objects no event announced are recorded once and go
on like events; versions an event already recorded are never started again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lakehouse import cli
from lakehouse.config import Settings
from lakehouse.flows import Catalogue, Flow, FlowTask, Template
from lakehouse.invoker.core import Invoker
from lakehouse.invoker.events import ObjectEvent
from lakehouse.invoker.reconcile import key_prefix, reconcile


@pytest.mark.parametrize(
    ("pattern", "syntax", "prefix"),
    [
        ("drops/*.csv", "glob", "drops/"),
        ("drops/2026/??/*.csv", "glob", "drops/2026/"),
        ("*", "glob", ""),
        ("drops/[ab]*.csv", "glob", "drops/"),
        (r"drops/\d{4}/.*\.csv", "regex", "drops/"),
        (r"^orders/2026\.11/.*", "regex", "orders/2026.11/"),
        ("ordersx?/.*", "regex", "orders"),
    ],
)
def test_the_listing_is_narrowed_to_the_patterns_literal_start(pattern: str, syntax: str, prefix: str) -> None:
    flow = Flow("f", (), trigger_bucket="b", trigger_key_pattern=pattern, trigger_pattern_syntax=syntax)
    assert key_prefix(flow) == prefix


@pytest.fixture
def bucket_and_invoker(pg: Settings, airflow, bucket: str, tmp_path) -> Iterator[tuple[Any, Invoker]]:
    template = Template("t", "t.py")
    flows = {
        f"rec_{bucket}": Flow(
            f"rec_{bucket}",
            (FlowTask(f"rec_{bucket}", "a", "t"),),
            trigger_bucket=bucket,
            trigger_key_pattern="drops/*.csv",
        ),
        f"recb_{bucket}": Flow(
            f"recb_{bucket}",
            (FlowTask(f"recb_{bucket}", "a", "t"),),
            trigger_bucket=bucket,
            trigger_key_pattern="batched/*.csv",
            max_files_per_run=50,
        ),
    }
    catalogue = Catalogue(flows, {"t": template})
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        invoker = Invoker(
            pg.metadata_dsn, airflow, catalogue_loader=lambda: catalogue, lake_uri=(tmp_path / "lake").as_uri()
        )
        yield s3, invoker
        invoker.close()


def put(s3: Any, bucket: str, key: str) -> str:
    return s3.put_object(Bucket=bucket, Key=key, Body=key.encode())["ETag"].strip('"')


def test_a_sweep_records_what_no_event_announced_and_nothing_twice(bucket_and_invoker, airflow, bucket: str) -> None:
    s3, invoker = bucket_and_invoker
    etags = {
        key: put(s3, bucket, key) for key in ("drops/a.csv", "drops/b.csv", "drops/c.csv", "drops/x.txt", "other/d.csv")
    }
    # drops/a.csv's event did arrive
    invoker.handle_object_event(ObjectEvent(bucket, "drops/a.csv", etags["drops/a.csv"], 12, datetime.now(UTC), "s3"))
    assert len(airflow.runs) == 1

    results, jobs = reconcile(invoker, s3, f"rec_{bucket}")
    (result,) = results
    assert (result.prefix, result.listed, result.matching, result.known) == ("drops/", 4, 3, 1)
    assert sorted(o.key for o in result.recorded) == ["drops/b.csv", "drops/c.csv"]
    assert sorted(invoker.dispatch(job).status for job in jobs) == ["created", "created"]
    assert len(airflow.runs) == 3  # one per file version, the announced one not again

    (again,), jobs = reconcile(invoker, s3, f"rec_{bucket}")
    assert (again.known, again.recorded, jobs) == (3, [], [])


def test_a_sweep_of_a_batched_flow_queues_its_files_for_one_batch(bucket_and_invoker, airflow, bucket: str) -> None:
    s3, invoker = bucket_and_invoker
    for i in range(30):
        put(s3, bucket, f"batched/f{i:02d}.csv")
    (result,), jobs = reconcile(invoker, s3, f"recb_{bucket}")
    assert len(result.recorded) == 30 and {o.status for o in result.recorded} == {"queued"} and jobs == []
    (batch,) = invoker.gather_batches()
    assert invoker.dispatch(batch).status == "created"
    ((_, conf),) = airflow.runs.items()
    assert conf["batch"]["files"] == 30


def test_lakehouse_reconcile_prints_what_it_found(pg: Settings, fake_airflow, monkeypatch, capsys) -> None:
    import psycopg2

    url, state = fake_airflow
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_URL", url)
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PASSWORD", "pw")
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = 'reconcile_cli'")
        cur.execute(
            "INSERT INTO lakehouse.flows (flow_id, trigger_bucket, trigger_key_pattern) "
            "VALUES ('reconcile_cli', 'reconcile-bucket', 'in/*')"
        )
        cur.execute(
            "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) VALUES "
            "('reconcile_cli', 'a', 'stage_to_presentation', '{\"sql\": \"select 1\", \"target_table\": \"p.t\"}')"
        )
    try:
        with mock_aws():
            s3 = boto3.client("s3", region_name="us-east-1")
            s3.create_bucket(Bucket="reconcile-bucket")
            for key in ("in/a.csv", "in/b.csv"):
                s3.put_object(Bucket="reconcile-bucket", Key=key, Body=b"x")
            monkeypatch.setattr("lakehouse.hooks.s3.landing_client", lambda settings: s3)
            assert cli.main(["reconcile", "--flow", "reconcile_cli"]) == 0
            out = capsys.readouterr().out
            assert (
                "flow reconcile_cli: listed 2 object(s) under s3://reconcile-bucket/in/, 2 match its pattern, "
                "0 already in the ledger, 2 recorded now" in out
            )
            assert "  recorded s3://reconcile-bucket/in/a.csv" in out and len(state.runs) == 2
            assert cli.main(["reconcile", "--flow", "reconcile_cli"]) == 0
            assert "2 already in the ledger, 0 recorded now" in capsys.readouterr().out
    finally:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = 'reconcile_cli'")
            cur.execute("DELETE FROM lakehouse.file_ledger WHERE bucket = 'reconcile-bucket'")
        conn.close()
