"""Files for a flow that cannot run wait in the ledger with their reason, and start once it can.

The invoker must neither send them into Airflow's 404s (the DAG of an invalid flow is a
placeholder, or absent) nor start a run on the placeholder; it waits until Airflow serves the
fixed DAG. What the real dag-processor does is shown in tests/e2e/test_invalid_flows.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from lakehouse.config import Settings
from lakehouse.flows import Catalogue, Flow, FlowTask, ParameterSpec, Template
from lakehouse.invoker.core import Invoker, file_dag_run_id
from lakehouse.invoker.events import ObjectEvent

TEMPLATE = Template("t", "t.py", parameters=(ParameterSpec("n", "int", required=True),))


def _catalogue(bucket: str, broken: bool, active: bool = True) -> Catalogue:
    """A healthy flow and ``orders``; flow ids carry the test's bucket, as the ledger is shared."""
    parameters = {} if broken else {"n": 1}
    healthy, orders = f"healthy_{bucket}", f"orders_{bucket}"
    flows = {
        healthy: Flow(
            healthy, (FlowTask(healthy, "a", "t", {"n": 1}),), trigger_bucket=bucket, trigger_key_pattern="ok/*"
        )
    }
    if active:
        flows[orders] = Flow(
            orders, (FlowTask(orders, "a", "t", parameters),), trigger_bucket=bucket, trigger_key_pattern="orders/*"
        )
    return Catalogue(flows, {"t": TEMPLATE})


class Rows:
    """The catalogue the invoker reads, changed by the test as a user changes rows."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.broken = True
        self.active = True

    def __call__(self) -> Catalogue:
        return _catalogue(self.bucket, self.broken, self.active)


@pytest.fixture
def rows(bucket: str) -> Rows:
    return Rows(bucket)


@pytest.fixture
def held_invoker(pg: Settings, airflow, rows: Rows) -> Invoker:
    return Invoker(pg.metadata_dsn, airflow, catalogue_loader=rows, catalogue_ttl=0, retry_base=0.2, retry_max=1.0)


def event(bucket: str, key: str, etag: str = "e1") -> ObjectEvent:
    return ObjectEvent(bucket, key, etag, 10, datetime.now(UTC), "test")


def test_a_file_for_an_invalid_flow_is_held_with_its_reason(
    held_invoker: Invoker, airflow, bucket: str, ledger_rows
) -> None:
    (outcome,) = held_invoker.handle_object_event(event(bucket, "orders/a.csv"))
    (again,) = held_invoker.handle_object_event(event(bucket, "orders/a.csv"))  # a redelivery
    healthy = held_invoker.handle_object_event(event(bucket, "ok/b.csv"))

    assert outcome.status == "flow_invalid" and "flow_tasks[a].parameters.n: required by template" in outcome.detail
    assert again.status == "pending"  # stored once, counted, still waiting
    assert [o.status for o in healthy] == ["created"]  # other flows are not slowed down
    healthy_id, orders = f"healthy_{bucket}", f"orders_{bucket}"
    assert list(airflow.runs) == [(healthy_id, file_dag_run_id(healthy_id, bucket, "ok/b.csv", "e1"))]
    held = next(r for r in ledger_rows() if r["flow_id"] == orders)
    assert (held["status"], held["deliveries"], held["attempts"]) == ("flow_invalid", 2, 0)
    assert f"flow '{orders}' is invalid" in held["last_error"]
    assert "the file starts once the flow is fixed" in held["last_error"]
    assert held["dag_run_id"] == file_dag_run_id(orders, bucket, "orders/a.csv", "e1")


def test_held_files_start_once_airflow_serves_the_fixed_dag(
    held_invoker: Invoker, airflow, rows: Rows, bucket: str, ledger_rows
) -> None:
    orders = f"orders_{bucket}"
    held_invoker.handle_object_event(event(bucket, "orders/a.csv"))
    airflow.placeholder_dags.add(orders)
    assert held_invoker.release_held() == {}  # still invalid: nothing moves, no call to Airflow
    assert airflow.runs == {}

    rows.broken = False  # the user fixes the row; the dag-processor has not re-parsed yet
    assert held_invoker.release_held() == {}
    (waiting,) = ledger_rows()
    assert waiting["status"] == "flow_invalid" and "waiting for Airflow to load its DAG" in waiting["last_error"]
    (fresh,) = held_invoker.handle_object_event(event(bucket, "orders/c.csv"))
    assert fresh.status == "flow_invalid"  # a new file is not started on the placeholder either
    assert airflow.runs == {}

    airflow.placeholder_dags.clear()  # the fixed DAG is loaded
    assert held_invoker.release_held() == {orders: 2}
    outcomes = held_invoker.retry_pending()
    assert sorted(o.status for o in outcomes) == ["created", "created"]
    assert {r["status"] for r in ledger_rows()} == {"triggered"}
    assert sorted(airflow.runs) == sorted(
        (orders, file_dag_run_id(orders, bucket, key, "e1")) for key in ("orders/a.csv", "orders/c.csv")
    )
    (later,) = held_invoker.handle_object_event(event(bucket, "orders/d.csv"))
    assert later.status == "created"  # confirmed once: no more checks


def test_a_pending_file_of_a_flow_that_became_invalid_or_inactive_is_held(
    held_invoker: Invoker, airflow, rows: Rows, bucket: str, ledger_rows
) -> None:
    rows.broken = False
    airflow.down = True  # the file stays pending behind an outage ...
    held_invoker.handle_object_event(event(bucket, "orders/a.csv"))
    assert ledger_rows()[0]["status"] == "pending"
    airflow.down = False
    held_invoker._airflow_down_until = 0.0
    rows.active = False  # ... and the flow is switched off meanwhile
    time.sleep(1.1)  # the row's backoff
    (outcome,) = held_invoker.retry_pending()
    assert outcome.status == "flow_invalid" and "is not active" in outcome.detail
    assert ledger_rows()[0]["status"] == "flow_invalid" and airflow.runs == {}
    rows.active = True
    assert held_invoker.release_held() == {f"orders_{bucket}": 1}
    assert [o.status for o in held_invoker.retry_pending()] == ["created"]


def test_the_scheduled_invoker_refuses_an_invalid_flow_naming_why(held_invoker: Invoker, airflow, bucket: str) -> None:
    with pytest.raises(LookupError, match=f"not started: flow 'orders_{bucket}' is invalid .*parameters.n"):
        held_invoker.trigger_flow(f"orders_{bucket}")
    assert airflow.runs == {}
