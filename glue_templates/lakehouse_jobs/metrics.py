"""The job's report to the orchestrator: one small JSON object at ``--metrics_uri``.

The orchestrator cannot see inside Spark, so every template ends by writing the same core keys
(``rows_in``, ``rows_out``, ``rows_rejected``) plus its own extras. On failure the file is
written too, with ``"error"`` (the full text) and ``"error_summary"`` (one line, see
:func:`error_summary`), so a failed task's log and audit row still carry the counts and the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from py4j.protocol import Py4JJavaError

from lakehouse_jobs.args import JobArgumentError
from lakehouse_jobs.io import write_text

__all__ = ["SUMMARY_MAX_CHARS", "JobFailure", "error_summary", "error_text", "summary_line", "write_metrics"]

#: the longest ``error_summary``; an audit column and a log line both stay readable at this length
SUMMARY_MAX_CHARS = 500

# "org.apache.iceberg.exceptions.CommitFailedException: message" (or the class alone), as a line
# of a Py4JJavaError's text; that text's first line is py4j's "An error occurred while calling
# o123.parquet." and the Java line follows as ": <class>: <message>"
_JAVA_EXCEPTION_LINE = re.compile(r"^:?\s*(?:[a-z_$][\w$]*\.)+(?P<name>[A-Z][\w$]*)(?P<rest>:.*)?$")


class JobFailure(RuntimeError):
    """A job failed for a data reason after computing (some) metrics; they go into the metrics file."""

    def __init__(self, message: str, metrics: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metrics: dict[str, Any] = dict(metrics or {})


def write_metrics(uri: str | None, metrics: Mapping[str, Any]) -> None:
    """Write the metrics JSON when a destination was given; a job run by hand may omit it."""
    if uri:
        write_text(uri, json.dumps(dict(metrics), default=str, sort_keys=True))


def error_text(exc: BaseException) -> str:
    """``str(exc)``, never raising: a Py4J error's text is fetched from the JVM, which may be gone
    by the time a failure is reported, and the report must still be written."""
    try:
        return str(exc)
    except Exception:
        errmsg = getattr(exc, "errmsg", None)  # Py4JJavaError keeps py4j's own first line
        return str(errmsg) if errmsg else ""


def error_summary(exc: BaseException) -> str:
    """The reason a job failed, in ONE line of at most :data:`SUMMARY_MAX_CHARS` characters.

    The orchestrator stores it in the task's audit row, so it must name the file, row or field
    the way the job's own message does, without a JVM stack trace or query plan:

    - :class:`JobFailure`, :class:`JobArgumentError` and plain ``ValueError`` (the templates' own
      messages): the message, its non-empty lines joined with ``"; "``, no type prefix;
    - PySpark errors (``AnalysisException`` ...): ``"<ClassName>: <first line>"``;
    - ``Py4JJavaError``: the Java exception's line without its package, e.g.
      ``"CommitFailedException: <message>"``;
    - anything else: ``"<TypeName>: <first non-empty line>"``.

    A cut summary ends in "…".
    """
    text = error_text(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # ValueError subclasses from libraries (JSONDecodeError, UnicodeDecodeError) keep their type
    if isinstance(exc, (JobFailure, JobArgumentError)) or type(exc) is ValueError:
        return _one_line("; ".join(lines) or type(exc).__name__)
    if isinstance(exc, Py4JJavaError):
        for line in lines:
            java = _JAVA_EXCEPTION_LINE.match(line)
            if java:
                return _one_line(java["name"] + (java["rest"] or ""))
    return _one_line(f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__)


def _one_line(text: str) -> str:
    """No line breaks of any kind (``splitlines`` knows them all), at most the limit, "…" when cut."""
    flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= SUMMARY_MAX_CHARS else flat[: SUMMARY_MAX_CHARS - 1].rstrip() + "…"


def summary_line(template: str, metrics: Mapping[str, Any]) -> str:
    """One greppable line for the task log, e.g. ``[landing_to_raw] ok rows_in=5 rows_out=4 ...``."""
    status = "FAILED" if "error" in metrics else "ok"
    counts = " ".join(f"{k}={metrics[k]}" for k in ("rows_in", "rows_out", "rows_rejected") if k in metrics)
    error = metrics.get("error_summary") or next(iter(str(metrics.get("error", "")).strip().splitlines()), "")
    return f"[{template}] {status} {counts}".rstrip() + (f" error={_one_line(str(error))}" if error else "")
