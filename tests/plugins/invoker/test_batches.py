"""Micro-batched runs against the real ledger: every file version in exactly one run, none lost,
whatever the concurrency, restarts and duplicates; the run's conf names a manifest of its files."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from lakehouse.config import Settings
from lakehouse.flows import Catalogue, Flow, FlowTask, ParameterSpec, Template
from lakehouse.invoker.core import Invoker
from lakehouse.invoker.events import ObjectEvent


def batched_catalogue(bucket: str, max_files: int, window: int = 0, broken: bool = False) -> Catalogue:
    template = Template("t", "t.py", parameters=(ParameterSpec("n", "int", required=True),))
    flow_id = f"batched_{bucket}"
    task = FlowTask(flow_id, "a", "t", {} if broken else {"n": 1})
    flow = Flow(
        flow_id,
        (task,),
        trigger_bucket=bucket,
        trigger_key_pattern="in/*",
        max_files_per_run=max_files,
        batch_window_seconds=window,
    )
    return Catalogue({flow_id: flow}, {"t": template})


def make(
    pg: Settings, airflow, bucket: str, tmp_path: Path, max_files: int = 200, window: int = 0, lease: float = 30.0
) -> Invoker:
    catalogue = batched_catalogue(bucket, max_files, window)
    return Invoker(
        pg.metadata_dsn,
        airflow,
        catalogue_loader=lambda: catalogue,
        retry_base=0.2,
        retry_max=1.0,
        lease_seconds=lease,
        lake_uri=(tmp_path / "lake").as_uri(),
    )


def event(bucket: str, i: int, etag: str = "e1") -> ObjectEvent:
    return ObjectEvent(bucket, f"in/f{i:04d}.csv", etag, 10, datetime(2026, 11, 1, tzinfo=UTC), "test")


def ledger(pg: Settings, bucket: str) -> list[dict[str, Any]]:
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT object_key, etag, status, batch_id, dag_run_id, deliveries, last_error "
            "FROM lakehouse.file_ledger WHERE bucket = %s ORDER BY ledger_id",
            (bucket,),
        )
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    conn.close()
    return rows


def test_queued_files_become_one_run_whose_manifest_names_them(
    pg: Settings, airflow, bucket: str, tmp_path: Path
) -> None:
    invoker = make(pg, airflow, bucket, tmp_path)
    outcomes, jobs = invoker.accept([event(bucket, i) for i in range(5)] + [event(bucket, 0)])
    assert [o.status for o in outcomes] == ["queued"] * 5 + ["queued"]  # the repeat: stored once, counted
    assert jobs == [] and airflow.calls == 0  # nothing is sent before it is gathered
    (job,) = invoker.gather_batches()
    assert invoker.dispatch(job).status == "created"
    (((_dag_id, run_id), conf),) = airflow.runs.items()
    assert conf["batch"]["files"] == 5 and run_id == job.outcome.dag_run_id
    manifest = json.loads(Path(conf["batch"]["manifest"].removeprefix("file://")).read_text())
    assert [f["key"] for f in manifest["files"]] == [f"in/f{i:04d}.csv" for i in range(5)]
    rows = ledger(pg, bucket)
    assert {(r["status"], r["dag_run_id"]) for r in rows} == {("triggered", run_id)}
    assert sorted(r["deliveries"] for r in rows) == [1, 1, 1, 1, 2]


def test_a_backlog_is_cut_into_runs_of_at_most_max_files(pg: Settings, airflow, bucket: str, tmp_path: Path) -> None:
    """While a batch of the flow is being sent only full batches are gathered: the rest waits for
    more files (a flood becomes few large runs), and goes as soon as the batch was sent."""
    invoker = make(pg, airflow, bucket, tmp_path, max_files=2)
    invoker.accept([event(bucket, i) for i in range(5)])
    jobs = invoker.gather_batches()
    assert [invoker.dispatch(job).status for job in jobs] == ["created", "created"]
    (last,) = invoker.gather_batches()
    assert invoker.dispatch(last).status == "created"
    assert sorted(conf["batch"]["files"] for conf in airflow.runs.values()) == [1, 2, 2]


def test_a_window_waits_for_more_files_unless_the_batch_is_full(
    pg: Settings, airflow, bucket: str, tmp_path: Path
) -> None:
    invoker = make(pg, airflow, bucket, tmp_path, max_files=3, window=3600)
    invoker.accept([event(bucket, 0)])
    assert invoker.gather_batches() == []  # one file, the window has not run out: wait
    invoker.accept([event(bucket, i) for i in (1, 2)])
    (job,) = invoker.gather_batches()  # three: the batch is full
    assert invoker.dispatch(job).status == "created"


def test_concurrent_gatherers_put_every_file_in_exactly_one_run(
    pg: Settings, airflow, bucket: str, tmp_path: Path
) -> None:
    """Eight invokers (threads) store and gather at once, as several dispatchers and processes do."""
    invokers = [make(pg, airflow, bucket, tmp_path, max_files=7) for _ in range(8)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            invoker = invokers[index]
            for i in range(index, 400, 8):
                invoker.accept([event(bucket, i)])
                if i % 3 == 0:
                    for job in invoker.gather_batches():
                        invoker.dispatch(job)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    for job in invokers[0].gather_batches():
        invokers[0].dispatch(job)
    rows = ledger(pg, bucket)
    assert len(rows) == 400 and {r["status"] for r in rows} == {"triggered"}
    files_in_runs = [
        f["key"]
        for run_id, conf in ((k[1], v) for k, v in airflow.runs.items())
        for f in json.loads(Path(conf["batch"]["manifest"].removeprefix("file://")).read_text())["files"]
    ]
    assert sorted(files_in_runs) == sorted(r["object_key"] for r in rows)  # each exactly once
    assert all(conf["batch"]["files"] <= 7 for conf in airflow.runs.values())


def test_a_batch_stored_by_an_invoker_that_died_is_sent_once_by_the_next(
    pg: Settings, airflow, bucket: str, tmp_path: Path
) -> None:
    first = make(pg, airflow, bucket, tmp_path, lease=1)
    first.accept([event(bucket, i) for i in range(3)])
    (lost,) = first.gather_batches()  # stored and assigned, then the process dies before calling Airflow
    first.close()
    time.sleep(1.2)  # the lease runs out
    second = make(pg, airflow, bucket, tmp_path, lease=1)
    (job,) = second.claim_due_batches()
    assert job.outcome.dag_run_id == lost.outcome.dag_run_id and job.batch_id == lost.batch_id
    assert second.dispatch(job).status == "created"
    # a retry whose first call did reach Airflow (the answer was lost) gets 409: the same run
    assert second.dispatch(job).status == "exists" and len(airflow.runs) == 1
    assert {r["status"] for r in ledger(pg, bucket)} == {"triggered"}


def test_a_batched_flow_that_is_invalid_holds_its_files_until_fixed(
    pg: Settings, airflow, bucket: str, tmp_path: Path
) -> None:
    state = {"broken": True}
    invoker = Invoker(
        pg.metadata_dsn,
        airflow,
        catalogue_ttl=0,
        lake_uri=(tmp_path / "lake").as_uri(),
        catalogue_loader=lambda: batched_catalogue(bucket, 10, broken=state["broken"]),
    )
    invoker.accept([event(bucket, i) for i in range(3)])
    assert invoker.gather_batches() == []
    rows = ledger(pg, bucket)
    assert {r["status"] for r in rows} == {"flow_invalid"} and "parameters.n" in rows[0]["last_error"]
    state["broken"] = False
    assert invoker.release_held() == {f"batched_{bucket}": 3}
    (job,) = invoker.gather_batches()
    assert invoker.dispatch(job).status == "created"
    assert {r["status"] for r in ledger(pg, bucket)} == {"triggered"}
