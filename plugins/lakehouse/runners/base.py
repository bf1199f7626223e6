"""The runner interface: launch one template job with Glue-style arguments and wait for it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lakehouse.config import Settings

__all__ = [
    "SUMMARY_MAX_CHARS",
    "DeferrableRunner",
    "JobFailedError",
    "JobRequest",
    "JobResult",
    "JobRunner",
    "JobTimedOutError",
    "RunHandle",
    "get_runner",
    "job_arguments",
    "one_line",
]

#: The longest one-line failure reason (the job side cuts its ``error_summary`` at the same length).
SUMMARY_MAX_CHARS = 500


@dataclass(frozen=True)
class JobRequest:
    flow_id: str
    task_id: str
    template_id: str
    script_location: str  # as in the template row: relative to LAKEHOUSE_TEMPLATES_URI, or absolute
    run_id: str
    batch_id: str
    arguments: dict[str, str] = field(default_factory=dict)  # the task's rendered parameters
    batch_time: str = ""  # ISO time of the batch, stable across re-runs (lineage and default sequence)
    timeout_seconds: int | None = None
    #: resolved task secrets by id (local runs only; Glue jobs read Secrets Manager themselves);
    #: passed to the job through its environment, never its arguments, and never printed
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class JobResult:
    metrics: dict[str, Any]
    external_run_id: str | None = None


def one_line(text: str, limit: int = SUMMARY_MAX_CHARS) -> str:
    """``text`` on one line (its non-empty lines joined with "; "), cut to ``limit`` with "…"."""
    joined = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= limit else joined[: limit - 1].rstrip() + "…"


class JobFailedError(RuntimeError):
    """The job ran and failed. ``str()`` is the job's own reason on one line (what the audit row's
    ``error_summary`` and the alert lead with); ``metrics`` are the counts the job wrote before it
    failed; ``details`` is the end of its output, for the audit's ``error``."""

    def __init__(
        self,
        summary: str,
        external_run_id: str | None = None,
        *,
        metrics: dict[str, Any] | None = None,
        details: str = "",
    ) -> None:
        super().__init__(one_line(summary))
        self.external_run_id = external_run_id
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.details = details

    @classmethod
    def from_metrics(
        cls, metrics: dict[str, Any] | None, fallback: str, external_run_id: str | None = None, details: str = ""
    ) -> JobFailedError:
        """The failure as the job reported it in its metrics file (``error_summary``, else
        ``error``), or ``fallback`` when it wrote none (it crashed or was killed first)."""
        metrics = metrics or {}
        summary = str(metrics.get("error_summary") or metrics.get("error") or fallback)
        return cls(summary, external_run_id, metrics=metrics, details=details)


class JobTimedOutError(JobFailedError, TimeoutError):
    """The job's own platform ended it at its timeout (Glue's TIMEOUT): the try is recorded as
    ``timeout``, as when Airflow's execution_timeout ends it, with the counts the job reached."""


class JobRunner(Protocol):
    name: str

    def run(self, request: JobRequest) -> JobResult: ...


#: A started job as JSON values: what its wait (on the worker, or in Airflow's triggerer) and
#: ``finish`` need. A plain dict, because it travels in a deferred task's kwargs.
RunHandle = dict[str, Any]


@runtime_checkable
class DeferrableRunner(JobRunner, Protocol):
    """A runner whose job runs elsewhere (Glue): the task starts it, then waits itself or hands
    the wait to Airflow's triggerer, and whichever process resumes the task finishes it."""

    def start(self, request: JobRequest) -> RunHandle: ...

    def wait(self, handle: RunHandle) -> None: ...

    def trigger(self, handle: RunHandle) -> Any: ...  # an Airflow trigger, or None: wait on the worker

    def finish(self, handle: RunHandle) -> JobResult: ...

    def stop(self, handle: RunHandle) -> None: ...


def job_arguments(request: JobRequest, lake_uri: str, metrics_uri: str) -> dict[str, str]:
    """The full ``--name value`` set: orchestrator arguments first, then the task's parameters."""
    arguments = {
        "flow_id": request.flow_id,
        "task_id": request.task_id,
        "run_id": request.run_id,
        "batch_id": request.batch_id,
        "lake_uri": lake_uri,
        "metrics_uri": metrics_uri,
    }
    if request.batch_time:
        arguments["batch_time"] = request.batch_time
    clash = set(arguments) & set(request.arguments)
    if clash:
        raise ValueError(f"task parameters may not set orchestrator arguments: {sorted(clash)}")
    arguments.update(request.arguments)
    return arguments


def parse_metrics(text: str, where: str) -> dict[str, Any]:
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobFailedError(f"job metrics at {where} are not JSON: {exc}") from exc
    if not isinstance(metrics, dict):
        raise JobFailedError(f"job metrics at {where} are not a JSON object")
    return metrics


def get_runner(settings: Settings) -> JobRunner:
    if settings.runner == "glue":
        from lakehouse.runners.glue import GlueRunner

        return GlueRunner.from_settings(settings)
    from lakehouse.runners.local_spark import LocalSparkRunner

    return LocalSparkRunner(settings)
