"""OpenLineage datasets of every template, and how the stack and the operator hand them over.

The mapping (lakehouse.lineage) is tested as the pure function it is; the operator through the
provider's own extractor, as the listener calls it on a worker; the stack's environment and the
compose file for where the events go.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
from openlineage.client.serde import Serde

from lakehouse.config import load_settings
from lakehouse.lineage import (
    Database,
    Site,
    TaskDatasets,
    dataset_folder,
    is_manifest,
    read_manifest_files,
    storage_name,
    task_datasets,
)

ROOT = Path(__file__).resolve().parents[2]
LAKE = "file:///srv/lake"
SITE = Site(
    lake_uri=LAKE,
    catalog_name="lake",
    catalog_type="jdbc",
    landing_bucket="landing",
    warehouse=Database("postgres", "127.0.0.1", 5433, "warehouse"),
)


def names(datasets: TaskDatasets) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    return ([(d.namespace, d.name) for d in datasets.inputs], [(d.namespace, d.name) for d in datasets.outputs])


def as_json(dataset: Any) -> dict[str, Any]:
    """A dataset as it is written into an event."""
    document: dict[str, Any] = json.loads(Serde.to_json(dataset))
    return document


def row_counts(datasets: TaskDatasets) -> list[int | None]:
    return [as_json(d).get("outputFacets", {}).get("outputStatistics", {}).get("rowCount") for d in datasets.outputs]


# -- names ------------------------------------------------------------------------------------------
def test_storage_names_follow_the_openlineage_spec() -> None:
    assert storage_name("s3://landing/invoices/a.txt") == ("s3://landing", "invoices/a.txt")
    assert storage_name("s3a://lake-bucket/lake/raw/x") == ("s3://lake-bucket", "lake/raw/x")
    assert storage_name("file:///srv/lake/raw/x") == ("file", "/srv/lake/raw/x")
    assert storage_name("file:///srv/my%20lake/raw") == ("file", "/srv/my lake/raw")
    assert storage_name("/srv/lake/raw/x") == ("file", "/srv/lake/raw/x")
    # a URL's query (a token, a signature) is never part of a dataset's name
    assert storage_name("https://api.example.com:8443/rates.csv?token=s3cr3t") == (
        "https://api.example.com:8443",
        "/rates.csv",
    )


def test_a_batch_folder_is_its_dataset() -> None:
    assert dataset_folder("file:///srv/lake/raw/invoices/_batch_id=manual__1/") == "file:///srv/lake/raw/invoices"
    assert dataset_folder("s3://b/lake/raw/x/_batch_id=a/day=2") == "s3://b/lake/raw/x"
    assert dataset_folder("s3://b/lake/raw/x") == "s3://b/lake/raw/x"


def test_a_manifest_is_told_from_a_landing_file() -> None:
    assert is_manifest("file:///srv/lake/_manifests/orders/manual__1.json")
    assert is_manifest("s3://bucket/lake/_manifests/orders/r.json")
    assert not is_manifest("s3://landing/orders/2026-11-01.json")
    assert not is_manifest("s3://landing/_manifests/x.csv")


def test_databases_are_named_by_engine_host_and_port() -> None:
    local = Database.from_jdbc_url("jdbc:postgresql://127.0.0.1:5433/warehouse?sslmode=disable")
    assert local == Database("postgres", "127.0.0.1", 5433, "warehouse")
    assert local.namespace == "postgres://127.0.0.1:5433"
    cluster = Database.from_secret(
        {
            "engine": "redshift",
            "host": "analytics.abc123.eu-west-1.redshift.amazonaws.com",
            "port": 5439,
            "dbname": "dev",
            "username": "u",
            "password": "p",
        }
    )
    assert cluster is not None and cluster.namespace == "redshift://analytics.eu-west-1:5439"
    serverless = Database.from_jdbc_url(
        "jdbc:redshift://wg.123456789012.us-east-1.redshift-serverless.amazonaws.com:5439/dev"
    )
    assert serverless is not None and serverless.namespace == "redshift://wg.us-east-1:5439"
    assert Database.from_secret({"host": "db.internal"}) == Database("postgres", "db.internal", 5432, "postgres")
    assert Database.from_jdbc_url("") is None and Database.from_secret({}) is None


# -- each template ------------------------------------------------------------------------------------
def test_landing_to_raw_reads_the_landing_object_and_writes_the_raw_dataset() -> None:
    parameters = {"source_uri": "s3://landing/invoices/a.txt", "dataset": "invoices", "format": "regex"}
    start = task_datasets("landing_to_raw", parameters, site=SITE)
    assert names(start) == ([("s3://landing", "invoices/a.txt")], [("file", "/srv/lake/raw/invoices")])

    metrics = {
        "source_uri": "s3://landing/invoices/a.txt",
        "raw_path": f"{LAKE}/raw/invoices/_batch_id=r1",
        "rejects_path": f"{LAKE}/rejects/invoices/_batch_id=r1",
        "rows_out": 4,
        "rows_rejected": 1,
    }
    done = task_datasets("landing_to_raw", parameters, metrics, site=SITE)
    assert names(done) == (
        [("s3://landing", "invoices/a.txt")],
        [("file", "/srv/lake/raw/invoices"), ("file", "/srv/lake/rejects/invoices")],
    )
    assert row_counts(done) == [4, 1]
    # no rejects written: no rejects dataset
    clean = task_datasets("landing_to_raw", parameters, {**metrics, "rejects_path": None}, site=SITE)
    assert names(clean)[1] == [("file", "/srv/lake/raw/invoices")]


def test_the_metrics_win_over_the_parameters() -> None:
    """What the job reports it read and wrote is what happened (an S3 lake here, for instance)."""
    parameters = {"source_uri": "s3://landing/x/asked.csv", "dataset": "x"}
    metrics = {"source_uri": "s3://landing/x/read.csv", "raw_path": "s3://lake-bucket/lake/raw/x/_batch_id=b"}
    assert names(task_datasets("landing_to_raw", parameters, metrics, site=SITE)) == (
        [("s3://landing", "x/read.csv")],
        [("s3://lake-bucket", "lake/raw/x")],
    )


def test_a_micro_batch_reads_every_file_of_its_manifest(tmp_path: Path) -> None:
    from lakehouse.hooks.lake import write_json

    lake = tmp_path.as_uri()
    files = [
        {
            "uri": f"s3://landing/orders/{n}.csv",
            "bucket": "landing",
            "key": f"orders/{n}.csv",
            "etag": n,
            "size": 1,
            "event_time": None,
            "ledger_id": i,
        }
        for i, n in enumerate(("a", "b", "c"))
    ]
    manifest = write_json(
        lake,
        "_manifests/orders/manual__1.json",
        {"flow_id": "orders", "batch_id": 1, "dag_run_id": "manual__1", "files": files},
    )
    assert read_manifest_files(manifest) == [f["uri"] for f in files]  # the invoker's own document

    parameters = {"source_uri": manifest, "dataset": "orders"}
    site = Site(lake_uri=lake)
    datasets = task_datasets(
        "landing_to_raw",
        parameters,
        {"source_uri": manifest, "files": 3},
        site=site,
        manifest_files=read_manifest_files,
    )
    assert names(datasets)[0] == [("s3://landing", f"orders/{n}.csv") for n in ("a", "b", "c")]

    def unreadable(uri: str) -> list[str]:
        raise FileNotFoundError(uri)

    fallback = task_datasets("landing_to_raw", parameters, site=site, manifest_files=unreadable)
    assert names(fallback)[0] == [storage_name(manifest)]  # what the run was given, at least


def test_raw_to_stage_scd2_reads_the_raw_dataset_and_writes_the_iceberg_table() -> None:
    parameters = {"dataset": "invoices", "target_table": "stage.invoices", "keys": '["invoice_id"]'}
    metrics = {
        "raw_path": f"{LAKE}/raw/invoices/_batch_id=r1",
        "target_table": "stage.invoices",
        "rows_out": 7,
        "snapshot_id": 42,
    }
    for datasets in (
        task_datasets("raw_to_stage_scd2", parameters, site=SITE),
        task_datasets("raw_to_stage_scd2", parameters, metrics, site=SITE),
    ):
        assert names(datasets) == ([("file", "/srv/lake/raw/invoices")], [("iceberg://lake", "lake.stage.invoices")])
    table = as_json(task_datasets("raw_to_stage_scd2", parameters, metrics, site=SITE).outputs[0])
    catalog = table["facets"]["catalog"]
    assert (catalog["framework"], catalog["type"], catalog["name"], catalog["warehouseUri"]) == (
        "iceberg",
        "jdbc",
        "lake",
        f"{LAKE}/warehouse",
    )
    assert table["outputFacets"]["outputStatistics"]["rowCount"] == 7


def test_stage_to_presentation_reads_the_tables_of_its_query() -> None:
    sql = (
        "WITH open AS (SELECT * FROM stage.invoices WHERE _is_current) "
        "SELECT o.invoice_date, c.name FROM open o JOIN lake.stage.customers c ON o.customer = c.id "
        "JOIN stage.invoices i ON i.invoice_id = o.invoice_id"
    )
    datasets = task_datasets(
        "stage_to_presentation",
        {"sql": sql, "target_table": "presentation.daily"},
        {"target_table": "presentation.daily", "rows_out": 3},
        site=SITE,
    )
    assert names(datasets) == (
        [("iceberg://lake", "lake.stage.invoices"), ("iceberg://lake", "lake.stage.customers")],
        [("iceberg://lake", "lake.presentation.daily")],
    )
    # a statement the parser cannot read costs the inputs, not the event
    assert names(
        task_datasets("stage_to_presentation", {"sql": "SELEC nonsense (", "target_table": "p.t"}, site=SITE)
    ) == ([], [("iceberg://lake", "lake.p.t")])


def test_presentation_to_warehouse_writes_the_warehouse_table() -> None:
    parameters = {"source_table": "presentation.daily_expenses", "target_table": "presentation.daily_expenses"}
    datasets = task_datasets("presentation_to_warehouse", parameters, {**parameters, "rows_out": 3}, site=SITE)
    assert names(datasets) == (
        [("iceberg://lake", "lake.presentation.daily_expenses")],
        [("postgres://127.0.0.1:5433", "warehouse.presentation.daily_expenses")],
    )


def test_a_warehouse_named_by_a_secret_is_the_secrets_database() -> None:
    parameters = {"source_table": "presentation.p", "target_table": "mart.p", "secret_id": "redshift_login"}
    cluster = Database("redshift", "analytics.abc123.eu-west-1.redshift.amazonaws.com", 5439, "dev")
    # read by the operator (a local run)
    assert names(task_datasets("presentation_to_warehouse", parameters, site=SITE, secret=cluster))[1] == [
        ("redshift://analytics.eu-west-1:5439", "dev.mart.p")
    ]
    # a local run's START, before execute read it: left out rather than named twice
    assert names(task_datasets("presentation_to_warehouse", parameters, site=SITE, secret_pending=True))[1] == []
    # a Glue job reads its own secret: the secret is the only name there is
    assert names(task_datasets("presentation_to_warehouse", parameters, site=SITE))[1] == [
        ("secret://redshift_login", "mart.p")
    ]


def test_db_to_raw_reads_the_source_table_or_the_tables_of_its_query() -> None:
    site = Site(lake_uri=LAKE, source=Database.from_jdbc_url("jdbc:postgresql://crm.internal:5432/crm"))
    metrics = {"raw_path": f"{LAKE}/raw/customers/_batch_id=b", "rows_out": 10}
    by_table = task_datasets(
        "db_to_raw", {"dataset": "customers", "source_table": "public.customers"}, metrics, site=site
    )
    assert names(by_table) == (
        [("postgres://crm.internal:5432", "crm.public.customers")],
        [("file", "/srv/lake/raw/customers")],
    )
    by_query = task_datasets(
        "db_to_raw",
        {
            "dataset": "customers",
            "query": "SELECT c.* FROM sales.customers c JOIN sales.regions r ON r.id = c.region_id",
        },
        site=site,
    )
    assert names(by_query)[0] == [
        ("postgres://crm.internal:5432", "crm.sales.customers"),
        ("postgres://crm.internal:5432", "crm.sales.regions"),
    ]


def test_http_to_landing_writes_the_landing_object() -> None:
    parameters = {"url": "https://rates.example.com/daily.csv?key=abc", "target_key": "rates/2026-11-01.csv"}
    assert names(task_datasets("http_to_landing", parameters, site=SITE)) == (
        [("https://rates.example.com", "/daily.csv")],
        [("s3://landing", "rates/2026-11-01.csv")],
    )
    reported = task_datasets(
        "http_to_landing", parameters, {"target_uri": "s3://other/rates/2026-11-01.csv"}, site=SITE
    )
    assert names(reported)[1] == [("s3://other", "rates/2026-11-01.csv")]


def test_quality_check_reads_and_maintain_table_rewrites() -> None:
    assert names(task_datasets("quality_check", {"table": "stage.orders", "checks": "[]"}, site=SITE)) == (
        [("iceberg://lake", "lake.stage.orders")],
        [],
    )
    assert names(task_datasets("quality_check", {"dataset": "orders", "raw_scope": "batch"}, site=SITE)) == (
        [("file", "/srv/lake/raw/orders")],
        [],
    )
    assert names(
        task_datasets("maintain_table", {"table": "stage.orders"}, {"target_table": "stage.orders"}, site=SITE)
    ) == ([], [("iceberg://lake", "lake.stage.orders")])
    assert names(task_datasets("a_template_of_tomorrow", {"x": "y"}, site=SITE)) == ([], [])


def test_the_site_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", "s3://lake-bucket/lake")
    monkeypatch.setenv("LAKEHOUSE_RUNNER", "glue")
    settings = load_settings()
    site = Site.from_settings(settings, {"LAKEHOUSE_SOURCE_JDBC_URL": "jdbc:postgresql://crm:5432/crm"})
    assert (site.lake_uri, site.catalog_name, site.catalog_type) == ("s3://lake-bucket/lake", "lake", "glue")
    assert site.warehouse == Database("postgres", settings.pg_host, settings.pg_port, settings.warehouse_db)
    assert site.source == Database("postgres", "crm", 5432, "crm")
    assert names(task_datasets("raw_to_stage_scd2", {"dataset": "x", "target_table": "stage.x"}, site=site))[0] == [
        ("s3://lake-bucket", "lake/raw/x")
    ]


def test_the_datasets_serialize_into_an_openlineage_event() -> None:
    datasets = task_datasets(
        "landing_to_raw",
        {"source_uri": "s3://landing/a.txt", "dataset": "a"},
        {"raw_path": f"{LAKE}/raw/a/_batch_id=b", "rows_out": 2},
        site=SITE,
    )
    event = RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=datetime.now(UTC).isoformat(),
        run=Run(runId="01890e2c-0000-7000-8000-000000000000"),
        job=Job(namespace="lakehouse", name="a.b"),
        inputs=datasets.inputs,
        outputs=datasets.outputs,
        producer="https://example.com/lakehouse",
    )
    document = json.loads(Serde.to_json(event))
    assert document["inputs"][0]["namespace"] == "s3://landing" and document["inputs"][0]["name"] == "a.txt"
    assert document["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 2


def test_the_mapping_imports_neither_airflow_nor_pyspark() -> None:
    """Unit-testable without Airflow, and safe for the orchestration package's boundary."""
    code = (
        "import sys, lakehouse.lineage; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'pyspark', 'lakehouse_jobs'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- the operator, through the provider's own extractor -------------------------------------------
LANDING = "landing_to_raw"


@pytest.fixture
def landing_task() -> Any:
    from lakehouse.dag_factory import build_dag
    from lakehouse.flows import Flow, FlowTask, ParameterSpec, Template

    template = Template(
        LANDING,
        "landing_to_raw.py",
        parameters=(ParameterSpec("source_uri", default="${files.uri}"), ParameterSpec("dataset", required=True)),
    )
    task = FlowTask("lineage_flow", "to_raw", LANDING, {"dataset": "invoices"})
    return build_dag(Flow("lineage_flow", (task,)), {LANDING: template}).task_dict["to_raw"]


def _context(op: Any) -> dict[str, Any]:
    dag_run = SimpleNamespace(
        run_id="file__r1",
        conf={"file": {"bucket": "landing", "key": "invoices/a.txt", "etag": "e1"}},
        run_after=datetime(2026, 11, 23, tzinfo=UTC),
    )
    return {
        "dag_run": dag_run,
        "ti": SimpleNamespace(dag_id=op.dag_id, task_id=op.task_id, try_number=1),
        "task": op,
        "logical_date": None,
    }


def test_the_provider_extracts_the_operators_lineage(landing_task: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.openlineage.extractors.base import DefaultExtractor
    from airflow.providers.openlineage.extractors.manager import ExtractorManager

    settings = load_settings()
    assert ExtractorManager().get_extractor_class(landing_task) is DefaultExtractor
    context = _context(landing_task)
    monkeypatch.setattr("airflow.sdk.get_current_context", lambda: context)
    extractor = DefaultExtractor(landing_task)

    start = extractor.extract()  # START: the parameters rendered for this run
    raw = f"{settings.lake_uri}/raw/invoices"
    assert start is not None
    assert [(d.namespace, d.name) for d in start.inputs] == [("s3://landing", "invoices/a.txt")]
    assert [(d.namespace, d.name) for d in start.outputs] == [storage_name(raw)]

    # COMPLETE: the job's metrics, as _record_success keeps them for the listener
    landing_task._lineage_metrics = {
        "source_uri": "s3://landing/invoices/a.txt",
        "rows_out": 3,
        "raw_path": f"{raw}/_batch_id=file__r1",
        "rejects_path": f"{settings.lake_uri}/rejects/invoices/_batch_id=file__r1",
    }
    ti = SimpleNamespace(get_template_context=lambda: context)
    complete = extractor.extract_on_complete(ti)
    assert complete is not None
    assert [(d.namespace, d.name) for d in complete.outputs] == [
        storage_name(raw),
        storage_name(f"{settings.lake_uri}/rejects/invoices"),
    ]
    failed = extractor.extract_on_failure(ti)
    assert failed is not None and len(failed.outputs) == 2


# -- where the events go ------------------------------------------------------------------------------
def _lineage_free_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("AIRFLOW__OPENLINEAGE__", "OPENLINEAGE")):
            monkeypatch.delenv(name)


def test_the_stack_writes_events_to_a_file_in_its_home(monkeypatch: pytest.MonkeyPatch) -> None:
    from lakehouse.stack import services

    _lineage_free_environ(monkeypatch)
    settings = load_settings()
    env = services.stack_environment(settings)
    transport = json.loads(env["AIRFLOW__OPENLINEAGE__TRANSPORT"])
    assert transport == {
        "type": "file",
        "log_file_path": str(settings.home / "lineage" / "events.jsonl"),
        "append": True,
    }
    assert env["AIRFLOW__OPENLINEAGE__NAMESPACE"] == "lakehouse"
    assert Path(transport["log_file_path"]).parent.is_dir()  # the transport opens the file, it makes no folder
    from openlineage.client.transport.file import FileConfig

    assert FileConfig.from_dict(transport).append is True  # the options the installed client knows


def test_a_users_own_openlineage_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from lakehouse.stack import services

    _lineage_free_environ(monkeypatch)
    marquez = json.dumps({"type": "http", "url": "http://marquez:5000"})
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", marquez)
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__NAMESPACE", "lakehouse-dev")
    env = services.stack_environment(load_settings())
    assert env["AIRFLOW__OPENLINEAGE__TRANSPORT"] == marquez
    assert env["AIRFLOW__OPENLINEAGE__NAMESPACE"] == "lakehouse-dev"
    monkeypatch.delenv("AIRFLOW__OPENLINEAGE__TRANSPORT")
    monkeypatch.setenv("OPENLINEAGE_URL", "http://marquez:5000")  # the client's own variable: no file on top
    assert "AIRFLOW__OPENLINEAGE__TRANSPORT" not in services.stack_environment(load_settings())


def test_docker_compose_writes_the_events_where_the_stack_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from lakehouse.stack import services

    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    airflow_env = compose["x-airflow-env"]
    home = Path(compose["x-lakehouse-env"]["LAKEHOUSE_HOME"])
    transport = json.loads(airflow_env["AIRFLOW__OPENLINEAGE__TRANSPORT"])
    _lineage_free_environ(monkeypatch)
    stack = services.stack_environment(load_settings())
    ours = json.loads(stack["AIRFLOW__OPENLINEAGE__TRANSPORT"])
    relative = Path(ours["log_file_path"]).relative_to(load_settings().home)
    assert transport == {**ours, "log_file_path": str(home / relative)}
    assert airflow_env["AIRFLOW__OPENLINEAGE__NAMESPACE"] == stack["AIRFLOW__OPENLINEAGE__NAMESPACE"]
    assert (
        f"mkdir -p {home / 'airflow' / 'logs'} {home / relative.parent}"
        in compose["services"]["airflow-init"]["command"][2]
    )
