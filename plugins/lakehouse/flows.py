"""Flows, tasks and templates as typed values, and the checks that keep a bad row from running.

Everything here is pure: the DAG factory, the CLI and the invoker validate the same way, and the
unit tests need no database. A problem always names the flow, the row and the field, because the
person reading it fixes rows, not Python.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator

from lakehouse.secrets import literal_secret_problems

__all__ = [
    "INVALID_FLOW_TAG",
    "PLACEHOLDER_NAMES",
    "RESERVED_ARGUMENTS",
    "Catalogue",
    "FileRef",
    "Flow",
    "FlowProblem",
    "FlowTask",
    "ParameterSpec",
    "ParameterSpecEntry",
    "ParameterSpecList",
    "RunContext",
    "Template",
    "parameter_spec_problems",
    "render_arguments",
    "validate_catalogue",
    "validate_flow",
]

ParameterType = Literal["str", "int", "float", "bool", "json", "list"]
PARAMETER_TYPES: tuple[str, ...] = get_args(ParameterType)
PLACEHOLDER_NAMES = (
    "files.uri",
    "file.uri",
    "file.bucket",
    "file.key",
    "file.etag",
    "batch_id",
    "flow_id",
    "run_id",
    "logical_date",
)
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
#: The Airflow tag of an invalid flow's placeholder DAG (see lakehouse.dag_factory); the invoker
#: reads it to know whether Airflow has loaded a flow's fixed DAG yet.
INVALID_FLOW_TAG = "invalid"
#: Arguments the orchestrator passes to every job; a flow cannot set them.
RESERVED_ARGUMENTS = ("flow_id", "task_id", "run_id", "batch_id", "batch_time", "lake_uri", "metrics_uri")


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    type: str = "str"
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] | None = None
    description: str = ""
    # rules between parameters, so a combination the job would refuse fails before it starts:
    # {"requires": {"mode": ["cdc"], "op_column": null}} - only with mode cdc and op_column set;
    # {"excludes": ["track_columns"]}; {"item_choices": [...]} - allowed list items / object values
    requires: tuple[tuple[str, tuple[Any, ...] | None], ...] = ()
    excludes: tuple[str, ...] = ()
    item_choices: tuple[Any, ...] | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ParameterSpec:
        """One catalogue entry, checked by :class:`ParameterSpecEntry` (raises ValidationError)."""
        return ParameterSpecEntry.model_validate(row).to_spec()


class ParameterSpecEntry(BaseModel):
    """One entry of a template's ``parameter_spec``: the catalogue's JSON, declared once.

    The same model reads the rows, checks the catalogue in the tests and renders docs/templates.md;
    :class:`ParameterSpec` is the hashable value the flow checks use. Strict, so a typo in the
    catalogue (``"required": "yes"``, an unknown key) fails where it was written, not in a run.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", description="the job's argument: --name")
    type: ParameterType = Field(default="str", description="how the value is checked and passed to the job")
    required: bool = Field(default=False, description="a task must give it")
    default: Any = Field(default=None, description="passed to the job when a task does not give it (placeholders too)")
    choices: list[Any] | None = Field(default=None, description="the only values allowed")
    description: str = Field(default="", description="what it means, for the templates reference")
    requires: dict[str, list[Any] | None] = Field(
        default={}, description="other parameters it needs: name -> allowed values, or null for any given value"
    )
    excludes: list[str] = Field(default=[], description="parameters it cannot be given together with")
    item_choices: list[Any] | None = Field(default=None, description="allowed items of a list, or values of an object")

    @model_validator(mode="after")
    def _default_fits(self) -> ParameterSpecEntry:
        if self.required and self.default is not None:
            raise ValueError("a required parameter's default would never be used")
        if self.default is not None and (why := _check_value(self.to_spec(), self.default)) is not None:
            raise ValueError(f"default {why}")
        return self

    def to_spec(self) -> ParameterSpec:
        return ParameterSpec(
            name=self.name,
            type=self.type,
            required=self.required,
            default=self.default,
            choices=tuple(self.choices) if self.choices is not None else None,
            description=self.description,
            requires=tuple((k, tuple(v) if v is not None else None) for k, v in self.requires.items()),
            excludes=tuple(self.excludes),
            item_choices=tuple(self.item_choices) if self.item_choices is not None else None,
        )


