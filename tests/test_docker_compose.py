"""docker-compose.yaml is checked offline: no Docker engine exists on the CI machine."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import lakehouse.config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
EXPECTED_SERVICES = {
    "postgres", "seaweedfs", "invoker", "airflow-init",
    "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
}


def config_variables() -> set[str]:
    return set(re.findall(r'"(LAKEHOUSE_[A-Z0-9_]+)"', Path(lakehouse.config.__file__).read_text()))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_service_of_the_stack_is_there(compose: dict) -> None:
    assert set(compose["services"]) == EXPECTED_SERVICES
    commands = {name: svc.get("command") for name, svc in compose["services"].items()}
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert commands[f"airflow-{component}"] == [component]


def test_environment_uses_only_variables_the_config_module_reads(compose: dict) -> None:
    known = config_variables()
    for name, service in compose["services"].items():
        for variable in service.get("environment") or {}:
            if variable.startswith("LAKEHOUSE_"):
                assert variable in known, f"{name}: {variable} is not read by lakehouse/config.py"


def test_every_substituted_variable_is_in_env_example() -> None:
    text = COMPOSE.read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    example = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert referenced - example == set()


def test_secrets_are_not_hard_coded(compose: dict) -> None:
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|FERNET|SQL_ALCHEMY_CONN", variable) and not variable.endswith("_FILE"):
                assert "${" in str(value), f"{name}: {variable} is hard-coded"


def test_volumes_ports_and_files_exist(compose: dict, settings: lakehouse.config.Settings) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
    build = compose["services"]["airflow-scheduler"]["build"]
    assert (ROOT / build["dockerfile"]).exists()
    init_sql = (ROOT / "deploy/docker/init-databases.sql").read_text()
    for database in (settings.airflow_db, settings.catalog_db, settings.warehouse_db):
        assert f"CREATE DATABASE {database};" in init_sql
    assert compose["services"]["postgres"]["environment"]["POSTGRES_DB"] == settings.metadata_db
    ports = {svc: s.get("ports") for svc, s in compose["services"].items() if s.get("ports")}
    assert ports["airflow-api-server"] == ["${LAKEHOUSE_AIRFLOW_PORT:-8080}:8080"]
    assert all("healthcheck" in compose["services"][s] for s in ("postgres", "seaweedfs", "invoker", "airflow-api-server"))


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_validates(tmp_path: Path) -> None:
    env = tmp_path / "compose.env"
    env.write_text((ROOT / ".env.example").read_text().replace("AIRFLOW_FERNET_KEY=\n", "AIRFLOW_FERNET_KEY=x\n"))
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
