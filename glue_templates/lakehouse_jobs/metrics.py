"""The job's report to the orchestrator: one small JSON object at ``--metrics_uri``.

The orchestrator cannot see inside Spark, so every template ends by writing the same core keys
(``rows_in``, ``rows_out``, ``rows_rejected``) plus its own extras. On failure the file is
written too, with ``"error"``, so a failed task's log and audit row still carry the counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lakehouse_jobs.io import write_text

__all__ = ["JobFailure", "summary_line", "write_metrics"]


class JobFailure(RuntimeError):
    """A job failed for a data reason after computing (some) metrics; they go into the metrics file."""

    def __init__(self, message: str, metrics: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metrics: dict[str, Any] = dict(metrics or {})


def write_metrics(uri: str | None, metrics: Mapping[str, Any]) -> None:
    """Write the metrics JSON when a destination was given; a job run by hand may omit it."""
    if uri:
        write_text(uri, json.dumps(dict(metrics), default=str, sort_keys=True))


def summary_line(template: str, metrics: Mapping[str, Any]) -> str:
    """One greppable line for the task log, e.g. ``[landing_to_raw] ok rows_in=5 rows_out=4 ...``."""
    status = "FAILED" if "error" in metrics else "ok"
    counts = " ".join(f"{k}={metrics[k]}" for k in ("rows_in", "rows_out", "rows_rejected") if k in metrics)
    error = str(metrics.get("error", "")).strip().splitlines()
    return f"[{template}] {status} {counts}".rstrip() + (f" error={error[0][:300]}" if error else "")
