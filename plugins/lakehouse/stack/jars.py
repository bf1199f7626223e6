"""Provision the Spark jars offline (see docs/architecture.md, "Spark and Iceberg without Maven").

Maven Central is out of reach, so ``spark.jars.packages`` cannot work. The Iceberg runtime comes
from the ``snowpark-connect-deps-iceberg`` wheel, which strips Iceberg's relocated Jackson; we
rebuild that piece from Debian's Jackson jars with jarjar, under Iceberg's shaded package name.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

ICEBERG_JAR = "iceberg-spark-runtime-3.5_2.12-1.10.2.jar"
SHADED_JACKSON_JAR = "iceberg-shaded-jackson.jar"
POSTGRES_JAR = "postgresql.jar"
DEBIAN_JAVA = Path("/usr/share/java")
DEBIAN_JACKSON = ("jackson-core.jar", "jackson-databind.jar", "jackson-annotations.jar")
JARJAR_RULE = "rule com.fasterxml.jackson.** org.apache.iceberg.shaded.com.fasterxml.jackson.@1\n"


class JarProvisioningError(RuntimeError):
    """A prerequisite for the jars is missing; the message names it."""


def spark_jars(jars_dir: Path) -> list[Path]:
    """The jars Spark needs, in ``spark.jars`` order."""
    return [jars_dir / ICEBERG_JAR, jars_dir / SHADED_JACKSON_JAR, jars_dir / POSTGRES_JAR]


def _iceberg_runtime_source() -> Path:
    spec = importlib.util.find_spec("snowpark_connect_deps_iceberg")
    if spec is None or not spec.submodule_search_locations:
        raise JarProvisioningError("Python package snowpark-connect-deps-iceberg is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "jars" / ICEBERG_JAR
        if candidate.exists():
            return candidate
    raise JarProvisioningError(f"{ICEBERG_JAR} not found in snowpark_connect_deps_iceberg")


def _build_shaded_jackson(target: Path) -> None:
    jarjar = DEBIAN_JAVA / "jarjar.jar"
    missing = [p for p in [jarjar, *(DEBIAN_JAVA / j for j in DEBIAN_JACKSON)] if not p.exists()]
    if missing:
        raise JarProvisioningError(
            "missing Debian jars: " + ", ".join(map(str, missing))
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
            ["java", "-jar", str(jarjar), "process", str(rules), str(merged), str(partial)],
            check=True,
            capture_output=True,
        )
        partial.replace(target)


def provision_jars(jars_dir: Path) -> list[Path]:
    """Create the jars once; later calls only check they are there (idempotent and fast)."""
    jars_dir.mkdir(parents=True, exist_ok=True)
    iceberg, jackson, postgres = spark_jars(jars_dir)
    if not iceberg.exists():
        shutil.copyfile(_iceberg_runtime_source(), iceberg)
    if not jackson.exists():
        _build_shaded_jackson(jackson)
    if not postgres.exists():
        source = DEBIAN_JAVA / POSTGRES_JAR
        if not source.exists():
            raise JarProvisioningError(f"{source} missing (apt-get install libpostgresql-jdbc-java)")
        shutil.copyfile(source.resolve(), postgres)
    return [iceberg, jackson, postgres]
