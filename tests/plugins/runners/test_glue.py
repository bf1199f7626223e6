"""The AWS Glue runner against moto: create from the template's script location, start with
Glue-style arguments, wait, read metrics from S3, delete the job after success. The runner goes
through the Amazon provider's GlueJobHook and waiter; the boto3 client under it is moto's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiobotocore.session
import boto3
import pytest
from aiobotocore.stub import AioStubber
from moto import mock_aws

from lakehouse.runners import JobFailedError, JobRequest
from lakehouse.runners.base import JobTimedOutError
from lakehouse.runners.glue import GlueRunner, StoppableGlueJobCompleteTrigger


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


def request() -> JobRequest:
    return JobRequest(
        flow_id="invoices",
        task_id="landing_to_raw",
        template_id="landing_to_raw",
        script_location="landing_to_raw.py",
        run_id="s3__invoices__abc",
        batch_id="s3__invoices__abc",
        arguments={"dataset": "invoices", "format": "regex"},
        timeout_seconds=600,
        batch_time="2026-11-23T10:00:00+00:00",
    )


class MetricsWritingGlue:
    """moto's Glue finishes runs at once but runs no script; this wrapper plays the script's
    part by writing the metrics object the real template writes at its end."""

    def __init__(self, client: Any, s3: Any, fail: bool = False) -> None:
        self._client, self._s3, self._fail = client, s3, fail
        self.stopped: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def start_job_run(self, **kwargs: Any) -> Any:
        answer = self._client.start_job_run(**kwargs)
        if not self._fail:
            bucket, _, key = kwargs["Arguments"]["--metrics_uri"].removeprefix("s3://").partition("/")
            self._s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"rows_in": 5, "rows_out": 4}))
        return answer

    def batch_stop_job_run(self, **kwargs: Any) -> Any:
        """moto has no BatchStopJobRun: record the call and answer as Glue does."""
        self.stopped.append(kwargs)
        return {
            "SuccessfulSubmissions": [
                {"JobName": kwargs["JobName"], "JobRunId": run_id} for run_id in kwargs["JobRunIds"]
            ],
            "Errors": [],
        }


def make_runner(fail: bool = False) -> tuple[GlueRunner, Any]:
    glue = boto3.client("glue", region_name="us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    runner = GlueRunner(
        role_arn="arn:aws:iam::123456789012:role/lakehouse-glue",
        templates_uri="s3://templates-bucket/templates",
        lake_uri="s3://lake-bucket/lake",
        client=MetricsWritingGlue(glue, s3, fail),
        s3=s3,
        poll_seconds=0,
    )
    return runner, glue


def spy_on_create_job(runner: GlueRunner, glue: Any) -> list[dict[str, Any]]:
    """The create_job calls the runner makes (moto still creates the jobs)."""
    created: list[dict[str, Any]] = []
    original = glue.create_job

    def spy(**kwargs: Any) -> Any:
        created.append(kwargs)
        return original(**kwargs)

    runner.client._client.create_job = spy  # type: ignore[attr-defined]
    return created


def test_glue_job_is_created_run_and_deleted(aws: None) -> None:
    runner, glue = make_runner()
    created = spy_on_create_job(runner, glue)
    result = runner.run(request())
    assert result.metrics == {"rows_in": 5, "rows_out": 4}
    (job,) = created
    assert job["Command"]["ScriptLocation"] == "s3://templates-bucket/templates/landing_to_raw.py"
    assert job["GlueVersion"] == "5.0"
    assert job["DefaultArguments"]["--datalake-formats"] == "iceberg"
    assert job["DefaultArguments"]["--extra-py-files"] == "s3://templates-bucket/templates/lakehouse_jobs.zip"
    assert "org.apache.iceberg.aws.glue.GlueCatalog" in job["DefaultArguments"]["--conf"]
    assert glue.get_jobs()["Jobs"] == []  # deleted after success, as the seed does


def test_glue_arguments_are_glue_style(aws: None) -> None:
    runner, _glue = make_runner()
    seen: list[dict[str, str]] = []
    original = runner.client.start_job_run

    def spy(**kwargs: Any) -> Any:
        seen.append(kwargs["Arguments"])
        return original(**kwargs)

    runner.client.start_job_run = spy  # type: ignore[method-assign]
    runner.run(request())
    (arguments,) = seen
    assert arguments["--dataset"] == "invoices" and arguments["--batch_id"] == "s3__invoices__abc"
    assert arguments["--lake_uri"] == "s3://lake-bucket/lake"
    assert arguments["--batch_time"] == "2026-11-23T10:00:00+00:00"
    assert arguments["--metrics_uri"].startswith("s3://lake-bucket/lake/_metrics/s3__invoices__abc/")


def test_success_without_metrics_is_a_failure_and_job_kept(aws: None) -> None:
    runner, glue = make_runner(fail=True)
    with pytest.raises(JobFailedError, match="wrote no metrics"):
        runner.run(request())
    assert len(glue.get_jobs()["Jobs"]) == 1


def test_orchestrator_arguments_cannot_be_overridden(aws: None) -> None:
    runner, _ = make_runner()
    bad = JobRequest(**{**request().__dict__, "arguments": {"batch_id": "evil"}})
    with pytest.raises(ValueError, match="batch_id"):
        runner.run(bad)


def test_configured_connections_are_attached_to_every_job(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """On AWS the warehouse is in a VPC: jobs reach it only through the NETWORK connection."""
    from lakehouse.config import load_settings

    monkeypatch.setenv("LAKEHOUSE_GLUE_CONNECTIONS", "lakehouse-warehouse-network, other")
    monkeypatch.setenv("LAKEHOUSE_GLUE_ROLE_ARN", "arn:aws:iam::123456789012:role/lakehouse-glue")
    monkeypatch.setenv("LAKEHOUSE_TEMPLATES_URI", "s3://templates-bucket/templates")
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", "s3://lake-bucket/lake")
    configured = GlueRunner.from_settings(load_settings())
    assert configured.connections == ("lakehouse-warehouse-network", "other")
    runner, glue = make_runner()
    runner.connections = configured.connections
    created = spy_on_create_job(runner, glue)
    runner.run(request())
    assert created[0]["Connections"] == {"Connections": ["lakehouse-warehouse-network", "other"]}


def test_a_failed_glue_job_is_its_own_one_line_reason_with_its_counts(aws: None) -> None:
    """The failure metrics the template wrote before the run ended FAILED carry the reason the
    audit row keeps; Glue's own ErrorMessage stays in the details."""
    runner, glue = make_runner(fail=True)
    report = {
        "rows_in": 5,
        "rows_out": 0,
        "rows_rejected": 3,
        "error": "JobFailure: …",
        "error_summary": "landing file s3://landing/c.csv: 3 of 5 lines rejected (60.0%)",
    }
    start = runner.client.start_job_run

    def failing_start(**kwargs: Any) -> Any:
        bucket, _, key = kwargs["Arguments"]["--metrics_uri"].removeprefix("s3://").partition("/")
        runner.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(report))
        return start(**kwargs)

    runner.client.start_job_run = failing_start  # type: ignore[method-assign]
    runner.client.get_job_run = lambda **kw: {
        "JobRun": {
            "JobRunState": "FAILED",  # type: ignore[method-assign]
            "ErrorMessage": "Exception: see the log",
        }
    }
    with pytest.raises(JobFailedError) as failed:
        runner.run(request())
    assert str(failed.value) == report["error_summary"] and failed.value.metrics["rows_rejected"] == 3
    assert "ended FAILED: Exception: see the log" in failed.value.details
    assert len(glue.get_jobs()["Jobs"]) == 1  # kept for inspection


