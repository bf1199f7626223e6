"""The one stack every end-to-end test drives: started once per test session, stopped with the
project's own stop code at its end, after which no process of it may be left."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.demo import airflow_client, install_sample_flow, wait_for_dag
from lakehouse.hooks.airflow_api import AirflowApiClient
from lakehouse.stack import services
from lakehouse.stack.processes import processes_using_home


@pytest.fixture(scope="session")
def stack(pg: Settings) -> Iterator[Settings]:
    services.up(pg)
    yield pg
    services.down(pg)
    # the test session's own children (its shared Spark session) are not part of the stack
    left = processes_using_home(pg.home, exclude_descendants_of=os.getpid())
    assert left == [], "processes left after stop: " + "; ".join(left)


@pytest.fixture(scope="session")
def client(stack: Settings) -> AirflowApiClient:
    install_sample_flow(stack)
    c = airflow_client(stack)
    wait_for_dag(c, "invoices")
    return c


def _scalar(dsn: str, sql: str, *params: object) -> object:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


@pytest.fixture(scope="session")
def scalar() -> Callable[..., object]:
    """``scalar(dsn, sql, *params)``: the first column of the first row (None if no row)."""
    return _scalar
