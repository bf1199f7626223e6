"""deploy/package.py builds what Glue, MWAA and Lambda load: checked by loading it the same way."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest

from lakehouse.runners.glue import GlueRunner

ROOT = Path(__file__).resolve().parents[2]


def _names(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return set(archive.namelist())


def _run_isolated(
    code: str, *, env: dict[str, str] | None = None, no_site: bool = True
) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter; with ``no_site`` it sees the standard library only (-I -S), like a
    Lambda sees nothing but the runtime and the zip."""
    flags = ["-I", "-S"] if no_site else ["-I"]
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        env=env or {"PATH": os.environ.get("PATH", "")},
        timeout=120,
    )


def test_templates_are_where_the_glue_runner_looks(dist: Path) -> None:
    """The runner resolves <templates_uri>/<script_location> and --extra-py-files lakehouse_jobs.zip;
    every script_location of the template catalogue must exist in the package."""
    templates = dist / "templates"
    catalogue = (ROOT / "metadata" / "migrations" / "R__template_catalogue.sql").read_text()
    runner = GlueRunner(
        role_arn="arn:aws:iam::123456789012:role/x",
        templates_uri="s3://t/templates/",
        lake_uri="s3://l/lake",
        client=object(),
        s3=object(),
    )
    for script in (
        "landing_to_raw.py",
        "raw_to_stage_scd2.py",
        "stage_to_presentation.py",
        "presentation_to_warehouse.py",
    ):
        assert f"'{script}'" in catalogue, f"{script} is not a script_location of the catalogue"
        assert runner._script_uri(script) == f"s3://t/templates/{script}"
        assert (templates / script).read_bytes() == (ROOT / "glue_templates" / script).read_bytes()
    assert (templates / "lakehouse_jobs.zip").is_file()


def test_lakehouse_jobs_zip_is_importable_with_zipimport(dist: Path) -> None:
    """Glue puts --extra-py-files on sys.path: every module must import from the zip itself."""
    archive = dist / "templates" / "lakehouse_jobs.zip"
    names = _names(archive)
    assert "lakehouse_jobs/__init__.py" in names and "lakehouse_jobs/templates/landing_to_raw.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py"))
    code = (
        "import importlib, sys, zipimport\n"
        f"sys.path.insert(0, {str(archive)!r})\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert isinstance(module.__loader__, zipimport.zipimporter), name\n"
        "print(len(sys.modules))\n"
    )
    result = _run_isolated(code, no_site=False)  # pyspark comes from the venv, as Glue provides it
    assert result.returncode == 0, result.stderr