def ended(runner: GlueRunner, state: str, message: str = "") -> None:
    """Glue's answer for the run from now on (moto's runs always succeed)."""
    runner.client.get_job_run = lambda **kw: {
        "JobRun": {
            "JobRunState": state,  # type: ignore[method-assign]
            "ErrorMessage": message,
        }
    }


def test_start_then_finish_is_the_deferred_path(aws: None) -> None:
    """Under Airflow the worker starts the run, the triggerer waits, the resumed task finishes
    it: the handle is all that travels between them, as JSON."""
    runner, glue = make_runner()
    handle = runner.start(request())
    assert json.loads(json.dumps(handle)) == handle
    assert handle["run_id"] == glue.get_job_runs(JobName=handle["job_name"])["JobRuns"][0]["Id"]
    assert runner.finish(handle).metrics == {"rows_in": 5, "rows_out": 4}
    assert glue.get_jobs()["Jobs"] == []


def test_the_trigger_is_the_providers_for_this_run(aws: None) -> None:
    from airflow.providers.amazon.aws.triggers.glue import GlueJobCompleteTrigger

    runner, _ = make_runner()
    runner.poll_seconds = 30
    handle = runner.start(request())
    assert runner.deferrable  # the provider's aiobotocore extra is installed, as on MWAA
    trigger = runner.trigger(handle)
    assert isinstance(trigger, GlueJobCompleteTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "lakehouse.runners.glue.StoppableGlueJobCompleteTrigger"
    assert (kwargs["job_name"], kwargs["run_id"], kwargs["waiter_delay"]) == (handle["job_name"], handle["run_id"], 30)
    assert kwargs["waiter_max_attempts"] * 30 > 600  # outlasts the job's own 10-minute Timeout
    runner.deferrable = False
    assert runner.trigger(handle) is None  # no async client: the worker waits itself


def _recorded_glue(monkeypatch: pytest.MonkeyPatch, job: str, run: str, states: list[tuple[str, str]]) -> AioStubber:
    """The triggerer's aiobotocore Glue client answering GetJobRun with recorded responses, one
    per poll (moto's decorator cannot serve aiobotocore's HTTP client)."""
    from airflow.providers.amazon.aws.hooks.glue import GlueJobHook

    stubber: list[AioStubber] = []

    @asynccontextmanager
    async def client() -> AsyncIterator[Any]:
        session = aiobotocore.session.get_session()
        async with session.create_client(
            "glue", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        ) as glue:
            stub = AioStubber(glue)
            for state, message in states:
                answer: dict[str, Any] = {"Id": run, "JobName": job, "JobRunState": state}
                if message:
                    answer["ErrorMessage"] = message
                stub.add_response("get_job_run", {"JobRun": answer}, {"JobName": job, "RunId": run})
            stubber.append(stub)
            with stub:
                yield glue

    async def get_async_conn(self: GlueJobHook) -> Any:
        return client()

    monkeypatch.setattr(GlueJobHook, "get_async_conn", get_async_conn)
    return stubber


def test_the_triggerer_waits_with_the_providers_waiter_until_the_run_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deferred wait as Airflow's triggerer runs it: the provider's job_complete waiter over an
    aiobotocore client polls until SUCCEEDED, and the event names the run."""
    stubs = _recorded_glue(
        monkeypatch, "lakehouse-invoices", "jr_1", [("RUNNING", ""), ("RUNNING", ""), ("SUCCEEDED", "")]
    )
    trigger = StoppableGlueJobCompleteTrigger(
        job_name="lakehouse-invoices", run_id="jr_1", waiter_delay=0, waiter_max_attempts=5, region_name="us-east-1"
    )
    events = asyncio.run(_events(trigger))
    assert [e.payload for e in events] == [{"status": "success", "run_id": "jr_1"}]
    stubs[0].assert_no_pending_responses()  # polled exactly until the run ended


def test_the_triggerer_reports_a_failed_run_as_an_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed run ends the wait with an error event; the resumed task (execute_complete) then
    reads the run's reason and counts through runner.finish, as on the worker."""
    _recorded_glue(
        monkeypatch,
        "lakehouse-invoices",
        "jr_2",
        [("RUNNING", ""), ("FAILED", "landing file x: 3 of 5 lines rejected")],
    )
    trigger = StoppableGlueJobCompleteTrigger(
        job_name="lakehouse-invoices", run_id="jr_2", waiter_delay=0, waiter_max_attempts=5, region_name="us-east-1"
    )
    [event] = asyncio.run(_events(trigger))
    assert event.payload["status"] == "error" and "AWS Glue job failed" in event.payload["message"]


async def _events(trigger: StoppableGlueJobCompleteTrigger) -> list[Any]:
    return [event async for event in trigger.run()]


def test_a_killed_deferred_task_stops_its_run_from_the_triggerer(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow 3.3's triggerer calls the trigger's on_kill when a user fails or clears the task."""
    runner, _ = make_runner()
    handle = runner.start(request())
    trigger = StoppableGlueJobCompleteTrigger(
        job_name=handle["job_name"], run_id=handle["run_id"], aws_conn_id=None, region_name="us-east-1"
    )
    monkeypatch.setattr(trigger, "hook", lambda: runner.hook)
    asyncio.run(trigger.on_kill())
    assert runner.client.stopped == [{"JobName": handle["job_name"], "JobRunIds": [handle["run_id"]]}]


def test_stop_stops_the_run_through_the_hooks_connection(aws: None) -> None:
    runner, _ = make_runner()
    handle = runner.start(request())
    runner.stop(handle)
    assert runner.client.stopped == [{"JobName": handle["job_name"], "JobRunIds": [handle["run_id"]]}]


def test_a_run_glue_timed_out_is_a_timeout_with_its_counts(aws: None) -> None:
    runner, glue = make_runner()
    handle = runner.start(request())
    ended(runner, "TIMEOUT", "Job run timed out")
    with pytest.raises(JobTimedOutError) as failed:
        runner.finish(handle)
    assert isinstance(failed.value, TimeoutError) and failed.value.metrics == {"rows_in": 5, "rows_out": 4}
    assert "ended TIMEOUT: Job run timed out" in failed.value.details
    assert len(glue.get_jobs()["Jobs"]) == 1


def test_a_run_still_going_when_the_wait_gave_up_is_stopped(aws: None) -> None:
    runner, _ = make_runner()
    handle = runner.start(request())
    ended(runner, "RUNNING")
    with pytest.raises(JobFailedError, match="still RUNNING when the wait gave up"):
        runner.finish(handle)
    assert runner.client.stopped == [{"JobName": handle["job_name"], "JobRunIds": [handle["run_id"]]}]
