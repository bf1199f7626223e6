"""Run a template on this machine: on a warm driver of the stack's Spark pool, or with ``spark-submit``.

``LAKEHOUSE_SPARK_MODE=warm`` (the default) hands the run to a ready driver of the pool
(:mod:`lakehouse.runners.spark_pool`): no JVM start, session build or catalog load per task.
``submit`` starts ``spark-submit`` per run, as before; ``warm`` falls back to it, saying so in the
task log, when the pool does not run. Both run the same entry script with the same arguments and
environment and report the same way (the metrics file), so nothing downstream can tell them apart.

The Spark configuration (which holds the catalog password) goes into a 0600 properties file,
not onto the command line where ``ps`` would show it. The job runs in its own process group so
a timeout or a killed task takes the whole JVM with it, and the kernel kills it when the task
process dies without that chance (SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from lakehouse.config import Settings
from lakehouse.runners.base import JobFailedError, JobRequest, JobResult, job_arguments, parse_metrics
from lakehouse.runners.spark_conf import local_spark_conf
from lakehouse.runners.spark_pool import PoolUnavailableError, request_run
from lakehouse.stack.jars import iceberg_runtime, provision_jars

__all__ = ["SECRETS_VARIABLE", "LocalSparkRunner", "resolve_script"]

#: Where a job finds its task's resolved secrets (lakehouse_jobs.secrets reads it).
SECRETS_VARIABLE = "LAKEHOUSE_SECRETS_JSON"


def resolve_script(settings: Settings, script_location: str) -> Path:
    if script_location.startswith("s3://"):
        raise JobFailedError(f"the local runner cannot run {script_location}: use a local templates location")
    path = Path(script_location.removeprefix("file://"))
    if not path.is_absolute():
        path = Path(settings.templates_uri.removeprefix("file://")) / path
    if not path.is_file():
        raise JobFailedError(f"template script {path} does not exist")
    return path


class LocalSparkRunner:
    name = "local"

    def __init__(self, settings: Settings, mode: str | None = None) -> None:
        self.settings = settings
        self.mode = mode or settings.spark_mode

    def job_variables(self, secrets: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
        """What a job needs besides its arguments: S3 access for landing, the warehouse login, and
        the task's resolved secrets (``LAKEHOUSE_SECRETS_JSON``: not on the command line, which any
        local user can read with ``ps``)."""
        s = self.settings
        variables = {
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "AWS_ACCESS_KEY_ID": s.s3_access_key_id,
            "AWS_SECRET_ACCESS_KEY": s.s3_secret_access_key,
            "AWS_DEFAULT_REGION": s.aws_region,
            "AWS_ENDPOINT_URL_S3": s.s3_endpoint_url,
            "LAKEHOUSE_WAREHOUSE_JDBC_URL": s.jdbc_url(s.warehouse_db),
            "LAKEHOUSE_WAREHOUSE_USER": s.pg_user,
            "LAKEHOUSE_WAREHOUSE_PASSWORD": s.pg_password,
        }
        if secrets:
            variables[SECRETS_VARIABLE] = json.dumps(secrets)
        return variables

    def job_environment(self, secrets: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
        """This process's environment with :meth:`job_variables` on top, and no other task's secrets."""
        env = dict(os.environ)
        env.pop(SECRETS_VARIABLE, None)
        env.update(self.job_variables(secrets))
        return env

    def script_arguments(self, request: JobRequest, metrics_file: Path) -> list[str]:
        """The entry script and its Glue-style ``--name value`` arguments, however it is run."""
        argv = [str(resolve_script(self.settings, request.script_location))]
        for name, value in job_arguments(request, self.settings.lake_uri, str(metrics_file)).items():
            argv += [f"--{name}", value]
        return argv

    def command(self, request: JobRequest, properties_file: Path, metrics_file: Path) -> list[str]:
        spark_submit = Path(sys.executable).with_name("spark-submit")
        return [
            str(spark_submit if spark_submit.exists() else "spark-submit"),
            "--properties-file",
            str(properties_file),
            "--name",
            f"{request.flow_id}.{request.task_id}",
            *self.script_arguments(request, metrics_file),
        ]

    def run(self, request: JobRequest) -> JobResult:
        provision_jars(self.settings.jars_dir, iceberg_runtime(self.settings.iceberg_version))
        work = self.settings.home / "run" / "jobs"
        work.mkdir(parents=True, exist_ok=True)
        job_id = f"{request.batch_id}.{request.task_id}.{uuid.uuid4().hex[:8]}"
        metrics_file = work / f"{job_id}.metrics.json"
        try:
            if self.mode == "warm":
                try:
                    return self._execute_warm(request, metrics_file, job_id)
                except PoolUnavailableError as exc:
                    sys.stdout.write(f"{exc}: running the template with spark-submit instead\n")
            with tempfile.NamedTemporaryFile("w", dir=work, suffix=".conf", delete=False) as props:
                os.chmod(props.name, 0o600)
                for key, value in local_spark_conf(self.settings).items():
                    props.write(f"{key} {value}\n")
            try:
                return self._execute(request, Path(props.name), metrics_file, job_id)
            finally:
                Path(props.name).unlink(missing_ok=True)
        finally:
            metrics_file.unlink(missing_ok=True)

    def _execute_warm(self, request: JobRequest, metrics_file: Path, job_id: str) -> JobResult:
        """The run on a warm driver; leaving early (timeout, the task killed) closes the connection,
        and the pool then kills that driver, which stops the run's Spark work."""
        tail: deque[str] = deque(maxlen=60)
        script, *arguments = self.script_arguments(request, metrics_file)
        deadline = time.monotonic() + request.timeout_seconds if request.timeout_seconds else None

        def write(line: str) -> None:  # streamed into the Airflow task log as it comes
            sys.stdout.write(line)
            tail.append(line.rstrip())
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} exceeded {request.timeout_seconds}s")

        outcome = request_run(
            self.settings,
            {
                "script": script,
                "argv": arguments,
                "env": self.job_variables(request.secrets),
                "unset": [SECRETS_VARIABLE],
                "run_id": job_id,
                "description": f"{request.flow_id}.{request.task_id}",
            },
            write,
        )
        if outcome.get("status") == "crashed":
            raise JobFailedError(str(outcome.get("error")), job_id, details=_output_tail(tail))
        return self._result(
            0 if outcome.get("status") == "ok" else 1,
            tail,
            metrics_file,
            job_id,
            headline=str(outcome.get("error") or ""),
        )

    def _execute(self, request: JobRequest, properties_file: Path, metrics_file: Path, job_id: str) -> JobResult:
        argv = self.command(request, properties_file, metrics_file)
        tail: deque[str] = deque(maxlen=60)
        proc = subprocess.Popen(
            argv,
            env=self.job_environment(request.secrets),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + request.timeout_seconds if request.timeout_seconds else None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # streamed into the Airflow task log as it comes
                sys.stdout.write(line)
                tail.append(line.rstrip())
                if deadline and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} exceeded {request.timeout_seconds}s")
            proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        return self._result(proc.returncode, tail, metrics_file, job_id)

    def _result(
        self, returncode: int, tail: deque[str], metrics_file: Path, job_id: str, headline: str = ""
    ) -> JobResult:
        """The job's outcome from its metrics file, however it ran."""
        if returncode != 0:
            reported = None
            if metrics_file.exists():  # the job's own report of why: written before it exited
                try:
                    reported = parse_metrics(metrics_file.read_text(), str(metrics_file))
                except JobFailedError:
                    reported = None
            raise JobFailedError.from_metrics(
                reported, headline or _headline(tail, returncode), job_id, details=_output_tail(tail)
            )
        if not metrics_file.exists():
            raise JobFailedError(f"job {job_id} exited 0 but wrote no metrics to {metrics_file}", job_id)
        return JobResult(parse_metrics(metrics_file.read_text(), str(metrics_file)), external_run_id=job_id)


def _die_with_parent() -> None:
    """In the child before ``exec``: the kernel kills the job when the task process dies, even by
    SIGKILL, which leaves no chance to kill its group (an orphan JVM would go on writing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _headline(tail: deque[str], returncode: int) -> str:
    """Why the job failed when it wrote no report (it crashed or was killed before): the last
    exception line of its output, else how the process ended."""
    errors = [ln for ln in tail if ln and not ln.startswith((" ", "\t")) and ("Error" in ln or "Exception" in ln)]
    if errors:
        return errors[-1]
    if returncode < 0:
        return f"spark-submit was killed by signal {-returncode} before the job reported anything"
    return f"spark-submit exited {returncode} before the job reported anything"


def _output_tail(tail: deque[str]) -> str:
    return "--- last lines of the job's output ---\n" + "\n".join(list(tail)[-25:])
