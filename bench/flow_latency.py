"""Drop → run success for small files through the 4-task sample flow, warm engine vs spark-submit.

One stack (Postgres, SeaweedFS, invoker, Spark pool, Airflow's four components) on its own home and
ports (16300-16308; SeaweedFS gRPC 26301-26306). The sample flow (landing_to_raw →
raw_to_stage_scd2 → stage_to_presentation → presentation_to_warehouse), each file a new invoice
file of ``--rows`` lines (≤ 100). Phases, in turns, ``--rounds`` times:

* ``warm``: the stack as it runs by default (``LAKEHOUSE_SPARK_MODE=warm``: templates run on the
  pool's ready drivers);
* ``submit``: the scheduler restarted with ``LAKEHOUSE_SPARK_MODE=submit`` (``spark-submit`` per task,
  the baseline); the runner's mode is what the scheduler's task processes inherit.

Each phase drops ``--sequential`` files one after another (each waits for its run), then
``--burst`` files at once. Reported per mode: drop (the PUT returned) → run success (Airflow's run
``end_date``): median, p95, max for one at a time; for the burst, the time until all are done.
And where the time goes, from Airflow's task instances: the scheduler's share (a task queued after
its upstream ended), the executor's (started after queued), the task's own (start → end), of
which the template (its metrics' ``seconds``).

``--memory-runs N`` (default 200) then runs a small template N times in a row on one warm driver
(through the runner, no Airflow) and reports the driver's memory every N/10 runs: it must stay flat.

After each phase, ``--idle-seconds`` (default 30) of the scheduler's CPU with no run going: what a
variant's shorter idle sleep costs a quiet stack.

    .venv/bin/python bench/flow_latency.py [--rounds 2] [--sequential 5] [--burst 10] [--memory-runs 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "bench"))

from invoker import configure_environment, pct  # noqa: E402 - bench/invoker.py

BASE_PORT = 16300  # below the ephemeral range (32768+); SeaweedFS adds 10000 for gRPC
FLOW = "invoices"


def invoice_file(serial: int, rows: int) -> bytes:
    rnd = random.Random(serial)
    day = date(2026, 11, 1) + timedelta(days=serial % 28)
    lines = [
        f'{day} INVOICE INV-{serial:05d}{i:03d} customer="C{rnd.randint(1, 50)}" item="I{i}" '
        f"qty={rnd.randint(1, 9)} amount={rnd.randint(100, 99999) / 100:.2f} USD"
        for i in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def _ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def _at(text: str | None) -> float:
    """A timestamp the API always gives for a finished run or task instance."""
    at = _ts(text)
    if at is None:
        raise RuntimeError("the Airflow API left out a timestamp of a finished run or task")
    return at


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from lakehouse.config import load_settings
        from lakehouse.demo import airflow_client
        from lakehouse.hooks.s3 import landing_client
        from lakehouse.stack import services

        self.args = args
        self.settings = load_settings()
        self.client = airflow_client(self.settings)
        self.s3 = landing_client(self.settings)
        self.env = services.stack_environment(self.settings)
        self.serial = 0

    def use_mode(self, variant: str) -> None:
        """The scheduler (whose forked task processes run the templates) restarted for ``variant``:
        ``warm`` or ``submit``, optionally ``@<seconds>`` for the scheduler's idle sleep (Airflow's
        ``scheduler_idle_sleep_time``, 1 s by default), e.g. ``warm@0.2``."""
        from lakehouse.stack.processes import start_group, stop_group
        from lakehouse.stack.services import _bin, airflow_component_environment

        mode, _, idle = variant.partition("@")
        stop_group(self.settings.run_dir, "airflow-scheduler")
        env = dict(airflow_component_environment(self.env, "scheduler"), LAKEHOUSE_SPARK_MODE=mode)
        if idle:
            env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] = idle
        start_group(
            self.settings.run_dir, self.settings.log_dir, "airflow-scheduler", [_bin("airflow"), "scheduler"], env
        )
        deadline = time.monotonic() + 120
        while self.client.health().get("scheduler", {}).get("status") != "healthy":
            if time.monotonic() > deadline:
                raise TimeoutError("the scheduler did not come back")
            time.sleep(1)

    def drop(self) -> tuple[str, float]:
        from lakehouse.invoker.core import file_dag_run_id

        self.serial += 1
        key = f"invoices/bench_{self.serial:05d}.txt"
        body = invoice_file(self.serial, self.args.rows)
        put_at = time.time()
        etag = self.s3.put_object(Bucket="landing", Key=key, Body=body)["ETag"].strip('"')
        return file_dag_run_id(FLOW, "landing", key, etag), put_at

    def finished(self, run_id: str, timeout: float = 900) -> dict[str, Any]:
        run = self.client.wait_for_dag_run(FLOW, run_id, timeout=timeout, poll=0.5)
        if run["state"] != "success":
            raise RuntimeError(f"run {run_id} ended {run['state']}")
        return run

    def breakdown(self, run_id: str) -> dict[str, float]:
        """Seconds of one run spent waiting for the scheduler, the executor, and in the tasks."""
        tis = sorted(self.client.list_task_instances(FLOW, run_id), key=lambda t: t["start_date"])
        scheduler = executor = tasks = 0.0
        dag_run = self.client.get_dag_run(FLOW, run_id)
        if dag_run is None:
            raise RuntimeError(f"run {run_id} is not in Airflow")
        previous_end = _at(dag_run["start_date"])
        for ti in tis:
            queued, start, end = _ts(ti["queued_when"]), _at(ti["start_date"]), _at(ti["end_date"])
            scheduler += (queued or start) - previous_end
            executor += start - (queued or start)
            tasks += end - start
            previous_end = end
        return {"scheduler": scheduler, "executor": executor, "tasks": tasks}

    def template_seconds(self, run_id: str) -> float:
        import psycopg2

        conn = psycopg2.connect(self.settings.metadata_dsn)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT metrics FROM lakehouse.task_runs WHERE dag_run_id = %s AND status = 'success'", (run_id,)
            )
            total = sum(float((m or {}).get("seconds", 0)) for (m,) in cur.fetchall())
        conn.close()
        return total

    def phase(self, mode: str) -> dict[str, Any]:
        single: list[float] = []
        parts: list[dict[str, float]] = []
        for _ in range(self.args.sequential):
            run_id, put_at = self.drop()
            run = self.finished(run_id)
            single.append(_at(run["end_date"]) - put_at)
            parts.append({**self.breakdown(run_id), "template": self.template_seconds(run_id)})
        dropped = [self.drop() for _ in range(self.args.burst)]
        ends = [_at(self.finished(run_id)["end_date"]) for run_id, _ in dropped]
        burst = max(ends) - min(put_at for _, put_at in dropped) if dropped else 0.0
        batched = self.batched_burst() if self.args.batched_burst and self.args.burst else None
        mean = {k: statistics.mean(p[k] for p in parts) for k in parts[0]} if parts else {}
        idle_cpu = self.scheduler_idle_cpu(self.args.idle_seconds) if self.args.idle_seconds else None
        print(
            f"{mode:6} one at a time ({len(single)}): median {statistics.median(single):.1f} s, "
            f"p95 {pct(single, 0.95):.1f} s, max {max(single):.1f} s | {self.args.burst} at once: all done in "
            f"{burst:.1f} s"
            + (f" (as one micro-batch: {batched:.1f} s)" if batched is not None else "")
            + f" | per run: scheduler {mean.get('scheduler', 0):.1f} s, executor "
            f"{mean.get('executor', 0):.1f} s, tasks {mean.get('tasks', 0):.1f} s (templates "
            f"{mean.get('template', 0):.1f} s)"
            + (f" | scheduler idle: {idle_cpu:.1f}% of a core" if idle_cpu is not None else ""),
            flush=True,
        )
        return {
            "mode": mode,
            "single": single,
            "burst": burst,
            "batched_burst": batched,
            "parts": mean,
            "scheduler_idle_cpu_percent": idle_cpu,
        }

    def scheduler_idle_cpu(self, seconds: float) -> float:
        """The scheduler's CPU (its whole process group: the loop and LocalExecutor's workers) while
        no run is going, in percent of one core: what a shorter idle sleep costs a quiet stack."""
        import psutil

        from lakehouse.stack.processes import group_members, read_pid

        pgid = read_pid(self.settings.run_dir, "airflow-scheduler")
        assert pgid is not None, "the scheduler is not running"

        def used() -> float:
            total = 0.0
            for pid in group_members(pgid):
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(pid).cpu_times()
                    total += times.user + times.system + times.children_user + times.children_system
            return total

        time.sleep(5)  # the last run's tasks have ended
        before, started = used(), time.monotonic()
        time.sleep(seconds)
        return 100 * (used() - before) / (time.monotonic() - started)

    def batched_burst(self) -> float:
        """The same burst into the flow set to gather files (max_files_per_run = the burst, a 2 s
        window): drop → the last batch's run done. The flow is set back to one run per file."""
        import psycopg2

        def set_batching(files: int, window: int) -> None:
            conn = psycopg2.connect(self.settings.metadata_dsn)
            with conn, conn.cursor() as cur:
                cur.execute(
                    "UPDATE lakehouse.flows SET max_files_per_run = %s, batch_window_seconds = %s WHERE flow_id = %s",
                    (files, window, FLOW),
                )
            conn.close()
            time.sleep(self.settings.invoker_catalogue_ttl + 1)  # the invoker sees the change

        set_batching(self.args.burst, 2)
        try:
            first = self.serial + 1
            puts = [self.drop()[1] for _ in range(self.args.burst)]
            keys = [f"invoices/bench_{n:05d}.txt" for n in range(first, self.serial + 1)]
            deadline = time.monotonic() + 300
            while (runs := self._batch_runs(keys))[1] < len(keys):  # until every file is in a batch
                if time.monotonic() > deadline:
                    raise TimeoutError("the burst's files were not all in batches after 300 s")
                time.sleep(0.5)
            done = [self.client.wait_for_dag_run(FLOW, run_id, timeout=900, poll=0.5) for run_id in runs[0]]
            return max(_at(run["end_date"]) for run in done) - min(puts)
        finally:
            set_batching(1, 0)

    def _batch_runs(self, keys: list[str]) -> tuple[set[str], int]:
        """(the runs of the batches these files are in, how many of the files are in one)."""
        import psycopg2

        conn = psycopg2.connect(self.settings.metadata_dsn)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT dag_run_id FROM lakehouse.file_ledger WHERE flow_id = %s AND object_key = ANY(%s) "
                "AND batch_id IS NOT NULL",
                (FLOW, keys),
            )
            rows = [row[0] for row in cur.fetchall()]
        conn.close()
        return set(rows), len(rows)

    def memory(self, runs: int) -> list[tuple[int, float]]:
        """One warm driver, ``runs`` stage_to_presentation runs in a row; its memory as it goes."""
        from lakehouse.runners import JobRequest
        from lakehouse.runners.local_spark import LocalSparkRunner
        from lakehouse.runners.spark_pool import pool_status

        runner = LocalSparkRunner(self.settings, mode="warm")
        samples: list[tuple[int, float]] = []
        every = max(1, runs // 10)
        for n in range(1, runs + 1):
            request = JobRequest(
                "bench",
                "mem",
                "stage_to_presentation",
                "stage_to_presentation.py",
                f"mem_{n}",
                f"mem_{n}",
                {"sql": "SELECT id, id * 2 AS twice FROM range(1000)", "target_table": "presentation.bench_memory"},
            )
            runner.run(request)
            if n == 1 or n % every == 0:
                status = pool_status(self.settings) or {}
                samples.append((n, max((status.get("rss_mb") or {"-": 0.0}).values())))
        return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="warm/submit pairs, in turns")
    parser.add_argument("--sequential", type=int, default=5, help="files one after another per phase")
    parser.add_argument("--burst", type=int, default=10, help="files dropped at once per phase")
    parser.add_argument("--rows", type=int, default=20, help="lines per file (at most 100)")
    parser.add_argument(
        "--modes",
        default="warm,submit",
        help="variants in turns: warm, submit, optionally @<scheduler idle sleep s>, e.g. warm@0.2",
    )
    parser.add_argument("--memory-runs", type=int, default=200, help="runs on one warm driver (0: skip)")
    parser.add_argument(
        "--idle-seconds", type=float, default=30, help="after each phase, the scheduler's CPU while idle (0: skip)"
    )
    parser.add_argument(
        "--no-batched-burst",
        dest="batched_burst",
        action="store_false",
        help="skip the burst into the flow set to gather its files into one micro-batch",
    )
    args = parser.parse_args()
    # a TERM (timeout, kill) ends the run like Ctrl-C: the finally below stops the whole stack
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-"))
    home.chmod(0o755)  # the Postgres server runs as user postgres and must reach its data dir
    configure_environment(
        home,
        base_port=BASE_PORT,
        extra={"LAKEHOUSE_SPARK_DRIVERS": "2", "LAKEHOUSE_SPARK_DRIVER_MAX_RUNS": str(max(50, args.memory_runs + 10))},
    )
    from lakehouse.demo import install_sample_flow, wait_for_dag
    from lakehouse.stack import services
    from lakehouse.stack.processes import processes_using_home

    results: list[dict[str, Any]] = []
    memory: list[tuple[int, float]] = []
    left: list[str] = []
    try:
        bench = Bench(args)
        print(f"bench home {home}: starting the stack", flush=True)
        started = time.monotonic()
        services.up(bench.settings)
        print(f"stack up in {time.monotonic() - started:.0f} s", flush=True)
        install_sample_flow(bench.settings)
        wait_for_dag(bench.client, FLOW)
        bench.finished(bench.drop()[0])  # a first run creates the tables and warms Airflow's own caches
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        for _ in range(args.rounds):
            for mode in modes:
                bench.use_mode(mode)
                results.append(bench.phase(mode))
        if args.memory_runs:
            memory = bench.memory(args.memory_runs)  # through the runner: the pool, no scheduler
            print("warm driver memory (run: MB): " + ", ".join(f"{n}: {mb:.0f}" for n, mb in memory), flush=True)
    finally:
        from lakehouse.config import load_settings

        services.down(load_settings())
        left = processes_using_home(home)
        print("stopped everything the bench started" if not left else "STILL RUNNING: " + "; ".join(left))
        if not left:
            shutil.rmtree(home, ignore_errors=True)
    for mode in dict.fromkeys(r["mode"] for r in results):
        single = [v for r in results if r["mode"] == mode for v in r["single"]]
        bursts = [r["burst"] for r in results if r["mode"] == mode]
        print(
            f"all {mode:6}: one at a time median {statistics.median(single):.1f} s, p95 {pct(single, 0.95):.1f} s, "
            f"max {max(single):.1f} s ({len(single)} runs); {args.burst} at once: "
            f"{', '.join(f'{b:.1f}' for b in bursts)} s, i.e. {max(bursts) / statistics.median(single):.1f}x "
            "the single-file median at worst"
        )
    print(json.dumps({"results": results, "memory": memory}))
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
