"""The job side reads its environment in one module, anew on every call (the warm driver swaps it per run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lakehouse_jobs import environment, io, warm_driver
from lakehouse_jobs.environment import JdbcLogin, read_environment
from lakehouse_jobs.templates import db_to_raw
from lakehouse_jobs.warehouse import connection_from_env

LIBRARY = Path(environment.__file__).resolve().parent
JOB_VARIABLES = (
    "AWS_ENDPOINT_URL_S3",
    "LAKEHOUSE_LANDING_BUCKET",
    "LAKEHOUSE_SECRETS_JSON",
    "LAKEHOUSE_WAREHOUSE_JDBC_URL",
    "LAKEHOUSE_WAREHOUSE_USER",
    "LAKEHOUSE_WAREHOUSE_PASSWORD",
    "LAKEHOUSE_SOURCE_JDBC_URL",
    "LAKEHOUSE_SOURCE_JDBC_USER",
    "LAKEHOUSE_SOURCE_JDBC_PASSWORD",
)


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in JOB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_every_variable_from_a_mapping_and_empty_counts_as_unset() -> None:
    env = read_environment(
        {
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8333",
            "LAKEHOUSE_LANDING_BUCKET": "",
            "LAKEHOUSE_SECRETS_JSON": json.dumps({"wh": {"host": "h"}}),
            "LAKEHOUSE_WAREHOUSE_JDBC_URL": "jdbc:postgresql://h:5432/warehouse",
            "LAKEHOUSE_WAREHOUSE_USER": "u",
            "LAKEHOUSE_WAREHOUSE_PASSWORD": "secret-pw",
            "LAKEHOUSE_SOURCE_JDBC_URL": "",
        }
    )
    assert env.s3_endpoint_url == "http://127.0.0.1:8333" and env.landing_bucket is None
    assert env.handed_over_secrets() == {"wh": {"host": "h"}}
    assert env.warehouse == JdbcLogin("jdbc:postgresql://h:5432/warehouse", "u", "secret-pw")
    assert env.source == JdbcLogin(None, "", "")
    assert "secret-pw" not in repr(env) and '"host"' not in repr(env)


def test_nothing_set_is_what_a_glue_job_sees() -> None:
    env = read_environment({})
    assert (env.s3_endpoint_url, env.landing_bucket, env.handed_over_secrets()) == (None, None, {})
    assert env.warehouse.url is None and env.source.url is None


def test_handed_over_secrets_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="LAKEHOUSE_SECRETS_JSON must be a JSON object"):
        read_environment({"LAKEHOUSE_SECRETS_JSON": "[1, 2]"}).handed_over_secrets()


def test_every_call_reads_the_environment_as_it_is_now(clean: pytest.MonkeyPatch) -> None:
    clean.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert read_environment().s3_endpoint_url is None
    clean.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:18333")
    clean.setenv("LAKEHOUSE_SOURCE_JDBC_URL", "jdbc:postgresql://src:5432/app")
    clean.setenv("LAKEHOUSE_SOURCE_JDBC_USER", "reader")
    assert read_environment().s3_endpoint_url == "http://127.0.0.1:18333"
    assert io.s3_client().meta.endpoint_url == "http://127.0.0.1:18333"
    connection = db_to_raw._connection({"secret_id": None})
    assert (connection.url, connection.user, connection.password) == ("jdbc:postgresql://src:5432/app", "reader", "")
    clean.delenv("LAKEHOUSE_SOURCE_JDBC_URL")
    with pytest.raises(ValueError, match="no source connection: pass --secret_id or set LAKEHOUSE_SOURCE_JDBC_URL"):
        db_to_raw._connection({"secret_id": None})


def test_a_warm_run_sees_its_own_variables_and_the_next_one_does_not(clean: pytest.MonkeyPatch) -> None:
    clean.setenv("LAKEHOUSE_WAREHOUSE_JDBC_URL", "jdbc:postgresql://before:5432/warehouse")
    previous = warm_driver._apply_environment(
        {"LAKEHOUSE_WAREHOUSE_JDBC_URL": "jdbc:redshift://run:5439/dev", "LAKEHOUSE_WAREHOUSE_USER": "run-user"},
        unset=("LAKEHOUSE_SECRETS_JSON",),
    )
    try:
        connection = connection_from_env()
        assert (connection.url, connection.user, connection.engine) == (
            "jdbc:redshift://run:5439/dev",
            "run-user",
            "redshift",
        )
    finally:
        warm_driver._restore_environment(previous)
    assert connection_from_env().url == "jdbc:postgresql://before:5432/warehouse"
    assert read_environment().warehouse.user == ""


def test_only_the_environment_module_reads_the_environment() -> None:
    offenders = [
        str(p.relative_to(LIBRARY))
        for p in LIBRARY.rglob("*.py")
        # the warm driver sets and restores a run's variables: it writes them, it reads none
        if p.name not in ("environment.py", "warm_driver.py")
        and re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text())
    ]
    assert offenders == []
