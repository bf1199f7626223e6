"""The pool of warm drivers, with a stand-in driver that speaks the same protocol without Spark:
output and outcome reach the task, a task that leaves kills its driver, a crashed driver fails its
run and is replaced, drivers are recycled, and runs on different drivers go on at once."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lakehouse.config import Settings
from lakehouse.runners.spark_pool import PoolUnavailableError, SparkPool, pool_socket, pool_status, request_run

FAKE = Path(__file__).with_name("fake_warm_driver.py")


@pytest.fixture
def pool_settings(settings: Settings, tmp_path: Path) -> Settings:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "job.py").write_text("# a template\n")
    return settings.model_copy(update={"home": tmp_path / "home", "templates_uri": str(templates)})


def start(settings: Settings, size: int = 1, max_runs: int = 50, start_delay: list[float] | None = None) -> SparkPool:
    """A pool of fake drivers; ``start_delay[0]``, read at each start, makes drivers slow to start."""
    delay = start_delay or [0.0]
    pool = SparkPool(
        settings,
        size,
        max_runs,
        max_rss_mb=10_000,
        command=lambda sock, props: [sys.executable, str(FAKE), "--socket", str(sock), "--start-delay", str(delay[0])],
    )
    threading.Thread(target=pool.serve_forever, args=(pool_socket(settings),), daemon=True).start()
    deadline = time.monotonic() + 30
    while len((pool_status(settings) or {}).get("ready", [])) < size:
        assert time.monotonic() < deadline, "the fake drivers never became ready"
        time.sleep(0.1)
    return pool


@pytest.fixture
def pool(pool_settings: Settings) -> Iterator[SparkPool]:
    pool = start(pool_settings)
    yield pool
    pool.stop()


def driver_pid(lines: list[str]) -> str:
    """Which driver ran it: the fake driver prints ``pid=<n> ...``."""
    return next(line.split()[0] for line in lines if line.startswith("pid="))


def run(settings: Settings, script: str, **extra: object) -> tuple[dict, list[str]]:
    lines: list[str] = []
    outcome = request_run(
        settings, {"script": script, "argv": ["--a", "1"], "env": {}, "run_id": "r", **extra}, lines.append
    )
    return outcome, lines


def test_output_and_outcome_reach_the_task(pool: SparkPool, pool_settings: Settings) -> None:
    outcome, lines = run(pool_settings, "echo", env={"FAKE_SECRET": "s1"})
    assert outcome == {"status": "ok"}
    assert any("argv=['--a', '1'] secret=s1" in line for line in lines), lines
    failed, _ = run(pool_settings, "fail")
    assert failed == {"status": "failed", "error": "ValueError: told to fail"}
    assert pool.status()["served"] == 2 and len(pool.status()["ready"]) == 1  # one driver served both


def test_a_crashed_driver_fails_its_run_and_is_replaced(pool: SparkPool, pool_settings: Settings) -> None:
    _, before = run(pool_settings, "echo")
    outcome, lines = run(pool_settings, "crash")
    assert outcome["status"] == "crashed" and "died during the run (exit 3)" in outcome["error"]
    assert any("about to crash" in line for line in lines)
    _, after = run(pool_settings, "echo")  # served by a new driver, never the dead one
    assert driver_pid(after) != driver_pid(before)


def test_a_task_that_leaves_mid_run_stops_its_driver(pool: SparkPool, pool_settings: Settings) -> None:
    """What a killed or timed-out task does: it closes the connection; the pool kills the driver."""
    _, before = run(pool_settings, "echo")
    with pytest.raises(TimeoutError):

        def leave_on_first_line(line: str) -> None:
            raise TimeoutError("the task gave up")

        request_run(pool_settings, {"script": "hang", "argv": [], "env": {}, "run_id": "r"}, leave_on_first_line)
    deadline = time.monotonic() + 30
    while pool.status()["ready"] == [] or pool.status()["busy"]:
        assert time.monotonic() < deadline, pool.status()
        time.sleep(0.1)
    _, after = run(pool_settings, "echo")
    assert driver_pid(after) != driver_pid(before)  # the hanging driver is gone


def _settled(settings: Settings, size: int) -> dict:
    """The pool's status once it is back to ``size`` ready drivers and none starting."""
    deadline = time.monotonic() + 30
    while True:
        status = pool_status(settings) or {}
        if len(status.get("ready", [])) == size and not status.get("starting") and not status.get("busy"):
            return status
        assert time.monotonic() < deadline, f"the pool did not settle: {status}"
        time.sleep(0.1)


def test_drivers_are_recycled_after_their_quota_and_after_a_code_change(pool_settings: Settings) -> None:
    pool = start(pool_settings, max_runs=2)
    try:
        pids = [driver_pid(run(pool_settings, "echo")[1]) for _ in range(2)]
        _settled(pool_settings, 1)  # the successor is ready and has taken over
        pids.append(driver_pid(run(pool_settings, "echo")[1]))
        assert pids[0] == pids[1] != pids[2]
        time.sleep(0.01)
        (Path(pool_settings.templates_uri) / "job.py").write_text("# changed\n")
        assert driver_pid(run(pool_settings, "echo")[1]) != pids[2]  # stale code is not run
    finally:
        pool.stop()


def test_a_driver_past_its_quota_serves_on_until_its_successor_is_ready(pool_settings: Settings) -> None:
    """No run waits for a JVM to start because drivers reached their quota: the old driver serves
    while its successor starts, then makes way, and the pool keeps its size."""
    delay = [0.0]
    pool = start(pool_settings, size=1, max_runs=2, start_delay=delay)
    try:
        delay[0] = 3.0  # from now on a driver takes 3 s to start
        first = [driver_pid(run(pool_settings, "echo")[1]) for _ in range(2)]
        during = driver_pid(run(pool_settings, "echo")[1])  # quota used up, successor still starting
        assert first[0] == first[1] == during
        status = _settled(pool_settings, 1)
        after = driver_pid(run(pool_settings, "echo")[1])
        assert after != during and status["drivers"] == 1
    finally:
        pool.stop()


def test_two_drivers_serve_two_runs_at_once(pool_settings: Settings) -> None:
    pool = start(pool_settings, size=2)
    try:
        results: list[tuple[dict, list[str]]] = []
        threads = [threading.Thread(target=lambda: results.append(run(pool_settings, "echo"))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len({driver_pid(lines) for _, lines in results}) == 2
    finally:
        pool.stop()


def test_no_pool_is_a_clear_error(pool_settings: Settings) -> None:
    with pytest.raises(PoolUnavailableError, match="warm Spark pool is not running"):
        run(pool_settings, "echo")
    assert pool_status(pool_settings) is None


def test_the_end_marker_is_the_job_sides() -> None:
    from lakehouse.runners.spark_pool import RUN_END_MARKER

    text = (Path(__file__).parents[3] / "glue_templates" / "lakehouse_jobs" / "warm_driver.py").read_text()
    assert f'RUN_END_MARKER = "{RUN_END_MARKER.encode("unicode_escape").decode()}"' in text
