"""The one operator every generated task uses: render the task's parameters for this run, launch
the template through the configured runner, and keep the audit row and the alert honest.

A runner whose job runs elsewhere (Glue) is started here and its wait handed to Airflow's
triggerer, so no worker slot sits polling; the task resumes in ``execute_complete``, which closes
the same audit row the same way. The local runner stays synchronous: it streams the job's output
into the task log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import (
    AirflowTaskTerminated,
    AirflowTaskTimeout,
    TaskDeferralError,
    TaskDeferralTimeout,
    TaskDeferred,
)

from lakehouse.config import Settings, load_settings
from lakehouse.flows import FileRef, FlowTask, RunContext, Template, render_arguments
from lakehouse.hooks.airflow_connections import resolve_connection_secret
from lakehouse.metadata.audit import close_unfinished_task_run, finish_task_run, start_task_run
from lakehouse.notifications import TaskFailure, notify_failure
from lakehouse.runners import JobFailedError, JobRequest, JobResult, get_runner
from lakehouse.runners.base import DeferrableRunner, RunHandle, one_line
from lakehouse.secrets import SECRET_PARAMETER, redact, secret_values

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

__all__ = ["TemplateTaskOperator", "on_task_failure", "run_context_from_airflow"]


def run_context_from_airflow(flow_id: str, context: Any) -> RunContext:
    """The run as the templates see it: the triggering file (if any) comes from the run's conf."""
    dag_run = context["dag_run"]
    conf = dag_run.conf or {}
    file_conf = conf.get("file")
    file = None
    if isinstance(file_conf, dict) and file_conf.get("bucket") and file_conf.get("key"):
        file = FileRef(
            bucket=str(file_conf["bucket"]),
            key=str(file_conf["key"]),
            etag=str(file_conf.get("etag") or ""),
            size=file_conf.get("size"),
        )
    batch_conf = conf.get("batch")
    batch = batch_conf if isinstance(batch_conf, dict) else {}
    logical_date = context.get("logical_date")
    batch_time = getattr(dag_run, "run_after", None) or logical_date
    return RunContext(
        flow_id=flow_id,
        run_id=dag_run.run_id,
        logical_date=logical_date.isoformat() if logical_date else "",
        file=file,
        batch_time=batch_time.isoformat() if batch_time else "",
        manifest_uri=str(batch["manifest"]) if batch.get("manifest") else None,
        file_count=int(batch.get("files") or (1 if file else 0)),
    )


