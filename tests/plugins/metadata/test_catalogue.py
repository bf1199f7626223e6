"""One query per parse, and a parse that survives Postgres being unreachable."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.metadata import catalogue as catalogue_module
from lakehouse.metadata.catalogue import load_catalogue


@pytest.fixture
def two_flows(pg: Settings):
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn, conn.cursor() as cur:
        for flow_id in ("cat_one", "cat_two"):
            cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = %s", (flow_id,))
            cur.execute("INSERT INTO lakehouse.flows (flow_id, schedule) VALUES (%s, '@daily')", (flow_id,))
            cur.execute(
                "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, task_order, template_id, parameters) VALUES "
                '(%s, \'b\', 2, \'stage_to_presentation\', \'{"sql": "select 1", "target_table": "p.t"}\'),'
                '(%s, \'a\', 1, \'stage_to_presentation\', \'{"sql": "select 2", "target_table": "p.u"}\')',
                (flow_id, flow_id),
            )
    yield
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id IN ('cat_one', 'cat_two')")
    conn.close()


def test_catalogue_is_one_query_with_tasks_in_order(pg: Settings, two_flows, monkeypatch, tmp_path: Path) -> None:
    executed: list[str] = []
    real_connect = psycopg2.connect

    class CountingCursor:
        def __init__(self, cur):  # type: ignore[no-untyped-def]
            self._cur = cur

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            self._cur.close()

        def execute(self, sql, *args):  # type: ignore[no-untyped-def]
            executed.append(sql)
            return self._cur.execute(sql, *args)

        def fetchone(self):  # type: ignore[no-untyped-def]
            return self._cur.fetchone()

    class CountingConnection:
        def __init__(self, conn):  # type: ignore[no-untyped-def]
            self._conn = conn

        def cursor(self):  # type: ignore[no-untyped-def]
            return CountingCursor(self._conn.cursor())

        def close(self) -> None:
            self._conn.close()

    monkeypatch.setattr(catalogue_module.psycopg2, "connect", lambda *a, **k: CountingConnection(real_connect(*a, **k)))
    catalogue = load_catalogue(pg.metadata_dsn, snapshot_path=tmp_path / "snap.json")
    assert len(executed) == 1
    flow = catalogue.flows["cat_one"]
    assert [t.task_id for t in flow.tasks] == ["a", "b"] and flow.schedule == "@daily"
    assert "landing_to_raw" in catalogue.templates
    assert json.loads((tmp_path / "snap.json").read_text())["flows"]


def test_unreachable_database_falls_back_to_last_snapshot(pg: Settings, two_flows, tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    load_catalogue(pg.metadata_dsn, snapshot_path=snapshot)
    dead = pg.dsn(pg.metadata_db).replace(f":{pg.pg_port}/", ":1/")
    catalogue = load_catalogue(dead, snapshot_path=snapshot)
    assert "cat_two" in catalogue.flows
    with pytest.raises(psycopg2.OperationalError):
        load_catalogue(dead, snapshot_path=tmp_path / "missing.json")


def test_task_run_reads_only_its_flow_and_keeps_the_full_snapshot(pg: Settings, two_flows, tmp_path: Path) -> None:
    """A worker parses for one DAG: it must not pay for every flow, nor shrink the snapshot."""
    snapshot = tmp_path / "snap.json"
    load_catalogue(pg.metadata_dsn, snapshot_path=snapshot)
    before = snapshot.read_text()
    one = load_catalogue(pg.metadata_dsn, snapshot_path=snapshot, dag_id="cat_two")
    assert list(one.flows) == ["cat_two"]
    assert "stage_to_presentation" in one.templates
    assert snapshot.read_text() == before
    assert {"cat_one", "cat_two"} <= set(
        load_catalogue("postgresql://nobody@127.0.0.1:1/x", snapshot_path=snapshot).flows
    )
