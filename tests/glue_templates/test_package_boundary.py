"""The job library ships alone to Glue: it must not import the orchestration side or Airflow."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "glue_templates"
ALLOWED_ROOTS = {"pyspark", "boto3", "botocore", "py4j", "lakehouse_jobs"}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_library_imports_only_spark_aws_and_stdlib() -> None:
    files = sorted(LIBRARY.rglob("*.py"))
    assert len(files) >= 15
    for path in files:
        foreign = {r for r in _imported_roots(path) - ALLOWED_ROOTS if r not in sys.stdlib_module_names}
        assert not foreign, f"{path.relative_to(LIBRARY)} imports {sorted(foreign)}"