class ParameterSpecList(RootModel[list[ParameterSpecEntry]]):
    """A template's whole ``parameter_spec``: what no single entry shows (a name declared twice,
    a rule naming a parameter the template does not have)."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="after")
    def _names_resolve(self) -> ParameterSpecList:
        names = [entry.name for entry in self.root]
        problems = [f"{name!r} is declared twice" for name in sorted({n for n in names if names.count(n) > 1})]
        for entry in self.root:
            for other in [*entry.requires, *entry.excludes]:
                if other not in names:
                    problems.append(f"{entry.name!r} names an undeclared parameter {other!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def parameter_spec_problems(exc: ValidationError, entries: Any) -> list[str]:
    """One line per problem of a ``parameter_spec``, naming the entry by its name where it has one."""
    lines = []
    for error in exc.errors(include_url=False):
        where = "parameter_spec"
        for part in error["loc"]:
            if isinstance(part, int):
                entry = entries[part] if isinstance(entries, list) and part < len(entries) else None
                name = entry.get("name") if isinstance(entry, Mapping) else None
                where += f"[{name if isinstance(name, str) else part}]"
            else:
                where += f".{part}"
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key (known: {', '.join(ParameterSpecEntry.model_fields)})")
        elif error["type"] == "missing":
            lines.append(f"{where}: required")
        elif error["type"] == "value_error":
            lines.append(f"{where}: {error['ctx']['error']}")
        else:
            lines.append(f"{where}: {error['msg']}, got {error['input']!r}")
    return lines


@dataclass(frozen=True)
class Template:
    template_id: str
    script_location: str
    version: int = 1
    description: str = ""
    parameters: tuple[ParameterSpec, ...] = ()
    #: why the row's parameter_spec is unusable, or None; the flows using it are invalid, the rest
    #: still load (a parse never fails for one bad row)
    problem: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Template:
        entries = row.get("parameter_spec") or []
        try:
            parameters = tuple(e.to_spec() for e in ParameterSpecList.model_validate(entries).root)
            problem = None
        except ValidationError as exc:
            parameters, problem = (), "; ".join(parameter_spec_problems(exc, entries))
        return cls(
            template_id=row["template_id"],
            script_location=row["script_location"],
            version=int(row.get("version") or 1),
            description=row.get("description") or "",
            parameters=parameters,
            problem=problem,
        )

    def spec(self, name: str) -> ParameterSpec | None:
        return next((p for p in self.parameters if p.name == name), None)


@dataclass(frozen=True)
class FlowTask:
    flow_id: str
    task_id: str
    template_id: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    task_order: int = 0
    upstream: tuple[str, ...] | None = None  # None: the previous task by task_order
    retries: int = 0
    retry_delay_seconds: int = 60
    timeout_seconds: int | None = None
    pool: str | None = None  # an Airflow pool; None: Airflow's default_pool
    template_version: int | None = None  # a pinned template version; None: the current one

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> FlowTask:
        upstream = row.get("upstream")
        return cls(
            flow_id=row["flow_id"],
            task_id=row["task_id"],
            template_id=row["template_id"],
            parameters=dict(row.get("parameters") or {}),
            task_order=int(row.get("task_order") or 0),
            upstream=tuple(upstream) if upstream is not None else None,
            retries=int(row.get("retries") or 0),
            retry_delay_seconds=int(row.get("retry_delay_seconds") or 0),
            timeout_seconds=row.get("timeout_seconds"),
            pool=row.get("pool") or None,
            template_version=row.get("template_version"),
        )

    @property
    def template_key(self) -> str:
        """Where the task's template sits in a catalogue's template mapping (see Catalogue)."""
        return self.template_id if self.template_version is None else f"{self.template_id}@{self.template_version}"


@dataclass(frozen=True)
class Flow:
    flow_id: str
    tasks: tuple[FlowTask, ...]
    dag_id: str | None = None
    description: str = ""
    schedule: str | None = None
    trigger_bucket: str | None = None
    trigger_key_pattern: str | None = None
    trigger_pattern_syntax: str = "glob"
    is_active: bool = True
    owner: str = "lakehouse"
    alert_target: str | None = None
    tags: tuple[str, ...] = ()
    max_active_runs: int = 16
    max_files_per_run: int = 1  # above 1: the invoker gathers pending files into one run (a micro-batch)
    batch_window_seconds: int = 0  # how long a batch waits after its first file for more

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Flow:
        tasks = tuple(FlowTask.from_row(t) for t in row.get("tasks") or ())
        return cls(
            flow_id=row["flow_id"],
            tasks=tuple(sorted(tasks, key=lambda t: (t.task_order, t.task_id))),
            dag_id=row.get("dag_id"),
            description=row.get("description") or "",
            schedule=row.get("schedule"),
            trigger_bucket=row.get("trigger_bucket"),
            trigger_key_pattern=row.get("trigger_key_pattern"),
            trigger_pattern_syntax=row.get("trigger_pattern_syntax") or "glob",
            is_active=bool(row.get("is_active", True)),
            owner=row.get("owner") or "lakehouse",
            alert_target=row.get("alert_target"),
            tags=tuple(row.get("tags") or ()),
            max_active_runs=int(row.get("max_active_runs") or 16),
            max_files_per_run=int(row.get("max_files_per_run") or 1),
            batch_window_seconds=int(row.get("batch_window_seconds") or 0),
        )

    @property
    def batched(self) -> bool:
        """Whether its files are gathered into micro-batches rather than run one by one."""
        return self.max_files_per_run > 1

    @property
    def effective_dag_id(self) -> str:
        return self.dag_id or self.flow_id

    def upstream_of(self, task: FlowTask) -> tuple[str, ...]:
        """Explicit upstream list, or else the task before it in ``task_order`` (a line)."""
        if task.upstream is not None:
            return task.upstream
        index = self.tasks.index(task)
        return (self.tasks[index - 1].task_id,) if index > 0 else ()

    def matches(self, bucket: str, key: str) -> bool:
        """Glob patterns use ``fnmatch`` on the whole key (``*`` also crosses ``/``); regex must match fully."""
        if not self.trigger_bucket or not self.trigger_key_pattern or bucket != self.trigger_bucket:
            return False
        if self.trigger_pattern_syntax == "regex":
            return re.fullmatch(self.trigger_key_pattern, key) is not None
        return fnmatch.fnmatchcase(key, self.trigger_key_pattern)


@dataclass(frozen=True)
class Catalogue:
    """All active flows and all templates, as one parse sees them."""

    flows: Mapping[str, Flow]
    templates: Mapping[str, Template]

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Catalogue:
        # current versions by id, and every recorded version as "id@version" for pinned tasks
        templates = {t["template_id"]: Template.from_row(t) for t in document.get("templates") or ()}
        for t in document.get("template_versions") or ():
            templates[f"{t['template_id']}@{t['version']}"] = Template.from_row(t)
        flows = {f["flow_id"]: Flow.from_row(f) for f in document.get("flows") or ()}
        return cls(flows=flows, templates=templates)

    def flows_for_object(self, bucket: str, key: str) -> list[Flow]:
        return [f for f in self.flows.values() if f.is_active and f.matches(bucket, key)]


@dataclass(frozen=True)
class FlowProblem:
    flow_id: str
    field: str  # e.g. "flow_tasks[load_raw].parameters.dataset"
    message: str

    def __str__(self) -> str:
        return f"flow {self.flow_id!r}: {self.field}: {self.message}"


def _check_value(spec: ParameterSpec, value: Any) -> str | None:
    """Why ``value`` does not fit ``spec``, or None. Strings with placeholders are checked at run time."""
    if isinstance(value, str) and _PLACEHOLDER.search(value) and spec.type != "str":
        return None
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "json": isinstance(value, (dict, list)),
        "list": (isinstance(value, list) and all(isinstance(v, str) for v in value))
        or (isinstance(value, str) and value != ""),
    }[spec.type]
    if not ok:
        return f"expected {spec.type}, got {type(value).__name__} {value!r}"
    if spec.choices is not None and value not in spec.choices:
        return f"must be one of {list(spec.choices)}, got {value!r}"
    if spec.item_choices is not None and isinstance(value, (dict, list)):
        items = list(value.values()) if isinstance(value, dict) else value
        wrong = [v for v in items if v not in spec.item_choices]
        if wrong:
            return f"values must be among {list(spec.item_choices)}, got {wrong!r}"
    return None


def _relation_problems(template: Template, parameters: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(parameter, why) for every ``requires`` / ``excludes`` rule of the spec the task breaks."""
    problems: list[tuple[str, str]] = []
    for name in parameters:
        spec = template.spec(name)
        if spec is None:
            continue
        for other in spec.excludes:
            if other in parameters:
                problems.append((name, f"cannot be given together with {other!r}"))
        for other, allowed in spec.requires:
            other_spec = template.spec(other)
            value = parameters.get(other, other_spec.default if other_spec else None)
            if allowed is None and value is None:
                problems.append((name, f"needs {other!r} to be given"))
            elif allowed is not None and value not in allowed:
                problems.append((name, f"needs {other!r} in {list(allowed)}, got {value!r}"))
    return problems


