"""One Airflow DAG per active flow, built from the metadata catalogue.

Two rules from the field: one bad flow must not hide every other DAG (the most-reported failure
of config-driven DAG generators), and parsing must cost one query however many flows there are.
The DAG file therefore never raises: Airflow 3 marks *every* DAG of a file stale when the file
records an import error. An invalid flow gets a DAG of its own instead, under its own name,
tagged ``invalid``, whose doc panel names each bad row and field and whose only task fails with
them; the invoker holds that flow's files until the rows are fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, get_parsing_context

from lakehouse.config import Settings, load_settings
from lakehouse.flows import INVALID_FLOW_TAG, Catalogue, Flow, FlowProblem, Template, validate_catalogue
from lakehouse.metadata.catalogue import load_catalogue
from lakehouse.operators.invalid_flow import InvalidFlowOperator
from lakehouse.operators.template_task import TemplateTaskOperator

__all__ = ["INVALID_TAG", "airflow_dag_defaults", "build_dag", "build_dags", "build_invalid_flow_dag"]

log = logging.getLogger(__name__)

INVALID_TAG = INVALID_FLOW_TAG
_START = datetime(2024, 1, 1, tzinfo=UTC)


def _doc(flow: Flow) -> str:
    trigger = (
        f"`s3://{flow.trigger_bucket}/{flow.trigger_key_pattern}` ({flow.trigger_pattern_syntax})"
        if flow.trigger_bucket
        else "none"
    )
    rows = "\n".join(
        f"| {t.task_order} | `{t.task_id}` | `{t.template_id}` | {', '.join(flow.upstream_of(t)) or '-'} |"
        for t in flow.tasks
    )
    return (
        f"### Flow `{flow.flow_id}`\n\n{flow.description}\n\n"
        f"* schedule: `{flow.schedule or 'none'}`\n* file trigger: {trigger}\n"
        f"* owner: {flow.owner}; alerts: {flow.alert_target or 'notifications table'}\n\n"
        "Generated from `lakehouse.flows` / `lakehouse.flow_tasks`; edit the rows, not this DAG.\n\n"
        f"| order | task | template | upstream |\n|---|---|---|---|\n{rows}\n"
    )


def airflow_dag_defaults() -> dict[str, Any]:
    """Airflow's per-DAG defaults, read once per parse.

    Left unset, every DAG reads them from Airflow's configuration itself: three config lookups per
    DAG, about a sixth of the parse time at 1,000 flows. Reading them once keeps the same values.
    """
    from airflow.sdk.configuration import conf

    return {
        "max_active_tasks": conf.getint("core", "max_active_tasks_per_dag"),
        "max_consecutive_failed_dag_runs": conf.getint("core", "max_consecutive_failed_dag_runs_per_dag"),
        "disable_bundle_versioning": conf.getboolean("dag_processor", "disable_bundle_versioning"),
    }


def build_dag(
    flow: Flow, templates: dict[str, Template] | Catalogue, dag_defaults: Mapping[str, Any] | None = None
) -> DAG:
    """The DAG of one valid flow (call :func:`validate_flow` first)."""
    if isinstance(templates, Catalogue):
        templates = dict(templates.templates)
    dag = DAG(
        **(dag_defaults or {}),
        dag_id=flow.effective_dag_id,
        description=(flow.description or f"lakehouse flow {flow.flow_id}")[:200],
        schedule=flow.schedule or None,
        start_date=_START,
        catchup=False,
        max_active_runs=flow.max_active_runs,
        tags=sorted({"lakehouse", *flow.tags}),
        default_args={"owner": flow.owner},
        doc_md=_doc(flow),
        is_paused_upon_creation=False,
    )
    with dag:
        operators = {
            task.task_id: TemplateTaskOperator(
                flow_task=task,
                template=templates[task.template_key],
                alert_target=flow.alert_target,
                retries=task.retries,
                retry_delay=timedelta(seconds=task.retry_delay_seconds),
                execution_timeout=timedelta(seconds=task.timeout_seconds) if task.timeout_seconds else None,
                **({"pool": task.pool} if task.pool else {}),
            )
            for task in flow.tasks
        }
        for task in flow.tasks:
            for upstream in flow.upstream_of(task):
                operators[upstream] >> operators[task.task_id]
    return dag


def build_invalid_flow_dag(
    flow: Flow, problems: Sequence[FlowProblem], dag_defaults: Mapping[str, Any] | None = None
) -> DAG:
    """The placeholder DAG of an invalid flow: its own name, tag ``invalid``, the problems in its
    doc panel, no schedule, and one task that fails with them instead of running a template."""
    lines = [str(p) for p in problems]
    escaped = [(p.field, p.message.replace("|", "\\|")) for p in problems]  # a table cell ends at "|"
    rows = "\n".join(f"| `{where}` | {message} |" for where, message in escaped)
    doc = (
        f"### Flow `{flow.flow_id}` is invalid: its DAG is not loaded\n\n"
        f"{len(problems)} problem(s) in `lakehouse.flows` / `lakehouse.flow_tasks`:\n\n"
        f"| row and field | problem |\n|---|---|\n{rows}\n\n"
        f"Fix the rows (`lakehouse flow validate {flow.flow_id}` checks them as this parse did). Files that "
        "arrive meanwhile wait in `lakehouse.file_ledger` with status `flow_invalid` and start once the "
        "fixed DAG is loaded. Every other flow is unaffected.\n"
    )
    dag = DAG(
        **(dag_defaults or {}),
        dag_id=flow.effective_dag_id,
        description=f"INVALID flow ({len(problems)} problem(s)): {lines[0]}"[:200],
        schedule=None,
        start_date=_START,
        catchup=False,
        max_active_runs=1,
        tags=sorted({"lakehouse", INVALID_TAG}),
        default_args={"owner": flow.owner or "lakehouse"},
        doc_md=doc,
        is_paused_upon_creation=False,
    )
    with dag:
        InvalidFlowOperator(task_id="invalid_flow", flow_id=flow.flow_id, problems=lines)
    return dag


def _flow_dag(
    flow: Flow, problems: list[FlowProblem], templates: dict[str, Template], dag_defaults: Mapping[str, Any]
) -> DAG:
    """The flow's DAG, or its placeholder: whatever a row holds, this never raises for one flow."""
    if not problems:
        try:
            dag = build_dag(flow, templates, dag_defaults)
            dag.validate()  # what the dag-processor checks next; failing there would be a file error
            return dag
        except Exception as exc:  # a value the validator let through but Airflow refuses
            problems = [FlowProblem(flow.flow_id, "flows", f"Airflow refused the DAG: {type(exc).__name__}: {exc}")]
    log.error(
        "invalid flow, placeholder DAG %r loaded instead: %s", flow.effective_dag_id, "; ".join(map(str, problems))
    )
    return build_invalid_flow_dag(flow, problems, dag_defaults)


