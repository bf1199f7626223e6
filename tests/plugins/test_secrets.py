"""Secrets are referenced, never written: refused in rows, resolved at run time, scrubbed from texts."""

from __future__ import annotations

import pytest

from lakehouse.flows import Flow, FlowTask, ParameterSpec, Template, validate_flow
from lakehouse.hooks.airflow_connections import resolve_connection_secret
from lakehouse.secrets import literal_secret_problems, redact, secret_values


def test_credentials_in_parameters_are_refused_with_the_field() -> None:
    found = dict(
        literal_secret_problems(
            {
                "secret_id": "warehouse_login",
                "password": "hunter22",
                "options": {"api_key": "abc123", "author": "ann"},
                "source": "postgresql://loader:hunter22@db:5432/shop",
                "sql": "select 1",
                "passenger_count": "3",
            }
        )
    )
    assert sorted(found) == ["options.api_key", "password", "source"]
    assert "pass its id as 'secret_id'" in found["password"]


def test_validate_flow_names_a_literal_password() -> None:
    template = Template("load", "load.py", parameters=(ParameterSpec("jdbc_url"), ParameterSpec("secret_id")))
    flow = Flow("f", (FlowTask("f", "a", "load", {"jdbc_url": "jdbc:postgresql://u:pw12@h/db", "secret_id": "wh"}),))
    (problem,) = validate_flow(flow, {"load": template})
    assert str(problem).startswith("flow 'f': flow_tasks[a].parameters.jdbc_url: contains a URL with a password")


def test_airflow_connection_resolves_in_the_rds_secret_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_LOGIN", "postgresql://loader:s3cr3t-pw@db.internal:5432/warehouse")
    secret = resolve_connection_secret("warehouse_login")
    assert secret == {
        "engine": "postgres",
        "host": "db.internal",
        "port": 5432,
        "dbname": "warehouse",
        "username": "loader",
        "password": "s3cr3t-pw",
    }
    assert secret_values([secret]) == ["s3cr3t-pw"]


def test_redact_scrubs_values_and_url_passwords() -> None:
    text = "login failed for loader/s3cr3t-pw at postgresql://loader:other@db/warehouse"
    assert redact(text, ["s3cr3t-pw"]) == "login failed for loader/*** at postgresql://loader:***@db/warehouse"
    assert redact(None, ["x"]) is None
