"""The flow document (``lakehouse flow apply`` / ``export`` / ``schema``) as one pydantic model.

The model is the document's only declaration: it checks a document's structure, maps it to and
from the ``flows`` / ``flow_tasks`` rows, and exports the JSON Schema editors and CI validate
against (``lakehouse flow schema > flow.schema.json``; in an editor, a first line
``# yaml-language-server: $schema=flow.schema.json``). Whether the parameters fit their templates
is the flow checks' job (:func:`lakehouse.flows.validate_flow`): they need the stored templates.

Problems are one line each and name the field the way a user reads the file
(``tasks[to_stage].retries: expected an integer, got str '3'``), never pydantic's location tuples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator

__all__ = [
    "FlowDocument",
    "FlowDocumentError",
    "TaskDocument",
    "TriggerDocument",
    "flow_document_json_schema",
    "parse_flow_document",
]

#: the tables' CHECKs on flow_id, task_id and template_id (V001), so a bad name is named here
_NAME = r"^[a-z][a-z0-9_]{0,62}$"
_DAG_ID = r"^[A-Za-z0-9_.-]{1,200}$"
_PATTERN_TEXT = {
    _NAME: "a name of lower-case letters, digits and _ starting with a letter (like 'orders_daily')",
    _DAG_ID: "letters, digits, '_', '.' and '-' (at most 200)",
}


class FlowDocumentError(ValueError):
    """A flow document that cannot be applied; ``problems`` names every field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