def _placeholder_problems(flow_id: str, where: str, value: Any) -> list[FlowProblem]:
    text = json.dumps(value) if not isinstance(value, str) else value
    return [
        FlowProblem(flow_id, where, f"unknown placeholder ${{{name}}} (known: {', '.join(PLACEHOLDER_NAMES)})")
        for name in _PLACEHOLDER.findall(text)
        if name not in PLACEHOLDER_NAMES
    ]


def _cycle(flow: Flow) -> list[str] | None:
    """A cycle as a list of task ids, or None: depth-first search over upstream edges."""
    graph = {t.task_id: [u for u in flow.upstream_of(t)] for t in flow.tasks}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt in graph and state.get(nxt) is None and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for task_id in graph:
        if state.get(task_id) is None and (found := visit(task_id)):
            return found
    return None


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: Schedules Airflow accepts besides five-field cron expressions.
SCHEDULE_PRESETS = (
    "@once",
    "@continuous",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@quarterly",
    "@yearly",
    "@annually",
)


def schedule_problem(schedule: str) -> str | None:
    """Why Airflow would refuse ``schedule``, or None; checked here so the row is named, not the file."""
    from croniter import croniter  # Airflow's own cron parser

    if schedule in SCHEDULE_PRESETS:
        return None
    if schedule.startswith("@"):
        return f"unknown preset {schedule!r} (known: {', '.join(SCHEDULE_PRESETS)})"
    if len(schedule.split()) != 5:
        return f"expected a five-field cron expression or a preset, got {schedule!r}"
    if not croniter.is_valid(schedule):
        return f"invalid cron expression {schedule!r}"
    return None


