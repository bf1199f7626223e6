"""``lakehouse replay``: lists the flow's bucket (moto S3), keeps exactly-once, ``--force`` re-runs."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import psycopg2
import pytest
from moto import mock_aws

from lakehouse import cli
from lakehouse.config import Settings


@pytest.fixture
def replay_flow(pg: Settings, fake_airflow, monkeypatch) -> Iterator[object]:
    url, state = fake_airflow
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_URL", url)
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PASSWORD", "pw")
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO lakehouse.flows (flow_id, trigger_bucket, trigger_key_pattern) "
            "VALUES ('replay_flow', 'replay-bucket', 'drops/*.csv')"
        )
        cur.execute(
            "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, template_id, parameters) VALUES "
            "('replay_flow', 'a', 'stage_to_presentation', '{\"sql\": \"select 1\", \"target_table\": \"p.t\"}')"
        )
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="replay-bucket")
        for key in ("drops/a.csv", "drops/b c.csv", "drops/readme.txt", "drops/sub/", "other/x.csv"):
            s3.put_object(Bucket="replay-bucket", Key=key, Body=b"" if key.endswith("/") else key.encode())
        monkeypatch.setattr("lakehouse.hooks.s3.landing_client", lambda settings: s3)
        yield state
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = 'replay_flow'")
        cur.execute("DELETE FROM lakehouse.file_ledger WHERE bucket = 'replay-bucket'")
    conn.close()


def test_replay_then_replay_again_then_force(replay_flow, capsys) -> None:
    state = replay_flow
    assert cli.main(["replay", "--flow", "replay_flow", "--prefix", "drops/"]) == 0
    assert "replay: 2 created, 1 not_matching" in capsys.readouterr().out
    assert len(state.runs) == 2
    assert {r["conf"]["file"]["key"] for r in state.runs.values()} == {"drops/a.csv", "drops/b c.csv"}
    assert cli.main(["replay", "--flow", "replay_flow", "--prefix", "drops/"]) == 0
    assert "replay: 2 duplicate, 1 not_matching" in capsys.readouterr().out
    assert len(state.runs) == 2  # exactly once: nothing new
    assert cli.main(["replay", "--flow", "replay_flow", "--prefix", "drops/a", "--force"]) == 0
    assert "replay: 1 created" in capsys.readouterr().out
    assert len(state.runs) == 3 and sum("__force" in run_id for _, run_id in state.runs) == 1


def test_replay_of_unknown_flow_is_an_error(replay_flow, capsys) -> None:
    assert cli.main(["replay", "--flow", "nope", "--prefix", ""]) == 1
    assert "no active flow 'nope'" in capsys.readouterr().err