def _null_means_default(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """``key: null`` means "the default" (as an omitted key): say so in the JSON Schema too, so an
    editor accepts exactly what ``apply`` accepts."""
    for name, info in model.model_fields.items():
        if info.is_required() or info.default is None:
            continue
        prop = schema["properties"][name]
        kept = {k: prop.pop(k) for k in ("title", "description", "default") if k in prop}
        schema["properties"][name] = {"anyOf": [prop, {"type": "null"}], **kept}


class _Part(BaseModel):
    """Strict (YAML's ``true`` is no integer, ``'3'`` no number), closed (a typo is an unknown key)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_null_means_default)

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls_with_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        fields = cls.model_fields
        return {
            k: v
            for k, v in data.items()
            if v is not None or k not in fields or fields[k].is_required() or fields[k].default is None
        }


def _trigger_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    _null_means_default(schema, model)
    schema["dependentRequired"] = {"bucket": ["key_pattern"], "key_pattern": ["bucket"]}


class TriggerDocument(_Part):
    """The landing objects that start a run of the flow."""

    model_config = ConfigDict(json_schema_extra=_trigger_schema)

    bucket: str | None = Field(default=None, description="the landing bucket the flow listens to")
    key_pattern: str | None = Field(default=None, description="object keys that start a run, e.g. 'orders/*.csv'")
    syntax: Literal["glob", "regex"] = Field(
        default="glob", description="glob: fnmatch on the whole key ('*' crosses '/'); regex: must match the whole key"
    )
    multi_match: bool = Field(
        default=True, description="false: skip this flow when an object also matches another flow's trigger"
    )

    @model_validator(mode="after")
    def _bucket_and_pattern(self) -> TriggerDocument:
        if bool(self.bucket) != bool(self.key_pattern):
            raise ValueError("bucket and key_pattern go together")
        return self


class TaskDocument(_Part):
    """One task: a template run with parameters, after its upstream tasks."""

    task_id: str = Field(pattern=_NAME, description="the task's name, unique in the flow")
    template: str = Field(pattern=_NAME, description="the template it runs (docs/templates.md)")
    template_version: int | None = Field(
        default=None, ge=1, description="a pinned template version; null: always the template's current version"
    )
    upstream: list[str] | None = Field(
        default=None, description="the task ids it waits for; null: the previous task in the list, []: none"
    )
    retries: int = Field(default=0, ge=0, description="tries after the first fails")
    retry_delay_seconds: int = Field(default=60, ge=0, description="wait between tries")
    timeout_seconds: int | None = Field(default=None, gt=0, description="a try running longer fails; null: no limit")
    pool: str | None = Field(
        default=None, description="an Airflow pool limiting such tasks across flows; null: default_pool"
    )
    parameters: dict[str, JsonValue] = Field(
        default={}, description="the template's parameters, may use placeholders like ${file.uri} (docs/templates.md)"
    )


class FlowDocument(_Part):
    """A flow: its tasks, what starts it and how Airflow runs it; one ``flows`` row and its
    ``flow_tasks`` rows."""

    model_config = ConfigDict(title="Lakehouse flow document")

    flow_id: str = Field(pattern=_NAME, description="the flow's name, unique")
    dag_id: str | None = Field(default=None, pattern=_DAG_ID, description="the Airflow DAG id; null: the flow_id")
    description: str = Field(default="", description="shown in Airflow")
    schedule: str | None = Field(
        default=None, description="a five-field cron expression or a preset (@daily, ...); null: file-triggered only"
    )
    trigger: TriggerDocument | None = Field(
        default=None, description="the landing objects that start a run; null: none"
    )
    owner: str = Field(default="lakehouse", description="the DAG's owner in Airflow")
    alert_target: str | None = Field(
        default=None, description="where failures are reported: an e-mail, an https:// webhook or an SNS topic ARN"
    )
    tags: list[str] = Field(default=[], description="the DAG's tags in Airflow")
    max_active_runs: int = Field(default=16, ge=1, description="runs of the flow at the same time")
    max_files_per_run: int = Field(
        default=1, ge=1, le=100000, description="above 1: pending files are gathered into one run (a micro-batch)"
    )
    batch_window_seconds: int = Field(
        default=0, ge=0, le=86400, description="with batching: how long a batch waits after its first file for more"
    )
    active: bool = Field(default=True, description="false: paused (no DAG, files wait)")
    tasks: list[TaskDocument] = Field(min_length=1, description="the tasks, in order")

    @field_validator("tasks")
    @classmethod
    def _task_ids_unique(cls, tasks: list[TaskDocument]) -> list[TaskDocument]:
        ids = [t.task_id for t in tasks]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"task_id {', '.join(map(repr, twice))} given to more than one task")
        return tasks

    # -- rows ----------------------------------------------------------------------------------------
    def flow_row(self) -> dict[str, Any]:
        """The ``lakehouse.flows`` row; its keys are the columns written."""
        trigger = self.trigger or TriggerDocument.model_validate({})
        return {
            "flow_id": self.flow_id,
            "dag_id": self.dag_id,
            "description": self.description,
            "schedule": self.schedule,
            "trigger_bucket": trigger.bucket or None,
            "trigger_key_pattern": trigger.key_pattern or None,
            "trigger_pattern_syntax": trigger.syntax,
            "trigger_multi_match": trigger.multi_match,
            "owner": self.owner,
            "alert_target": self.alert_target,
            "tags": list(self.tags),
            "max_active_runs": self.max_active_runs,
            "max_files_per_run": self.max_files_per_run,
            "batch_window_seconds": self.batch_window_seconds,
            "is_active": self.active,
        }

    def task_rows(self) -> list[dict[str, Any]]:
        """The ``lakehouse.flow_tasks`` rows, ``task_order`` from the list's order."""
        return [
            {
                "flow_id": self.flow_id,
                "task_id": t.task_id,
                "task_order": order,
                "template_id": t.template,
                "template_version": t.template_version,
                "upstream": t.upstream,
                "parameters": dict(t.parameters),
                "retries": t.retries,
                "retry_delay_seconds": t.retry_delay_seconds,
                "timeout_seconds": t.timeout_seconds,
                "pool": t.pool,
            }
            for order, t in enumerate(self.tasks, start=1)
        ]

    @classmethod
    def from_rows(cls, flow: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> FlowDocument:
        """The document of stored rows (``export``); a dag_id equal to the flow_id stays implicit.
        Rows the document cannot express (a flow without tasks) raise FlowDocumentError."""
        trigger = None
        if flow.get("trigger_bucket"):
            trigger = {
                "bucket": flow["trigger_bucket"],
                "key_pattern": flow["trigger_key_pattern"],
                "syntax": flow.get("trigger_pattern_syntax") or "glob",
                "multi_match": flow.get("trigger_multi_match", True),
            }
        return parse_flow_document(
            {
                "flow_id": flow["flow_id"],
                "dag_id": flow.get("dag_id") if flow.get("dag_id") != flow["flow_id"] else None,
                "description": flow.get("description"),
                "schedule": flow.get("schedule"),
                "trigger": trigger,
                "owner": flow.get("owner"),
                "alert_target": flow.get("alert_target"),
                "tags": list(flow.get("tags") or []),
                "max_active_runs": flow.get("max_active_runs"),
                "max_files_per_run": flow.get("max_files_per_run"),
                "batch_window_seconds": flow.get("batch_window_seconds"),
                "active": flow.get("is_active"),
                "tasks": [
                    {
                        "task_id": t["task_id"],
                        "template": t["template_id"],
                        "template_version": t.get("template_version"),
                        "upstream": list(t["upstream"]) if t.get("upstream") is not None else None,
                        "retries": t.get("retries"),
                        "retry_delay_seconds": t.get("retry_delay_seconds"),
                        "timeout_seconds": t.get("timeout_seconds"),
                        "pool": t.get("pool"),
                        "parameters": t.get("parameters"),
                    }
                    for t in tasks
                ],
            },
            f"lakehouse.flows[{flow['flow_id']}]",
        )

    def to_document(self) -> dict[str, Any]:
        """The YAML-ready document: keys at their default left out, except the few a reader looks
        for first (schedule, owner, tags, active), so an exported file is short but not cryptic."""
        out = self.model_dump(mode="json", exclude_defaults=True)
        shown: dict[str, Any] = {
            "description": self.description,
            "schedule": self.schedule,
            "owner": self.owner,
            "alert_target": self.alert_target,
            "tags": list(self.tags),
            "max_active_runs": self.max_active_runs,
            "active": self.active,
        }
        tasks: list[dict[str, Any]] = out["tasks"]
        for task, dumped in zip(self.tasks, tasks, strict=True):
            dumped["parameters"] = dict(task.parameters)  # always shown, {} too
        return {
            name: out[name] if name in out else shown[name]
            for name in type(self).model_fields
            if name in out or name in shown
        }


def flow_document_json_schema() -> dict[str, Any]:
    """The flow document's JSON Schema (draft 2020-12), for editors (yaml-language-server) and CI."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **FlowDocument.model_json_schema()}


# -- pydantic's errors as the project's one-line problems ----------------------------------------------
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "string_too_short": "a non-empty string",
    "too_short": "a non-empty list",
    "invalid-json-value": "a JSON value (string, number, true/false, null, list or mapping)",
}


def _model_at(loc: Sequence[int | str]) -> type[BaseModel]:
    """The document model at a location (``("tasks", 0)`` -> TaskDocument), for its known keys."""
    model: type[BaseModel] = FlowDocument
    for part in loc:
        if isinstance(part, str) and part in model.model_fields:
            todo: list[Any] = [model.model_fields[part].annotation]
            while todo:
                annotation = todo.pop()
                if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                    model = annotation
                    break
                todo.extend(get_args(annotation))
    return model


def _where(loc: Sequence[int | str], document: Any) -> str:
    """``("tasks", 1, "retries")`` -> ``tasks[to_stage].retries``: a task by its id where it has one.
    Inside ``parameters`` the parameter is named, not pydantic's path through the JSON value."""
    text, node = "", document
    if len(loc) > 4 and loc[0] == "tasks" and loc[2] == "parameters":
        loc = loc[:4]
    for part in loc:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and part < len(node) else None
            task_id = item.get("task_id") if isinstance(item, Mapping) and text == "tasks" else None
            text += f"[{task_id if isinstance(task_id, str) and task_id else part}]"
            node = item
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, Mapping) else None
    return text


def _expected(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        return _PATTERN_TEXT.get(ctx.get("pattern", ""), f"a string matching {ctx.get('pattern')}")
    if kind == "literal_error":
        return str(ctx["expected"])
    if kind in ("greater_than_equal", "greater_than", "less_than_equal"):
        bound = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤"}[kind]
        return f"an integer {bound} {next(iter(ctx.values()))}"
    return _EXPECTED.get(kind, str(error["msg"]).removeprefix("Input should be ").lower())


def _problems(exc: ValidationError, document: Any) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        loc, kind, value = error["loc"], error["type"], error.get("input")
        where = _where(loc, document)
        if kind == "extra_forbidden":
            known = ", ".join(sorted(_model_at(loc[:-1]).model_fields))
            problems.append(f"{where}: unknown key (known: {known})")
        elif kind == "missing":
            info = _model_at(loc[:-1]).model_fields.get(str(loc[-1]))
            problems.append(f"{where}: required" + (f" ({info.description})" if info and info.description else ""))
        elif kind == "value_error":
            problems.append(f"{where}: {error['ctx']['error']}" if where else str(error["ctx"]["error"]))
        else:
            problems.append(f"{where}: expected {_expected(error)}, got {type(value).__name__} {value!r}")
    return problems


def parse_flow_document(document: Any, source: str = "<document>") -> FlowDocument:
    """The typed document, or :class:`FlowDocumentError` with every structural problem at once."""
    if not isinstance(document, Mapping):
        raise FlowDocumentError(source, [f"expected a mapping at the top, got {type(document).__name__}"])
    try:
        return FlowDocument.model_validate(document)
    except ValidationError as exc:
        raise FlowDocumentError(source, _problems(exc, document)) from None
