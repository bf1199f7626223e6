"""The frame every template runs in: parse arguments, get the session, run, report.

Keeping this in one place means each template is only its data logic, and every template reports
the same way: metrics JSON on success and on failure, one summary line on stdout, and the original
exception re-raised so ``spark-submit`` (or Glue) exits non-zero.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pyspark.sql import SparkSession

from lakehouse_jobs.args import COMMON_ARGS, ArgSpec, JobArgumentError, parse_job_args
from lakehouse_jobs.metrics import JobFailure, error_summary, error_text, summary_line, write_metrics

__all__ = ["TemplateBody", "run_template", "spark_settings"]

TemplateBody = Callable[[SparkSession, dict[str, Any]], Mapping[str, Any]]

_CORE_METRICS = {"rows_in": 0, "rows_out": 0, "rows_rejected": 0}


def run_template(template: str, argv: Sequence[str], spec: Sequence[ArgSpec], body: TemplateBody) -> dict[str, Any]:
    """Run ``body(spark, args)`` and return its metrics (also written to ``--metrics_uri``).

    The session is ``getOrCreate``: under spark-submit or Glue it is the job's session, in tests the
    shared one. It is not stopped here, for the same reason.
    """
    started = time.monotonic()
    try:
        args = parse_job_args(argv, [*COMMON_ARGS, *spec])
    except JobArgumentError as exc:
        _report_bad_arguments(template, argv, exc)
        raise
    spark = SparkSession.builder.appName(f"lakehouse.{template}").getOrCreate()
    base = {"template": template, "batch_id": args["batch_id"], "flow_id": args["flow_id"], "task_id": args["task_id"]}
    try:
        produced = body(spark, args)
    except BaseException as exc:
        partial = exc.metrics if isinstance(exc, JobFailure) else {}
        # no default counts here: a count the job did not reach is unknown (NULL in the audit), not 0
        failed = {**base, **partial, **_error_keys(exc), "seconds": round(time.monotonic() - started, 3)}
        try:
            write_metrics(args["metrics_uri"], failed)
        except Exception as write_error:  # the job's own error matters more than the report's
            print(f"[{template}] could not write failure metrics: {write_error}", file=sys.stderr)
        print(summary_line(template, failed), flush=True)
        raise
    metrics = {**_CORE_METRICS, **base, **produced, "seconds": round(time.monotonic() - started, 3)}
    write_metrics(args["metrics_uri"], metrics)
    print(summary_line(template, metrics), flush=True)
    return metrics


def _report_bad_arguments(template: str, argv: Sequence[str], error: JobArgumentError) -> None:
    """Bad arguments are reported like any failure when at least ``--metrics_uri`` is readable."""
    failed = {"template": template, **_error_keys(error)}
    try:
        write_metrics(parse_job_args(argv, [ArgSpec("metrics_uri")])["metrics_uri"], failed)
    except Exception as write_error:
        print(f"[{template}] could not write failure metrics: {write_error}", file=sys.stderr)
    print(summary_line(template, failed), flush=True)


def _error_keys(exc: BaseException) -> dict[str, str]:
    """``error``: the full text for the log; ``error_summary``: the one line the audit row keeps."""
    return {"error": f"{type(exc).__name__}: {error_text(exc)}", "error_summary": error_summary(exc)}


@contextmanager
def spark_settings(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Set session settings for a while, then put back what was there (or unset it): a template
    tunes Spark for one statement without changing the session the next template runs in."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)
