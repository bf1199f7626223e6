"""A test run leaves nothing behind: not when it ends, and not when it is killed with TERM (a CI
timeout, ``timeout``). Each case runs pytest with the project's conftest on a two-test file, in a
child process with its own ports and home."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lakehouse.stack.processes import processes_using_home

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parent
INNER = '''
import os
import time
from pathlib import Path


def ready():
    """Name this run's home in the ready file, whole or not at all (the test polls for it)."""
    partial = Path(os.environ["READY_FILE"] + ".partial")
    partial.write_text(os.environ["LAKEHOUSE_HOME"])
    partial.rename(os.environ["READY_FILE"])


def test_holds_postgres(pg):
    ready()
    time.sleep(600)  # until the TERM


def test_needs_no_service():
    ready()
'''


def _start(tmp_path: Path, test: str) -> tuple[subprocess.Popen[str], Path]:
    (tmp_path / "test_inner.py").write_text(INNER)
    ready = tmp_path / "ready"
    offset = int(os.environ.get("LAKEHOUSE_TEST_PORT_OFFSET", "0")) + 700  # beside this run's services
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "LAKEHOUSE_TEST_PORT_OFFSET": str(offset),
        "READY_FILE": str(ready),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", f"test_inner.py::{test}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, ready


def _finish(process: subprocess.Popen[str]) -> str:
    """The run's output once it has ended; a run that does not end is killed and fails the test."""
    try:
        return process.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the inner run did not end:\n{process.communicate()[0]}")


def _wait_for(ready: Path, process: subprocess.Popen[str]) -> Path:
    deadline = time.monotonic() + 180
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the inner run never got ready:\n{process.communicate()[0]}")
        time.sleep(0.2)
    return Path(ready.read_text())


def test_a_run_killed_with_term_stops_its_postgres_and_removes_its_home(tmp_path: Path) -> None:
    process, ready = _start(tmp_path, "test_holds_postgres")
    home = _wait_for(ready, process)
    assert processes_using_home(home), "the inner run should have its Postgres running"
    process.terminate()
    output = _finish(process)
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    assert processes_using_home(home) == [], output
    assert not home.exists(), output


def test_a_run_without_services_removes_its_home(tmp_path: Path) -> None:
    process, ready = _start(tmp_path, "test_needs_no_service")
    output = _finish(process)
    assert process.returncode == 0, output
    home = Path(ready.read_text())
    assert home.name.startswith("lakehouse-test-")
    assert not home.exists(), output
