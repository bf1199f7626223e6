"""Fixtures the template tests share."""

from __future__ import annotations

import pytest

from lakehouse.config import Settings


@pytest.fixture
def warehouse_env(pg: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The warehouse login the local runner hands a job, pointing at the test Postgres."""
    monkeypatch.setenv("LAKEHOUSE_WAREHOUSE_JDBC_URL", pg.jdbc_url(pg.warehouse_db))
    monkeypatch.setenv("LAKEHOUSE_WAREHOUSE_USER", pg.pg_user)
    monkeypatch.setenv("LAKEHOUSE_WAREHOUSE_PASSWORD", pg.pg_password)
    return pg
