"""One Spark session for all job-side tests, configured exactly as the local runner configures jobs.

The templates call ``SparkSession.builder.getOrCreate()``, so ``main([...])`` called in-process
picks up this session: the tests exercise the real catalog (Iceberg JDBC catalog on the test
Postgres) without paying a JVM start per test.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakehouse.config import Settings
from lakehouse.runners.spark_conf import local_spark_conf

# the SCD2 reference model sits beside the tests as a plain module; pytest's importlib mode does
# not put test folders on sys.path, so the property tests could not import it otherwise
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def spark(pg: Settings, jars: list[Path]) -> Iterator[SparkSession]:
    # py4j logs from __del__ at interpreter exit, after pytest closed its streams: keep it quiet
    logging.getLogger("py4j").setLevel(logging.WARNING)
    builder = SparkSession.builder.appName("lakehouse-job-tests")
    for key, value in local_spark_conf(pg).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def unique() -> str:
    """A short suffix that keeps tables, datasets and batch ids of different tests apart."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def lake_uri(settings: Settings) -> str:
    return settings.lake_uri
