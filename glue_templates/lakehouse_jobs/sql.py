"""Guarding user SQL: a presentation template runs exactly one query, never a statement.

The SQL comes from a metadata row. Spark's ``spark.sql`` runs commands (DROP, INSERT, SET ...)
eagerly, so the text is checked before Spark runs it: lexically for a single statement starting
with SELECT or WITH (Spark's query parser silently ignores text after a ``;``), then by Spark's
plain query parser, which refuses every statement that is not a query (e.g. WITH ... INSERT).
"""

from __future__ import annotations

import re

from pyspark.sql import SparkSession

from lakehouse_jobs.io import spark_jvm

__all__ = ["UnsafeSqlError", "single_query", "single_select_text"]

_LEADING = re.compile(r"^\s*(\(\s*)*(select|with)\b", re.IGNORECASE)


class UnsafeSqlError(ValueError):
    """The SQL is not one read-only query."""


def _strip_comments_and_literals(sql: str) -> str:
    """The SQL with comments removed and string/identifier literals blanked, for structure checks."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise UnsafeSqlError("--sql has an unterminated /* comment")
            out.append(" ")
            i = end + 2
            continue
        if ch in ("'", '"', "`"):
            j = i + 1
            while j < n and sql[j] != ch:
                j += 2 if sql[j] == "\\" and ch != "`" else 1
            if j >= n:
                raise UnsafeSqlError(f"--sql has an unterminated {ch} quote")
            out.append(f"{ch}{ch}")
            i = j + 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def single_select_text(sql: str, what: str = "--sql") -> str:
    """The lexical half of :func:`single_query`, for SQL another database runs (a JDBC source's
    dialect, which Spark's parser does not know): one statement, starting with SELECT or WITH."""
    if not sql or not sql.strip():
        raise UnsafeSqlError(f"{what} is empty")
    structure = _strip_comments_and_literals(sql).strip()
    while structure.endswith(";"):
        structure = structure[:-1].rstrip()
    if ";" in structure:
        raise UnsafeSqlError(f"{what} must be a single statement: it contains ';' between statements")
    if not _LEADING.match(structure):
        raise UnsafeSqlError(f"{what} must be a SELECT or WITH ... SELECT query, got: {sql.strip()[:80]!r}")
    query = sql.strip()
    while query.endswith(";"):
        query = query[:-1].rstrip()
    return query


def single_query(spark: SparkSession, sql: str) -> str:
    """Return ``sql`` without trailing semicolons if it is exactly one SELECT/WITH query."""
    if not sql or not sql.strip():
        raise UnsafeSqlError("--sql is empty")
    structure = _strip_comments_and_literals(sql).strip()
    while structure.endswith(";"):
        structure = structure[:-1].rstrip()
    if ";" in structure:
        raise UnsafeSqlError("--sql must be a single statement: it contains ';' between statements")
    if not _LEADING.match(structure):
        raise UnsafeSqlError(f"--sql must be a SELECT or WITH ... SELECT query, got: {sql.strip()[:80]!r}")
    query = sql.strip()
    while query.endswith(";"):
        query = query[:-1].rstrip()
    try:
        # Spark's own parser, not the session's: Iceberg's extension parser (installed in the session)
        # hands parseQuery to its statement parser and would accept WITH ... INSERT.
        spark_jvm(spark).org.apache.spark.sql.execution.SparkSqlParser().parseQuery(query)
    except Exception as exc:  # py4j wraps Spark's ParseException
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeSqlError(f"--sql is not a single query Spark can parse: {first_line}") from None
    return query
