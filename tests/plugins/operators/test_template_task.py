"""The audit row of every try, whatever ends it, and one alert per failed task (not per try)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import boto3
import psycopg2
import pytest
from airflow.providers.amazon.aws.triggers.glue import GlueJobCompleteTrigger
from airflow.sdk.exceptions import TaskDeferralError, TaskDeferred
from airflow.sdk.execution_time.timeout import timeout as airflow_timeout
from airflow.sdk.serde import deserialize, serialize
from moto import mock_aws

from lakehouse.config import Settings
from lakehouse.dag_factory import build_dag
from lakehouse.flows import Flow, FlowTask, ParameterSpec, Template
from lakehouse.metadata.audit import start_task_run
from lakehouse.operators import template_task
from lakehouse.runners import JobFailedError, JobRequest, JobResult
from lakehouse.runners.glue import GlueRunner

TEMPLATE = Template("stage_to_presentation", "stage_to_presentation.py")


class ScriptedRunner:
    """Stands in for spark-submit / Glue: the audit does not care how the job runs."""

    name = "scripted"

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.requests: list[JobRequest] = []

    def run(self, request: JobRequest) -> JobResult:
        self.requests.append(request)
        if callable(self.outcome):
            return self.outcome()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return JobResult(self.outcome, external_run_id="job-1")


@pytest.fixture
def operator() -> Iterator[template_task.TemplateTaskOperator]:
    task = FlowTask(
        "audit_flow",
        "build",
        TEMPLATE.template_id,
        {"sql": "select 1", "target_table": "p.t"},
        timeout_seconds=1,
        retries=1,
    )
    dag = build_dag(Flow("audit_flow", (task,)), {TEMPLATE.template_id: TEMPLATE})
    yield dag.task_dict["build"]


def context_for(op: template_task.TemplateTaskOperator, run_id: str, try_number: int = 1) -> dict[str, Any]:
    dag_run = SimpleNamespace(
        run_id=run_id,
        conf={"file": {"bucket": "landing", "key": "a/b.csv", "etag": "e1"}},
        run_after=datetime(2026, 11, 23, tzinfo=UTC),
    )
    ti = SimpleNamespace(dag_id=op.dag_id, task_id=op.task_id, try_number=try_number)
    return {"dag_run": dag_run, "ti": ti, "task": op, "logical_date": None}


def audit_rows(settings: Settings, run_id: str) -> list[tuple[Any, ...]]:
    with psycopg2.connect(settings.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT try_number, status, rows_in, rows_out, rows_rejected, error, ended_at IS NOT NULL "
            "FROM lakehouse.task_runs WHERE dag_run_id = %s ORDER BY try_number",
            (run_id,),
        )
        rows = cur.fetchall()
    conn.close()
    return rows


def notifications(settings: Settings, run_id: str) -> list[tuple[str, str, str]]:
    with psycopg2.connect(settings.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT task_id, file_uri, error FROM lakehouse.notifications WHERE dag_run_id = %s", (run_id,))
        rows = cur.fetchall()
    conn.close()
    return rows


def use_runner(monkeypatch: pytest.MonkeyPatch, runner: ScriptedRunner) -> None:
    monkeypatch.setattr(template_task, "get_runner", lambda settings: runner)


def test_success_row_carries_the_counts(pg: Settings, operator, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = ScriptedRunner({"rows_in": 10, "rows_out": 9, "rows_rejected": 1})
    use_runner(monkeypatch, runner)
    assert operator.execute(context_for(operator, "run_ok"))["rows_out"] == 9
    assert audit_rows(pg, "run_ok") == [(1, "success", 10, 9, 1, None, True)]
    assert runner.requests[0].arguments["sql"] == "select 1"


def test_failure_row_names_the_error(pg: Settings, operator, monkeypatch: pytest.MonkeyPatch) -> None:
    use_runner(monkeypatch, ScriptedRunner(JobFailedError("AnalysisException: column amount not found")))
    with pytest.raises(JobFailedError):
        operator.execute(context_for(operator, "run_fail"))
    ((try_number, status, *_, error, ended),) = audit_rows(pg, "run_fail")
    assert (try_number, status, ended) == (1, "failed", True)
    assert "column amount not found" in error


def test_failed_try_keeps_the_jobs_counts_and_one_line_reason(pg: Settings, operator, monkeypatch) -> None:
    """The counts a failed job reported reach the audit row; the reason is one line, the log tail
    stays in ``error``, and the alert leads with the reason."""
    why = "landing file s3://landing/customers/bad/malformed.csv: 3 of 5 lines rejected (60.0%), more than 0.0"
    failure = JobFailedError(
        why,
        "job-7",
        metrics={"rows_in": 5, "rows_out": 0, "rows_rejected": 3},
        details="--- last lines of the job's output ---\nINFO SparkContext: stopped",
    )
    use_runner(monkeypatch, ScriptedRunner(failure))
    context = context_for(operator, "run_counts")
    with pytest.raises(JobFailedError) as raised:
        operator.execute(context)
    context["exception"] = raised.value
    template_task.on_task_failure(context)
    ((_, status, rows_in, rows_out, rejected, error, _),) = audit_rows(pg, "run_counts")
    assert (status, rows_in, rows_out, rejected) == ("failed", 5, 0, 3)
    assert error.startswith(why) and "INFO SparkContext: stopped" in error
    with psycopg2.connect(pg.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT error_summary FROM lakehouse.task_runs WHERE dag_run_id = 'run_counts'")
        assert cur.fetchone() == (why,)
        cur.execute("SELECT error_summary, error FROM lakehouse.notifications WHERE dag_run_id = 'run_counts'")
        summary, full = cur.fetchone()
    conn.close()
    assert summary == why and "INFO SparkContext: stopped" in full


def test_airflow_execution_timeout_is_recorded_as_timeout(pg: Settings, operator, monkeypatch) -> None:
    """Airflow enforces timeout_seconds with SIGALRM inside execute(); the row must say so."""
    use_runner(monkeypatch, ScriptedRunner(lambda: time.sleep(30)))
    with pytest.raises(BaseException) as raised, airflow_timeout(1):
        operator.execute(context_for(operator, "run_timeout"))
    assert type(raised.value).__name__ == "AirflowTaskTimeout"
    ((_, status, *_, error, ended),) = audit_rows(pg, "run_timeout")
    assert (status, ended) == ("timeout", True)
    assert "timed out after 1s (flow_tasks.timeout_seconds)" in error


def test_killed_try_is_closed_by_the_failure_callback_with_one_alert(pg: Settings, operator) -> None:
    """A SIGKILLed worker never reaches its own `finally`: the row it opened is closed as killed."""
    context = context_for(operator, "run_killed")
    start_task_run(
        pg.metadata_dsn,
        flow_id="audit_flow",
        task_id="build",
        template_id=TEMPLATE.template_id,
        dag_id=operator.dag_id,
        dag_run_id="run_killed",
        try_number=1,
        batch_id="run_killed",
        runner="scripted",
    )
    context["exception"] = None
    template_task.on_task_failure(context)
    ((_, status, *_, error, ended),) = audit_rows(pg, "run_killed")
    assert (status, ended) == ("killed", True)
    assert error == "task failed (no exception recorded)"
    assert notifications(pg, "run_killed") == [("build", "s3://landing/a/b.csv", error)]


def test_failure_callback_keeps_the_row_the_task_closed(pg: Settings, operator, monkeypatch) -> None:
    use_runner(monkeypatch, ScriptedRunner(JobFailedError("boom")))
    context = context_for(operator, "run_closed")
    with pytest.raises(JobFailedError) as raised:
        operator.execute(context)
    context["exception"] = raised.value
    template_task.on_task_failure(context)
    ((_, status, *_),) = audit_rows(pg, "run_closed")
    assert status == "failed"
    ((task_id, file_uri, error),) = notifications(pg, "run_closed")
    assert (task_id, file_uri) == ("build", "s3://landing/a/b.csv") and error == "boom"


def test_retries_do_not_alert_only_the_final_failure_does(operator) -> None:
    """Airflow calls on_retry_callback for a try that will be retried and on_failure_callback once
    the task has failed for good: the alert hangs on the latter only."""
    assert operator.retries == 1
    assert operator.on_failure_callback in (template_task.on_task_failure, [template_task.on_task_failure])
    assert not operator.on_retry_callback


def test_secret_reaches_the_job_out_of_band_and_never_the_audit(pg: Settings, monkeypatch) -> None:
    """secret_id names an Airflow connection locally; its password goes to the job's environment,
    not its arguments, and a job that echoes it has it scrubbed from the audit row and the alert."""
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_LOGIN", "postgresql://loader:pw-9f8e7d@db.internal:5432/shop")
    template = Template(
        "presentation_to_warehouse",
        "presentation_to_warehouse.py",
        parameters=(ParameterSpec("source_table"), ParameterSpec("secret_id")),
    )
    task = FlowTask("audit_flow", "load", template.template_id, {"source_table": "p.t", "secret_id": "shop_login"})
    op = build_dag(Flow("audit_flow", (task,)), {template.template_id: template}).task_dict["load"]
    runner = ScriptedRunner(JobFailedError("FATAL: password authentication failed for loader/pw-9f8e7d"))
    runner.name = "local"
    use_runner(monkeypatch, runner)
    context = context_for(op, "run_secret")
    with pytest.raises(JobFailedError) as raised:
        op.execute(context)
    (request,) = runner.requests
    assert request.secrets["shop_login"]["password"] == "pw-9f8e7d"
    assert "pw-9f8e7d" not in repr(request) and "pw-9f8e7d" not in str(request.arguments)
    context["exception"] = raised.value
    template_task.on_task_failure(context)
    ((_, status, *_, error, _),) = audit_rows(pg, "run_secret")
    assert status == "failed" and "loader/***" in error and "pw-9f8e7d" not in error
    ((_, _, alert),) = notifications(pg, "run_secret")
    assert "pw-9f8e7d" not in alert and "***" in alert


def test_a_batch_that_went_on_without_some_files_names_them_in_the_audit_and_an_alert(
    pg: Settings, operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = {
        "rows_in": 9,
        "rows_out": 6,
        "rows_rejected": 1,
        "files": 3,
        "rejected_files": ["landing file s3://landing/c.csv is empty: it has no data lines"],
    }
    use_runner(monkeypatch, ScriptedRunner(metrics))
    operator.execute(context_for(operator, "run_partial"))
    with psycopg2.connect(pg.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, error_summary FROM lakehouse.task_runs WHERE dag_run_id = 'run_partial'")
        ((status, why),) = cur.fetchall()
    conn.close()
    assert status == "success" and why.startswith(
        "1 of 3 files of the batch rejected, the rest loaded: landing file s3://landing/c.csv is empty"
    )
    ((task_id, _, error),) = notifications(pg, "run_partial")
    assert task_id == "build" and "s3://landing/c.csv is empty" in error


# --- the Glue runner under Airflow: start, defer the wait to the triggerer, resume; on_kill ---


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="lake-bucket")
        yield


class ScriptedGlue:
    """moto's Glue, with the script's part played: the run writes ``report`` as its metrics and
    Glue answers ``state`` for it; moto has no BatchStopJobRun, so stops are recorded here."""

    def __init__(self, report: dict[str, Any], state: str = "SUCCEEDED", message: str = "") -> None:
        self._client = boto3.client("glue", region_name="us-east-1")
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.report, self.state, self.message = report, state, message
        self.stopped: list[dict[str, Any]] = []
        self.on_poll: Any = None  # called at each GetJobRun: what happens while the run is in flight

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def start_job_run(self, **kwargs: Any) -> Any:
        bucket, _, key = kwargs["Arguments"]["--metrics_uri"].removeprefix("s3://").partition("/")
        self.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(self.report))
        return self._client.start_job_run(**kwargs)

    def get_job_run(self, **kwargs: Any) -> Any:
        if self.on_poll:
            self.on_poll()
        return {"JobRun": {"Id": kwargs["RunId"], "JobRunState": self.state, "ErrorMessage": self.message}}

    def batch_stop_job_run(self, **kwargs: Any) -> Any:
        self.stopped.append(kwargs)
        self.state = "STOPPED"
        return {
            "SuccessfulSubmissions": [{"JobName": kwargs["JobName"], "JobRunId": r} for r in kwargs["JobRunIds"]],
            "Errors": [],
        }


def use_glue(monkeypatch: pytest.MonkeyPatch, glue: ScriptedGlue, deferrable: bool = True) -> None:
    """Each get_runner builds a fresh runner, as the resumed task does in another process."""

    def runner(settings: Settings) -> GlueRunner:
        return GlueRunner(
            role_arn="arn:aws:iam::123456789012:role/lakehouse-glue",
            templates_uri="s3://templates-bucket/templates",
            lake_uri="s3://lake-bucket/lake",
            poll_seconds=0,
            deferrable=deferrable,
            client=glue,
            s3=glue.s3,
        )

    monkeypatch.setattr(template_task, "get_runner", runner)


def task_run(settings: Settings, run_id: str) -> tuple[Any, ...]:
    with psycopg2.connect(settings.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT status, rows_in, rows_out, rows_rejected, error_summary, error, external_run_id "
            "FROM lakehouse.task_runs WHERE dag_run_id = %s",
            (run_id,),
        )
        (row,) = cur.fetchall()
    conn.close()
    return row


def defer(op: template_task.TemplateTaskOperator, context: dict[str, Any]) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return deferred.value


def test_a_glue_task_defers_its_wait_to_the_providers_trigger(
    pg: Settings, operator, aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    glue = ScriptedGlue({"rows_in": 5, "rows_out": 4})
    use_glue(monkeypatch, glue)
    deferred = defer(operator, context_for(operator, "run_defer"))
    assert isinstance(deferred.trigger, GlueJobCompleteTrigger) and deferred.method_name == "execute_complete"
    (job,) = glue.get_jobs()["Jobs"]
    (run,) = glue.get_job_runs(JobName=job["Name"])["JobRuns"]
    assert (deferred.trigger.job_name, deferred.trigger.run_id) == (job["Name"], run["Id"])
    assert deferred.kwargs["handle"]["run_id"] == run["Id"]
    assert deserialize(serialize(deferred.kwargs)) == deferred.kwargs  # what the task resumes with
    assert task_run(pg, "run_defer")[0] == "running"  # the try is not over while the triggerer waits


def test_resumed_with_success_the_row_has_the_jobs_counts(
    pg: Settings, operator, aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    glue = ScriptedGlue({"rows_in": 5, "rows_out": 4, "rows_rejected": 1})
    use_glue(monkeypatch, glue)
    context = context_for(operator, "run_resumed")
    deferred = defer(operator, context)
    event = {"status": "success", "run_id": deferred.trigger.run_id}
    metrics = operator.execute_complete(context, event=event, **deferred.kwargs)
    assert metrics == {"rows_in": 5, "rows_out": 4, "rows_rejected": 1}
    assert task_run(pg, "run_resumed") == ("success", 5, 4, 1, None, None, deferred.trigger.run_id)
    assert glue.get_jobs()["Jobs"] == []  # deleted after success, as on the synchronous path


def test_resumed_with_failure_the_row_says_why_in_one_line(
    pg: Settings, operator, aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = "landing file s3://landing/c.csv: 3 of 5 lines rejected (60.0%)"
    glue = ScriptedGlue(
        {"rows_in": 5, "rows_out": 0, "rows_rejected": 3, "error": "JobFailure: …\n  at line 1", "error_summary": why},
        state="FAILED",
        message="Exception: see the log",
    )
    use_glue(monkeypatch, glue)
    context = context_for(operator, "run_resumed_failed")
    deferred = defer(operator, context)
    event = {"status": "error", "message": "AWS Glue job failed.: terminal failure", "run_id": deferred.trigger.run_id}
    with pytest.raises(JobFailedError) as raised:
        operator.execute_complete(context, event=event, **deferred.kwargs)
    status, rows_in, rows_out, rejected, summary, error, run_id = task_run(pg, "run_resumed_failed")
    assert (status, rows_in, rows_out, rejected, summary, run_id) == ("failed", 5, 0, 3, why, deferred.trigger.run_id)
    assert "ended FAILED: Exception: see the log" in error
    assert len(glue.get_jobs()["Jobs"]) == 1  # kept for inspection
    context["exception"] = raised.value
    template_task.on_task_failure(context)  # the alert leads with the same line
    ((_, _, alert),) = notifications(pg, "run_resumed_failed")
    assert alert.startswith(why) and "ended FAILED: Exception: see the log" in alert


def test_a_trigger_that_crashed_closes_the_row(
    pg: Settings, operator, aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow resumes the task in its fail path (never execute_complete) when the trigger failed."""
    use_glue(monkeypatch, ScriptedGlue({}))
    context = context_for(operator, "run_trigger_crashed")
    defer(operator, context)
    with pytest.raises(TaskDeferralError):
        operator.resume_execution("__fail__", {"error": "Trigger failure"}, context)
    status, *_, summary, _, _ = task_run(pg, "run_trigger_crashed")
    assert status == "killed" and summary == "TaskDeferralError: Trigger failure"


def test_on_kill_stops_the_glue_run_the_worker_is_waiting_for(
    pg: Settings, operator, aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the worker waits itself (no aiobotocore), a kill arrives as on_kill during the wait."""
    glue = ScriptedGlue({"rows_in": 5}, state="RUNNING")
    use_glue(monkeypatch, glue, deferrable=False)
    glue.on_poll = lambda: glue.stopped or operator.on_kill()  # Airflow's SIGTERM handler, mid-wait
    with pytest.raises(JobFailedError):
        operator.execute(context_for(operator, "run_on_kill"))
    (stop,) = glue.stopped
    (job,) = glue.get_jobs()["Jobs"]
    (run,) = glue._client.get_job_runs(JobName=job["Name"])["JobRuns"]
    assert stop == {"JobName": job["Name"], "JobRunIds": [run["Id"]]}
    status, *_, error, run_id = task_run(pg, "run_on_kill")
    assert status == "failed" and "ended STOPPED" in error and run_id == run["Id"]
