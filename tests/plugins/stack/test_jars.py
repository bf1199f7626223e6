"""The Spark jars: which Iceberg runtime a process gets, and that a runtime is provisioned offline,
once, and only as the pinned bytes."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from lakehouse.stack import jars
from lakehouse.stack.jars import (
    DEFAULT_ICEBERG_VERSION,
    ICEBERG_RUNTIMES,
    ICEBERG_VERSION_VARIABLE,
    POSTGRES_JAR,
    SHADED_JACKSON_JAR,
    IcebergRuntime,
    JarProvisioningError,
    iceberg_runtime,
    provision_jars,
    spark_jars,
)


def test_the_runtime_is_the_default_unless_the_variable_selects_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ICEBERG_VERSION_VARIABLE, raising=False)
    assert iceberg_runtime().version == DEFAULT_ICEBERG_VERSION == "1.10.2"
    monkeypatch.setenv(ICEBERG_VERSION_VARIABLE, "1.9.2")
    assert iceberg_runtime().version == "1.9.2"
    monkeypatch.setenv(ICEBERG_VERSION_VARIABLE, "1.7.1")
    with pytest.raises(JarProvisioningError, match=r"LAKEHOUSE_ICEBERG_VERSION='1.7.1'.*\['1.10.2', '1.9.2'\]"):
        iceberg_runtime()


def test_spark_gets_the_rebuilt_jackson_only_for_a_runtime_that_lacks_it(tmp_path: Path) -> None:
    assert spark_jars(tmp_path, ICEBERG_RUNTIMES["1.10.2"]) == [
        tmp_path / "iceberg-spark-runtime-3.5_2.12-1.10.2.jar",
        tmp_path / SHADED_JACKSON_JAR,
        tmp_path / POSTGRES_JAR,
    ]
    assert spark_jars(tmp_path, ICEBERG_RUNTIMES["1.9.2"]) == [
        tmp_path / "iceberg-spark-runtime-3.5_2.12-1.9.2.jar",
        tmp_path / POSTGRES_JAR,
    ]


def _fake_runtime(tmp_path: Path, jar_bytes: bytes, wheel_sha: str | None = None) -> tuple[IcebergRuntime, bytes]:
    """A runtime whose wheel is a small zip with a jar of ``jar_bytes`` (pinned by its own hashes
    unless ``wheel_sha`` overrides the wheel's)."""
    runtime = IcebergRuntime("0.0.1", "0.0.9", hashlib.sha256(jar_bytes).hexdigest(), "", bundles_jackson=True)
    wheel = tmp_path / "built.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"snowpark_connect_deps_iceberg/jars/{runtime.jar}", jar_bytes)
    content = wheel.read_bytes()
    return IcebergRuntime(
        runtime.version,
        runtime.package_version,
        runtime.jar_sha256,
        wheel_sha or hashlib.sha256(content).hexdigest(),
        True,
    ), content


def _pip_serving(monkeypatch: pytest.MonkeyPatch, runtime: IcebergRuntime, content: bytes) -> list[list[str]]:
    """pip download, answered from ``content`` instead of the registry; returns the commands run."""
    calls: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        destination = Path(command[command.index("--dest") + 1])
        (destination / runtime.wheel).write_bytes(content)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(jars.subprocess, "run", run)
    return calls


def test_a_runtime_from_a_wheel_is_downloaded_once_checked_and_the_wheel_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, content = _fake_runtime(tmp_path, b"iceberg classes")
    calls = _pip_serving(monkeypatch, runtime, content)
    target = tmp_path / "jars"
    target.mkdir()
    (target / POSTGRES_JAR).write_bytes(b"driver")
    assert provision_jars(target, runtime) == [target / runtime.jar, target / POSTGRES_JAR]
    assert (target / runtime.jar).read_bytes() == b"iceberg classes"
    assert provision_jars(target, runtime) == [target / runtime.jar, target / POSTGRES_JAR]
    assert len(calls) == 1 and calls[0][-1] == "snowpark-connect-deps-iceberg==0.0.9" and "--no-deps" in calls[0]
    assert sorted(p.name for p in target.iterdir()) == sorted([runtime.jar, POSTGRES_JAR])


@pytest.mark.parametrize("tampered", ["wheel", "jar"])
def test_bytes_other_than_the_pinned_ones_are_refused_and_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tampered: str
) -> None:
    runtime, content = _fake_runtime(tmp_path, b"iceberg classes")
    if tampered == "wheel":
        runtime = IcebergRuntime(runtime.version, runtime.package_version, runtime.jar_sha256, "0" * 64, True)
    else:
        runtime = IcebergRuntime(runtime.version, runtime.package_version, "0" * 64, runtime.wheel_sha256, True)
    _pip_serving(monkeypatch, runtime, content)
    target = tmp_path / "jars"
    target.mkdir()
    (target / POSTGRES_JAR).write_bytes(b"driver")
    with pytest.raises(JarProvisioningError, match="not the pinned"):
        provision_jars(target, runtime)
    assert sorted(p.name for p in target.iterdir()) == [POSTGRES_JAR]


def test_every_pinned_runtime_names_its_release_and_hashes() -> None:
    for version, runtime in ICEBERG_RUNTIMES.items():
        assert runtime.version == version and runtime.jar.endswith(f"-{version}.jar")
        assert len(runtime.jar_sha256) == 64 and (runtime.wheel_sha256 is None or len(runtime.wheel_sha256) == 64)
    # the installed package is the project's pin; the other comes from a wheel
    assert ICEBERG_RUNTIMES[DEFAULT_ICEBERG_VERSION].wheel_sha256 is None
    assert ICEBERG_RUNTIMES["1.9.2"].package_version == "1.0.1"
