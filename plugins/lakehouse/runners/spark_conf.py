"""The Spark configuration that points a session at the lake's Iceberg catalog.

One function so the local runner, the job-side tests and the benchmarks configure Spark the same
way. On Glue the same keys are passed as ``--conf`` job parameters (with ``--datalake-formats
iceberg`` providing the jars).
"""

from __future__ import annotations

from lakehouse.config import Settings
from lakehouse.stack.jars import iceberg_runtime, spark_jars

__all__ = ["iceberg_catalog_conf", "local_spark_conf"]


def iceberg_catalog_conf(settings: Settings) -> dict[str, str]:
    """Catalog keys; the catalog name must equal PyIceberg's, which filters rows by it."""
    prefix = f"spark.sql.catalog.{settings.catalog_name}"
    return {
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
        f"{prefix}.uri": settings.jdbc_url(settings.catalog_db),
        f"{prefix}.jdbc.user": settings.pg_user,
        f"{prefix}.jdbc.password": settings.pg_password,
        f"{prefix}.jdbc.schema-version": "V1",
        f"{prefix}.warehouse": settings.catalog_warehouse_uri,
        "spark.sql.defaultCatalog": settings.catalog_name,
    }


def local_spark_conf(settings: Settings) -> dict[str, str]:
    """Everything a local session needs: jars, catalog, sizes for a 2-core machine. The scratch
    directory it names exists once this returns (a JVM does not create its ``java.io.tmpdir``)."""
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    conf = {
        "spark.master": settings.spark_master,
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.jars": ",".join(map(str, spark_jars(settings.jars_dir, iceberg_runtime(settings.iceberg_version)))),
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        # scratch space under the stack's home, not /tmp: a killed JVM cannot clean up after itself
        "spark.local.dir": str(settings.tmp_dir / "spark"),
        "spark.driver.extraJavaOptions": f"-Djava.io.tmpdir={settings.tmp_dir} -XX:-UsePerfData",
        # landing objects are read through boto3 here: no Hadoop S3 connector is installable
        "spark.lakehouse.stage_s3_through_boto3": "true",
    }
    conf.update(iceberg_catalog_conf(settings))
    return conf
