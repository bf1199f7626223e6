"""How the DAG factory scales with the number of flows, against the per-flow-query baseline.

    .venv/bin/python bench/dag_factory.py [--flows 1000] [--tasks 5] [--repeat 5]

Starts a private Postgres (own home and port, stopped at the end), loads N flows of T tasks
each (a graph: one ingest, one SCD2 step, parallel presentation builds, one load), and measures
side by side in this one process:

* ``lakehouse``: :func:`lakehouse.dag_factory.build_dags` as the dag-processor runs it (one
  catalogue query, validation, DAG objects, disk snapshot);
* ``lakehouse, task run``: the same with Airflow's parsing context naming one DAG, as a worker
  parses the file before running a task;
* ``baseline``: what hand-written metadata-driven generators typically do: one query for the
  flows, then one per flow for its tasks and one per task for its template, building the same
  DAGs with the same code; only the reading differs;
* ``DagBag``: Airflow's own loader on ``dags/lakehouse_dags.py``, the whole file as the
  dag-processor sees it.

It prints wall time per parse (median and best of ``--repeat``), queries per parse and DAGs
built. Goals from issue 5: full parse under 3 s and task-run parse under 0.2 s at 1,000 flows,
queries independent of the number of flows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class QueryCounter:
    """Counts statements sent through psycopg2, whoever opens the connection."""

    def __init__(self) -> None:
        self.count = 0

    @contextmanager
    def installed(self) -> Iterator[QueryCounter]:
        import psycopg2
        import psycopg2.extensions

        counter = self
        subclasses: dict[type[Any], type[Any]] = {}

        def counting(factory: type[Any]) -> type[Any]:
            if factory not in subclasses:

                def execute(cur: Any, query: Any, vars: Any = None) -> Any:
                    counter.count += 1
                    return factory.execute(cur, query, vars)

                subclasses[factory] = type(f"Counting{factory.__name__}", (factory,), {"execute": execute})
            return subclasses[factory]

        class CountingConnection(psycopg2.extensions.connection):
            def cursor(self, *args: Any, **kwargs: Any) -> Any:
                factory = kwargs.get("cursor_factory") or self.cursor_factory or psycopg2.extensions.cursor
                kwargs["cursor_factory"] = counting(factory)
                return super().cursor(*args, **kwargs)

        real_connect = psycopg2.connect

        def connect(*args: Any, **kwargs: Any) -> Any:
            kwargs["connection_factory"] = CountingConnection
            return real_connect(*args, **kwargs)

        psycopg2.connect = connect
        try:
            yield self
        finally:
            psycopg2.connect = real_connect


def _task_rows(flow_id: str, tasks: int) -> list[tuple[str, str, int, list[str] | None, str, dict[str, Any]]]:
    """ingest -> scd2 -> (present_1 .. present_k in parallel) -> load; ``tasks`` >= 4."""
    dataset = flow_id
    rows: list[tuple[str, str, int, list[str] | None, str, dict[str, Any]]] = [
        (
            "ingest",
            "landing_to_raw",
            1,
            [],
            flow_id,
            {"dataset": dataset, "format": "csv", "schema": {"id": "string", "amount": "decimal(12,2)"}},
        ),
        (
            "history",
            "raw_to_stage_scd2",
            2,
            ["ingest"],
            flow_id,
            {"dataset": dataset, "target_table": f"stage.{dataset}", "keys": ["id"]},
        ),
    ]
    presents = [f"present_{i}" for i in range(1, tasks - 2)]
    for i, task_id in enumerate(presents, start=3):
        rows.append(
            (
                task_id,
                "stage_to_presentation",
                i,
                ["history"],
                flow_id,
                {
                    "sql": f"SELECT id, amount FROM stage.{dataset} WHERE _is_current",
                    "target_table": f"presentation.{dataset}_{task_id}",
                },
            )
        )
    rows.append(
        (
            "load",
            "presentation_to_warehouse",
            tasks,
            presents,
            flow_id,
            {"source_table": f"presentation.{dataset}_present_1", "target_table": f"presentation.{dataset}"},
        )
    )
    return rows


def load_flows(dsn: str, flows: int, tasks: int) -> None:
    import psycopg2
    from psycopg2.extras import execute_values

    flow_rows = [
        (f"flow_{i:05d}", f"flow_{i:05d}", "landing", f"bench/flow_{i:05d}/*.csv", "bench-team", ["bench"])
        for i in range(flows)
    ]
    task_rows = [
        (flow_id, task_id, order, upstream, template_id, json.dumps(params))
        for flow_id, *_ in flow_rows
        for task_id, template_id, order, upstream, _, params in _task_rows(flow_id, tasks)
    ]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE 'bench' = ANY(tags)")
        execute_values(
            cur,
            "INSERT INTO lakehouse.flows (flow_id, dag_id, trigger_bucket, trigger_key_pattern, owner, tags) VALUES %s",
            flow_rows,
        )
        execute_values(
            cur,
            "INSERT INTO lakehouse.flow_tasks (flow_id, task_id, task_order, upstream, "
            "template_id, parameters) VALUES %s",
            task_rows,
            page_size=2000,
        )
    conn.close()


def baseline_catalogue(dsn: str) -> Any:
    """The per-flow reading a hand-written generator does: 1 + flows + tasks queries."""
    import psycopg2
    import psycopg2.extras

    from lakehouse.flows import Catalogue

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute("SELECT * FROM lakehouse.flows WHERE is_active ORDER BY flow_id")
            flows = [dict(r) for r in cur.fetchall()]
            templates: dict[str, dict[str, Any]] = {}
            for flow in flows:
                cur.execute(
                    "SELECT * FROM lakehouse.flow_tasks WHERE flow_id = %s ORDER BY task_order, task_id",
                    (flow["flow_id"],),
                )
                flow["tasks"] = [dict(r) for r in cur.fetchall()]
                for task in flow["tasks"]:
                    cur.execute("SELECT * FROM lakehouse.templates WHERE template_id = %s", (task["template_id"],))
                    templates[task["template_id"]] = dict(cur.fetchone())
        document = json.loads(json.dumps({"flows": flows, "templates": list(templates.values())}, default=str))
        return Catalogue.from_document(document)
    finally:
        conn.close()


def measure(name: str, repeat: int, parse: Callable[[], int]) -> dict[str, Any]:
    counter = QueryCounter()
    times: list[float] = []
    dags = 0
    with counter.installed():
        for _ in range(repeat):
            start = time.perf_counter()
            dags = parse()
            times.append(time.perf_counter() - start)
    return {
        "name": name,
        "median_s": statistics.median(times),
        "best_s": min(times),
        "queries_per_parse": counter.count / repeat,
        "dags": dags,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=5, help="tasks per flow (at least 4)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PG_PORT", "56433")))
    args = parser.parse_args(argv)
    if args.tasks < 4:
        parser.error("--tasks must be at least 4")

    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-dags-"))
    home.chmod(0o755)
    os.environ.update(
        {
            "LAKEHOUSE_HOME": str(home),
            "LAKEHOUSE_PG_PORT": str(args.port),
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
    )
    from lakehouse.config import load_settings
    from lakehouse.metadata.migrations import migrate
    from lakehouse.stack import postgres

    settings = load_settings()
    postgres.start(settings)
    try:
        postgres.ensure_databases(settings)
        migrate(settings.metadata_dsn)
        load_flows(settings.metadata_dsn, args.flows, args.tasks)
        results = run(settings, args)
    finally:
        postgres.stop(settings)
        import shutil

        shutil.rmtree(home, ignore_errors=True)

    print(
        f"\nDAG factory, {args.flows} flows x {args.tasks} tasks, {args.repeat} parses each "
        f"(python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f})"
    )
    print(f"{'reader':<34} {'median s':>9} {'best s':>8} {'queries':>8} {'DAGs':>6}")
    for r in results:
        print(
            f"{r['name']:<34} {r['median_s']:>9.3f} {r['best_s']:>8.3f} {r['queries_per_parse']:>8.0f} {r['dags']:>6}"
        )
    full, single, base = results[0], results[1], results[2]
    print(
        f"\nlakehouse vs baseline: {base['median_s'] / full['median_s']:.1f}x faster, "
        f"{full['queries_per_parse']:.0f} vs {base['queries_per_parse']:.0f} queries per parse"
    )
    print(
        f"goals: full parse < 3 s: {'met' if full['median_s'] < 3 else 'MISSED'}; "
        f"task-run parse < 0.2 s: {'met' if single['median_s'] < 0.2 else 'MISSED'}"
    )
    return 0


def run(settings: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from airflow.dag_processing.dagbag import DagBag

    from lakehouse.dag_factory import airflow_dag_defaults, build_dag, build_dags
    from lakehouse.flows import validate_flow

    def full() -> int:
        return len(build_dags(settings=settings))

    def task_run() -> int:
        os.environ["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = f"flow_{args.flows // 2:05d}"
        try:
            return len(build_dags(settings=settings))
        finally:
            del os.environ["_AIRFLOW_PARSING_CONTEXT_DAG_ID"]

    def baseline() -> int:
        catalogue = baseline_catalogue(settings.metadata_dsn)
        dag_defaults = airflow_dag_defaults()
        built = 0
        for flow in catalogue.flows.values():
            if not validate_flow(flow, catalogue.templates):
                build_dag(flow, catalogue, dag_defaults)
                built += 1
        return built

    def dagbag() -> int:
        bag = DagBag(dag_folder=str(ROOT / "dags" / "lakehouse_dags.py"), safe_mode=False)
        if bag.import_errors:
            raise RuntimeError(f"import errors: {bag.import_errors}")
        return len(bag.dags)

    full()  # warm imports and the snapshot once, outside the measurement
    return [
        measure("lakehouse build_dags (full parse)", args.repeat, full),
        measure("lakehouse build_dags (task run)", args.repeat, task_run),
        measure("baseline: query per flow/task", args.repeat, baseline),
        measure("Airflow DagBag on dags/ file", args.repeat, dagbag),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
