"""The local runner's command line: Glue-style arguments, secrets kept off the command line."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from lakehouse.config import Settings
from lakehouse.runners import JobFailedError, JobRequest
from lakehouse.runners.local_spark import LocalSparkRunner, _error_summary, resolve_script


def test_command_has_glue_style_arguments_and_no_password(settings: Settings, tmp_path: Path) -> None:
    runner = LocalSparkRunner(settings)
    script = tmp_path / "job.py"
    script.write_text("print('job')\n")
    request = JobRequest("invoices", "load", "landing_to_raw", str(script), "r1", "b1", {"dataset": "inv"})
    argv = runner.command(request, tmp_path / "spark.conf", tmp_path / "m.json")
    assert argv[0].endswith("spark-submit")
    assert argv[argv.index("--properties-file") + 1] == str(tmp_path / "spark.conf")
    script_at = argv.index(str(script))
    pairs = dict(zip(argv[script_at + 1 :: 2], argv[script_at + 2 :: 2]))
    assert pairs["--dataset"] == "inv" and pairs["--batch_id"] == "b1" and pairs["--lake_uri"] == settings.lake_uri
    assert "jdbc.password" not in " ".join(argv) and settings.pg_password not in argv


def test_missing_script_is_named(settings: Settings) -> None:
    with pytest.raises(JobFailedError, match="nope.py does not exist"):
        resolve_script(settings, "nope.py")
    with pytest.raises(JobFailedError, match="cannot run s3://"):
        resolve_script(settings, "s3://b/x.py")


def test_error_summary_leads_with_the_jobs_exception() -> None:
    tail = deque(["INFO starting", "Traceback (most recent call last):", '  File "x.py"',
                  "ValueError: column amount: 'abc' is not decimal(12,2)", "INFO shutdown"])
    assert _error_summary(tail, 1).splitlines()[0] == "ValueError: column amount: 'abc' is not decimal(12,2)"
