"""Loading a table into the warehouse (Postgres locally, Redshift on AWS) so readers never see half.

Spark's JDBC writer commits per partition, so writing straight into the target would expose a
half-loaded table. Instead rows go into a staging table next to the target and a single
transaction, run over a plain JDBC connection from the driver JVM (no Python database driver
needed on Glue), drops the old table and renames the staging table into its place. A reader blocked on the
table's lock during the swap resumes on the new table: it sees the old rows or the new rows.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from lakehouse_jobs.identifiers import TableName, quote_postgres, validate_identifier
from lakehouse_jobs.secrets import read_secret

__all__ = ["WarehouseConnection", "connection_from_env", "connection_from_secret", "load_atomically", "staging_table_name"]

_DRIVERS = {"postgres": "org.postgresql.Driver", "redshift": "com.amazon.redshift.jdbc42.Driver"}
_MAX_IDENTIFIER = 63


@dataclass(frozen=True)
class WarehouseConnection:
    url: str
    user: str
    password: str = ""
    driver: str = _DRIVERS["postgres"]

    def __repr__(self) -> str:  # never print the password into a job log
        return f"WarehouseConnection(url={self.url!r}, user={self.user!r})"


def connection_from_env(environ: dict[str, str] | None = None) -> WarehouseConnection:
    """Local runs: ``LAKEHOUSE_WAREHOUSE_JDBC_URL`` / ``_USER`` / ``_PASSWORD`` (set by the runner)."""
    env = os.environ if environ is None else environ
    url = env.get("LAKEHOUSE_WAREHOUSE_JDBC_URL")
    if not url:
        raise ValueError("no warehouse connection: pass --secret_id or set LAKEHOUSE_WAREHOUSE_JDBC_URL, "
                         "LAKEHOUSE_WAREHOUSE_USER and LAKEHOUSE_WAREHOUSE_PASSWORD")
    driver = _DRIVERS["redshift"] if url.startswith("jdbc:redshift:") else _DRIVERS["postgres"]
    return WarehouseConnection(url, env.get("LAKEHOUSE_WAREHOUSE_USER", ""), env.get("LAKEHOUSE_WAREHOUSE_PASSWORD", ""),
                               driver)


def connection_from_secret(secret_id: str, client: Any = None) -> WarehouseConnection:
    """A secret in the RDS/Redshift shape ``{host, port, dbname, username, password}``: handed over
    by the local runner (an Airflow connection) or read from AWS Secrets Manager (Glue)."""
    secret = read_secret(secret_id, client)
    missing = [k for k in ("host", "username", "password") if not secret.get(k)]
    if missing:
        raise ValueError(f"secret {secret_id} lacks {missing}; it needs host, port, dbname, username, password")
    engine = "redshift" if str(secret.get("engine", "")).lower() == "redshift" else "postgres"
    port = int(secret.get("port") or (5439 if engine == "redshift" else 5432))
    dbname = secret.get("dbname") or ("dev" if engine == "redshift" else "postgres")
    scheme = "redshift" if engine == "redshift" else "postgresql"
    return WarehouseConnection(f"jdbc:{scheme}://{secret['host']}:{port}/{dbname}", secret["username"],
                               secret["password"], _DRIVERS[engine])


def staging_table_name(table: str, batch_id: str) -> str:
    """``{table}__load_{batch}``, kept within the 63-character identifier limit and unique per batch."""
    readable = re.sub(r"[^a-z0-9_]+", "_", batch_id.lower()).strip("_")
    name = f"{table}__load_{readable}"
    if len(name) <= _MAX_IDENTIFIER and readable:
        return name
    digest = hashlib.sha1(batch_id.encode("utf-8")).hexdigest()[:12]
    return f"{table[:_MAX_IDENTIFIER - len('__load_') - len(digest)]}__load_{digest}"


@contextmanager
def _jdbc(spark: SparkSession, connection: WarehouseConnection) -> Iterator[Any]:
    """A ``java.sql.Connection`` in manual-commit mode; rolled back unless committed."""
    jvm = spark.sparkContext._jvm
    # The driver jar comes with spark.jars / Glue, i.e. in Spark's class loader, which neither py4j's
    # Class.forName nor DriverManager sees; Spark's own registry loads and wraps it for us.
    registry = jvm.org.apache.spark.sql.execution.datasources.jdbc.DriverRegistry
    registry.register(connection.driver)
    properties = jvm.java.util.Properties()
    properties.setProperty("user", connection.user)
    properties.setProperty("password", connection.password)
    conn = registry.get(connection.driver).connect(connection.url, properties)
    if conn is None:
        raise ValueError(f"driver {connection.driver} does not accept {connection.url}")
    try:
        conn.setAutoCommit(False)
        yield conn
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def _execute(conn: Any, statements: Sequence[str]) -> None:
    statement = conn.createStatement()
    try:
        for sql in statements:
            statement.execute(sql)
    finally:
        statement.close()


def _count(conn: Any, table: TableName) -> int:
    statement = conn.createStatement()
    try:
        result = statement.executeQuery(f"SELECT count(*) FROM {table.postgres}")
        result.next()
        return int(result.getLong(1))
    finally:
        statement.close()


def load_atomically(spark: SparkSession, df: DataFrame, target: TableName, batch_id: str,
                    connection: WarehouseConnection) -> int:
    """Replace ``target`` with the rows of ``df`` in one visible step; returns the rows loaded."""
    staging = TableName(target.namespace, validate_identifier(staging_table_name(target.table, batch_id),
                                                               "staging table"))
    with _jdbc(spark, connection) as conn:
        _execute(conn, [f"CREATE SCHEMA IF NOT EXISTS {quote_postgres(target.namespace)}",
                        f"DROP TABLE IF EXISTS {staging.postgres}"])  # left over by a failed earlier run
        conn.commit()
    (df.write.format("jdbc")
        .option("url", connection.url)
        .option("driver", connection.driver)
        .option("dbtable", staging.postgres)
        .option("user", connection.user)
        .option("password", connection.password)
        .option("batchsize", 5000)
        .mode("errorifexists")
        .save())
    try:
        with _jdbc(spark, connection) as conn:
            rows = _count(conn, staging)  # what readers will see, counted inside the swap
            _execute(conn, [f"DROP TABLE IF EXISTS {target.postgres}",
                            f"ALTER TABLE {staging.postgres} RENAME TO {quote_postgres(target.table)}"])
            conn.commit()
    except BaseException:
        with _jdbc(spark, connection) as conn:  # do not leave the staging copy behind
            _execute(conn, [f"DROP TABLE IF EXISTS {staging.postgres}"])
            conn.commit()
        raise
    return rows