def test_mwaa_bundle_has_dags_plugins_requirements_and_startup(dist: Path, packager: ModuleType) -> None:
    mwaa = dist / "mwaa"
    assert (mwaa / "dags" / "lakehouse_dags.py").read_text() == (ROOT / "dags" / "lakehouse_dags.py").read_text()
    names = _names(mwaa / "plugins.zip")
    # MWAA unpacks plugins.zip into $AIRFLOW_HOME/plugins, which is on sys.path: package at the root
    for module in (
        "lakehouse/__init__.py",
        "lakehouse/dag_factory.py",
        "lakehouse/runners/glue.py",
        "lakehouse/notifications.py",
        "lakehouse/config.py",
    ):
        assert module in names
    requirements = (mwaa / "requirements.txt").read_text()
    requirement_lines = [line for line in requirements.splitlines() if line and not line.startswith("#")]
    lock = {line.strip() for line in (ROOT / "requirements.lock").read_text().splitlines()}
    assert all(line in lock for line in requirement_lines), "every requirement is pinned as in requirements.lock"
    assert not any(line.lower().startswith(("apache-airflow", "boto3", "psycopg2")) for line in requirement_lines)
    for provided in packager.MWAA_PROVIDED:
        assert f"#   {provided}:" in requirements, f"{provided} is neither listed nor explained"
    startup = (mwaa / "startup.sh").read_text()
    assert startup.startswith("#!/bin/sh") and "/lakehouse/settings" in startup
    assert "get_environment" in startup and "LAKEHOUSE_AIRFLOW_URL" in startup
    result = subprocess.run(["sh", "-n", str(mwaa / "startup.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_lambda_zip_is_self_contained_and_reaches_the_database(dist: Path, tmp_path: Path) -> None:
    """The handler imports from the zip alone (no site-packages) and gets as far as connecting to
    the metadata database with the zip's own psycopg2: a closed port gives psycopg2's error."""
    archive = dist / "lambda" / "invoker.zip"
    names = _names(archive)
    assert "lakehouse/invoker/lambda_handler.py" in names
    assert any(n.startswith("psycopg2/_psycopg") and n.endswith(".so") for n in names)
    unpacked = tmp_path / "task"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(unpacked)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(unpacked)!r})\n"
        "from lakehouse.invoker import lambda_handler\n"
        "import boto3, psycopg2, requests\n"
        f"for m in (lambda_handler, boto3, psycopg2, requests):\n"
        f"    assert m.__file__.startswith({str(unpacked)!r}), m.__file__\n"
        "assert 'airflow' not in sys.modules and 'pyspark' not in sys.modules\n"
        "try:\n"
        "    lambda_handler.scheduled_handler({'flow_id': 'invoices', 'time': '2026-11-01T06:00:00Z'}, None)\n"
        "except psycopg2.OperationalError as exc:\n"
        "    print('db-unreachable', exc)\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LAKEHOUSE_HOME": str(tmp_path / "home"),
        "LAKEHOUSE_PG_HOST": "127.0.0.1",
        "LAKEHOUSE_PG_PORT": "9",
        "LAKEHOUSE_PG_PASSWORD": "x",
        "LAKEHOUSE_AIRFLOW_URL": "http://127.0.0.1:9",
        "LAKEHOUSE_AIRFLOW_PASSWORD": "x",
    }
    result = _run_isolated(code, env=env)
    assert result.returncode == 0, result.stderr
    assert "db-unreachable" in result.stdout


def test_zips_are_deterministic(tmp_path: Path, packager: ModuleType) -> None:
    """Same tree, same bytes: the CDK asset hash changes only when the code does. (Two builds
    back to back, not against the session's build, so an edit in between cannot fail it.)"""
    first_out, second_out = tmp_path / "first", tmp_path / "second"
    packager.build(first_out)
    packager.build(second_out)
    for artifact in ("templates/lakehouse_jobs.zip", "mwaa/plugins.zip", "lambda/invoker.zip"):
        first, second = (hashlib.sha256((base / artifact).read_bytes()).hexdigest() for base in (first_out, second_out))
        assert first == second, artifact
    with zipfile.ZipFile(first_out / "mwaa" / "plugins.zip") as archive:
        assert {info.date_time for info in archive.infolist()} == {packager.FIXED_TIME}


def test_command_line_prints_every_artifact(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "package.py"), "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for line in ("templates/lakehouse_jobs.zip", "mwaa/plugins.zip", "mwaa/requirements.txt", "lambda/invoker.zip"):
        assert line in result.stdout


@pytest.mark.parametrize(
    "requirement,expected",
    [("requests>=2 ; python_version >= '3.8'", ["requests"]), ("pysocks ; extra == 'socks'", [])],
)
def test_requirement_markers_and_extras(packager: ModuleType, requirement: str, expected: list[str]) -> None:
    """Extras are not vendored; markers are evaluated for this Python (the Lambda's minor)."""

    class Dist:
        requires: ClassVar[list[str]] = [requirement]

    assert packager._requirement_names(Dist()) == expected


def test_lambda_zip_carries_the_metadata_admin_and_every_migration(dist: Path) -> None:
    names = _names(dist / "lambda" / "invoker.zip")
    assert "metadata_admin.py" in names
    migrations = {p.name for p in (ROOT / "metadata" / "migrations").glob("*.sql")}
    assert migrations and {n.removeprefix("migrations/") for n in names if n.startswith("migrations/")} == migrations


