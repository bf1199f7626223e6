"""Configuration has one home and one declaration per setting; `lakehouse info --json` prints the documented shape."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

import lakehouse.config
from lakehouse.cli import main
from lakehouse.config import Settings, load_settings, settings_reference_markdown

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = [str(field.validation_alias) for field in Settings.model_fields.values()]


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting given: every declared variable unset, LAKEHOUSE_HOME aside (secrets go there)."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LAKEHOUSE_HOME", str(tmp_path / "home"))
    return tmp_path


def test_info_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["airflow"]) >= {"url", "username", "password"}
    assert set(info["s3"]) >= {"endpoint_url", "access_key_id", "secret_access_key", "landing_bucket"}
    assert {"metadata_dsn", "warehouse_dsn", "catalog_dsn"} <= set(info)
    assert info["metadata_dsn"].endswith(f":{load_settings().pg_port}/lakehouse")


def test_generated_secrets_are_stable_and_private(settings: lakehouse.config.Settings) -> None:
    first = settings.airflow_password
    assert load_settings().airflow_password == first and len(first) >= 24
    mode = (settings.home / "secrets.json").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_explicit_secret_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PASSWORD", "given")
    monkeypatch.setenv("LAKEHOUSE_INVOKER_TOKEN", "token")
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_JWT_SECRET", "jwt")
    settings = load_settings()
    assert (settings.airflow_password, settings.invoker_token, settings.secret("jwt_secret")) == (
        "given",
        "token",
        "jwt",
    )
    assert "given" not in repr(settings) and "token" not in repr(settings)


def test_a_copy_with_another_home_keeps_its_secrets_there(bare: Path) -> None:
    settings = load_settings().model_copy(update={"home": bare / "other"})
    token = settings.invoker_token
    assert json.loads((bare / "other" / "secrets.json").read_text())["invoker_token"] == token
    assert not (bare / "home" / "secrets.json").exists()


def test_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_RUNNER", "emr")
    with pytest.raises(ValueError, match="LAKEHOUSE_RUNNER"):
        load_settings()
    monkeypatch.setenv("LAKEHOUSE_RUNNER", "local")
    monkeypatch.setenv("LAKEHOUSE_SEAWEED_PORTS", "1,2")
    with pytest.raises(ValueError, match="LAKEHOUSE_SEAWEED_PORTS"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LAKEHOUSE_RUNNER", "emr", "LAKEHOUSE_RUNNER must be 'local' or 'glue', got 'emr'"),
        ("LAKEHOUSE_AIRFLOW_API", "grpc", "LAKEHOUSE_AIRFLOW_API must be 'rest' or 'mwaa', got 'grpc'"),
        ("LAKEHOUSE_SPARK_MODE", "cold", "LAKEHOUSE_SPARK_MODE must be 'warm' or 'submit', got 'cold'"),
        (
            "LAKEHOUSE_SEAWEED_PORTS",
            "1,2",
            "LAKEHOUSE_SEAWEED_PORTS needs 6 ports (master,volume,filer,s3,webdav,iceberg), got '1,2'",
        ),
        (
            "LAKEHOUSE_SEAWEED_PORTS",
            "a,b,c,d,e,f",
            "LAKEHOUSE_SEAWEED_PORTS needs 6 ports (master,volume,filer,s3,webdav,iceberg), got 'a,b,c,d,e,f'",
        ),
        ("LAKEHOUSE_PG_PORT", "fivefour", "LAKEHOUSE_PG_PORT must be an integer, got 'fivefour'"),
        ("LAKEHOUSE_INVOKER_PORT", "1.5", "LAKEHOUSE_INVOKER_PORT must be an integer, got '1.5'"),
        ("LAKEHOUSE_AIRFLOW_PORT", "http", "LAKEHOUSE_AIRFLOW_PORT must be an integer, got 'http'"),
        ("LAKEHOUSE_INVOKER_WORKERS", "eight", "LAKEHOUSE_INVOKER_WORKERS must be an integer, got 'eight'"),
        ("LAKEHOUSE_INVOKER_WORKERS", "0", "LAKEHOUSE_INVOKER_WORKERS must be at least 1, got '0'"),
        ("LAKEHOUSE_INVOKER_DB_POOL", "0", "LAKEHOUSE_INVOKER_DB_POOL must be at least 1, got '0'"),
        ("LAKEHOUSE_INVOKER_RETRY_BASE", "2s", "LAKEHOUSE_INVOKER_RETRY_BASE must be a number, got '2s'"),
        ("LAKEHOUSE_INVOKER_RETRY_BASE", "-2", "LAKEHOUSE_INVOKER_RETRY_BASE must be at least 0, got '-2'"),
        ("LAKEHOUSE_INVOKER_RETRY_MAX", "-1", "LAKEHOUSE_INVOKER_RETRY_MAX must be at least 0, got '-1'"),
        ("LAKEHOUSE_INVOKER_LEASE", "0", "LAKEHOUSE_INVOKER_LEASE must be at least 1, got '0'"),
        ("LAKEHOUSE_INVOKER_CATALOGUE_TTL", "soon", "LAKEHOUSE_INVOKER_CATALOGUE_TTL must be a number, got 'soon'"),
        ("LAKEHOUSE_RECONCILE_INTERVAL", "-5", "LAKEHOUSE_RECONCILE_INTERVAL must be at least 0, got '-5'"),
        ("LAKEHOUSE_AIRFLOW_API_WORKERS", "0", "LAKEHOUSE_AIRFLOW_API_WORKERS must be at least 1, got '0'"),
        ("LAKEHOUSE_SPARK_DRIVERS", "0", "LAKEHOUSE_SPARK_DRIVERS must be at least 1, got '0'"),
        ("LAKEHOUSE_SPARK_DRIVER_MAX_RUNS", "0", "LAKEHOUSE_SPARK_DRIVER_MAX_RUNS must be at least 1, got '0'"),
        (
            "LAKEHOUSE_SPARK_DRIVER_MAX_RSS_MB",
            "128",
            "LAKEHOUSE_SPARK_DRIVER_MAX_RSS_MB must be at least 256, got '128'",
        ),
    ],
)
def test_every_bad_value_is_one_line_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as raised:
        load_settings()
    assert str(raised.value) == message


def test_several_bad_values_are_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PORT", "x")  # airflow_url derives from it: no second message
    monkeypatch.setenv("LAKEHOUSE_RUNNER", "emr")
    with pytest.raises(ValueError) as raised:
        load_settings()
    assert str(raised.value) == (
        "LAKEHOUSE_AIRFLOW_PORT must be an integer, got 'x'; LAKEHOUSE_RUNNER must be 'local' or 'glue', got 'emr'"
    )


def test_defaults(bare: Path) -> None:
    s = load_settings()
    assert s.root == Path(lakehouse.config.__file__).resolve().parents[2]
    assert (s.pg_host, s.pg_port, s.pg_user, s.pg_password, s.pg_managed) == (
        "127.0.0.1",
        5433,
        "lakehouse",
        "lakehouse",
        True,
    )
    assert (s.metadata_db, s.airflow_db, s.catalog_db, s.warehouse_db) == (
        "lakehouse",
        "airflow",
        "iceberg_catalog",
        "warehouse",
    )
    assert s.metadata_dsn == "postgresql://lakehouse:lakehouse@127.0.0.1:5433/lakehouse"
    assert s.catalog_dsn == "postgresql+psycopg2://lakehouse:lakehouse@127.0.0.1:5433/iceberg_catalog"
    assert (s.seaweed_ports.master, s.seaweed_ports.s3, s.seaweed_ports.iceberg) == (9333, 8333, 8181)
    assert (s.s3_endpoint_url, s.landing_bucket, s.invoker_port, s.invoker_bind) == (
        "http://127.0.0.1:8333",
        "landing",
        8765,
        "127.0.0.1",
    )
    assert (
        s.invoker_retry_base,
        s.invoker_retry_max,
        s.invoker_db_pool,
        s.invoker_dispatch_workers,
        s.invoker_lease,
        s.invoker_catalogue_ttl,
        s.reconcile_interval,
    ) == (2.0, 300.0, 8, 8, 30.0, 5.0, 900.0)
    assert (s.airflow_port, s.airflow_url, s.airflow_username, s.airflow_api, s.airflow_api_workers) == (
        8080,
        "http://127.0.0.1:8080",
        "admin",
        "rest",
        2,
    )
    assert (
        s.runner,
        s.spark_mode,
        s.spark_master,
        s.spark_driver_memory,
        s.spark_drivers,
        s.spark_driver_max_runs,
        s.spark_driver_max_rss_mb,
    ) == ("local", "warm", "local[2]", "2g", 2, 50, 4096)
    assert (
        s.mwaa_environment,
        s.glue_role_arn,
        s.glue_connections,
        s.alert_webhook_url,
        s.alert_sns_topic_arn,
        s.aws_region,
        s.catalog_name,
    ) == (None, None, (), None, None, "us-east-1", "lake")


def test_dependent_defaults_follow_the_settings_they_depend_on(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKEHOUSE_HOME")
    monkeypatch.setenv("LAKEHOUSE_ROOT", str(bare / "checkout"))
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PORT", "9090")
    s = load_settings()
    assert s.root == bare / "checkout" and s.home == bare / "checkout" / "var"
    assert s.lake_uri == (bare / "checkout" / "var" / "lake").as_uri()
    assert s.templates_uri == str(bare / "checkout" / "glue_templates")
    assert s.jars_dir == bare / "checkout" / "var" / "jars"
    assert s.airflow_url == "http://127.0.0.1:9090"
    assert (s.run_dir, s.log_dir, s.airflow_home, s.dags_folder) == (
        s.home / "run",
        s.home / "log",
        s.home / "airflow",
        s.root / "dags",
    )
    monkeypatch.setenv("LAKEHOUSE_HOME", str(bare / "elsewhere" / ".." / "state"))
    assert load_settings().lake_uri == (bare / "state" / "lake").as_uri()  # resolved, then derived


def test_given_values_win_over_derived_ones_and_empty_counts_as_unset(
    bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_URL", "https://mwaa.example/")
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", "s3://lake-bucket")
    monkeypatch.setenv("LAKEHOUSE_METADATA_DSN", "postgresql://rds/meta")
    monkeypatch.setenv("LAKEHOUSE_CATALOG_DSN", "postgresql+psycopg2://rds/cat")
    monkeypatch.setenv("LAKEHOUSE_WAREHOUSE_DSN", "")
    monkeypatch.setenv("LAKEHOUSE_PG_PORT", "")
    s = load_settings()
    assert s.airflow_url == "https://mwaa.example"  # no trailing slash
    assert (s.lake_uri, s.catalog_warehouse_uri) == ("s3://lake-bucket", "s3://lake-bucket/warehouse")
    assert (s.metadata_dsn, s.catalog_dsn) == ("postgresql://rds/meta", "postgresql+psycopg2://rds/cat")
    assert s.warehouse_dsn == "postgresql://lakehouse:lakehouse@127.0.0.1:5433/warehouse"


def test_flags_lists_and_ports_are_parsed(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_PG_MANAGED", "0")
    monkeypatch.setenv("LAKEHOUSE_GLUE_CONNECTIONS", " vpc-a, ,vpc-b ")
    monkeypatch.setenv("LAKEHOUSE_SEAWEED_PORTS", "1,2,3,4,5,6")
    monkeypatch.setenv("LAKEHOUSE_PG_PASSWORD", "p@ss/word")
    s = load_settings()
    assert s.pg_managed is False and s.glue_connections == ("vpc-a", "vpc-b")
    assert s.seaweed_ports == lakehouse.config.SeaweedPorts(1, 2, 3, 4, 5, 6)
    assert s.dsn("x") == "postgresql://lakehouse:p%40ss%2Fword@127.0.0.1:5433/x"
    assert s.jdbc_url("x") == "jdbc:postgresql://127.0.0.1:5433/x"
    monkeypatch.setenv("LAKEHOUSE_PG_MANAGED", "1")
    assert load_settings().pg_managed is True


def test_settings_are_a_snapshot(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    monkeypatch.setenv("LAKEHOUSE_METADATA_DSN", "postgresql://later/db")
    monkeypatch.setenv("LAKEHOUSE_PG_PORT", "6000")
    assert s.metadata_dsn.endswith(":5433/lakehouse") and load_settings().metadata_dsn == "postgresql://later/db"
    with pytest.raises(ValueError):
        s.pg_port = 1  # type: ignore[misc]


def test_the_configuration_page_is_what_the_declarations_render() -> None:
    page = ROOT / "docs" / "configuration.md"
    assert page.read_text() == settings_reference_markdown(), (
        "docs/configuration.md is stale: run `.venv/bin/lakehouse docs config > docs/configuration.md`"
    )


def test_the_page_has_one_row_per_setting_and_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = settings_reference_markdown()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `([A-Z0-9_]+)`", row).group(1) for row in rows] == VARIABLES  # type: ignore[union-attr]
    assert all(field.description for field in Settings.model_fields.values())
    assert "| `LAKEHOUSE_AIRFLOW_API` | `rest` or `mwaa` | `rest` |" in page
    assert "| `LAKEHOUSE_SPARK_DRIVER_MAX_RSS_MB` | integer ≥ 256 | `4096` |" in page
    assert "| `LAKEHOUSE_HOME` | path | `$LAKEHOUSE_ROOT/var` |" in page
    monkeypatch.setenv("LAKEHOUSE_ROOT", "/somewhere/else")
    monkeypatch.setenv("LAKEHOUSE_PG_PORT", "1")
    assert settings_reference_markdown() == page
    assert main(["docs", "config"]) == 0
    assert capsys.readouterr().out == page


def test_every_variable_in_the_module_is_declared() -> None:
    source = Path(lakehouse.config.__file__).read_text()
    read = set(re.findall(r'"(LAKEHOUSE_[A-Z0-9_]+)"', source))
    assert read == {v for v in VARIABLES if v.startswith("LAKEHOUSE_")}
    assert len(VARIABLES) == len(set(VARIABLES))


def test_no_other_module_reads_lakehouse_variables() -> None:
    package = Path(lakehouse.config.__file__).parent
    offenders = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "config.py" and re.search(r"os\.environ(\.get)?[\[(]\s*[\"']LAKEHOUSE_", p.read_text())
    ]
    assert offenders == []
