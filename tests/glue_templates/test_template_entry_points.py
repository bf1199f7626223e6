"""Every template's entry script is thin: it imports its own module from the library and calls main."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

TEMPLATES = Path(__file__).resolve().parents[1].parent / "glue_templates"


@pytest.mark.parametrize(
    "template",
    [
        "landing_to_raw",
        "db_to_raw",
        "http_to_landing",
        "quality_check",
        "presentation_to_warehouse",
        "stage_to_presentation",
    ],
)
def test_every_entry_script_only_calls_its_template(template: str) -> None:
    tree = ast.parse((TEMPLATES / f"{template}.py").read_text())
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [("lakehouse_jobs.templates", [template])]
    module = importlib.import_module(f"lakehouse_jobs.templates.{template}")
    assert callable(module.main) and template == module.TEMPLATE