def test_metadata_admin_migrates_and_runs_sql_from_the_zip_alone(dist: Path, tmp_path: Path, pg) -> None:
    """The admin function, unpacked as Lambda unpacks it, against the real metadata database: the
    custom resource's Create migrates (nothing left to apply: the schema is current), and an
    operator's SQL returns the rows of its last statement."""
    unpacked = tmp_path / "task"
    with zipfile.ZipFile(dist / "lambda" / "invoker.zip") as zf:
        zf.extractall(unpacked)
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(unpacked)!r})\n"
        "import metadata_admin\n"
        f"assert metadata_admin.__file__.startswith({str(unpacked)!r})\n"
        "created = metadata_admin.handler({'RequestType': 'Create', 'ResourceProperties': {}}, None)\n"
        "rows = metadata_admin.handler("
        "{'sql': \"SELECT 1; SELECT template_id FROM lakehouse.templates ORDER BY 1\"}, None)\n"
        "deleted = metadata_admin.handler({'RequestType': 'Delete', 'PhysicalResourceId': 'x'}, None)\n"
        "print(json.dumps([created, rows, deleted]))\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LAKEHOUSE_HOME": str(tmp_path / "home"),
        "LAKEHOUSE_PG_HOST": pg.pg_host,
        "LAKEHOUSE_PG_PORT": str(pg.pg_port),
        "LAKEHOUSE_PG_USER": pg.pg_user,
        "LAKEHOUSE_PG_PASSWORD": pg.pg_password,
    }
    result = _run_isolated(code, env=env)
    assert result.returncode == 0, result.stderr
    created, rows, deleted = json.loads(result.stdout.splitlines()[-1])
    assert created == {"PhysicalResourceId": "lakehouse-metadata-schema", "Data": {"Applied": "none"}}
    assert rows["columns"] == ["template_id"]
    assert ["landing_to_raw"] in rows["rows"] and ["presentation_to_warehouse"] in rows["rows"]
    assert deleted == {"PhysicalResourceId": "x"}  # the schema is never dropped with the stack


def test_lambda_zip_refuses_a_platform_lambda_cannot_load(packager: ModuleType) -> None:
    packager.check_lambda_platform("Linux", "x86_64", (3, 11))
    with pytest.raises(SystemExit, match=re.escape("Linux x86_64 Python 3.11")):
        packager.check_lambda_platform("Darwin", "arm64", (3, 11))
    with pytest.raises(SystemExit, match=re.escape("Python 3.12")):
        packager.check_lambda_platform("Linux", "x86_64", (3, 12))


def test_mwaa_startup_script_exports_settings_and_resolved_secrets(
    dist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """startup.sh's Python part against moto (SSM, Secrets Manager, MWAA), then its output
    evaluated by sh as MWAA does: every value arrives intact, quotes and spaces included."""
    import contextlib
    import io
    import re as re_

    import boto3
    from moto import mock_aws

    startup = (dist / "mwaa" / "startup.sh").read_text()
    code = re_.search(r"<<'PY'\n(.*?)\nPY\n", startup, re_.S).group(1)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        secret_arn = boto3.client("secretsmanager").create_secret(
            Name="lakehouse/metadata-db", SecretString=json.dumps({"username": "lakehouse", "password": "p'a ss$x"})
        )["ARN"]
        settings = {
            "env": {
                "LAKEHOUSE_RUNNER": "glue",
                "LAKEHOUSE_PG_HOST": "db.example.internal",
                "LAKEHOUSE_MWAA_ENVIRONMENT": "lakehouse",
            },
            "secrets": {"LAKEHOUSE_PG_PASSWORD": [secret_arn, "password"]},
        }
        boto3.client("ssm").put_parameter(Name="/lakehouse/settings", Type="String", Value=json.dumps(settings))
        out = io.StringIO()
        monkeypatch.setattr(sys, "argv", ["-", "/lakehouse/settings"])
        with contextlib.redirect_stdout(out):
            exec(compile(code, "startup.sh", "exec"), {"__name__": "__main__"})
    exports = out.getvalue()
    script = tmp_path / "check.sh"
    script.write_text(exports + 'printf "%s\\n" "$LAKEHOUSE_RUNNER" "$LAKEHOUSE_PG_HOST" "$LAKEHOUSE_PG_PASSWORD"\n')
    result = subprocess.run(["sh", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["glue", "db.example.internal", "p'a ss$x"]
    # moto has no such MWAA environment: no URL, a message on stderr, and the start goes on
    assert "LAKEHOUSE_AIRFLOW_URL" not in exports or "no Airflow URL" in exports
