"""What the stack's Airflow components are started with: api-server workers and its DB pool."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lakehouse.config import load_settings
from lakehouse.stack import services


def test_api_server_workers_follow_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKEHOUSE_AIRFLOW_API_WORKERS", raising=False)
    assert services.stack_environment(load_settings())["AIRFLOW__API__WORKERS"] == "2"
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_API_WORKERS", "1")
    assert services.stack_environment(load_settings())["AIRFLOW__API__WORKERS"] == "1"


def test_api_server_workers_must_be_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_API_WORKERS", "0")
    with pytest.raises(ValueError, match="LAKEHOUSE_AIRFLOW_API_WORKERS must be at least 1"):
        load_settings()


def test_api_server_pool_has_more_connections_than_request_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # anyio runs sync endpoints in 40 threads, each holding a connection; the JWT revocation check
    # on the event loop needs one more, or it waits for a connection only the event loop can free
    for name in ("AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE", "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW"):
        monkeypatch.delenv(name, raising=False)
    env = services.stack_environment(load_settings())
    api = services.airflow_component_environment(env, "api-server")
    size = int(api["AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE"])
    overflow = int(api["AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW"])
    assert size + overflow > 40
    assert {k: v for k, v in api.items() if "SQL_ALCHEMY_POOL_SIZE" not in k and "MAX_OVERFLOW" not in k} == env
    for component in ("scheduler", "dag-processor", "triggerer"):
        assert services.airflow_component_environment(env, component) == env


def test_an_explicit_airflow_pool_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE", "3")
    env = services.stack_environment(load_settings())
    assert services.airflow_component_environment(env, "api-server")["AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE"] == "3"


def test_every_process_of_the_stack_keeps_its_scratch_files_under_the_home() -> None:
    """A stop leaves nothing in /tmp: temp files, Spark's local dirs, the JVMs' tmpdir, SeaweedFS's
    logs and sockets all live under the home (``down`` empties its tmp)."""
    from lakehouse.runners.spark_conf import local_spark_conf

    settings = load_settings()
    home = str(settings.home)
    assert services.stack_environment(settings)["TMPDIR"].startswith(home)
    assert "-XX:-UsePerfData" in services.stack_environment(settings)["SPARK_LAUNCHER_OPTS"]  # nor /tmp/hsperfdata
    conf = local_spark_conf(settings)
    assert (
        conf["spark.local.dir"].startswith(home)
        and f"-Djava.io.tmpdir={settings.tmp_dir}" in conf["spark.driver.extraJavaOptions"]
    )
    assert settings.tmp_dir.is_dir()
    weed = services.seaweedfs_command(settings)
    assert "-webdav=false" in weed
    for flag in ("-logdir=", "-s3.localSocket=", "-filer.localSocket=", "-dir="):
        (value,) = [a.split("=", 1)[1] for a in weed if a.startswith(flag)]
        assert value.startswith(home), (flag, value)


def test_stop_removes_the_sockets_a_killed_seaweedfs_left_but_not_live_ones(tmp_path: Path) -> None:
    """weed mini hard-codes /tmp for its gRPC sockets; the stop takes away the ones nobody serves."""
    settings = load_settings()
    p = settings.seaweed_ports
    stale = tmp_path / f"seaweedfs-filer-grpc-{p.filer + 10000}.sock"
    live = tmp_path / f"seaweedfs-admin-grpc-{services.SEAWEEDFS_ADMIN_GRPC_PORT}.sock"
    other = tmp_path / "seaweedfs-filer-grpc-1.sock"  # another stack's port
    for path in (stale, other):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(str(path))  # bound, then closed: the file stays, nobody listens
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(live))
        server.listen(1)
        assert services.remove_stale_seaweedfs_sockets(settings, tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
