"""DAGs from rows, through Airflow's own DagBag: a bad flow breaks only itself."""

from __future__ import annotations

import psycopg2
import pytest
from airflow.dag_processing.dagbag import DagBag

from lakehouse.config import Settings
from lakehouse.dag_factory import INVALID_FLOWS_DAG_ID, build_dags
from lakehouse.flows import Catalogue, Flow, FlowTask, Template


@pytest.fixture
def factory_flows(pg: Settings):
    rows = {
        "fac_good": '{"sql": "select 1", "target_table": "p.t"}',
        "fac_bad": '{"sql": "select 1"}',  # target_table missing
    }
    conn = psycopg2.connect(pg.metadata_dsn)
    with conn, conn.cursor() as cur:
        for flow_id, params in rows.items():
            cur.execute("DELETE FROM lakehouse.flows WHERE flow_id = %s", (flow_id,))
            cur.execute(
                "INSERT INTO lakehouse.flows (flow_id, owner, tags, max_active_runs) VALUES (%s, 'team-x', '{t1}', 3)",
                (flow_id,),
            )
            cur.execute(
                "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, task_order, template_id, parameters, retries) "
                "VALUES (%s, 'first', 1, 'stage_to_presentation', %s, 2), "
                "(%s, 'second', 2, 'stage_to_presentation', '{\"sql\": \"select 2\", \"target_table\": \"p.u\"}', 0)",
                (flow_id, params, flow_id),
            )
    yield
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id IN ('fac_good', 'fac_bad')")
    conn.close()


def test_dag_file_loads_good_flows_and_names_bad_ones(pg: Settings, factory_flows) -> None:
    bag = DagBag(dag_folder=str(pg.dags_folder))
    assert "fac_good" in bag.dags and "fac_bad" not in bag.dags
    (error,) = bag.import_errors.values()
    assert "flow 'fac_bad': flow_tasks[first].parameters.target_table: required by template" in error
    dag = bag.dags["fac_good"]
    assert dag.task_dict["second"].upstream_task_ids == {"first"}
    assert dag.task_dict["first"].retries == 2
    assert dag.owner == "team-x" and set(dag.tags) == {"lakehouse", "t1"} and dag.max_active_runs == 3
    assert dag.schedule is None or str(dag.timetable.summary) in ("None", "")


def test_parallel_branches_from_upstream_lists() -> None:
    template = Template("t", "t.py")
    tasks = (
        FlowTask("g", "extract", "t", task_order=1),
        FlowTask("g", "left", "t", task_order=2, upstream=("extract",)),
        FlowTask("g", "right", "t", task_order=3, upstream=("extract",)),
        FlowTask("g", "join", "t", task_order=4, upstream=("left", "right")),
    )
    dags = build_dags(Catalogue({"g": Flow("g", tasks)}, {"t": template}))
    dag = dags["g"]
    assert dag.task_dict["join"].upstream_task_ids == {"left", "right"}
    assert dag.task_dict["left"].upstream_task_ids == {"extract"}
    assert INVALID_FLOWS_DAG_ID not in dags


def test_task_run_parse_builds_only_its_own_dag(monkeypatch: pytest.MonkeyPatch) -> None:
    template = Template("t", "t.py")
    flows = {f: Flow(f, (FlowTask(f, "a", "t"),)) for f in ("one", "two", "three")}
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "two")
    assert list(build_dags(Catalogue(flows, {"t": template}))) == ["two"]


def test_airflow_config_still_sets_dag_defaults_read_once_per_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The factory reads these once per parse for speed; a user's airflow.cfg must still win."""
    monkeypatch.setenv("AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG", "7")
    monkeypatch.setenv("AIRFLOW__CORE__MAX_CONSECUTIVE_FAILED_DAG_RUNS_PER_DAG", "5")
    template = Template("t", "t.py")
    dag = build_dags(Catalogue({"cfg": Flow("cfg", (FlowTask("cfg", "a", "t"),))}, {"t": template}))["cfg"]
    assert dag.max_active_tasks == 7 and dag.max_consecutive_failed_dag_runs == 5


def test_task_pool_reaches_the_operator() -> None:
    template = Template("t", "t.py")
    flow = Flow("pooled", (FlowTask("pooled", "load", "t", pool="warehouse_loads"), FlowTask("pooled", "other", "t")))
    dag = build_dags(Catalogue({"pooled": flow}, {"t": template}))["pooled"]
    assert dag.task_dict["load"].pool == "warehouse_loads"
    assert dag.task_dict["other"].pool == "default_pool"
