"""`lakehouse flow schema`: the flow document's JSON Schema, from the one model, accepts the
documented samples and refuses what `apply` refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from lakehouse.cli import main
from lakehouse.flows import Catalogue, validate_flow
from lakehouse.metadata.catalogue import declared_templates
from lakehouse.metadata.flow_documents import flow_from_document
from lakehouse.metadata.flow_model import FlowDocumentError, flow_document_json_schema, parse_flow_document

ROOT = Path(__file__).resolve().parents[3]


def _samples() -> list[tuple[str, dict[str, Any]]]:
    """Every flow document the README and docs/ show (a ```yaml block with a flow_id)."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.DOTALL)):
            document = yaml.safe_load(block)
            if isinstance(document, dict) and "flow_id" in document:
                found.append((f"{page.name}#{n}", document))
    return found


SAMPLES = _samples()


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = flow_document_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_cli_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flow", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == flow_document_json_schema()
    assert schema["title"] == "Lakehouse flow document" and schema["additionalProperties"] is False
    assert schema["properties"]["max_active_runs"]["description"] == "runs of the flow at the same time"


def test_the_docs_show_samples() -> None:
    assert len(SAMPLES) >= 2 and any(name.startswith("flows.md") for name, _ in SAMPLES)


@pytest.mark.parametrize(("name", "document"), SAMPLES, ids=[name for name, _ in SAMPLES])
def test_every_documented_sample_is_valid(
    validator: jsonschema.Draft202012Validator, name: str, document: dict[str, Any]
) -> None:
    """The schema, the model and the flow checks (against the declared templates) all accept it."""
    assert [e.message for e in validator.iter_errors(document)] == []
    rows = declared_templates()  # each one's current version is recorded too (pinned tasks)
    templates = Catalogue.from_document({"templates": rows, "template_versions": rows}).templates
    assert [str(p) for p in validate_flow(flow_from_document(document, name), templates)] == []


BASE: dict[str, Any] = {"flow_id": "orders", "tasks": [{"task_id": "a", "template": "stage_to_presentation"}]}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"schedul": "@daily"}, "schedul: unknown key"),
        ({"tasks": [{"task_id": "a", "template": "t", "colour": 1}]}, "tasks[a].colour: unknown key"),
        ({"trigger": {"bucket": "landing", "key_patern": "x/*"}}, "trigger.key_patern: unknown key"),
        ({"tasks": [{"task_id": "a", "template": "t", "retries": "3"}]}, "tasks[a].retries: expected an integer"),
        ({"max_active_runs": True}, "max_active_runs: expected an integer, got bool True"),
        ({"max_active_runs": 0}, "max_active_runs: expected an integer ≥ 1, got int 0"),
        ({"trigger": {"bucket": "landing"}}, "trigger: bucket and key_pattern go together"),
        ({"trigger": {"bucket": "landing", "key_pattern": "x", "syntax": "re"}}, "trigger.syntax: expected 'glob' or"),
        ({"flow_id": "Orders"}, "flow_id: expected a name of lower-case letters"),
        ({"tags": ["a", 1]}, "tags[1]: expected a string, got int 1"),
        ({"tasks": []}, "tasks: expected a non-empty list, got list []"),
        ({"tasks": [{"template": "t"}]}, "tasks[0].task_id: required"),
    ],
)
def test_schema_and_model_refuse_the_same_documents(
    validator: jsonschema.Draft202012Validator, change: dict[str, Any], problem: str
) -> None:
    document = {**BASE, **change}
    assert list(validator.iter_errors(document)) != []
    with pytest.raises(FlowDocumentError) as raised:
        parse_flow_document(document, "f.yaml")
    assert any(p.startswith(problem) for p in raised.value.problems), raised.value.problems


def test_null_means_the_default_for_both(validator: jsonschema.Draft202012Validator) -> None:
    document = {
        **BASE,
        "max_active_runs": None,
        "description": None,
        "tags": None,
        "schedule": None,
        "tasks": [{"task_id": "a", "template": "t", "retries": None, "parameters": None}],
    }
    assert list(validator.iter_errors(document)) == []
    parsed = parse_flow_document(document)
    assert (parsed.max_active_runs, parsed.description, parsed.tags, parsed.tasks[0].parameters) == (16, "", [], {})


def test_a_yaml_value_json_cannot_hold_is_named() -> None:
    """YAML reads 2024-01-01 as a date; the parameters column is JSON, so the model refuses it."""
    document = yaml.safe_load("flow_id: f\ntasks: [{task_id: a, template: t, parameters: {day: 2024-01-01}}]")
    with pytest.raises(FlowDocumentError) as raised:
        parse_flow_document(document)
    assert raised.value.problems == [
        "tasks[a].parameters.day: expected a JSON value (string, number, true/false, "
        "null, list or mapping), got date datetime.date(2024, 1, 1)"
    ]
