"""Every template's two declarations agree: the catalogue's ``parameter_spec`` (what the
orchestrator checks and passes) and the job module's ``SPEC`` (what the job parses).

The job side cannot import pydantic or the orchestration package (it ships alone to Glue), so
the two stay separate declarations; this test, over whatever templates the catalogue file holds,
is what keeps them equal.
"""

from __future__ import annotations

import importlib
from pathlib import PurePosixPath
from types import ModuleType
from typing import Any

import pytest

from lakehouse.flows import PLACEHOLDER_NAMES, RESERVED_ARGUMENTS, ParameterSpecEntry, ParameterSpecList
from lakehouse.metadata.catalogue import declared_templates
from lakehouse_jobs.args import COMMON_ARGS, ArgSpec

TEMPLATES = {row["template_id"]: row for row in declared_templates()}


def _module(row: dict[str, Any]) -> ModuleType:
    """The job module behind a catalogue row: ``x.py`` runs ``lakehouse_jobs.templates.x``."""
    return importlib.import_module(f"lakehouse_jobs.templates.{PurePosixPath(row['script_location']).stem}")


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and any(value == f"${{{name}}}" for name in PLACEHOLDER_NAMES)


def _disagreements(entries: list[ParameterSpecEntry], spec: tuple[ArgSpec, ...]) -> list[str]:
    """Why the two declarations of one template differ (names, types, required/default)."""
    common = {a.name for a in COMMON_ARGS}
    catalogue = {e.name: e for e in entries}
    job = {a.name: a for a in spec if a.name not in common}
    problems = [f"{name}: in the catalogue only" for name in sorted(set(catalogue) - set(job) - common)]
    problems += [f"{name}: in the job's SPEC only" for name in sorted(set(job) - set(catalogue))]
    problems += [
        f"{name}: the orchestrator sets it, the catalogue must not declare it"
        for name in sorted(set(catalogue) & common)
    ]
    for name in sorted(set(catalogue) & set(job)):
        entry, arg = catalogue[name], job[name]
        if entry.type != arg.type:
            problems.append(f"{name}: type {entry.type!r} in the catalogue, {arg.type!r} in the job")
        if arg.required and not entry.required and not _is_placeholder(entry.default):
            # the orchestrator always passes a placeholder default, so the job may require it
            problems.append(f"{name}: the job requires it, the catalogue neither requires it nor always passes it")
        if entry.required and not arg.required:
            problems.append(f"{name}: the catalogue requires it, the job has a default ({arg.default!r}) never used")
        if not entry.required and not arg.required and entry.default != arg.default:
            problems.append(f"{name}: default {entry.default!r} in the catalogue, {arg.default!r} in the job")
    return problems


def test_the_catalogue_file_declares_templates() -> None:
    assert {"landing_to_raw", "raw_to_stage_scd2", "stage_to_presentation"} <= set(TEMPLATES)


@pytest.mark.parametrize("template_id", sorted(TEMPLATES))
def test_catalogue_and_job_declare_the_same_arguments(template_id: str) -> None:
    row = TEMPLATES[template_id]
    module = _module(row)
    entries = ParameterSpecList.model_validate(row["parameter_spec"]).root
    assert _disagreements(entries, module.SPEC) == []


def test_the_orchestrators_arguments_are_the_jobs_common_ones() -> None:
    assert set(RESERVED_ARGUMENTS) == {a.name for a in COMMON_ARGS}


def test_a_disagreement_is_named() -> None:
    entries = ParameterSpecList.model_validate(
        [
            {"name": "source_uri", "type": "str", "default": "${files.uri}"},
            {"name": "dataset", "type": "str", "required": True},
            {"name": "mode", "type": "str", "default": "cdc"},
            {"name": "size", "type": "int"},
            {"name": "batch_id", "type": "str"},
            {"name": "only_here", "type": "bool"},
        ]
    ).root
    spec = (
        ArgSpec("source_uri", required=True),
        ArgSpec("dataset"),
        ArgSpec("mode", default="snapshot"),
        ArgSpec("size", "float"),
        ArgSpec("only_there"),
    )
    assert _disagreements(entries, spec) == [
        "only_here: in the catalogue only",
        "only_there: in the job's SPEC only",
        "batch_id: the orchestrator sets it, the catalogue must not declare it",
        "dataset: the catalogue requires it, the job has a default (None) never used",
        "mode: default 'cdc' in the catalogue, 'snapshot' in the job",
        "size: type 'int' in the catalogue, 'float' in the job",
    ]
