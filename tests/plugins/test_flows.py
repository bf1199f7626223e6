"""The flow model: every kind of bad row gets a message naming flow, row and field."""

from __future__ import annotations

import pytest

from lakehouse.flows import (
    FileRef,
    Flow,
    FlowTask,
    ParameterSpec,
    RunContext,
    Template,
    render_arguments,
    validate_flow,
)

TEMPLATES = {
    "load": Template(
        "load",
        "load.py",
        parameters=(
            ParameterSpec("source_uri", "str", default="${file.uri}"),
            ParameterSpec("dataset", "str", required=True),
            ParameterSpec("format", "str", required=True, choices=("csv", "regex")),
            ParameterSpec("keys", "list"),
            ParameterSpec("schema", "json"),
            ParameterSpec("header", "bool", default=True),
            ParameterSpec("max_reject_ratio", "float", default=0.0),
        ),
    )
}


def task(task_id: str = "a", order: int = 0, upstream: tuple[str, ...] | None = None, **parameters: object) -> FlowTask:
    params = {"dataset": "d", "format": "csv"} | parameters
    return FlowTask("f", task_id, "load", params, task_order=order, upstream=upstream)


def flow(*tasks: FlowTask, **fields: object) -> Flow:
    return Flow("f", tuple(tasks), **fields)  # type: ignore[arg-type]


def messages(f: Flow) -> list[str]:
    return [str(p) for p in validate_flow(f, TEMPLATES)]


def test_valid_flow_has_no_problems() -> None:
    assert messages(flow(task("a", 1), task("b", 2))) == []


def test_unknown_template_names_row_and_field() -> None:
    bad = FlowTask("f", "a", "nope", {})
    assert messages(flow(bad)) == ["flow 'f': flow_tasks[a].template_id: unknown template 'nope'"]


def test_missing_required_parameter() -> None:
    t = FlowTask("f", "a", "load", {"format": "csv"})
    assert messages(flow(t)) == ["flow 'f': flow_tasks[a].parameters.dataset: required by template 'load' but missing"]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("format", "xml", "must be one of ['csv', 'regex']"),
        ("header", "yes", "expected bool"),
        ("schema", "x", "expected json"),
        ("max_reject_ratio", True, "expected float"),
        ("typo", 1, "template 'load' has no parameter 'typo'"),
        ("batch_id", "x", "is set by the orchestrator"),
        ("dataset", "${file.nope}", "unknown placeholder ${file.nope}"),
    ],
)
def test_bad_parameter_values_are_named(name: str, value: object, expected: str) -> None:
    (problem,) = validate_flow(flow(task(**{name: value})), TEMPLATES)
    assert problem.field == f"flow_tasks[a].parameters.{name}"
    assert expected in problem.message


def test_cycle_is_reported_with_its_path() -> None:
    problems = messages(flow(task("a", upstream=("b",)), task("b", upstream=("a",))))
    assert any("cycle: a <- b <- a" in p or "cycle: b <- a <- b" in p for p in problems)


def test_unknown_upstream_and_empty_flow() -> None:
    assert "unknown upstream task 'zz'" in messages(flow(task("a", upstream=("zz",))))[0]
    assert messages(flow()) == ["flow 'f': flow_tasks: the flow has no tasks"]


def test_bad_trigger_regex() -> None:
    f = flow(task(), trigger_bucket="b", trigger_key_pattern="(", trigger_pattern_syntax="regex")
    assert "flows.trigger_key_pattern: invalid regex" in messages(f)[0]


def test_upstream_defaults_to_previous_task_by_order_and_explicit_list_wins() -> None:
    a, b, c = task("a", 1), task("b", 2), task("c", 3, upstream=())
    f = Flow.from_row({"flow_id": "f", "tasks": [vars_of(x) for x in (c, a, b)]})
    assert [t.task_id for t in f.tasks] == ["a", "b", "c"]
    assert f.upstream_of(f.tasks[0]) == ()
    assert f.upstream_of(f.tasks[1]) == ("a",)
    assert f.upstream_of(f.tasks[2]) == ()


def vars_of(t: FlowTask) -> dict[str, object]:
    return {
        "flow_id": t.flow_id,
        "task_id": t.task_id,
        "template_id": t.template_id,
        "parameters": dict(t.parameters),
        "task_order": t.task_order,
        "upstream": list(t.upstream) if t.upstream is not None else None,
    }


