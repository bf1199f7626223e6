"""DAGs from rows, through Airflow's own DagBag: a bad flow breaks only itself.

What the running dag-processor does with them is shown end to end in tests/e2e/test_invalid_flows.py:
a DagBag keeps good DAGs even beside an import error, the dag-processor does not.
"""

from __future__ import annotations

import psycopg2
import pytest
from airflow.dag_processing.dagbag import DagBag

from lakehouse.config import Settings
from lakehouse.dag_factory import INVALID_TAG, build_dags
from lakehouse.flows import Catalogue, Flow, FlowTask, ParameterSpec, Template
from lakehouse.operators.invalid_flow import InvalidFlowOperator


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
                '(%s, \'second\', 2, \'stage_to_presentation\', \'{"sql": "select 2", "target_table": "p.u"}\', 0)',
                (flow_id, params, flow_id),
            )
    yield
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id IN ('fac_good', 'fac_bad')")
    conn.close()


def test_dag_file_loads_good_flows_and_names_bad_ones(pg: Settings, factory_flows) -> None:
    bag = DagBag(dag_folder=str(pg.dags_folder))
    assert bag.import_errors == {}  # an import error would make Airflow drop every DAG of the file
    bad = bag.dags["fac_bad"]
    assert INVALID_TAG in bad.tags and list(bad.task_dict) == ["invalid_flow"]
    assert "`flow_tasks[first].parameters.target_table` | required by template" in bad.doc_md
    assert bad.owner == "team-x" and bad.schedule is None
    dag = bag.dags["fac_good"]
    assert INVALID_TAG not in dag.tags
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


def _bad_flows() -> dict[str, Flow]:
    """One flow per kind of bad row, beside a good one."""
    t = lambda flow, task, **kw: FlowTask(flow, task, "t", parameters={"n": 1}, **kw)  # noqa: E731
    return {
        "good": Flow("good", (t("good", "a"),), schedule="@daily"),
        "unknown_template": Flow("unknown_template", (FlowTask("unknown_template", "a", "nope"),)),
        "pinned_missing": Flow("pinned_missing", (t("pinned_missing", "a", template_version=9),)),
        "missing_param": Flow("missing_param", (FlowTask("missing_param", "a", "t"),)),
        "mistyped": Flow("mistyped", (FlowTask("mistyped", "a", "t", parameters={"n": "x"}),)),
        "no_tasks": Flow("no_tasks", ()),
        "cycle": Flow("cycle", (t("cycle", "a", upstream=("b",)), t("cycle", "b", upstream=("a",)))),
        "bad_schedule": Flow("bad_schedule", (t("bad_schedule", "a"),), schedule="every day"),
    }


def test_each_invalid_flow_is_a_placeholder_dag_of_its_own() -> None:
    template = Template("t", "t.py", parameters=(ParameterSpec("n", "int", required=True),))
    dags = build_dags(Catalogue(_bad_flows(), {"t": template}))
    assert sorted(dags) == sorted(_bad_flows())
    assert INVALID_TAG not in dags["good"].tags and dags["good"].schedule == "@daily"
    expected = {
        "unknown_template": "flow_tasks[a].template_id",
        "pinned_missing": "flow_tasks[a].template_version",
        "missing_param": "flow_tasks[a].parameters.n",
        "mistyped": "flow_tasks[a].parameters.n",
        "no_tasks": "flow_tasks",
        "cycle": "flow_tasks.upstream",
        "bad_schedule": "flows.schedule",
    }
    for dag_id, field in expected.items():
        dag = dags[dag_id]
        assert INVALID_TAG in dag.tags, dag_id
        assert dag.schedule is None, dag_id  # an invalid flow is never started by its schedule either
        (task,) = dag.tasks
        assert isinstance(task, InvalidFlowOperator) and task.retries == 0
        assert f"`{field}`" in dag.doc_md, (dag_id, dag.doc_md)
        assert any(field in line for line in task.problems), (dag_id, task.problems)
        dag.validate()


def test_a_flow_airflow_refuses_becomes_a_placeholder_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever validation lets through, one flow's DAG raising never reaches the file."""
    import lakehouse.dag_factory as factory

    real = factory.build_dag

    def refusing(flow, templates, dag_defaults=None):
        if flow.flow_id == "refused":
            raise ValueError("tag too long")
        return real(flow, templates, dag_defaults)

    monkeypatch.setattr(factory, "build_dag", refusing)
    template = Template("t", "t.py")
    flows = {f: Flow(f, (FlowTask(f, "a", "t"),)) for f in ("refused", "fine")}
    dags = build_dags(Catalogue(flows, {"t": template}))
    assert INVALID_TAG not in dags["fine"].tags
    assert INVALID_TAG in dags["refused"].tags
    assert "Airflow refused the DAG: ValueError: tag too long" in dags["refused"].doc_md


def test_flows_sharing_a_dag_id_are_both_named() -> None:
    template = Template("t", "t.py")
    flows = {
        "a": Flow("a", (FlowTask("a", "x", "t"),), dag_id="b"),
        "b": Flow("b", (FlowTask("b", "x", "t"),)),
        "c": Flow("c", (FlowTask("c", "x", "t"),)),
    }
    dags = build_dags(Catalogue(flows, {"t": template}))
    assert sorted(dags) == ["b", "c"] and INVALID_TAG not in dags["c"].tags
    assert INVALID_TAG in dags["b"].tags
    assert "also the DAG of flow(s) 'b'" in dags["b"].doc_md and "also the DAG of flow(s) 'a'" in dags["b"].doc_md


def test_the_placeholder_task_fails_with_the_problems() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    task = InvalidFlowOperator(task_id="invalid_flow", flow_id="f", problems=["flow 'f': flows.schedule: bad"])
    with pytest.raises(AirflowFailException, match=r"flow 'f' is invalid .*flows.schedule: bad"):
        task.execute({})


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
