"""The local stack's pool of warm Spark drivers, and the client a task uses to run a template on one.

A template run under ``spark-submit`` spends most of a small file's time starting a JVM, building
a session and loading the Iceberg catalog. The pool keeps ``LAKEHOUSE_SPARK_DRIVERS`` drivers
(``lakehouse_jobs/warm_driver.py``, each started by ``spark-submit`` with the same settings a
template gets) up and ready, and serves runs on a Unix socket, one run per driver at a time:

- a task connects, sends its run (entry script, arguments, environment) and receives the run's
  output line by line, then its outcome; that is all :class:`WarmSparkRunner`'s caller waits on;
- a task that goes away mid-run (killed, timed out) closes the connection, and the pool kills
  that driver: its Spark work stops with it. A driver that dies mid-run fails its run with a
  message saying so. Either way a new driver is started and the dead one serves nothing more;
- a driver is replaced after ``LAKEHOUSE_SPARK_DRIVER_MAX_RUNS`` runs, when its processes hold
  more than ``LAKEHOUSE_SPARK_DRIVER_MAX_RSS_MB``, or when the template code on disk changed. Its
  quota of runs used up, a driver goes on serving until its successor is ready: drivers share out
  runs evenly and reach their quota together, and a run should not wait for a JVM to start.

The drivers are children of the pool, in its process group, so the stack stops them with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from lakehouse.config import Settings
from lakehouse.runners.spark_conf import local_spark_conf

__all__ = ["RUN_END_MARKER", "PoolUnavailableError", "SparkPool", "pool_socket", "pool_status", "request_run"]

log = logging.getLogger(__name__)

#: What a driver prints after a run's output; equal to ``lakehouse_jobs.warm_driver.RUN_END_MARKER``
#: (a test holds them equal: this side never imports the job side).
RUN_END_MARKER = "\x1elakehouse-warm-run-end"
_DRIVER_SCRIPT = "lakehouse_jobs/warm_driver.py"


class PoolUnavailableError(RuntimeError):
    """The pool is not running (no socket, or nothing answers on it)."""


def pool_socket(settings: Settings) -> Path:
    return settings.run_dir / "spark-pool.sock"


@dataclass
class _Driver:
    number: int
    proc: subprocess.Popen[str]
    socket_path: Path
    fingerprint: str
    started: float = field(default_factory=time.monotonic)
    control: socket.socket | None = None
    runs: int = 0
    retiring: bool = False  # its quota used up: serves until its successor is ready
    sink: Callable[[str], None] | None = None
    end_seen: threading.Event = field(default_factory=threading.Event)

    def rss_mb(self) -> float:
        try:
            root = psutil.Process(self.proc.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
        except psutil.Error:
            return 0.0

    def kill(self) -> None:
        """The driver and every process under it (spark-submit's JVM and the Python it started)."""
        try:
            root = psutil.Process(self.proc.pid)
            for proc in [*root.children(recursive=True), root]:
                proc.kill()
        except psutil.Error:
            pass
        if self.control is not None:
            self.control.close()
        self.proc.wait()


class SparkPool:
    """Keeps ``size`` drivers ready and runs requests on them; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        size: int,
        max_runs: int,
        max_rss_mb: int,
        command: Callable[[Path, Path], list[str]] | None = None,
        ready_timeout: float = 300.0,
    ) -> None:
        self.settings = settings
        self.size = size
        self.max_runs = max_runs
        self.max_rss_mb = max_rss_mb
        self.ready_timeout = ready_timeout
        self._command = command or self._spark_submit
        self._lock = threading.Condition()
        self._ready: list[_Driver] = []
        self._busy: set[int] = set()
        self._starting: set[int] = set()
        self._stopping = False
        self._work = settings.run_dir / "spark-pool"
        self._numbers = iter(range(1, 1 << 30))
        self._failed_starts = 0  # in a row: the next start waits longer (a broken setup does not spin)
        self._server: socket.socket | None = None
        self.served = 0

    # -- drivers -------------------------------------------------------------------------------
    def _spark_submit(self, socket_path: Path, properties: Path) -> list[str]:
        spark_submit = Path(sys.executable).with_name("spark-submit")
        script = Path(self.settings.templates_uri.removeprefix("file://")) / _DRIVER_SCRIPT
        return [
            str(spark_submit if spark_submit.exists() else "spark-submit"),
            "--properties-file",
            str(properties),
            "--name",
            "lakehouse-warm-driver",
            str(script),
            "--socket",
            str(socket_path),
        ]

    def code_fingerprint(self) -> str:
        """Changes whenever a template or the job library changes on disk: a driver imported the
        old code, so it is replaced rather than run stale code."""
        folder = Path(self.settings.templates_uri.removeprefix("file://"))
        digest = hashlib.sha256()
        for path in sorted(folder.rglob("*.py")):
            digest.update(f"{path}:{path.stat().st_mtime_ns}".encode())
        return digest.hexdigest()

    def _start_driver(self) -> None:
        number = next(self._numbers)
        with self._lock:
            self._starting.add(number)
        threading.Thread(target=self._boot, args=(number,), name=f"driver-{number}", daemon=True).start()

    def _boot(self, number: int) -> None:
        self._work.mkdir(parents=True, exist_ok=True)
        socket_path = self._work / f"driver-{number}.sock"
        with tempfile.NamedTemporaryFile("w", dir=self._work, suffix=".conf", delete=False) as props:
            os.chmod(props.name, 0o600)  # it holds the catalog password
            for key, value in local_spark_conf(self.settings).items():
                props.write(f"{key} {value}\n")
        from lakehouse.runners.local_spark import LocalSparkRunner  # its environment, minus any secret

        proc = subprocess.Popen(
            self._command(socket_path, Path(props.name)),
            env=LocalSparkRunner(self.settings).job_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        driver = _Driver(number, proc, socket_path, self.code_fingerprint())
        threading.Thread(target=self._pump, args=(driver,), name=f"driver-{number}-output", daemon=True).start()
        try:
            deadline = time.monotonic() + self.ready_timeout
            while driver.control is None:
                if proc.poll() is not None or time.monotonic() > deadline or self._stopping:
                    raise RuntimeError(f"warm driver {number} did not become ready (exit {proc.poll()})")
                try:
                    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    conn.connect(str(socket_path))
                    driver.control = conn
                except OSError:
                    conn.close()
                    time.sleep(0.2)
        except Exception as exc:
            self._failed_starts += 1
            delay = min(60, 2**self._failed_starts)
            log.error("%s; starting another in %d s (see the driver's output above)", exc, delay)
            driver.kill()
            with self._lock:
                self._starting.discard(number)
            if not self._stopping:
                time.sleep(delay)
                self._start_driver()
            return
        finally:
            Path(props.name).unlink(missing_ok=True)
        log.info("warm driver %d ready (pid %d) in %.1f s", number, proc.pid, time.monotonic() - driver.started)
        self._failed_starts = 0
        with self._lock:
            self._starting.discard(number)
            self._ready.append(driver)
            retired = self._pop_surplus_retiring()
            self._lock.notify_all()
        for old in retired:
            log.info("warm driver %d replaced by driver %d: its quota of runs was used up", old.number, number)
            old.kill()

    def _pop_surplus_retiring(self) -> list[_Driver]:
        """Idle retiring drivers beyond the pool's size, taken out of the ready list (with the lock
        held): their successors are ready."""
        surplus = len(self._ready) + len(self._busy) - self.size
        retired = [d for d in self._ready if d.retiring][: max(0, surplus)]
        for driver in retired:
            self._ready.remove(driver)
        return retired

    def _pump(self, driver: _Driver) -> None:
        """The driver's output goes to the run that owns it, or to the pool's log between runs."""
        assert driver.proc.stdout is not None
        for line in driver.proc.stdout:
            if line.rstrip("\n") == RUN_END_MARKER:
                driver.end_seen.set()
                continue
            sink = driver.sink
            if sink is not None:
                sink(line)
            else:
                sys.stdout.write(f"[driver {driver.number}] {line}")
                sys.stdout.flush()
        driver.end_seen.set()

    def _retire(self, driver: _Driver, why: str) -> None:
        log.info("warm driver %d replaced: %s", driver.number, why)
        driver.kill()
        if not self._stopping and not driver.retiring:  # a retiring driver's successor is on its way
            self._start_driver()

    def _acquire(self, notify: Callable[[str], None], deadline: float) -> _Driver:
        waited = False
        with self._lock:
            while True:
                fingerprint = self.code_fingerprint() if self._ready else ""
                self._ready.sort(key=lambda d: d.retiring)  # a retiring driver only when no other is free
                while self._ready:
                    driver = self._ready.pop(0)
                    if driver.proc.poll() is not None:
                        threading.Thread(target=self._retire, args=(driver, "it had exited"), daemon=True).start()
                    elif driver.fingerprint != fingerprint:
                        threading.Thread(
                            target=self._retire, args=(driver, "the template code changed"), daemon=True
                        ).start()
                    else:
                        self._busy.add(driver.number)
                        return driver
                if self._stopping:
                    raise PoolUnavailableError("the Spark pool is stopping")
                if not waited:
                    notify(
                        f"waiting for a free warm Spark driver ({len(self._busy)} busy, "
                        f"{len(self._starting)} starting)\n"
                    )
                    waited = True
                if not self._lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("no warm Spark driver became free in time")

    def _release(self, driver: _Driver) -> None:
        why = None
        if (rss := driver.rss_mb()) > self.max_rss_mb:
            why = f"its processes hold {rss:.0f} MB (LAKEHOUSE_SPARK_DRIVER_MAX_RSS_MB {self.max_rss_mb})"
        successor = driver.runs >= self.max_runs and not driver.retiring and why is None
        with self._lock:
            self._busy.discard(driver.number)
            retired: list[_Driver] = []
            if why is None and not self._stopping:
                driver.retiring = driver.retiring or successor
                self._ready.append(driver)
                retired = self._pop_surplus_retiring()  # its successor may be ready already
            self._lock.notify_all()
        if why is not None:
            self._retire(driver, why)
        for old in retired:
            log.info("warm driver %d replaced: its quota of runs was used up", old.number)
            old.kill()
        if successor and not self._stopping:
            log.info(
                "warm driver %d served %d runs (LAKEHOUSE_SPARK_DRIVER_MAX_RUNS): it serves on until its "
                "successor is ready",
                driver.number,
                driver.runs,
            )
            self._start_driver()

    # -- runs ----------------------------------------------------------------------------------
    def run(self, request: dict[str, Any], send: Callable[[dict[str, Any]], None], client: socket.socket) -> None:
        """Run ``request`` on a free driver, sending its output and outcome to the client."""

        def forward(line: str) -> None:
            with contextlib.suppress(OSError):  # the client left; the select below notices and kills the driver
                send({"log": line})

        deadline = time.monotonic() + float(request.get("wait_seconds") or 3600)
        driver = self._acquire(lambda text: send({"log": text}), deadline)
        driver.end_seen.clear()
        driver.sink = forward
        outcome: dict[str, Any] | None = None
        try:
            assert driver.control is not None
            driver.control.sendall((json.dumps(request) + "\n").encode())
            reply = b""
            while outcome is None:
                readable, _, _ = select.select([driver.control, client], [], [], 1.0)
                if client in readable and not client.recv(1, socket.MSG_PEEK):
                    driver.sink = None
                    self._retire_busy(driver, "its task went away mid-run (killed or timed out); its work is stopped")
                    return
                if driver.control in readable:
                    chunk = driver.control.recv(65536)
                    if not chunk:
                        code = driver.proc.wait()
                        driver.end_seen.wait(5)
                        outcome = {
                            "status": "crashed",
                            "error": f"the warm Spark driver died during the run "
                            f"(exit {code}); it is replaced and serves no further run",
                        }
                        driver.sink = None
                        self._retire_busy(driver, "it died during a run")
                        break
                    reply += chunk
                    if b"\n" in reply:
                        outcome = json.loads(reply.split(b"\n", 1)[0])
            if outcome.get("status") != "crashed":
                driver.end_seen.wait(10)  # the run's last lines before its outcome
                driver.sink = None
                driver.runs += 1
                self._release(driver)
            self.served += 1
            send({"result": outcome})
        except BaseException:
            driver.sink = None
            self._retire_busy(driver, "the pool failed while it ran")
            raise

    def _retire_busy(self, driver: _Driver, why: str) -> None:
        with self._lock:
            self._busy.discard(driver.number)
            self._lock.notify_all()
        self._retire(driver, why)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "drivers": self.size,
                "ready": [d.number for d in self._ready],
                "busy": sorted(self._busy),
                "starting": sorted(self._starting),
                "served": self.served,
                "rss_mb": {d.number: round(d.rss_mb()) for d in self._ready},
            }

    # -- serving -------------------------------------------------------------------------------
    def serve_forever(self, path: Path) -> None:
        for _ in range(self.size):
            self._start_driver()
        _check_socket_path(path)
        _check_socket_path(self._work / "driver-0000.sock")
        path.parent.mkdir(parents=True, exist_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path.unlink(missing_ok=True)
        server.bind(str(path))
        os.chmod(path, 0o600)  # a run carries credentials: only this user's tasks may connect
        server.listen(64)
        self._server = server
        log.info("Spark pool serving on %s with %d driver(s)", path, self.size)
        try:
            while not self._stopping:
                try:
                    client, _ = server.accept()
                except OSError:  # closed by stop()
                    break
                threading.Thread(target=self._serve_client, args=(client,), daemon=True).start()
        finally:
            server.close()
            path.unlink(missing_ok=True)

    def _serve_client(self, client: socket.socket) -> None:
        lock = threading.Lock()

        def send(message: dict[str, Any]) -> None:
            with lock:
                client.sendall((json.dumps(message) + "\n").encode())

        try:
            with client, client.makefile("r", encoding="utf-8") as lines:
                request = json.loads(lines.readline() or "{}")
                if request.get("op") == "status":
                    send({"result": self.status()})
                elif request.get("op") == "run":
                    self.run(request, send, client)
                else:
                    send({"result": {"status": "failed", "error": f"unknown request {request.get('op')!r}"}})
        except (OSError, ValueError) as exc:
            log.warning("client dropped: %s", exc)
        except Exception:
            log.exception("serving a client failed")

    def stop(self) -> None:
        """Stop serving and kill the idle drivers (a busy one is killed when its run ends or its
        client leaves; the stack's stop takes the whole process group anyway)."""
        with self._lock:
            self._stopping = True
            drivers = list(self._ready)
            self._ready.clear()
            self._lock.notify_all()
        if self._server is not None:
            self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        for driver in drivers:
            driver.kill()


def _check_socket_path(path: Path) -> None:
    """Linux refuses a Unix socket path over 107 bytes; say which setting makes it shorter."""
    if len(os.fsencode(path)) > 100:
        raise ValueError(
            f"the Spark pool's socket path {path} is too long for a Unix socket (over 100 bytes): "
            "set LAKEHOUSE_HOME to a shorter directory"
        )


def _talk(settings: Settings, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    path = pool_socket(settings)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError as exc:
        conn.close()
        raise PoolUnavailableError(f"the warm Spark pool is not running ({path}: {exc.strerror})") from None
    with conn, conn.makefile("r", encoding="utf-8") as replies:
        conn.sendall((json.dumps(request) + "\n").encode())
        for line in replies:
            yield json.loads(line)


def request_run(settings: Settings, request: dict[str, Any], write: Callable[[str], None]) -> dict[str, Any]:
    """Run on the pool, writing the run's output as it comes; the outcome. Closing the connection
    (an exception here, the task killed) makes the pool kill the driver the run was on."""
    for message in _talk(settings, {"op": "run", **request}):
        if "log" in message:
            write(message["log"])
        elif "result" in message:
            return dict(message["result"])
    return {"status": "crashed", "error": "the Spark pool closed the connection without an outcome"}


def pool_status(settings: Settings) -> dict[str, Any] | None:
    """The pool's drivers (ready, busy, starting), or None when it does not run."""
    try:
        for message in _talk(settings, {"op": "status"}):
            return dict(message.get("result") or {})
    except PoolUnavailableError:
        return None
    return None
