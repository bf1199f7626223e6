"""Warehouse connection sources and staging names (no database needed)."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from lakehouse_jobs.identifiers import validate_identifier
from lakehouse_jobs.warehouse import (
    WarehouseConnection,
    connection_from_env,
    connection_from_secret,
    libpq_uri,
    staging_table_name,
)


def test_staging_names_fit_postgres_and_differ_per_batch() -> None:
    assert staging_table_name("daily", "b2") == "daily__load_b2"
    long_a = staging_table_name("daily_expenses", "scheduled__2026-11-23T00:00:00+00:00")
    long_b = staging_table_name("daily_expenses", "scheduled__2026-11-24T00:00:00+00:00")
    assert long_a != long_b
    for name in (long_a, long_b, staging_table_name("t" * 63, "b")):
        assert validate_identifier(name, "staging") and len(name) <= 63


def test_connection_from_env_and_its_repr_hides_the_password() -> None:
    conn = connection_from_env(
        {
            "LAKEHOUSE_WAREHOUSE_JDBC_URL": "jdbc:postgresql://h:5432/warehouse",
            "LAKEHOUSE_WAREHOUSE_USER": "u",
            "LAKEHOUSE_WAREHOUSE_PASSWORD": "s3cret",
        }
    )
    assert (conn.url, conn.user, conn.password, conn.driver) == (
        "jdbc:postgresql://h:5432/warehouse",
        "u",
        "s3cret",
        "org.postgresql.Driver",
    )
    assert "s3cret" not in repr(conn)
    with pytest.raises(ValueError, match="--secret_id"):
        connection_from_env({})


def test_the_binary_load_connects_with_the_same_login_through_libpq() -> None:
    login = ("u@x", "p:/?#@ss")
    assert (
        libpq_uri(WarehouseConnection("jdbc:postgresql://h:5432/warehouse", *login))
        == "postgresql://u%40x:p%3A%2F%3F%23%40ss@h:5432/warehouse"
    )
    assert (
        libpq_uri(WarehouseConnection("jdbc:postgresql://h/wh?sslmode=require&connectTimeout=5", *login))
        == "postgresql://u%40x:p%3A%2F%3F%23%40ss@h/wh?sslmode=require&connect_timeout=5"
    )
    with pytest.raises(ValueError, match="'ssl' has no libpq equivalent"):  # dropping it would drop TLS
        libpq_uri(WarehouseConnection("jdbc:postgresql://h/wh?ssl=true", *login))
    with pytest.raises(ValueError, match="one host"):
        libpq_uri(WarehouseConnection("jdbc:redshift://h:5439/dev", *login))


def test_connection_from_a_secrets_manager_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("secretsmanager")
        client.create_secret(
            Name="wh",
            SecretString=json.dumps(
                {"host": "db.internal", "port": 5432, "dbname": "warehouse", "username": "loader", "password": "pw"}
            ),
        )
        client.create_secret(
            Name="rs",
            SecretString=json.dumps(
                {"engine": "redshift", "host": "rs.internal", "username": "loader", "password": "pw"}
            ),
        )
        client.create_secret(Name="broken", SecretString=json.dumps({"host": "db.internal"}))
        pg = connection_from_secret("wh")
        rs = connection_from_secret("rs")
        with pytest.raises(ValueError, match="lacks"):
            connection_from_secret("broken")
    assert (pg.url, pg.user, pg.password) == ("jdbc:postgresql://db.internal:5432/warehouse", "loader", "pw")
    assert (rs.url, rs.driver) == ("jdbc:redshift://rs.internal:5439/dev", "com.amazon.redshift.jdbc42.Driver")
