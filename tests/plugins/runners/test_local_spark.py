"""The local runner's command line: Glue-style arguments, secrets kept off the command line."""

from __future__ import annotations

import json
import re
import sys
from collections import deque
from pathlib import Path

import pytest

from lakehouse.config import Settings
from lakehouse.runners import JobFailedError, JobRequest
from lakehouse.runners.local_spark import LocalSparkRunner, _headline, resolve_script


def test_command_has_glue_style_arguments_and_no_password(settings: Settings, tmp_path: Path) -> None:
    runner = LocalSparkRunner(settings)
    script = tmp_path / "job.py"
    script.write_text("print('job')\n")
    request = JobRequest("invoices", "load", "landing_to_raw", str(script), "r1", "b1", {"dataset": "inv"})
    argv = runner.command(request, tmp_path / "spark.conf", tmp_path / "m.json")
    assert argv[0].endswith("spark-submit")
    assert argv[argv.index("--properties-file") + 1] == str(tmp_path / "spark.conf")
    script_at = argv.index(str(script))
    pairs = dict(zip(argv[script_at + 1 :: 2], argv[script_at + 2 :: 2], strict=True))
    assert pairs["--dataset"] == "inv" and pairs["--batch_id"] == "b1" and pairs["--lake_uri"] == settings.lake_uri
    assert "jdbc.password" not in " ".join(argv) and settings.pg_password not in argv


def test_missing_script_is_named(settings: Settings) -> None:
    with pytest.raises(JobFailedError, match=re.escape("nope.py does not exist")):
        resolve_script(settings, "nope.py")
    with pytest.raises(JobFailedError, match="cannot run s3://"):
        resolve_script(settings, "s3://b/x.py")


def test_without_a_report_the_headline_is_the_jobs_last_exception_or_how_it_ended() -> None:
    tail = deque(
        [
            "INFO starting",
            "Traceback (most recent call last):",
            '  File "x.py"',
            "ValueError: column amount: 'abc' is not decimal(12,2)",
            "INFO shutdown",
        ]
    )
    assert _headline(tail, 1) == "ValueError: column amount: 'abc' is not decimal(12,2)"
    assert _headline(deque(["INFO starting"]), -9) == (
        "spark-submit was killed by signal 9 before the job reported anything"
    )


def test_a_failed_job_is_its_own_one_line_reason_with_the_counts_it_reported(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the job wrote to its metrics file wins over the log tail; the tail stays in details."""
    report = {
        "rows_in": 5,
        "rows_out": 0,
        "rows_rejected": 3,
        "error": "JobFailure: multi\nline",
        "error_summary": "landing file s3://landing/c/bad.csv: 3 of 5 lines rejected (60.0%)",
    }
    script = (
        f"import json, sys; print('Traceback (most recent call last):'); print('JobFailure: multi'); "
        f"json.dump({report!r}, open(sys.argv[1], 'w')); sys.exit(1)"
    )
    runner = LocalSparkRunner(settings, mode="submit")  # the spark-submit path; the warm one has its own tests
    monkeypatch.setattr(runner, "command", lambda request, props, metrics: [sys.executable, "-c", script, str(metrics)])
    request = JobRequest("customers", "to_raw", "landing_to_raw", "landing_to_raw.py", "r1", "b1")
    with pytest.raises(JobFailedError) as failed:
        runner.run(request)
    assert str(failed.value) == report["error_summary"]
    assert failed.value.metrics["rows_rejected"] == 3 and failed.value.metrics["rows_in"] == 5
    assert (
        "--- last lines of the job's output ---" in failed.value.details and "JobFailure: multi" in failed.value.details
    )


def test_task_secrets_go_to_the_environment_not_the_command(settings: Settings, tmp_path: Path) -> None:
    runner = LocalSparkRunner(settings)
    secrets = {"shop_login": {"host": "db", "username": "loader", "password": "pw-4c3b2a"}}
    request = JobRequest(
        "f",
        "t",
        "stage_to_presentation",
        "stage_to_presentation.py",
        "run_1",
        "run_1",
        {"secret_id": "shop_login"},
        secrets=secrets,
    )
    argv = runner.command(request, tmp_path / "p.conf", tmp_path / "m.json")
    assert "pw-4c3b2a" not in " ".join(argv) and "pw-4c3b2a" not in repr(request)
    assert json.loads(runner.job_environment(request.secrets)["LAKEHOUSE_SECRETS_JSON"]) == secrets
    assert "LAKEHOUSE_SECRETS_JSON" not in runner.job_environment()


def test_the_job_dies_with_a_task_process_killed_by_sigkill(tmp_path: Path) -> None:
    """A SIGKILLed task cannot kill its job's group; the kernel does (no orphan JVM writing on)."""
    import os
    import signal
    import subprocess
    import time

    pid_file = tmp_path / "job.pid"
    job_script = tmp_path / "job.py"
    job_script.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n")
    task_script = tmp_path / "task.py"
    task_script.write_text(
        "import sys\n"
        "from lakehouse.config import load_settings\n"
        "from lakehouse.runners import JobRequest\n"
        "from lakehouse.runners.local_spark import LocalSparkRunner\n"
        "runner = LocalSparkRunner(load_settings())\n"
        f"runner.command = lambda request, props, metrics: [sys.executable, {str(job_script)!r}]\n"
        f"runner._execute(JobRequest('f', 't', 'x', 'x.py', 'r', 'b'), None, {str(tmp_path / 'm.json')!r}, 'job')\n"
    )
    task = subprocess.Popen([sys.executable, str(task_script)])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and task.poll() is None, "the job never started"
        time.sleep(0.1)
    job = int(pid_file.read_text())
    os.kill(task.pid, signal.SIGKILL)
    task.wait()

    def alive() -> bool:
        try:
            return Path(f"/proc/{job}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while alive():
        assert time.monotonic() < deadline, "the job outlived its SIGKILLed task"
        time.sleep(0.1)
