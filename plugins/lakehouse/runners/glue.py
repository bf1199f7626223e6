"""Run a template as an AWS Glue 5 job: create the job from the template's script location, start
it, wait, read its metrics from S3 and delete the job after success (the seed's "dynamically
generate and delete Glue jobs"). A failed job is kept so its run can be inspected in the console.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import boto3

from lakehouse.config import Settings
from lakehouse.runners.base import JobFailedError, JobRequest, JobResult, job_arguments, parse_metrics

__all__ = ["GlueRunner", "glue_catalog_conf"]

_RUNNING = ("STARTING", "RUNNING", "STOPPING", "WAITING")


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
    poll_seconds: float = 15.0
    connections: tuple[str, ...] = ()  # e.g. the NETWORK connection into the warehouse's VPC
    client: Any = None
    s3: Any = None
    name: str = field(default="glue", init=False)

    def __post_init__(self) -> None:
        self.client = self.client or boto3.client("glue", region_name=self.region)
        self.s3 = self.s3 or boto3.client("s3", region_name=self.region)

    @classmethod
    def from_settings(cls, settings: Settings) -> "GlueRunner":
        if not settings.glue_role_arn:
            raise ValueError("LAKEHOUSE_GLUE_ROLE_ARN must be set for LAKEHOUSE_RUNNER=glue")
        if not settings.templates_uri.startswith("s3://") or not settings.lake_uri.startswith("s3://"):
            raise ValueError("LAKEHOUSE_TEMPLATES_URI and LAKEHOUSE_LAKE_URI must be s3:// URIs for Glue")
        return cls(settings.glue_role_arn, settings.templates_uri, settings.lake_uri,
                   settings.catalog_name, settings.aws_region, connections=settings.glue_connections)

    def _script_uri(self, script_location: str) -> str:
        if script_location.startswith("s3://"):
            return script_location
        return f"{self.templates_uri.rstrip('/')}/{script_location.lstrip('/')}"

    def run(self, request: JobRequest) -> JobResult:
        job_name = f"lakehouse-{request.flow_id}-{request.task_id}-{uuid.uuid4().hex[:8]}"[:255]
        metrics_uri = f"{self.lake_uri.rstrip('/')}/_metrics/{request.batch_id}/{job_name}.json"
        self.client.create_job(
            Name=job_name,
            Role=self.role_arn,
            Command={"Name": "glueetl", "ScriptLocation": self._script_uri(request.script_location),
                     "PythonVersion": "3"},
            GlueVersion=self.glue_version,
            WorkerType=self.worker_type,
            NumberOfWorkers=self.number_of_workers,
            Timeout=max(1, (request.timeout_seconds or 2880 * 60) // 60),
            DefaultArguments={
                "--datalake-formats": "iceberg",
                "--extra-py-files": f"{self.templates_uri.rstrip('/')}/lakehouse_jobs.zip",
                "--conf": glue_catalog_conf(self.catalog_name, f"{self.lake_uri.rstrip('/')}/warehouse"),
                "--enable-metrics": "true",
            },
            Tags={"lakehouse:flow_id": request.flow_id, "lakehouse:task_id": request.task_id},
            **({"Connections": {"Connections": list(self.connections)}} if self.connections else {}),
        )
        arguments = {f"--{k}": v for k, v in job_arguments(request, self.lake_uri, metrics_uri).items()}
        run_id = self.client.start_job_run(JobName=job_name, Arguments=arguments)["JobRunId"]
        state, message = self._wait(job_name, run_id)
        if state != "SUCCEEDED":
            ended = f"Glue job {job_name} run {run_id} ended {state}: {message}"
            raise JobFailedError.from_metrics(self._failure_metrics(metrics_uri), ended, run_id, details=ended)
        metrics = self._read_metrics(metrics_uri)
        self.client.delete_job(JobName=job_name)
        return JobResult(metrics, external_run_id=run_id)

    def _wait(self, job_name: str, run_id: str) -> tuple[str, str]:
        while True:
            run = self.client.get_job_run(JobName=job_name, RunId=run_id)["JobRun"]
            if run["JobRunState"] not in _RUNNING:
                return run["JobRunState"], run.get("ErrorMessage", "")
            time.sleep(self.poll_seconds)

    def _failure_metrics(self, metrics_uri: str) -> dict[str, Any] | None:
        """What a failed job reported before it ended (its reason and counts), if it got that far."""
        try:
            return self._read_metrics(metrics_uri)
        except JobFailedError:
            return None

    def _read_metrics(self, metrics_uri: str) -> dict[str, Any]:
        bucket, _, key = metrics_uri.removeprefix("s3://").partition("/")
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except self.s3.exceptions.NoSuchKey as exc:
            raise JobFailedError(f"Glue job succeeded but wrote no metrics to {metrics_uri}") from exc
        return parse_metrics(body, metrics_uri)
