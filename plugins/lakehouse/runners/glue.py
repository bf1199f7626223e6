"""Run a template as an AWS Glue 5 job through the Amazon provider: create the job from the
template's script location and start it (``GlueJobHook``), wait for it with the provider's
``job_complete`` waiter (on the worker, or in Airflow's triggerer with ``GlueJobCompleteTrigger``),
read its metrics from S3 and delete the job after success (the seed's "dynamically generate and
delete Glue jobs"). A failed job is kept so its run can be inspected in the console.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.exceptions import WaiterMaxAttemptsError, WaiterTerminalFailure
from airflow.providers.amazon.aws.hooks.glue import GlueJobHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.triggers.glue import GlueJobCompleteTrigger
from airflow.providers.amazon.aws.utils.waiter_with_logging import wait
from asgiref.sync import sync_to_async

from lakehouse.config import Settings
from lakehouse.runners.base import (
    JobFailedError,
    JobRequest,
    JobResult,
    JobTimedOutError,
    RunHandle,
    job_arguments,
    parse_metrics,
)

__all__ = ["GlueRunner", "StoppableGlueJobCompleteTrigger", "glue_catalog_conf"]

log = logging.getLogger(__name__)

_RUNNING = ("STARTING", "RUNNING", "STOPPING", "WAITING")
#: how long past the job's own Timeout a wait goes on (queueing in WAITING, start-up, stopping)
_WAIT_MARGIN_SECONDS = 3600


def glue_catalog_conf(catalog_name: str, warehouse_uri: str) -> str:
    """Glue takes extra Spark conf as one ``--conf`` value joined by `` --conf ``."""
    prefix = f"spark.sql.catalog.{catalog_name}"
    pairs = {
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.catalog-impl": "org.apache.iceberg.aws.glue.GlueCatalog",
        f"{prefix}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
        f"{prefix}.warehouse": warehouse_uri,
        "spark.sql.defaultCatalog": catalog_name,
    }
    return " --conf ".join(f"{k}={v}" for k, v in pairs.items())


class StoppableGlueJobCompleteTrigger(GlueJobCompleteTrigger):
    """The provider's trigger (same waiter, same events), plus the ``on_kill`` Airflow 3.3's
    triggerer calls when a user marks a deferred task failed or clears it: the Glue run is
    stopped, as the operator's ``on_kill`` stops a run waited for on the worker. The provider's
    own GlueJobOperator (9.39) stops only the latter."""

    async def on_kill(self) -> None:
        hook = self.hook()
        try:
            await sync_to_async(hook.conn.batch_stop_job_run)(JobName=self.job_name, JobRunIds=[self.run_id])
            self.log.info("Stopped Glue job %s run %s", self.job_name, self.run_id)
        except Exception:
            self.log.exception("Could not stop Glue job %s run %s: it may still be running", self.job_name, self.run_id)


@dataclass
class GlueRunner:
    role_arn: str
    templates_uri: str  # s3://bucket/prefix holding the template scripts and lakehouse_jobs.zip
    lake_uri: str  # s3://bucket/lake
    catalog_name: str = "lake"
    region: str = "us-east-1"
    glue_version: str = "5.0"
    worker_type: str = "G.1X"
    number_of_workers: int = 2
    poll_seconds: int = 15
    connections: tuple[str, ...] = ()  # e.g. the NETWORK connection into the warehouse's VPC
    #: None: boto3's default credentials (the worker's role on MWAA), in the triggerer as well
    aws_conn_id: str | None = None
    #: wait in Airflow's triggerer, whose GlueJobCompleteTrigger needs the provider's aiobotocore
    #: extra; without it the worker waits itself
    deferrable: bool = field(default_factory=lambda: importlib.util.find_spec("aiobotocore") is not None)
    client: Any = None  # a boto3 Glue client to use instead of the hooks' own (tests inject moto's)
    s3: Any = None  # likewise for S3
    name: str = field(default="glue", init=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> GlueRunner:
        if not settings.glue_role_arn:
            raise ValueError("LAKEHOUSE_GLUE_ROLE_ARN must be set for LAKEHOUSE_RUNNER=glue")
        if not settings.templates_uri.startswith("s3://") or not settings.lake_uri.startswith("s3://"):
            raise ValueError("LAKEHOUSE_TEMPLATES_URI and LAKEHOUSE_LAKE_URI must be s3:// URIs for Glue")
        return cls(
            settings.glue_role_arn,
            settings.templates_uri,
            settings.lake_uri,
            settings.catalog_name,
            settings.aws_region,
            connections=settings.glue_connections,
        )

    @cached_property
    def hook(self) -> GlueJobHook:
        """Waits, reads, stops and deletes runs of any job (the hook's job fields stay unset)."""
        return self._with_client(GlueJobHook(aws_conn_id=self.aws_conn_id, region_name=self.region))

    def _with_client(self, hook: GlueJobHook) -> GlueJobHook:
        if self.client is not None:
            hook.__dict__["conn"] = self.client  # overrides the hook's cached boto3 client
        return hook

    @cached_property
    def _s3(self) -> Any:
        return self.s3 or S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region).conn

    def _script_uri(self, script_location: str) -> str:
        if script_location.startswith("s3://"):
            return script_location
        return f"{self.templates_uri.rstrip('/')}/{script_location.lstrip('/')}"

    def run(self, request: JobRequest) -> JobResult:
        """Start, wait on this process, finish: for callers outside Airflow's deferral."""
        handle = self.start(request)
        self.wait(handle)
        return self.finish(handle)

    def start(self, request: JobRequest) -> RunHandle:
        """Create the job and start its run; the handle names the run for ``wait`` and ``finish``."""
        job_name = f"lakehouse-{request.flow_id}-{request.task_id}-{uuid.uuid4().hex[:8]}"[:255]
        metrics_uri = f"{self.lake_uri.rstrip('/')}/_metrics/{request.batch_id}/{job_name}.json"
        arguments = {f"--{k}": v for k, v in job_arguments(request, self.lake_uri, metrics_uri).items()}
        timeout_minutes = max(1, (request.timeout_seconds or 2880 * 60) // 60)
        script = self._script_uri(request.script_location)
        job_hook = self._with_client(
            GlueJobHook(
                job_name=job_name,
                desc=f"lakehouse {request.flow_id}.{request.task_id} ({request.template_id})",
                script_location=script,
                iam_role_arn=self.role_arn,
                aws_conn_id=self.aws_conn_id,
                region_name=self.region,
                create_job_kwargs={
                    "Command": {"Name": "glueetl", "ScriptLocation": script, "PythonVersion": "3"},
                    "GlueVersion": self.glue_version,
                    "WorkerType": self.worker_type,
                    "NumberOfWorkers": self.number_of_workers,
                    "Timeout": timeout_minutes,
                    "DefaultArguments": {
                        "--datalake-formats": "iceberg",
                        "--extra-py-files": f"{self.templates_uri.rstrip('/')}/lakehouse_jobs.zip",
                        "--conf": glue_catalog_conf(self.catalog_name, f"{self.lake_uri.rstrip('/')}/warehouse"),
                        "--enable-metrics": "true",
                    },
                    "Tags": {"lakehouse:flow_id": request.flow_id, "lakehouse:task_id": request.task_id},
                    **({"Connections": {"Connections": list(self.connections)}} if self.connections else {}),
                },
            )
        )
        run_id = job_hook.initialize_job(arguments)["JobRunId"]
        return {"job_name": job_name, "run_id": run_id, "metrics_uri": metrics_uri, "timeout_minutes": timeout_minutes}

    def _wait_attempts(self, handle: RunHandle) -> int:
        """Enough polls to outlast the job's own Timeout, after which Glue ends the run itself."""
        return (int(handle["timeout_minutes"]) * 60 + _WAIT_MARGIN_SECONDS) // max(1, self.poll_seconds) + 1

    def wait(self, handle: RunHandle) -> None:
        """Block until the run ends, with the waiter the provider's trigger polls in the triggerer,
        so both paths agree on when a run is over; how it ended is ``finish``'s to read."""
        # ended otherwise than SUCCEEDED, or still going: finish() says which and why
        with contextlib.suppress(WaiterTerminalFailure, WaiterMaxAttemptsError):
            wait(
                waiter=self.hook.get_waiter("job_complete", client=self.hook.conn),
                waiter_delay=self.poll_seconds,
                waiter_max_attempts=self._wait_attempts(handle),
                args={"JobName": handle["job_name"], "RunId": handle["run_id"]},
                failure_message=f"Glue job {handle['job_name']} run {handle['run_id']} did not succeed",
                status_message=f"Glue job {handle['job_name']} run {handle['run_id']} is",
                status_args=["JobRun.JobRunState", "JobRun.ErrorMessage"],
            )

    def trigger(self, handle: RunHandle) -> GlueJobCompleteTrigger | None:
        """The provider's trigger to wait in Airflow's triggerer, or None where it could not poll
        (see ``deferrable``): the worker then waits itself."""
        if not self.deferrable:
            log.warning("waiting for the Glue run on the worker: deferring to the triggerer needs aiobotocore")
            return None
        return StoppableGlueJobCompleteTrigger(
            job_name=handle["job_name"],
            run_id=handle["run_id"],
            waiter_delay=self.poll_seconds,
            waiter_max_attempts=self._wait_attempts(handle),
            aws_conn_id=self.aws_conn_id,
            region_name=self.region,
        )

    def finish(self, handle: RunHandle) -> JobResult:
        """Read how the run ended: its metrics and a deleted job on success; otherwise the reason
        and counts the job wrote before it failed, with Glue's own ErrorMessage in the details."""
        job_name, run_id, metrics_uri = handle["job_name"], handle["run_id"], handle["metrics_uri"]
        run = self.hook.conn.get_job_run(JobName=job_name, RunId=run_id)["JobRun"]
        state, message = run["JobRunState"], run.get("ErrorMessage", "")
        if state in _RUNNING:  # the wait gave up first; the run must not go on unwatched
            self.stop(handle)
            ended = f"Glue job {job_name} run {run_id} was still {state} when the wait gave up: stopped"
            raise JobFailedError(ended, run_id, details=ended)
        if state != "SUCCEEDED":
            ended = f"Glue job {job_name} run {run_id} ended {state}: {message}"
            failure = JobTimedOutError if state == "TIMEOUT" else JobFailedError
            raise failure.from_metrics(self._failure_metrics(metrics_uri), ended, run_id, details=ended)
        metrics = self._read_metrics(metrics_uri)
        self.hook.conn.delete_job(JobName=job_name)
        return JobResult(metrics, external_run_id=run_id)

    def stop(self, handle: RunHandle) -> None:
        """Stop the run (a killed task must not leave it going), as GlueJobOperator.on_kill does."""
        log.info("Stopping Glue job %s run %s", handle["job_name"], handle["run_id"])
        answer = self.hook.conn.batch_stop_job_run(JobName=handle["job_name"], JobRunIds=[handle["run_id"]])
        if answer.get("Errors"):
            log.error("Could not stop Glue job %s run %s: %s", handle["job_name"], handle["run_id"], answer["Errors"])

    def _failure_metrics(self, metrics_uri: str) -> dict[str, Any] | None:
        """What a failed job reported before it ended (its reason and counts), if it got that far."""
        try:
            return self._read_metrics(metrics_uri)
        except JobFailedError:
            return None

    def _read_metrics(self, metrics_uri: str) -> dict[str, Any]:
        bucket, _, key = metrics_uri.removeprefix("s3://").partition("/")
        try:
            body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except self._s3.exceptions.NoSuchKey as exc:
            raise JobFailedError(f"Glue job succeeded but wrote no metrics to {metrics_uri}") from exc
        return parse_metrics(body, metrics_uri)