def validate_flow(flow: Flow, templates: Mapping[str, Template]) -> list[FlowProblem]:
    """Every problem of one flow, so a user fixes them all in one go."""
    problems: list[FlowProblem] = []
    add = lambda where, msg: problems.append(FlowProblem(flow.flow_id, where, msg))  # noqa: E731
    if not flow.tasks:
        add("flow_tasks", "the flow has no tasks")
    if flow.schedule and (why := schedule_problem(flow.schedule)) is not None:
        add("flows.schedule", why)
    if flow.trigger_key_pattern and flow.trigger_pattern_syntax == "regex":
        try:
            re.compile(flow.trigger_key_pattern)
        except re.error as exc:
            add("flows.trigger_key_pattern", f"invalid regex: {exc}")
    if flow.trigger_key_pattern and flow.trigger_key_pattern.startswith(("/", "^/")):
        add("flows.trigger_key_pattern", "S3 keys never start with '/': it would match nothing")
    if flow.trigger_bucket and not _BUCKET_NAME.fullmatch(flow.trigger_bucket):
        add(
            "flows.trigger_bucket",
            f"{flow.trigger_bucket!r} is not a valid S3 bucket name "
            "(3-63 characters: lower-case letters, digits, '.', '-')",
        )
    task_ids = {t.task_id for t in flow.tasks}
    for task in flow.tasks:
        row = f"flow_tasks[{task.task_id}]"
        for up in task.upstream or ():
            if up not in task_ids:
                add(f"{row}.upstream", f"unknown upstream task {up!r}")
        template = templates.get(task.template_key)
        if template is None:
            if task.template_version is not None and task.template_id in templates:
                add(
                    f"{row}.template_version",
                    f"template {task.template_id!r} has no version "
                    f"{task.template_version} (current: {templates[task.template_id].version})",
                )
            else:
                add(f"{row}.template_id", f"unknown template {task.template_id!r}")
            continue
        if template.problem is not None:
            add(
                f"{row}.template_id",
                f"template {template.template_id!r} has an invalid parameter_spec: {template.problem}",
            )
            continue
        for name, value in task.parameters.items():
            where = f"{row}.parameters.{name}"
            spec = template.spec(name)
            if name in RESERVED_ARGUMENTS:
                add(where, "is set by the orchestrator and cannot be given")
            elif spec is None:
                known = ", ".join(p.name for p in template.parameters)
                add(where, f"template {template.template_id!r} has no parameter {name!r} (known: {known})")
            elif (why := _check_value(spec, value)) is not None:
                add(where, why)
            for path, why in literal_secret_problems({name: value}):
                add(f"{row}.parameters.{path}", why)
            problems.extend(_placeholder_problems(flow.flow_id, where, value))
        for name, why in _relation_problems(template, task.parameters):
            add(f"{row}.parameters.{name}", why)
        for spec in template.parameters:
            if spec.required and spec.name not in task.parameters:
                add(f"{row}.parameters.{spec.name}", f"required by template {template.template_id!r} but missing")
    if (cycle := _cycle(flow)) is not None:
        add("flow_tasks.upstream", "cycle: " + " <- ".join(cycle))
    return problems


