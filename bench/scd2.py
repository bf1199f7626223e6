"""SCD2 benchmark: one batch into a stage table of N keys, three engines side by side.

For each N a stage table of N keys (one open version each) is built, then one batch is applied:
every existing key once (89.5 % unchanged, 10 % changed, 0.5 % deleted through the op column) plus
1 % new keys, so the batch has 1.01 N records, as a full daily extract with an op column does.
Engines, each on its own copy of the table, on the same batch parquet:

* ``template``  - ``lakehouse_jobs.scd2.apply_changes`` (the raw_to_stage_scd2 template's core);
* ``textbook``  - the usual single ``MERGE INTO`` SCD2 on Spark: the batch unioned with its changed
  rows under a NULL merge key, so one statement closes old versions and inserts new ones (table
  defaults: copy-on-write);
* ``pyiceberg`` - PyIceberg's ``Table.upsert`` on a current-state table (no history kept, deletes
  not applied: a lower bound on the work a Python user would do).

Printed per engine and N: seconds, batch rows per second, peak memory (the JVM's peak RSS for the
Spark engines, this Python process's for PyIceberg, each reset before the run through
``/proc/<pid>/clear_refs``) and the data and delete files the batch's commit(s) added; for the Spark
engines also what the JVM spent meanwhile: generated classes compiled, and CPU seconds in all, in
the JIT compiler's threads and in the garbage collector's (``jvm:``). The template run is checked:
its versions must equal the textbook MERGE's (same keys, ranges and hashes).

    .venv/bin/python bench/scd2.py [--sizes 100000,1000000,5000000] [--engines template,textbook,pyiceberg]
                                   [--driver-memory 12g] [--warmup 20000] [--repeat 1] [--conf KEY=VALUE ...]
                                   [--port 47300]

Fixed-batch mode (``--batch 50000``): the batch no longer grows with the table. A stage table of N
keys (sizes up to 50,000,000) is built once per N, as the template lays its tables out, and each
round applies one batch of ``--batch`` records, 10 % changed keys, 1 % new keys, the rest
unchanged, then rolls the table back to its first snapshot (a fresh copy, without building it
again). ``--placement`` says where the batch's existing keys are: ``spread`` (evenly over all N
keys: every data file has some, the worst case for skipping files) or ``recent`` (the N - batch
newest keys, as changes to recent orders are). Only the template runs in this mode; the ratio of
a size's time to the smallest size's is printed, with the machine's load average.

With ``--batches 10`` (fixed-batch mode), each size also gets ten successive batches (each
changes another tenth of the batch's keys), once without maintenance and once with
``maintain_table`` after every batch, and the data and delete files in the table after each
are printed.

``--conf`` sets a Spark setting for the whole session, so both Spark engines run with it. One worth
knowing: every batch makes Spark generate and compile code, and a long-lived session keeps only
``spark.sql.codegen.cache.maxEntries`` (100) compiled classes; the other engine's round, the table
loads and the check between the engines make more than that, so each round's batch compiles (and
the JIT optimises) its code again, as a fresh job would. Raising it shows the steady state of a
session that runs the same flow again and again.

It starts its own Postgres (catalog) in a temporary home on port 47300 (``--port``, or
``BENCH_PG_PORT``) and stops it, and the Spark session, at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "glue_templates"))

from cpu_time import CLOCK_TICKS, cpu_seconds, cpu_ticks, stat_fields  # noqa: E402 - bench/cpu_time.py

PG_PORT = 47300
T0 = datetime(2026, 11, 1, tzinfo=UTC)
T1 = datetime(2026, 11, 2, tzinfo=UTC)
ENGINES = ("template", "textbook", "pyiceberg")


@dataclass(frozen=True)
class JvmWork:
    """What the Spark JVM spent during one timed run: CPU in all, and the parts of it that compiled
    code or collected garbage instead of processing rows.

    The round-to-round spread of a Spark engine is mostly this: a batch whose generated classes are
    not in Spark's codegen cache compiles them (Janino, on the driver, before its tasks start; about
    13 ms each here) and HotSpot's JIT then compiles their hot methods, on the same two cores.
    """

    classes_compiled: int  # generated classes Spark compiled (codegen cache misses)
    cpu_seconds: float  # the whole JVM process
    jit_cpu_seconds: float  # HotSpot's C1 and C2 compiler threads
    gc_cpu_seconds: float  # the garbage collector's threads

    def text(self) -> str:
        return (
            f"  jvm: {self.classes_compiled} classes compiled; CPU {self.cpu_seconds:.1f} s, "
            f"of it JIT {self.jit_cpu_seconds:.1f} s, GC {self.gc_cpu_seconds:.1f} s"
        )


_JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")  # thread names, cut to 15 characters by Linux
_GC_THREADS = ("GC Thread#", "G1 ")


class JvmCounters:
    """Cumulative counters of the Spark JVM (codegen metrics through py4j, CPU per thread from
    Linux's /proc); ``work`` is their change since creation.

    The JIT and GC figures add up each thread's own change, so a compiler thread HotSpot starts or
    ends meanwhile is never counted negative (one that ended is left out: a lower bound).
    """

    def __init__(self, spark: Any, pid: int) -> None:
        self._jvm = spark.sparkContext._jvm
        self._pid = pid
        self._start = self._read()

    def _read(self) -> tuple[int, float, dict[int, tuple[str, float]]]:
        classes = int(self._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount())
        threads: dict[int, tuple[str, float]] = {}
        for task in Path(f"/proc/{self._pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().rstrip("\n")
                kind = "jit" if name.startswith(_JIT_THREADS) else "gc" if name.startswith(_GC_THREADS) else None
                fields = stat_fields(task / "stat") if kind is not None else None
                if kind is not None and fields:
                    threads[int(task.name)] = (kind, cpu_ticks(fields) / CLOCK_TICKS)
            except FileNotFoundError:  # the thread ended meanwhile
                continue
        return classes, cpu_seconds(Path(f"/proc/{self._pid}/stat")), threads

    def work(self) -> JvmWork:
        classes, cpu, threads = self._read()
        spent = {"jit": 0.0, "gc": 0.0}
        for tid, (kind, seconds) in threads.items():
            before = self._start[2].get(tid)
            spent[kind] += seconds - (before[1] if before is not None and before[0] == kind else 0.0)
        return JvmWork(
            classes - self._start[0], round(cpu - self._start[1], 2), round(spent["jit"], 2), round(spent["gc"], 2)
        )


@dataclass
class Result:
    engine: str
    n: int
    rows: int
    seconds: float
    peak_mib: float
    data_files: int
    delete_files: int
    jvm: JvmWork | None = None  # Spark engines only

    def line(self) -> str:
        return (
            f"{self.engine:<10} N={self.n:>9,}  rows={self.rows:>9,}  {self.seconds:7.1f} s  "
            f"{self.rows / self.seconds:>9,.0f} rows/s  peak {self.peak_mib:7,.0f} MiB  "
            f"files written: {self.data_files} data + {self.delete_files} delete"
            + (self.jvm.text() if self.jvm is not None else "")
        )


def _reset_peak(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM) so the next reading is this run's peak (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _added_files(spark: Any, table: str, after: int | None) -> tuple[int, int]:
    """Data and delete files added by the snapshots committed after snapshot ``after``."""
    rows = spark.sql(f"SELECT snapshot_id, summary FROM {table}.snapshots ORDER BY committed_at").collect()
    ids = [r["snapshot_id"] for r in rows]
    start = ids.index(after) + 1 if after in ids else 0
    data = deletes = 0
    for r in rows[start:]:
        data += int(r["summary"].get("added-data-files", 0))
        deletes += int(r["summary"].get("added-delete-files", 0))
    return data, deletes


def _snapshot(spark: Any, table: str) -> int | None:
    row = spark.sql(f"SELECT snapshot_id FROM {table}.snapshots ORDER BY committed_at DESC LIMIT 1").first()
    return row[0] if row else None


def build_data(spark: Any, work: Path, n: int) -> tuple[str, str]:
    """The initial state (N keys) and the batch (1.01 N records) as parquet; returns their paths."""
    from pyspark.sql import functions as F

    base = spark.range(n).select(
        F.col("id"),
        (F.col("id") % 10_000 / 100).cast("decimal(12,2)").alias("amount"),
        F.concat(F.lit("cust-"), (F.col("id") % 9973).cast("string")).alias("customer"),
        F.when(F.col("id") % 3 == 0, "paid").otherwise("open").alias("status"),
        F.lit(T0).cast("timestamp").alias("updated_at"),
    )
    initial = str(work / f"initial_{n}")
    base.write.mode("overwrite").parquet(initial)
    bucket = F.col("id") % 1000  # 0-99 changed (10 %), 100-104 deleted (0.5 %), rest unchanged
    existing = spark.read.parquet(initial).select(
        "id",
        F.when(bucket < 100, F.col("amount") + F.lit(1))
        .otherwise(F.col("amount"))
        .cast("decimal(12,2)")
        .alias("amount"),
        "customer",
        "status",
        F.when(bucket < 105, F.lit(T1)).otherwise(F.lit(T0)).cast("timestamp").alias("updated_at"),
        F.when(bucket < 100, "U").when(bucket < 105, "D").otherwise("U").alias("op"),
    )
    new = spark.range(n, n + n // 100).select(
        "id",
        F.lit(1).cast("decimal(12,2)").alias("amount"),
        F.lit("cust-new").alias("customer"),
        F.lit("open").alias("status"),
        F.lit(T1).cast("timestamp").alias("updated_at"),
        F.lit("I").alias("op"),
    )
    batch = str(work / f"batch_{n}")
    existing.unionByName(new).withColumn("_line_number", F.monotonically_increasing_id()).withColumn(
        "_source_file", F.lit("bench.csv")
    ).write.mode("overwrite").parquet(batch)
    return initial, batch


def _stage_rows(frame: Any) -> Any:
    """The rows of a stage table after one load of ``frame``: one open version per key."""
    from pyspark.sql import functions as F

    from lakehouse_jobs.scd2 import row_hash

    return frame.select(
        "id",
        "amount",
        "customer",
        "status",
        "updated_at",
        F.col("updated_at").alias("_valid_from"),
        F.lit(None).cast("timestamp").alias("_valid_to"),
        F.lit(True).alias("_is_current"),
        F.lit(False).alias("_is_deleted"),
        row_hash(["amount", "customer", "status"]).alias("_row_hash"),
        F.lit("b0").alias("_batch_id"),
        F.lit("initial.csv").alias("_source_file"),
        F.current_timestamp().alias("_loaded_at"),
    )


def load_stage(spark: Any, table: str, initial: str, properties: dict[str, str] | None) -> None:
    """A stage table after one load: laid out as the template creates its tables (``properties``
    None: its sort order, row groups and marks), or created with ``properties`` and nothing else."""
    from lakehouse_jobs.identifiers import parse_table_name
    from lakehouse_jobs.scd2 import storage

    spark.sql(f"DROP TABLE IF EXISTS {table} PURGE")
    stage = _stage_rows(spark.read.parquet(initial) if isinstance(initial, str) else initial)
    if properties is None:
        data = [f for f in stage.schema.fields if not f.name.startswith("_")]
        storage.ensure_table(spark, parse_table_name(table, "table"), data, ["id"])
        stage.writeTo(table).append()  # sorted within each file by the table's sort order
        return
    writer = stage.writeTo(table).using("iceberg")
    for key, value in properties.items():
        writer = writer.tableProperty(key, value)
    writer.create()


def run_template(spark: Any, n: int, initial: str, batch: str, jvm_pid: int) -> Result:
    from lakehouse_jobs.identifiers import parse_table_name
    from lakehouse_jobs.scd2 import apply_changes

    name = f"bench.template_{n}"
    load_stage(spark, name, initial, None)
    before = _snapshot(spark, name)
    frame = spark.read.parquet(batch)
    rows = frame.count()
    _reset_peak(jvm_pid)
    counters = JvmCounters(spark, jvm_pid)
    started = time.perf_counter()
    result = apply_changes(
        spark, parse_table_name(name, "table"), frame, ["id"], "updated_at", "b1", mode="cdc", op_column="op"
    )
    seconds = time.perf_counter() - started
    jvm = counters.work()
    expected = (n // 1000 * 100 + n // 100, n // 1000 * 105)  # inserted (changed + new), closed
    assert (result.versions_inserted, result.versions_closed) == expected, result
    return Result("template", n, rows, seconds, _peak_mib(jvm_pid), *_added_files(spark, name, before), jvm)


def run_textbook(spark: Any, n: int, initial: str, batch: str, jvm_pid: int) -> Result:
    """The single-MERGE SCD2 as tutorials write it; copy-on-write (Iceberg's default)."""
    from lakehouse_jobs.scd2 import row_hash

    name = f"bench.textbook_{n}"
    load_stage(spark, name, initial, {"format-version": "2"})
    before = _snapshot(spark, name)
    frame = spark.read.parquet(batch)
    rows = frame.count()
    _reset_peak(jvm_pid)
    counters = JvmCounters(spark, jvm_pid)
    started = time.perf_counter()
    frame.withColumn("_row_hash", row_hash(["amount", "customer", "status"])).createOrReplaceTempView("bench_batch")
    spark.sql(f"""
        MERGE INTO {name} AS t
        USING (
            SELECT b.id AS merge_key, b.* FROM bench_batch b
            UNION ALL
            SELECT NULL AS merge_key, b.* FROM bench_batch b
            JOIN {name} c ON b.id = c.id AND c._is_current
            WHERE b.op <> 'D' AND b._row_hash <> c._row_hash
        ) AS s
        ON t.id = s.merge_key AND t._is_current
        WHEN MATCHED AND (s.op = 'D' OR t._row_hash <> s._row_hash) THEN
            UPDATE SET t._valid_to = s.updated_at, t._is_current = false
        WHEN NOT MATCHED AND s.op <> 'D' THEN INSERT
            (id, amount, customer, status, updated_at, _valid_from, _valid_to, _is_current, _is_deleted,
             _row_hash, _batch_id, _source_file, _loaded_at)
            VALUES (s.id, s.amount, s.customer, s.status, s.updated_at, s.updated_at, NULL, true, false,
                    s._row_hash, 'b1', s._source_file, current_timestamp())
    """)
    seconds = time.perf_counter() - started
    jvm = counters.work()
    result = Result("textbook", n, rows, seconds, _peak_mib(jvm_pid), *_added_files(spark, name, before), jvm)
    template = spark.table(f"bench.template_{n}") if spark.catalog.tableExists(f"bench.template_{n}") else None
    if template is not None:  # the two engines must agree on every version
        columns = ["id", "_valid_from", "_valid_to", "_is_current", "_row_hash"]
        diff = (
            spark.table(name).select(*columns).exceptAll(template.select(*columns)).count()
            + template.select(*columns).exceptAll(spark.table(name).select(*columns)).count()
        )
        assert diff == 0, f"template and textbook MERGE disagree on {diff} rows"
    return result


def _microseconds(table: Any) -> Any:
    """Spark writes timestamps as INT96 (read as nanoseconds), Iceberg v2 stores microseconds; and
    every column optional, as in the batch (upsert refuses a nullability mismatch)."""
    import pyarrow as pa

    fields = [
        pa.field(f.name, pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f.with_nullable(True)
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def run_pyiceberg(settings: Any, n: int, initial: str, batch: str) -> Result:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog(settings.catalog_name, uri=settings.catalog_dsn, warehouse=settings.catalog_warehouse_uri)
    name = f"bench.pyiceberg_{n}"
    if catalog.table_exists(name):
        catalog.drop_table(name)
    state = _microseconds(pq.read_table(initial.removeprefix("file://")))
    table = catalog.create_table(name, schema=state.schema)
    table.append(state)
    del state
    current = table.current_snapshot()
    assert current is not None, f"{name} has no snapshot after its load"
    before = current.snapshot_id
    changes = _microseconds(pq.read_table(batch.removeprefix("file://")))
    rows = changes.num_rows
    _reset_peak(os.getpid())
    started = time.perf_counter()
    upserts = changes.filter(pc.not_equal(changes["op"], "D")).select(table.schema().column_names)
    table.upsert(upserts, join_cols=["id"])
    seconds = time.perf_counter() - started
    table = catalog.load_table(name)
    data = deletes = 0
    seen = False
    for snapshot in table.snapshots():
        if seen:
            summary = snapshot.summary
            data += int(summary.get("added-data-files", 0) or 0) if summary else 0
            deletes += int(summary.get("added-delete-files", 0) or 0) if summary else 0
        seen = seen or snapshot.snapshot_id == before
    return Result("pyiceberg", n, rows, seconds, _peak_mib(os.getpid()), data, deletes)


PLACEMENTS = ("spread", "recent")


def _base(spark: Any, n: int) -> Any:
    """The N keys' initial state (as build_data writes it), computed rather than read."""
    from pyspark.sql import functions as F

    return spark.range(n).select(
        F.col("id"),
        (F.col("id") % 10_000 / 100).cast("decimal(12,2)").alias("amount"),
        F.concat(F.lit("cust-"), (F.col("id") % 9973).cast("string")).alias("customer"),
        F.when(F.col("id") % 3 == 0, "paid").otherwise("open").alias("status"),
        F.lit(T0).cast("timestamp").alias("updated_at"),
    )


def fixed_batch_counts(size: int, index: int = 0) -> tuple[int, int, int]:
    """(records of existing keys, of which changed, new keys) of fixed batch ``index`` of ``size`` records."""
    new = size // 100
    existing = size - new
    return existing, len(range(index, existing, 10)), new


def build_fixed_batch(spark: Any, work: Path, n: int, size: int, placement: str, index: int = 0) -> str:
    """A batch of ``size`` records into N keys: 1 % new keys (above N), the rest existing keys
    (``spread`` evenly over the N, or the ``recent`` newest ones), every tenth of them changed.

    ``index`` numbers successive batches (--batches): batch k changes the keys whose position j in
    the batch has j % 10 == k, and repeats the earlier batches' changes unchanged (their content
    and time), so each batch's unchanged records equal their key's open version."""
    from pyspark.sql import functions as F

    existing, _, new = fixed_batch_counts(size)
    step = max(1, n // existing)
    j = F.col("id")
    key = j * step if placement == "spread" else F.lit(n - existing) + j
    group = j % 10  # batch k changes group k; groups below k were changed by earlier batches
    base = (key % 10_000 / 100).cast("decimal(12,2)")
    changed_at = F.lit(T1).cast("timestamp") + F.make_dt_interval(F.lit(0), group.cast("int"))
    records = spark.range(existing).select(
        key.alias("id"),
        F.when(group <= index, base + F.lit(1)).otherwise(base).cast("decimal(12,2)").alias("amount"),
        F.concat(F.lit("cust-"), (key % 9973).cast("string")).alias("customer"),
        F.when(key % 3 == 0, "paid").otherwise("open").alias("status"),
        F.when(group <= index, changed_at).otherwise(F.lit(T0).cast("timestamp")).alias("updated_at"),
        F.lit("U").alias("op"),
    )
    fresh = spark.range(n + index * new, n + (index + 1) * new).select(
        "id",
        F.lit(1).cast("decimal(12,2)").alias("amount"),
        F.lit("cust-new").alias("customer"),
        F.lit("open").alias("status"),
        (F.lit(T1).cast("timestamp") + F.make_dt_interval(F.lit(0), F.lit(index))).alias("updated_at"),
        F.lit("I").alias("op"),
    )
    path = str(work / f"fixed_{n}_{placement}_{index}")
    records.unionByName(fresh).withColumn("_line_number", F.monotonically_increasing_id()).withColumn(
        "_source_file", F.lit("bench.csv")
    ).coalesce(1).write.mode("overwrite").parquet(path)
    return Path(path).as_uri()


def _table_files(spark: Any, table: str) -> tuple[int, int]:
    """Data and delete files of the table's current snapshot."""
    counts = {0: 0, 1: 0, 2: 0}
    for row in spark.sql(f"SELECT content, count(*) AS n FROM {table}.files GROUP BY content").collect():
        counts[int(row["content"])] = int(row["n"])
    return counts[0], counts[1] + counts[2]


def _rollback(spark: Any, table: str, snapshot: int) -> None:
    """The table back at ``snapshot``: the state of a fresh copy, without building one."""
    catalog = spark.conf.get("spark.sql.defaultCatalog")
    spark.sql(f"CALL {catalog}.system.rollback_to_snapshot('{table}', {snapshot})")


def run_fixed(spark: Any, name: str, n: int, batch: str, jvm_pid: int, index: int, size: int) -> Result:
    """One fixed batch through the template, checked: changed keys close and reopen, new keys open."""
    from lakehouse_jobs.identifiers import parse_table_name
    from lakehouse_jobs.scd2 import apply_changes

    before = _snapshot(spark, name)
    frame = spark.read.parquet(batch)
    rows = frame.count()
    _reset_peak(jvm_pid)
    counters = JvmCounters(spark, jvm_pid)
    started = time.perf_counter()
    result = apply_changes(
        spark, parse_table_name(name, "table"), frame, ["id"], "updated_at", f"b{index + 1}", mode="cdc", op_column="op"
    )
    seconds = time.perf_counter() - started
    jvm = counters.work()
    _, changed, new = fixed_batch_counts(size, index)
    assert (result.versions_inserted, result.versions_closed) == (changed + new, changed), result
    return Result("template", n, rows, seconds, _peak_mib(jvm_pid), *_added_files(spark, name, before), jvm)


def _load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f}"


def fixed_batch_mode(
    spark: Any, settings: Any, args: argparse.Namespace, sizes: list[int], work: Path, jvm_pid: int
) -> None:
    """--batch: a fixed batch into tables of every size, rolled back after each round."""
    from lakehouse_jobs.templates import maintain_table

    placements = PLACEMENTS if args.placement == "both" else (args.placement,)
    best: dict[tuple[str, int], Result] = {}
    for n in sizes:
        name = f"bench.fixed_{n}"
        started = time.perf_counter()
        load_stage(spark, name, _base(spark, n), None)
        initial = _snapshot(spark, name)
        assert initial is not None, f"{name} has no snapshot after its load"
        data, deletes = _table_files(spark, name)
        print(
            f"N={n:,}: table built in {time.perf_counter() - started:.0f} s ({data} data files); {_load_line()}",
            flush=True,
        )
        for placement in placements:
            batch = build_fixed_batch(spark, work, n, args.batch, placement)
            for round_ in range(max(1, args.repeat)):
                result = run_fixed(spark, name, n, batch, jvm_pid, 0, args.batch)
                _rollback(spark, name, initial)
                print(f"(round {round_ + 1}, {placement}) {result.line()}  {_load_line()}", flush=True)
                if (placement, n) not in best or result.seconds < best[(placement, n)].seconds:
                    best[(placement, n)] = result
        if args.batches:
            for maintained in (False, True):
                spent = 0.0
                for index in range(args.batches):
                    batch = build_fixed_batch(spark, work, n, args.batch, "spread", index)
                    run_fixed(spark, name, n, batch, jvm_pid, index, args.batch)
                    if maintained:
                        started = time.perf_counter()
                        maintain_table.run(
                            spark,
                            {
                                "table": name,
                                "compact": True,
                                "delete_file_threshold": 1,
                                "rewrite_all": False,
                                "snapshot_retention_days": 7.0,
                                "retain_last": 10,
                                "remove_orphans": False,
                                "orphan_file_age_days": 3.0,
                            },
                        )
                        spent += time.perf_counter() - started
                data, deletes = _table_files(spark, name)
                print(
                    f"N={n:,} after {args.batches} spread batches of {args.batch:,} "
                    f"{'with maintain_table after each' if maintained else 'without maintenance'}: "
                    f"{data} data + {deletes} delete files in the table"
                    + (f"; maintenance {spent:.1f} s in all" if maintained else "")
                    + f"; {_load_line()}",
                    flush=True,
                )
                _rollback(spark, name, initial)
        spark.sql(f"DROP TABLE IF EXISTS {name} PURGE")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
    print(f"\nsummary: best of {max(1, args.repeat)} round(s) per size; ratio to the smallest size's best")
    for placement in placements:
        smallest = best[(placement, sizes[0])]
        for n in sizes:
            result = best[(placement, n)]
            print(f"{placement:<6} {result.line()}  x{result.seconds / smallest.seconds:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,5000000", help="comma-separated N (stage table keys)")
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"subset of {','.join(ENGINES)}, run in this "
        "order each round; one listed twice runs twice (textbook,template,template shows what the "
        "other engine's round costs the template's next batch)",
    )
    parser.add_argument(
        "--warmup", type=int, default=20_000, help="N of an unreported first run of the Spark engines (0: none)"
    )
    parser.add_argument("--driver-memory", default="12g", help="Spark driver (local mode: all of Spark) memory")
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark setting for the session (both Spark engines); repeatable",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("BENCH_PG_PORT", str(PG_PORT))),
        help="port of the benchmark's own Postgres (catalog)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds per size, the engines taking turns in each "
        "(the JIT keeps improving over the first large runs); the summary gives best and median",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="fixed-batch mode: records per batch (0: the batch is a full extract of the table, 1.01 N records)",
    )
    parser.add_argument(
        "--placement",
        default="both",
        choices=[*PLACEMENTS, "both"],
        help="fixed-batch mode: where the batch's existing keys are",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=0,
        help="fixed-batch mode: also apply this many successive "
        "batches, without and with maintain_table, and count the table's files",
    )
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}")
    extra_conf: dict[str, str] = {}
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("spark."):
            parser.error(f"--conf takes spark.KEY=VALUE, got {item!r}")
        extra_conf[key] = value

    # a TERM (timeout, kill) unwinds like Ctrl-C, so the finally below stops Spark and Postgres
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-scd2-"))
    home.chmod(0o755)  # the Postgres server runs as user postgres and must reach its data dir
    os.environ.update(
        {
            "LAKEHOUSE_HOME": str(home),
            "LAKEHOUSE_PG_PORT": str(args.port),
            "LAKEHOUSE_SPARK_DRIVER_MEMORY": args.driver_memory,
        }
    )
    for variable in ("LAKEHOUSE_CATALOG_DSN", "LAKEHOUSE_LAKE_URI", "LAKEHOUSE_METADATA_DSN"):
        os.environ.pop(variable, None)
    from lakehouse.config import load_settings
    from lakehouse.runners.spark_conf import local_spark_conf
    from lakehouse.stack import postgres
    from lakehouse.stack.jars import provision_jars

    settings = load_settings()
    started_pg = False
    spark = None
    results: list[Result] = []
    try:
        started_pg = postgres.start(settings)
        postgres.ensure_databases(settings)
        provision_jars(settings.jars_dir)
        from pyspark.sql import SparkSession

        builder = SparkSession.builder.appName("bench-scd2")
        for key, value in {**local_spark_conf(settings), **extra_conf}.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        spark.sql("CREATE NAMESPACE IF NOT EXISTS bench")
        jvm_pid = int(spark.sparkContext._gateway.proc.pid)  # type: ignore[union-attr]
        print(
            f"Spark {spark.version} {settings.spark_master}, driver memory {args.driver_memory}; "
            f"sizes {sizes}; engines {engines}; extra settings {extra_conf or 'none'}",
            flush=True,
        )
        work = home / "data"
        work.mkdir()
        print(_load_line(), flush=True)
        if args.batch:
            if args.warmup:  # JIT, class loading and first-use costs out of the measured runs
                fixed_batch_mode(
                    spark,
                    settings,
                    argparse.Namespace(**{**vars(args), "batches": 0, "repeat": 1}),
                    [args.warmup * 10],
                    work,
                    jvm_pid,
                )
                print("(the above was the warm-up)", flush=True)
            fixed_batch_mode(spark, settings, args, sizes, work, jvm_pid)
            return 0
        if args.warmup:  # JIT, class loading and first-use costs out of the measured runs
            initial, batch = build_data(spark, work, args.warmup)
            for engine in ("template", "textbook"):
                runner = run_template if engine == "template" else run_textbook
                print(
                    "(warm-up) "
                    + runner(spark, args.warmup, Path(initial).as_uri(), Path(batch).as_uri(), jvm_pid).line(),
                    flush=True,
                )
                spark.sql(f"DROP TABLE IF EXISTS bench.{engine}_{args.warmup} PURGE")
        for n in sizes:
            initial, batch = build_data(spark, work, n)
            initial_uri, batch_uri = Path(initial).as_uri(), Path(batch).as_uri()
            for round_ in range(max(1, args.repeat)):
                for engine in engines:
                    if engine == "template":
                        result = run_template(spark, n, initial_uri, batch_uri, jvm_pid)
                    elif engine == "textbook":
                        result = run_textbook(spark, n, initial_uri, batch_uri, jvm_pid)
                    else:
                        result = run_pyiceberg(settings, n, initial_uri, batch_uri)
                    results.append(result)
                    print(f"(round {round_ + 1}) " + result.line(), flush=True)
            for engine in dict.fromkeys(engines):
                spark.sql(f"DROP TABLE IF EXISTS bench.{engine}_{n} PURGE")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
        print(f"\nsummary: best (fewest seconds) of {max(1, args.repeat)} round(s), then the median's seconds")
        for n in sizes:
            for engine in dict.fromkeys(engines):  # an engine listed twice (see --engines) once
                runs = sorted((r for r in results if r.engine == engine and r.n == n), key=lambda r: r.seconds)
                median = runs[(len(runs) - 1) // 2]
                print(f"{runs[0].line()}  median {median.seconds:.1f} s, {median.rows / median.seconds:,.0f} rows/s")
        return 0
    finally:
        if spark is not None:
            # a TERM in the middle of a py4j call leaves the gateway unusable; the JVM then ends with
            # this process, and Postgres must still be stopped
            with contextlib.suppress(Exception):
                spark.stop()
        if started_pg:
            postgres.stop(settings)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
