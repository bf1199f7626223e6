"""Configuration has one home, and `lakehouse info --json` prints the documented shape."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

import lakehouse.config
from lakehouse.cli import main
from lakehouse.config import load_settings


def test_info_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["airflow"]) >= {"url", "username", "password"}
    assert set(info["s3"]) >= {"endpoint_url", "access_key_id", "secret_access_key", "landing_bucket"}
    assert {"metadata_dsn", "warehouse_dsn", "catalog_dsn"} <= set(info)
    assert info["metadata_dsn"].endswith(f":{load_settings().pg_port}/lakehouse")


def test_generated_secrets_are_stable_and_private(settings: lakehouse.config.Settings) -> None:
    first = settings.airflow_password
    assert load_settings().airflow_password == first and len(first) >= 24
    mode = (settings.home / "secrets.json").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_explicit_secret_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_PASSWORD", "given")
    assert load_settings().airflow_password == "given"


def test_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_RUNNER", "emr")
    with pytest.raises(ValueError, match="LAKEHOUSE_RUNNER"):
        load_settings()
    monkeypatch.setenv("LAKEHOUSE_RUNNER", "local")
    monkeypatch.setenv("LAKEHOUSE_SEAWEED_PORTS", "1,2")
    with pytest.raises(ValueError, match="LAKEHOUSE_SEAWEED_PORTS"):
        load_settings()


def test_every_variable_read_is_documented() -> None:
    source = Path(lakehouse.config.__file__).read_text()
    doc = lakehouse.config.__doc__ or ""
    read = set(re.findall(r'"(LAKEHOUSE_[A-Z0-9_]+)"', source))
    documented = set(re.findall(r"(LAKEHOUSE_[A-Z0-9_]+)", doc))
    documented |= {f"LAKEHOUSE_PG_{s}" for s in ("PORT", "PASSWORD")}  # "LAKEHOUSE_PG_HOST / _PORT" rows
    undocumented = {v for v in read - documented if not v.endswith("_DSN") and v != "LAKEHOUSE_AIRFLOW_JWT_SECRET"}
    assert undocumented == set()


def test_no_other_module_reads_lakehouse_variables() -> None:
    package = Path(lakehouse.config.__file__).parent
    offenders = [
        str(p.relative_to(package)) for p in package.rglob("*.py")
        if p.name != "config.py" and re.search(r"os\.environ(\.get)?[\[(]\s*[\"']LAKEHOUSE_", p.read_text())
    ]
    assert offenders == []