def _log_url(dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
    base = load_settings().airflow_url
    return f"{base}/dags/{quote(dag_id)}/runs/{quote(run_id)}/tasks/{quote(task_id)}?try_number={try_number}"


def failure_texts(exc: BaseException | None, timeout_seconds: int | None = None) -> tuple[str, str]:
    """(one-line reason, full text) of a try's failure. A job's failure is its own reason, without
    the wrapper's type name; the full text adds the end of its output."""
    if exc is None:
        return "task failed (no exception recorded)", "task failed (no exception recorded)"
    if isinstance(exc, (AirflowTaskTimeout, TimeoutError)):
        text = f"timed out after {timeout_seconds}s (flow_tasks.timeout_seconds)" + (f": {exc}" if str(exc) else "")
        return one_line(text), text
    if isinstance(exc, JobFailedError):
        return str(exc), f"{exc}\n{exc.details}".strip()
    text = f"{type(exc).__name__}: {exc}"
    return one_line(text), text


def on_task_failure(context: Any) -> None:
    """Called by Airflow once a task has failed for good (not on a retry that follows)."""
    ti = context["ti"]
    task = context["task"]
    flow_id = getattr(task, "flow_id", ti.dag_id)
    run = run_context_from_airflow(flow_id, context)
    secrets = getattr(task, "secret_values", ())
    summary, details = failure_texts(
        context.get("exception"), getattr(getattr(task, "flow_task", None), "timeout_seconds", None)
    )
    summary, details = redact(summary, secrets) or summary, redact(details, secrets) or details
    settings = load_settings()
    # A try that died without closing its own row (SIGKILL, lost heartbeat) is closed here: the
    # scheduler runs this callback for such tries too.
    close_unfinished_task_run(
        settings.metadata_dsn,
        dag_id=ti.dag_id,
        dag_run_id=run.run_id,
        task_id=ti.task_id,
        try_number=ti.try_number,
        error=details,
        error_summary=summary,
    )
    notify_failure(
        settings,
        TaskFailure(
            flow_id=flow_id,
            task_id=ti.task_id,
            dag_id=ti.dag_id,
            dag_run_id=run.run_id,
            error=summary,
            details=details,
            file_uri=run.file.uri if run.file else None,
            log_url=_log_url(ti.dag_id, run.run_id, ti.task_id, ti.try_number),
            alert_target=getattr(task, "alert_target", None),
        ),
    )


class TemplateTaskOperator(BaseOperator):
    """Runs one ``lakehouse.flow_tasks`` row. The row and its template are resolved at parse time."""

    ui_color = "#d8ecf3"

    def __init__(
        self,
        *,
        flow_task: FlowTask,
        template: Template,
        alert_target: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("on_failure_callback", on_task_failure)
        super().__init__(task_id=flow_task.task_id, **kwargs)
        self.flow_task = flow_task
        self.template = template
        self.flow_id = flow_task.flow_id
        self.template_id = template.template_id
        self.alert_target = alert_target
        #: values to scrub from audit and alert texts (filled when the task resolves its secret)
        self.secret_values: list[str] = []
        #: the job in flight on a deferrable runner, for on_kill to stop
        self._runner: DeferrableRunner | None = None
        self._handle: RunHandle | None = None
        #: what this try ran with and reported, for its OpenLineage events (see _lineage)
        self._lineage_arguments: dict[str, str] | None = None
        self._lineage_metrics: dict[str, Any] | None = None
        self._lineage_secret: dict[str, Any] | None = None

    def _resolve_secrets(self, runner_name: str, arguments: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Local runs get the Airflow connection named by ``secret_id``; Glue jobs read Secrets
        Manager with their own role, so nothing is resolved (or exposed) here for them."""
        secret_id = arguments.get(SECRET_PARAMETER)
        if not secret_id or runner_name != "local":
            return {}
        secret = resolve_connection_secret(secret_id)
        self.secret_values = secret_values([secret])
        # where the secret's database is (never its login) names the warehouse or source in lineage
        self._lineage_secret = {k: secret.get(k) for k in ("engine", "host", "port", "dbname")}
        return {secret_id: secret}

    def execute(self, context: Any) -> dict[str, Any]:
        settings = load_settings()
        run = run_context_from_airflow(self.flow_id, context)
        ti = context["ti"]
        runner = get_runner(settings)
        audit_id = start_task_run(
            settings.metadata_dsn,
            flow_id=self.flow_id,
            task_id=self.task_id,
            template_id=self.template_id,
            dag_id=self.dag_id,
            dag_run_id=run.run_id,
            try_number=ti.try_number,
            batch_id=run.batch_id,
            runner=runner.name,
        )
        try:
            arguments = render_arguments(self.flow_task, self.template, run)
            self._lineage_arguments = arguments
            secrets = self._resolve_secrets(runner.name, arguments)
            self.log.info("running template %s with %s", self.template_id, arguments)
            request = JobRequest(
                flow_id=self.flow_id,
                task_id=self.task_id,
                template_id=self.template_id,
                script_location=self.template.script_location,
                run_id=run.run_id,
                batch_id=run.batch_id,
                batch_time=run.batch_time,
                arguments=arguments,
                timeout_seconds=self.flow_task.timeout_seconds,
                secrets=secrets,
            )
            if isinstance(runner, DeferrableRunner):
                result = self._start_and_wait(runner, request, audit_id)
            else:
                result = runner.run(request)
        except TaskDeferred:
            raise  # not an end: execute_complete closes the row when the run has ended
        except BaseException as exc:
            self._record_failure(settings, audit_id, exc)
            raise
        return self._record_success(settings, audit_id, context, result)

    def _start_and_wait(self, runner: DeferrableRunner, request: JobRequest, audit_id: int) -> JobResult:
        """Start the job, then defer its wait to the triggerer (resuming in execute_complete) or,
        where the runner cannot, wait here; either way on_kill can stop the run meanwhile."""
        self._runner, self._handle = runner, runner.start(request)
        trigger = runner.trigger(self._handle)
        if trigger is not None:
            self.defer(
                trigger=trigger, method_name="execute_complete", kwargs={"audit_id": audit_id, "handle": self._handle}
            )
        runner.wait(self._handle)
        return runner.finish(self._handle)

    def execute_complete(
        self, context: Any, event: dict[str, Any] | None = None, *, audit_id: int, handle: RunHandle
    ) -> dict[str, Any]:
        """Resumed once the triggerer saw the run end: finished exactly as the worker's own wait
        is. The event only says what the waiter saw; the runner reads how the run really ended."""
        settings = load_settings()
        self.log.info("the wait for %s ended: %s", handle, event)
        try:
            runner = get_runner(settings)
            if not isinstance(runner, DeferrableRunner):
                raise TypeError(f"runner {runner.name!r} cannot finish a deferred job {handle}")
            self._runner, self._handle = runner, handle
            result = runner.finish(handle)
        except BaseException as exc:
            self._record_failure(settings, audit_id, exc)
            raise
        return self._record_success(settings, audit_id, context, result)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        """A trigger that crashed resumes the task in Airflow's fail path, never execute_complete:
        the try's row is closed here, as the failure callback closes a killed worker's."""
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except (TaskDeferralError, TaskDeferralTimeout) as exc:
            summary, details = failure_texts(exc, self.flow_task.timeout_seconds)
            ti = context["ti"]
            close_unfinished_task_run(
                load_settings().metadata_dsn,
                dag_id=ti.dag_id,
                dag_run_id=context["dag_run"].run_id,
                task_id=ti.task_id,
                try_number=ti.try_number,
                error=details,
                error_summary=summary,
            )
            raise

    def on_kill(self) -> None:
        """Airflow calls this on the worker when it ends a try running there (a kill, or
        execution_timeout): the job in flight is stopped, not left going. A deferred wait is
        the trigger's, whose own on_kill stops the run."""
        if self._runner is not None and self._handle is not None:
            self._runner.stop(self._handle)

    def _record_failure(self, settings: Settings, audit_id: int, exc: BaseException) -> None:
        failed = exc if isinstance(exc, JobFailedError) else None
        status = (
            "timeout"
            if isinstance(exc, (AirflowTaskTimeout, TimeoutError))
            else "killed"
            if isinstance(exc, (AirflowTaskTerminated, KeyboardInterrupt))
            else "failed"
        )
        summary, details = failure_texts(exc, self.flow_task.timeout_seconds)
        self._lineage_metrics = failed.metrics if failed else None
        finish_task_run(
            settings.metadata_dsn,
            audit_id,
            status=status,
            metrics=failed.metrics if failed else None,
            error=redact(details, self.secret_values),
            error_summary=redact(summary, self.secret_values),
            external_run_id=failed.external_run_id if failed else None,
        )

    def _record_success(self, settings: Settings, audit_id: int, context: Any, result: JobResult) -> dict[str, Any]:
        self._lineage_metrics = result.metrics
        run = run_context_from_airflow(self.flow_id, context)
        ti = context["ti"]
        rejected = [str(r) for r in result.metrics.get("rejected_files") or ()]
        summary = (
            (
                f"{len(rejected)} of {result.metrics.get('files')} files of the batch rejected, the rest loaded: "
                + "; ".join(rejected)
            )
            if rejected
            else None
        )
        finish_task_run(
            settings.metadata_dsn,
            audit_id,
            status="success",
            metrics=result.metrics,
            external_run_id=result.external_run_id,
            error_summary=one_line(summary) if summary else None,
        )
        if summary:  # the batch went on without them: the files are named in the audit and an alert
            notify_failure(
                settings,
                TaskFailure(
                    flow_id=self.flow_id,
                    task_id=self.task_id,
                    dag_id=self.dag_id,
                    dag_run_id=run.run_id,
                    error=one_line(summary),
                    details=summary,
                    file_uri=run.manifest_uri,
                    log_url=_log_url(self.dag_id, run.run_id, self.task_id, ti.try_number),
                    alert_target=self.alert_target,
                    rejected_files=len(rejected),
                ),
            )
        self.log.info("template %s finished: %s", self.template_id, result.metrics)
        return result.metrics

    # -- OpenLineage: the provider's listener calls these on the worker, after and around execute ----
    def get_openlineage_facets_on_start(self) -> OperatorLineage:
        """START: what the task is about to read and write, from its parameters rendered for this
        run (the listener calls this before execute, inside the run's context)."""
        from airflow.sdk import get_current_context

        return self._lineage(get_current_context(), None, start=True)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """COMPLETE: what the job reported it read and wrote (its metrics are the truth)."""
        return self._lineage(task_instance.get_template_context(), self._lineage_metrics)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> OperatorLineage:
        """FAIL: what the try was about, with whatever its job reported before it failed."""
        return self._lineage(task_instance.get_template_context(), self._lineage_metrics)

    def _lineage(self, context: Any, metrics: dict[str, Any] | None, start: bool = False) -> OperatorLineage:
        """The datasets of lakehouse.lineage for this try. The arguments are the ones execute ran
        with, or rendered again where it did not run in this process (START, a resumed deferral).
        Nothing here calls Airflow's API (the provider may run it in a forked child), so a local
        run's secret is named once execute has read it, not at START."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        from lakehouse.lineage import Database, Site, read_manifest_files, task_datasets

        settings = load_settings()
        arguments = self._lineage_arguments
        if arguments is None:
            arguments = render_arguments(self.flow_task, self.template, run_context_from_airflow(self.flow_id, context))
        datasets = task_datasets(
            self.template_id,
            arguments,
            metrics,
            site=Site.from_settings(settings),
            secret=Database.from_secret(self._lineage_secret) if self._lineage_secret else None,
            secret_pending=start and settings.runner == "local",
            manifest_files=read_manifest_files,
        )
        return OperatorLineage(inputs=list(datasets.inputs), outputs=list(datasets.outputs))