def validate_catalogue(catalogue: Catalogue) -> dict[str, list[FlowProblem]]:
    """The problems of every flow of the catalogue by flow_id (an empty list: valid), including
    what no single flow shows: two flows whose DAG would have the same id."""
    problems = {flow_id: validate_flow(flow, catalogue.templates) for flow_id, flow in catalogue.flows.items()}
    by_dag: dict[str, list[str]] = {}
    for flow in catalogue.flows.values():
        by_dag.setdefault(flow.effective_dag_id, []).append(flow.flow_id)
    for dag_id, flow_ids in by_dag.items():
        if len(flow_ids) > 1:
            for flow_id in flow_ids:
                problems[flow_id].append(
                    FlowProblem(
                        flow_id,
                        "flows.dag_id",
                        f"DAG id {dag_id!r} is also the DAG of flow(s) "
                        f"{', '.join(repr(f) for f in flow_ids if f != flow_id)}: give each flow its own dag_id",
                    )
                )
    return problems


@dataclass(frozen=True)
class FileRef:
    """The landing object that started a run."""

    bucket: str
    key: str
    etag: str = ""
    size: int | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class RunContext:
    flow_id: str
    run_id: str
    logical_date: str = ""
    file: FileRef | None = None  # the file that started the run (a micro-batch of one file too)
    batch_time: str = ""  # when the run was created: the same on every re-run of it
    manifest_uri: str | None = None  # a micro-batch's list of files (the invoker writes it in the lake)
    file_count: int = 0

    @property
    def batch_id(self) -> str:
        """The run id made safe for paths and table values; a cleared task reuses it (idempotence)."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.run_id)

    def placeholder(self, name: str, where: str) -> str:
        if name == "files.uri":  # the run's files: a micro-batch's manifest, or the one file's URI
            if self.manifest_uri:
                return self.manifest_uri
            name = "file.uri"
        if name.startswith("file."):
            if self.file is None and self.manifest_uri:
                raise ValueError(
                    f"{where}: ${{{name}}} names one file, but run {self.run_id!r} is a batch of "
                    f"{self.file_count} files: use ${{files.uri}} (their manifest)"
                )
            if self.file is None:
                raise ValueError(f"{where}: ${{{name}}} needs a triggering file, but run {self.run_id!r} has none")
            return {
                "file.uri": self.file.uri,
                "file.bucket": self.file.bucket,
                "file.key": self.file.key,
                "file.etag": self.file.etag,
            }[name]
        return {
            "batch_id": self.batch_id,
            "flow_id": self.flow_id,
            "run_id": self.run_id,
            "logical_date": self.logical_date,
        }[name]


def _as_argument(spec_type: str, value: Any) -> str:
    """Glue passes every argument as a string; this is the one encoding both runners use."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if spec_type == "list" and isinstance(value, list):
        return ",".join(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def render_arguments(task: FlowTask, template: Template, context: RunContext) -> dict[str, str]:
    """Defaults filled in, placeholders substituted, everything a string: the job's arguments."""
    arguments: dict[str, str] = {}
    values: dict[str, Any] = {p.name: p.default for p in template.parameters if p.default is not None}
    values.update(task.parameters)
    for name, value in values.items():
        spec = template.spec(name) or ParameterSpec(name)
        where = f"flow {task.flow_id!r}: flow_tasks[{task.task_id}].parameters.{name}"
        text = _as_argument(spec.type, value)
        arguments[name] = _PLACEHOLDER.sub(lambda m: context.placeholder(m.group(1), where), text)  # noqa: B023 - called within this iteration
    return arguments
