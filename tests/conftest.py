"""Session-wide fixtures: one isolated service stack and one Spark session per test run.

The test stack lives in its own LAKEHOUSE_HOME on its own ports, so `make test` never touches a
running `make demo` stack, and everything it starts is stopped by the same stop code as `make down`.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_TEST_HOME = Path(tempfile.mkdtemp(prefix="lakehouse-test-"))
_TEST_HOME.chmod(0o755)  # the Postgres server runs as user postgres and must reach its data dir


def _interrupt(signum: int, frame: object) -> None:
    """A TERM (CI timeout, ``timeout``, kill) ends the run like Ctrl-C: pytest then tears the
    session down, so the services, Postgres and Spark it started are stopped, not orphaned."""
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _interrupt)

# LAKEHOUSE_TEST_PORT_OFFSET shifts every port, so two test sessions can run side by side. The
# ports (and SeaweedFS's gRPC ports, 10000 higher) stay below Linux's ephemeral range (32768+):
# there, a client socket of any other process can hold the port for a moment and fail a start.
_OFF = int(os.environ.get("LAKEHOUSE_TEST_PORT_OFFSET", "0"))
os.environ.update(
    {
        "LAKEHOUSE_HOME": str(_TEST_HOME),
        "SPARK_LAUNCHER_OPTS": "-XX:-UsePerfData",  # the session's spark-submit launcher: no /tmp/hsperfdata_<user>
        "LAKEHOUSE_PG_PORT": str(25433 + _OFF),
        "LAKEHOUSE_SEAWEED_PORTS": ",".join(str(p + _OFF) for p in (20333, 20340, 20888, 20833, 20733, 20181)),
        "LAKEHOUSE_S3_ENDPOINT_URL": f"http://127.0.0.1:{20833 + _OFF}",
        "LAKEHOUSE_INVOKER_PORT": str(28765 + _OFF),
        "LAKEHOUSE_AIRFLOW_PORT": str(28080 + _OFF),
        "AIRFLOW_HOME": str(_TEST_HOME / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "LAKEHOUSE_RECONCILE_INTERVAL": "0",  # the tests sweep when they mean to
    }
)
for _name in (
    "LAKEHOUSE_AIRFLOW_URL",
    "LAKEHOUSE_METADATA_DSN",
    "LAKEHOUSE_WAREHOUSE_DSN",
    "LAKEHOUSE_CATALOG_DSN",
    "LAKEHOUSE_LAKE_URI",
    "LAKEHOUSE_RUNNER",
):
    os.environ.pop(_name, None)

from lakehouse.config import Settings, load_settings  # noqa: E402
from lakehouse.stack import postgres  # noqa: E402
from lakehouse.stack.jars import iceberg_runtime, provision_jars  # noqa: E402


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def pg(settings: Settings) -> Iterator[Settings]:
    """The real Postgres server with the four databases and the metadata schema migrated."""
    started = postgres.start(settings)
    try:  # a setup that fails after the start (a bad migration) must stop the server too
        postgres.ensure_databases(settings)
        from lakehouse.metadata.migrations import migrate

        migrate(settings.metadata_dsn)
        yield settings
    finally:
        if started:
            postgres.stop(settings)


# Each test's tmp_path in a folder of this run, removed with its home (pytest would keep its last
# three runs in /tmp/pytest-of-<user>), so a finished run leaves nothing in /tmp. Beside the home,
# not inside it: paths under it must stay short enough for Unix sockets.
_TEST_TMP = _TEST_HOME.with_name(_TEST_HOME.name + "-t")


def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp is None:
        config.option.basetemp = str(_TEST_TMP)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's home goes when the run ends, after every fixture's teardown, whichever tests ran."""
    shutil.rmtree(_TEST_HOME, ignore_errors=True)
    shutil.rmtree(_TEST_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def jars(settings: Settings) -> list[Path]:
    return provision_jars(settings.jars_dir, iceberg_runtime(settings.iceberg_version))


_SERVICE_FIXTURES = {"pg", "spark", "jars", "stack", "client"}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fast unit tests first, then integration tests on the real services, then end-to-end last
    (its teardown stops the whole stack, Postgres included, and checks nothing is left)."""

    def stage(item: pytest.Item) -> int:
        if item.get_closest_marker("e2e") or "tests/e2e/" in item.nodeid:
            return 2
        return 1 if _SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) else 0

    items.sort(key=stage)  # stable: keeps file order within a stage
