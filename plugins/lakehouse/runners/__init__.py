"""Runners launch a template job and wait for it: locally with spark-submit, on AWS with Glue.

The runner interface is the seam of the scale-out path: adding EMR Serverless means adding a
runner, never touching templates or DAG code.
"""

from lakehouse.runners.base import JobFailedError, JobRequest, JobResult, JobRunner, get_runner

__all__ = ["JobFailedError", "JobRequest", "JobResult", "JobRunner", "get_runner"]
