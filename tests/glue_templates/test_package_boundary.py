"""The job library ships alone to Glue: it must not import the orchestration side or Airflow."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "glue_templates"
ALLOWED_ROOTS = {"pyspark", "boto3", "botocore", "py4j", "lakehouse_jobs"}
#: imported only inside the functions of the Postgres load's local binary path (wal_level=minimal,
#: files on the driver's disk), which Glue never takes: importing the library needs neither
LOCAL_ONLY = {"lakehouse_jobs/warehouse.py": {"pyarrow", "adbc_driver_postgresql"}}


def _roots(nodes: Iterable[ast.AST]) -> set[str]:
    roots: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _imported_roots(path: Path) -> set[str]:
    return _roots(ast.walk(ast.parse(path.read_text())))


def _module_level_roots(path: Path) -> set[str]:
    """What importing the module imports: everything outside function bodies."""
    nodes, todo = [], [ast.parse(path.read_text())]
    while todo:
        node = todo.pop()
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nodes.append(node)
            todo.extend(ast.iter_child_nodes(node))
    return _roots(nodes)


def test_library_imports_only_spark_aws_and_stdlib() -> None:
    files = sorted(LIBRARY.rglob("*.py"))
    assert len(files) >= 15
    for path in files:
        local_only = LOCAL_ONLY.get(path.relative_to(LIBRARY).as_posix(), set())
        foreign = {r for r in _imported_roots(path) - ALLOWED_ROOTS - local_only if r not in sys.stdlib_module_names}
        assert not foreign, f"{path.relative_to(LIBRARY)} imports {sorted(foreign)}"
        eager = _module_level_roots(path) & local_only
        assert not eager, f"{path.relative_to(LIBRARY)} imports {sorted(eager)} on import: Glue would need them"