@pytest.mark.parametrize(
    ("syntax", "pattern", "key", "matches"),
    [
        ("glob", "invoices/*.txt", "invoices/a.txt", True),
        ("glob", "invoices/*.txt", "invoices/2026/a.txt", True),  # fnmatch's * crosses '/'
        ("glob", "invoices/*.txt", "invoices/a.csv", False),
        ("regex", r"invoices/\d{4}/.+\.txt", "invoices/2026/a.txt", True),
        ("regex", r"invoices/\d{4}/.+\.txt", "xinvoices/2026/a.txt", False),  # full match only
    ],
)
def test_trigger_matching(syntax: str, pattern: str, key: str, matches: bool) -> None:
    f = flow(task(), trigger_bucket="landing", trigger_key_pattern=pattern, trigger_pattern_syntax=syntax)
    assert f.matches("landing", key) is matches
    assert f.matches("other-bucket", key) is False


def test_render_arguments_fills_defaults_placeholders_and_encodes_types() -> None:
    t = task(keys=["id", "date"], schema={"a": "int"}, header=False)
    run = RunContext("f", "s3__f__abc:1", file=FileRef("landing", "in/x y.txt", "e1"))
    args = render_arguments(t, TEMPLATES["load"], run)
    assert args == {
        "source_uri": "s3://landing/in/x y.txt",
        "dataset": "d",
        "format": "csv",
        "keys": "id,date",
        "schema": '{"a":"int"}',
        "header": "false",
        "max_reject_ratio": "0.0",
    }
    assert run.batch_id == "s3__f__abc_1"


def test_file_placeholder_without_file_names_the_parameter() -> None:
    with pytest.raises(ValueError, match=r"flow_tasks\[a\]\.parameters\.source_uri.*needs a triggering file"):
        render_arguments(task(), TEMPLATES["load"], RunContext("f", "manual__1"))


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("@daily", None),
        ("15 4 * * 1-5", None),
        ("@dayly", "unknown preset '@dayly'"),
        ("61 * * * *", "invalid cron expression '61 * * * *'"),
        ("0 4 * *", "expected a five-field cron expression or a preset, got '0 4 * *'"),
    ],
)
def test_schedule_is_checked_like_airflow_does(schedule: str, expected: str | None) -> None:
    found = messages(flow(task("a", 1), schedule=schedule))
    if expected is None:
        assert found == []
    else:
        (message,) = found
        assert message.startswith("flow 'f': flows.schedule: " + expected)


def test_bad_trigger_bucket_and_leading_slash_are_named() -> None:
    f = flow(task(), trigger_bucket="Landing_Zone", trigger_key_pattern="/orders/*.csv")
    assert messages(f) == [
        "flow 'f': flows.trigger_key_pattern: S3 keys never start with '/': it would match nothing",
        "flow 'f': flows.trigger_bucket: 'Landing_Zone' is not a valid S3 bucket name "
        "(3-63 characters: lower-case letters, digits, '.', '-')",
    ]


def test_the_files_placeholder_names_a_batch_manifest_or_the_one_file() -> None:
    """``${files.uri}`` (landing_to_raw's default source) works for runs of one file and of many;
    ``${file.uri}`` in a run of many files says which placeholder to use instead."""
    from lakehouse.flows import FileRef, RunContext

    task = FlowTask("f", "t", "tpl", {"source": "${files.uri}"})
    template = Template("tpl", "x.py", parameters=(ParameterSpec("source"),))
    one = RunContext("f", "r1", file=FileRef("landing", "in/a.csv", "e1"))
    many = RunContext("f", "r2", manifest_uri="file:///lake/_manifests/f/r2.json", file_count=3)
    assert render_arguments(task, template, one)["source"] == "s3://landing/in/a.csv"
    assert render_arguments(task, template, many)["source"] == "file:///lake/_manifests/f/r2.json"
    single = FlowTask("f", "t", "tpl", {"source": "${file.uri}"})
    with pytest.raises(ValueError, match=r"is a batch of 3 files: use \$\{files.uri\}"):
        render_arguments(single, template, many)