def build_dags(catalogue: Catalogue | None = None, settings: Settings | None = None) -> dict[str, DAG]:
    """Every active flow as a DAG, keyed by dag_id; an invalid flow as its placeholder DAG.
    A task run builds only its own DAG."""
    settings = settings or load_settings()
    only = get_parsing_context().dag_id
    if catalogue is None:
        catalogue = load_catalogue(
            settings.metadata_dsn, snapshot_path=settings.run_dir / "catalogue.json", dag_id=only
        )
    active = {
        f.flow_id: f for f in catalogue.flows.values() if f.is_active and (only is None or f.effective_dag_id == only)
    }
    problems = validate_catalogue(Catalogue(active, catalogue.templates))
    dags: dict[str, DAG] = {}
    dag_defaults = airflow_dag_defaults()
    templates = dict(catalogue.templates)
    by_dag: dict[str, list[Flow]] = {}
    for flow in active.values():
        by_dag.setdefault(flow.effective_dag_id, []).append(flow)
    for dag_id, flows in by_dag.items():
        if len(flows) == 1:
            dags[dag_id] = _flow_dag(flows[0], problems[flows[0].flow_id], templates, dag_defaults)
        else:  # flows sharing a DAG id: one placeholder names them all
            shared = [p for f in flows for p in problems[f.flow_id]]
            dags[dag_id] = build_invalid_flow_dag(flows[0], shared, dag_defaults)
    return dags
