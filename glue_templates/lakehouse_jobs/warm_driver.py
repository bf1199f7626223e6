"""A warm Spark driver: one JVM and SparkContext kept up, running template entry scripts one at a time.

The local stack's Spark pool starts it with ``spark-submit`` (the jars and settings a template's
own ``spark-submit`` gets) and hands it runs over a Unix socket, so a task pays no JVM start,
session build or catalog load. The entry scripts run unchanged, as ``__main__`` with their
Glue-style arguments, exactly as under ``spark-submit`` or on Glue.

Each run gets what a fresh ``spark-submit`` would have given it:

- its own ``SparkSession`` (``newSession``): SQL settings, temporary views and UDFs of one run never
  reach the next, and the session's own catalog instance loads table metadata afresh, so a run
  sees every commit made before it (no cached Iceberg metadata);
- its own environment (credentials, the task's secrets), applied for the run and put back after;
- a Spark job group named after the run.

The driver serves one run at a time; the pool runs several drivers for concurrency and replaces
one that crashed, hangs, grew too large or served its quota of runs. Two private hooks are used
and tested with PySpark 3.5: ``SparkSession._instantiatedSession`` / ``_activeSession`` (what
``SparkSession.builder.getOrCreate()`` returns, so a template gets the run's session), together
with the public JVM calls ``SparkSession.setDefaultSession`` / ``setActiveSession``.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import socket
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

__all__ = ["RUN_END_MARKER", "main", "run_script"]

#: Printed (and flushed) after a run's output, so the pool knows every line before it belongs to it.
RUN_END_MARKER = "\x1elakehouse-warm-run-end"


def _make_current(session: SparkSession) -> None:
    """``SparkSession.builder.getOrCreate()`` (what every template calls) returns this session.

    PySpark has no setter for the current session: its two class attributes are what
    ``getOrCreate`` reads, and the JVM's ``SparkSession.setDefaultSession``/``setActiveSession``
    (public Scala API, reached through py4j) are what JVM code such as Iceberg's procedures reads.
    Tested on Spark 3.5.9 (the pinned pyspark); not used on Glue, where each run is its own job.
    """
    SparkSession._instantiatedSession = session
    SparkSession._activeSession = session
    jvm_session = session._jvm.SparkSession  # type: ignore[union-attr]
    jvm_session.setDefaultSession(session._jsparkSession)
    jvm_session.setActiveSession(session._jsparkSession)


def _apply_environment(env: Mapping[str, str], unset: Sequence[str]) -> dict[str, str | None]:
    """Set the run's variables; returns what to put back."""
    previous: dict[str, str | None] = {}
    for name in {*env, *unset}:
        previous[name] = os.environ.get(name)
    for name in unset:
        os.environ.pop(name, None)
    os.environ.update(env)
    return previous


def _restore_environment(previous: Mapping[str, str | None]) -> None:
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def run_script(base: SparkSession, request: Mapping[str, Any]) -> dict[str, Any]:
    """Run one entry script as ``__main__`` in a session of its own; never raises."""
    session = base.newSession()
    _make_current(session)
    previous_env = _apply_environment(request.get("env") or {}, request.get("unset") or ())
    previous_argv = sys.argv
    script = str(request["script"])
    sys.argv = [script, *request.get("argv", ())]
    context = base.sparkContext
    context.setJobGroup(
        str(request.get("run_id", "run")), str(request.get("description", script)), interruptOnCancel=True
    )
    outcome: dict[str, Any] = {"status": "ok"}
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:  # an entry script may exit like a program does
        if exc.code not in (None, 0):
            outcome = {"status": "failed", "error": f"the script exited with {exc.code}"}
    except BaseException as exc:  # the run's failure is reported, the driver stays up
        traceback.print_exc()
        outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
    finally:
        context.cancelJobGroup(str(request.get("run_id", "run")))  # nothing of this run outlives it
        # None removes the property (the JVM's setLocalProperty takes null); PySpark annotates value as str
        context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        context.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
        sys.argv = previous_argv
        _restore_environment(previous_env)
        _make_current(base)
        print(RUN_END_MARKER, flush=True)
        sys.stderr.flush()
    return outcome


def serve(base: SparkSession, path: Path) -> None:
    """Accept the pool's connection and run what it sends, one JSON line each, until it hangs up."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)
    server.bind(str(path))
    server.listen(1)
    print(f"lakehouse warm driver ready on {path}", flush=True)
    conn, _ = server.accept()
    server.close()
    path.unlink(missing_ok=True)
    with conn, conn.makefile("r", encoding="utf-8") as requests:
        for line in requests:
            outcome = run_script(base, json.loads(line))
            conn.sendall((json.dumps(outcome) + "\n").encode())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a warm Spark driver of the local stack's Spark pool")
    parser.add_argument("--socket", required=True, type=Path, help="Unix socket to serve runs on")
    args = parser.parse_args(argv)
    base = SparkSession.builder.appName("lakehouse-warm-driver").getOrCreate()
    base.sql("SHOW NAMESPACES").collect()  # the catalog and its JDBC driver loaded before the first run
    serve(base, args.socket)


if __name__ == "__main__":
    main()
