"""Declared data-quality checks on a DataFrame, each giving a count of offending rows and a sample.

Checks (``type`` in each JSON object of the ``checks`` list; ``name`` and ``where`` are optional):

* ``not_null`` ``columns``: no NULL in any of them;
* ``unique`` ``columns``: the combination is a key (NULLs count as values);
* ``accepted_values`` ``column`` ``values``: every non-NULL value is in the list;
* ``range`` ``column`` ``min`` and/or ``max``: every non-NULL value inside, both ends included;
* ``row_count`` ``min`` / ``max`` and/or ``max_change`` (a fraction): the row count, and its change
  against the previous successful run of the same check subject;
* ``freshness`` ``column`` ``max_age_hours``: the newest value is at most that old at the batch time.

``where`` (a Spark SQL boolean expression, e.g. ``_is_current``) narrows the rows a check sees.
Everything is Spark SQL expressions; column names are validated and quoted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lakehouse_jobs.identifiers import quote_spark, validate_identifier

__all__ = ["CHECK_TYPES", "CheckResult", "parse_checks", "report_text", "run_check"]

CHECK_TYPES = ("not_null", "unique", "accepted_values", "range", "row_count", "freshness")
_KEYS = {
    "not_null": {"columns"},
    "unique": {"columns"},
    "accepted_values": {"column", "values"},
    "range": {"column", "min", "max"},
    "row_count": {"min", "max", "max_change"},
    "freshness": {"column", "max_age_hours"},
}


@dataclass
class CheckResult:
    name: str
    type: str
    passed: bool
    failing: int  # offending rows (or keys, for unique); 0 when passed
    detail: str
    sample: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "passed": self.passed,
            "failing": self.failing,
            "detail": self.detail,
            "sample": self.sample,
        }


def _col(name: str) -> Column:
    return F.col(quote_spark(name))


def parse_checks(checks: Any) -> list[dict[str, Any]]:
    """Validate the ``checks`` parameter; each check gets a unique ``name``."""
    if not isinstance(checks, list) or not checks:
        raise ValueError('--checks must be a non-empty JSON list like [{"type": "not_null", "columns": ["id"]}]')
    parsed: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, check in enumerate(checks, start=1):
        where = f"--checks[{i}]"
        if not isinstance(check, dict) or check.get("type") not in CHECK_TYPES:
            raise ValueError(f"{where}: type must be one of {', '.join(CHECK_TYPES)}, got {check!r}")
        kind = check["type"]
        unknown = set(check) - _KEYS[kind] - {"type", "name", "where"}
        if unknown:
            raise ValueError(f"{where} ({kind}): unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS[kind])}")
        if "columns" in _KEYS[kind]:
            cols = check.get("columns")
            if isinstance(cols, str):
                cols = [cols]
            if not isinstance(cols, list) or not cols:
                raise ValueError(f"{where} ({kind}) needs columns: a list of column names")
            check = {**check, "columns": [validate_identifier(c, f"{where} column") for c in cols]}
        if "column" in _KEYS[kind]:
            validate_identifier(check.get("column"), f"{where} ({kind}) column")
        if kind == "accepted_values" and (not isinstance(check.get("values"), list) or not check["values"]):
            raise ValueError(f"{where} (accepted_values) needs values: a non-empty list")
        if kind == "range" and check.get("min") is None and check.get("max") is None:
            raise ValueError(f"{where} (range) needs min and/or max")
        if kind == "row_count" and all(check.get(k) is None for k in ("min", "max", "max_change")):
            raise ValueError(f"{where} (row_count) needs min, max and/or max_change")
        if kind == "freshness" and not isinstance(check.get("max_age_hours"), (int, float)):
            raise ValueError(f"{where} (freshness) needs max_age_hours, a number")
        target = check.get("columns") or ([check["column"]] if check.get("column") else [])
        name = check.get("name") or (f"{kind}({', '.join(target)})" if target else kind)
        if name in names:
            name = f"{name}#{i}"
        names.add(name)
        parsed.append({**check, "name": name})
    return parsed


def _sample(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(r.asDict(recursive=True), default=str)) for r in rows]


def _literal(value: Any) -> Column:
    return F.lit(value)


def run_check(
    df: DataFrame, check: Mapping[str, Any], sample_size: int, now: datetime, previous_count: int | None
) -> CheckResult:
    kind, name = check["type"], check["name"]
    data = df.filter(F.expr(check["where"])) if check.get("where") else df
    if kind == "not_null":
        bad: Column | None = None
        for c in check["columns"]:
            cond = _col(c).isNull()
            bad = cond if bad is None else bad | cond
        if bad is None:  # parse_checks requires at least one column
            raise ValueError(f"{name} (not_null) needs columns: a list of column names")
        return _rows_check(data, bad, kind, name, sample_size, f"NULL in {', '.join(check['columns'])}")
    if kind == "accepted_values":
        c = check["column"]
        bad = _col(c).isNotNull() & ~_col(c).isin(*[_literal(v) for v in check["values"]])
        return _rows_check(data, bad, kind, name, sample_size, f"{c} not in {check['values']}")
    if kind == "range":
        c = check["column"]
        bad = F.lit(False)
        if check.get("min") is not None:
            bad = bad | (_col(c) < _literal(check["min"]))
        if check.get("max") is not None:
            bad = bad | (_col(c) > _literal(check["max"]))
        bounds = f"[{check.get('min', '-inf')}, {check.get('max', 'inf')}]"
        return _rows_check(data, _col(c).isNotNull() & bad, kind, name, sample_size, f"{c} outside {bounds}")
    if kind == "unique":
        cols = [_col(c) for c in check["columns"]]
        dupes = data.groupBy(*cols).agg(F.count(F.lit(1)).alias("_rows")).filter(F.col("_rows") > 1)
        count = dupes.count()
        sample = _sample(dupes.orderBy(F.col("_rows").desc()).limit(sample_size).collect()) if count else []
        return CheckResult(
            name,
            kind,
            count == 0,
            count,
            f"{count} values of ({', '.join(check['columns'])}) occur more than once",
            sample,
        )
    if kind == "row_count":
        rows = data.count()
        problems = []
        if check.get("min") is not None and rows < check["min"]:
            problems.append(f"{rows} rows, fewer than min {check['min']}")
        if check.get("max") is not None and rows > check["max"]:
            problems.append(f"{rows} rows, more than max {check['max']}")
        if check.get("max_change") is not None and previous_count is not None:
            change = abs(rows - previous_count) / previous_count if previous_count else (0.0 if rows == 0 else 1.0)
            if change > float(check["max_change"]):
                problems.append(
                    f"{rows} rows vs {previous_count} in the previous run: a change of {change:.1%}, "
                    f"more than max_change {float(check['max_change']):.1%}"
                )
        detail = "; ".join(problems) or f"{rows} rows" + (
            f" (previous run: {previous_count})" if previous_count is not None else " (no previous run)"
        )
        return CheckResult(name, kind, not problems, rows if problems else 0, detail, [{"row_count": rows}])
    if kind == "freshness":
        c = check["column"]
        aggregated = data.agg(F.max(_col(c)).alias("newest")).first()
        if aggregated is None:  # an aggregation without grouping always has one row
            raise RuntimeError(f"{name}: the freshness aggregation returned no row")
        newest = aggregated["newest"]
        limit = timedelta(hours=float(check["max_age_hours"]))
        if newest is None:
            return CheckResult(name, kind, False, 0, f"{c} has no value: no rows or all NULL", [])
        if not isinstance(newest, datetime):  # a date: midnight (UTC) of that day
            newest = datetime(newest.year, newest.month, newest.day)
        if newest.tzinfo is None:
            newest = newest.replace(tzinfo=UTC)  # sessions run in UTC
        age = now - newest
        passed = age <= limit
        detail = (
            f"newest {c} is {newest.isoformat()}, {age.total_seconds() / 3600:.1f} h old at "
            f"{now.isoformat()}; allowed {float(check['max_age_hours'])} h"
        )
        return CheckResult(name, kind, passed, 0, detail, [] if passed else [{"newest": newest.isoformat()}])
    raise ValueError(f"unknown check type {kind!r}")


def _rows_check(data: DataFrame, bad: Column, kind: str, name: str, sample_size: int, what: str) -> CheckResult:
    offending = data.filter(bad)
    count = offending.count()
    sample = _sample(offending.limit(sample_size).collect()) if count else []
    return CheckResult(name, kind, count == 0, count, f"{count} rows with {what}", sample)


def report_text(subject: str, results: Sequence[CheckResult]) -> str:
    failed = [r for r in results if not r.passed]
    lines = [f"quality checks on {subject}: {len(failed)} of {len(results)} failed"]
    for r in failed:
        lines.append(f"- {r.name}: {r.detail}")
        for row in r.sample:
            lines.append(f"    {json.dumps(row, default=str, sort_keys=True)}")
    return "\n".join(lines)
