from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.flows import Catalogue, Flow, FlowTask, ParameterSpec, Template
from lakehouse.hooks.airflow_api import AirflowApiError, AirflowUnavailableError
from lakehouse.invoker.core import Invoker


class RecordingAirflow:
    """Stands in for Airflow's API at the invoker's unit boundary; the e2e test uses the real one.

    Behaves as Airflow does for run ids: a second POST of a known id answers 409 ("exists").
    """

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls = 0
        self.down = False
        self.missing_dags: set[str] = set()
        self.placeholder_dags: set[str] = set()  # served as an invalid flow's DAG (tag "invalid")
        self.refuse_with: int | None = None  # e.g. 400: Airflow refuses the request itself

    def trigger_dag_run(self, dag_id: str, dag_run_id: str, conf: dict[str, Any] | None = None) -> str:
        self.calls += 1
        if self.down:
            raise AirflowUnavailableError("connection refused")
        if dag_id in self.missing_dags:
            raise AirflowApiError(404, f"DAG {dag_id} not found")
        if self.refuse_with:
            raise AirflowApiError(self.refuse_with, "request refused")
        if (dag_id, dag_run_id) in self.runs:
            return "exists"
        self.runs[(dag_id, dag_run_id)] = conf or {}
        return "created"

    def get_dag(self, dag_id: str) -> dict[str, Any] | None:
        if self.down:
            raise AirflowUnavailableError("connection refused")
        if dag_id in self.missing_dags:
            return None
        tags = ["lakehouse", "invalid"] if dag_id in self.placeholder_dags else ["lakehouse"]
        return {"dag_id": dag_id, "is_stale": False, "tags": [{"name": t, "dag_id": dag_id} for t in tags]}


def catalogue_for(bucket: str, *patterns: tuple[str, str]) -> Catalogue:
    template = Template("t", "t.py", parameters=(ParameterSpec("x"),))
    flows = {
        flow_id: Flow(flow_id, (FlowTask(flow_id, "a", "t", {}),), trigger_bucket=bucket, trigger_key_pattern=pattern)
        for flow_id, pattern in patterns
    }
    return Catalogue(flows=flows, templates={"t": template})


@pytest.fixture
def bucket() -> str:
    return f"b{uuid.uuid4().hex[:10]}"


@pytest.fixture
def airflow() -> RecordingAirflow:
    return RecordingAirflow()


@pytest.fixture
def invoker(pg: Settings, bucket: str, airflow: RecordingAirflow) -> Invoker:
    catalogue = catalogue_for(bucket, ("inv_a", "in/*.txt"), ("inv_b", "in/special/*"))
    # a short backoff keeps the retry tests fast; the schedule itself is tested in test_outbox.py
    return Invoker(
        pg.metadata_dsn,
        airflow,
        catalogue_loader=lambda: catalogue,
        retry_base=0.2,  # type: ignore[arg-type]
        retry_max=1.0,
    )


@pytest.fixture
def ledger_rows(pg: Settings, bucket: str) -> Iterator[Any]:
    def fetch() -> list[dict[str, Any]]:
        conn = psycopg2.connect(pg.metadata_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT ledger_id, object_key, etag, flow_id, status, deliveries, attempts, dag_run_id, last_error "
                    "FROM lakehouse.file_ledger WHERE bucket = %s ORDER BY ledger_id",
                    (bucket,),
                )
                names = [d.name for d in cur.description]
                return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        finally:
            conn.close()

    yield fetch
