"""The OpenLineage datasets of a template task: which objects, folders and tables it read and wrote.

Pure functions from (template, rendered parameters, the job's metrics) to input and output datasets,
so the mapping is tested without Airflow and the operator only hands the result to the OpenLineage
provider. The metrics win over the parameters: they say what the job really read (every file of a
micro-batch) and wrote (the raw folder, the rejects); the parameters only what it was asked to.

Names follow the OpenLineage naming spec: ``s3://<bucket>`` + key, ``file`` + absolute path (a local
lake), ``postgres://<host>:<port>`` + ``<database>.<schema>.<table>``, ``redshift://<cluster>.<region>:<port>``
+ the same. A raw or rejects dataset is its folder without the ``_batch_id=<batch>`` partition, so
every batch of a dataset is one node of the graph. Iceberg tables, which the spec does not name,
are ``iceberg://<catalog>`` + ``<catalog>.<namespace>.<table>`` (the name Spark SQL resolves), with
the catalog facet saying which catalog and warehouse. No Airflow, no pyspark here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from openlineage.client.event_v2 import InputDataset, OutputDataset
from openlineage.client.facet_v2 import (
    DatasetFacet,
    OutputDatasetFacet,
    catalog_dataset,
    output_statistics_output_dataset,
)

from lakehouse.config import Settings

__all__ = ["Database", "Site", "TaskDatasets", "is_manifest", "read_manifest_files", "task_datasets"]

#: a folder segment that is a partition of its dataset (``_batch_id=<batch>``), not the dataset
_PARTITION = re.compile(r"^[^=/]+=[^/]*$")
#: the part of a Redshift host that names the cluster and region (provisioned or serverless)
_REDSHIFT_HOST = re.compile(r"^([^.]+)\.[^.]+\.([a-z0-9-]+)\.redshift(-serverless)?\.amazonaws\.com$")

ManifestReader = Callable[[str], Sequence[str]]


@dataclass(frozen=True)
class Database:
    """A warehouse or source database: where it is and which database, never the login."""

    engine: str  # postgres | redshift
    host: str
    port: int
    database: str

    @classmethod
    def from_jdbc_url(cls, url: str) -> Database | None:
        """``jdbc:postgresql://host:port/db?...`` or ``jdbc:redshift://...``, as the jobs connect."""
        parsed = urlparse(url.removeprefix("jdbc:"))
        if parsed.scheme not in ("postgresql", "postgres", "redshift") or not parsed.hostname:
            return None
        engine = "redshift" if parsed.scheme == "redshift" else "postgres"
        return cls(
            engine,
            parsed.hostname,
            parsed.port or (5439 if engine == "redshift" else 5432),
            parsed.path.strip("/") or ("dev" if engine == "redshift" else "postgres"),
        )

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any]) -> Database | None:
        """A secret in the RDS/Redshift shape (``engine, host, port, dbname``), as the jobs read it."""
        if not secret.get("host"):
            return None
        engine = "redshift" if str(secret.get("engine", "")).lower() == "redshift" else "postgres"
        return cls(
            engine,
            str(secret["host"]),
            int(secret.get("port") or (5439 if engine == "redshift" else 5432)),
            str(secret.get("dbname") or ("dev" if engine == "redshift" else "postgres")),
        )

    @property
    def namespace(self) -> str:
        if self.engine == "redshift":
            match = _REDSHIFT_HOST.match(self.host)
            if match:
                return f"redshift://{match.group(1)}.{match.group(2)}:{self.port}"
            return f"redshift://{self.host}:{self.port}"
        return f"postgres://{self.host}:{self.port}"


@dataclass(frozen=True)
class Site:
    """What the parameters leave implicit: the lake, the Iceberg catalog, the landing bucket, and
    the databases a task reaches when it names no secret."""

    lake_uri: str
    catalog_name: str = "lake"
    catalog_type: str = "jdbc"  # jdbc (the local stack) | glue (the Glue runner)
    landing_bucket: str = "landing"
    warehouse: Database | None = None
    source: Database | None = None

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> Site:
        """The places a job of this deployment uses: the warehouse the local runner hands over, the
        source of ``LAKEHOUSE_SOURCE_JDBC_URL`` (the job's environment is the worker's)."""
        environ = os.environ if environ is None else environ
        return cls(
            lake_uri=settings.lake_uri,
            catalog_name=settings.catalog_name,
            catalog_type="glue" if settings.runner == "glue" else "jdbc",
            landing_bucket=settings.landing_bucket,
            warehouse=Database.from_jdbc_url(settings.jdbc_url(settings.warehouse_db)),
            source=Database.from_jdbc_url(environ.get("LAKEHOUSE_SOURCE_JDBC_URL") or ""),
        )

    def lake(self, *parts: str) -> str:
        return "/".join([self.lake_uri.rstrip("/"), *(p.strip("/") for p in parts)])


@dataclass
class TaskDatasets:
    inputs: list[InputDataset] = field(default_factory=list)
    outputs: list[OutputDataset] = field(default_factory=list)


# -- names ------------------------------------------------------------------------------------------
def storage_name(uri: str) -> tuple[str, str]:
    """(namespace, name) of an object or folder: ``s3://bucket`` + key, ``file`` + absolute path."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return "file", unquote(parsed.path) if parsed.scheme else uri
    if parsed.scheme in ("s3", "s3a", "s3n"):
        return f"s3://{parsed.netloc}", parsed.path.lstrip("/")
    # anything else (an http endpoint): scheme and authority, then the path; a query may hold a token
    return f"{parsed.scheme}://{parsed.hostname or ''}{f':{parsed.port}' if parsed.port else ''}", parsed.path or "/"


def dataset_folder(uri: str) -> str:
    """A batch's folder without its partitions: ``raw/x/_batch_id=b`` is the dataset ``raw/x``."""
    path = uri.rstrip("/")
    while "/" in path and _PARTITION.match(path.rsplit("/", 1)[1]):
        path = path.rsplit("/", 1)[0]
    return path


def is_manifest(uri: str) -> bool:
    """A micro-batch's list of files (``<lake>/_manifests/<flow>/<run>.json``), not a landing file:
    the rule ``landing_to_raw`` reads its ``source_uri`` by."""
    path = PurePosixPath(urlparse(uri).path or uri)
    return path.suffix == ".json" and "_manifests" in path.parts


def read_manifest_files(uri: str) -> list[str]:
    """The files a manifest in the lake lists (a local file, or an S3 object read with boto3)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        import boto3

        body = boto3.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
        document = json.loads(body)
    else:
        document = json.loads(Path(unquote(parsed.path) if parsed.scheme == "file" else uri).read_text("utf-8"))
    return [str(f["uri"]) for f in document.get("files") or ()]


# -- datasets ---------------------------------------------------------------------------------------
def _input(namespace: str, name: str, facets: dict[str, DatasetFacet] | None = None) -> InputDataset:
    return InputDataset(namespace=namespace, name=name, facets=facets or {})


def _output(
    namespace: str, name: str, facets: dict[str, DatasetFacet] | None = None, rows: Any = None
) -> OutputDataset:
    statistics: dict[str, OutputDatasetFacet] = {}
    if isinstance(rows, int) and not isinstance(rows, bool):
        statistics["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=rows
        )
    return OutputDataset(namespace=namespace, name=name, facets=facets or {}, outputFacets=statistics)


def _iceberg(table: str, site: Site) -> tuple[str, str, dict[str, DatasetFacet]]:
    """``namespace.table`` (or ``catalog.namespace.table``) in the catalog Spark resolves it in."""
    parts = [p.strip("`") for p in table.split(".")]
    if len(parts) == 1:
        parts = ["default", *parts]  # Spark's current namespace
    if len(parts) == 2:
        parts = [site.catalog_name, *parts]
    catalog = parts[0]
    facets: dict[str, DatasetFacet] = {}
    if catalog == site.catalog_name:
        facets["catalog"] = catalog_dataset.CatalogDatasetFacet(
            framework="iceberg",
            type=site.catalog_type,
            name=catalog,
            warehouseUri=site.lake("warehouse"),
            source="spark",
        )
    return f"iceberg://{catalog}", ".".join(parts), facets


def _database_table(table: str, database: Database | None, secret_id: str | None) -> tuple[str, str]:
    """``database.schema.table`` in the database the task reaches. A secret that is not read here
    (a Glue job reads its own) names the namespace, ``secret://<id>``: only the secret knows the host."""
    parts = table.split(".")
    if len(parts) == 1:
        parts = ["public", *parts]
    if database is None:
        return f"secret://{secret_id}" if secret_id else "postgres://unknown", ".".join(parts)
    return database.namespace, ".".join([database.database, *parts[-2:]])


def _sql_tables(sql: str, dialect: str) -> list[str]:
    """The tables a SELECT reads (CTE names left out), by OpenLineage's own SQL parser."""
    try:
        import openlineage_sql

        parsed = openlineage_sql.parse([sql], dialect=dialect)
    except Exception:  # an unparsable statement costs the inputs, never the task
        return []
    if parsed is None:
        return []
    return [".".join(p for p in (t.database, t.schema, t.name) if p) for t in parsed.in_tables]


def _given(metrics: Mapping[str, Any], parameters: Mapping[str, Any], key: str) -> Any:
    """The metrics' value when the job reported one, else the parameter."""
    value = metrics.get(key)
    return value if value not in (None, "") else parameters.get(key) or None


def task_datasets(
    template_id: str,
    parameters: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    *,
    site: Site,
    secret: Database | None = None,
    secret_pending: bool = False,
    manifest_files: ManifestReader | None = None,
) -> TaskDatasets:
    """Inputs and outputs of one run of ``template_id``: from its rendered ``parameters`` (before
    the job ran) and its ``metrics`` (after). ``secret`` is the database the task's ``secret_id``
    names, where it was read here; ``secret_pending`` says it will be read later (a local run's
    START), so that database is left out rather than named twice. ``manifest_files`` lists a
    micro-batch's files."""
    metrics = metrics or {}
    rows_out = metrics.get("rows_out")
    found = TaskDatasets()

    def read(uri: str) -> None:
        found.inputs.append(_input(*storage_name(uri)))

    def read_table(table: str) -> None:
        namespace, name, facets = _iceberg(table, site)
        found.inputs.append(_input(namespace, name, facets))

    def wrote_table(table: str, rows: Any = None) -> None:
        namespace, name, facets = _iceberg(table, site)
        found.outputs.append(_output(namespace, name, facets, rows))

    def raw_folder(dataset: Any) -> str | None:
        raw = metrics.get("raw_path") or (site.lake("raw", str(dataset)) if dataset else None)
        return dataset_folder(str(raw)) if raw else None

    secret_id = parameters.get("secret_id") or None
    secret_known = not (secret_id and secret is None and secret_pending)
    if template_id == "landing_to_raw":
        source = _given(metrics, parameters, "source_uri")
        if source and is_manifest(str(source)) and manifest_files is not None:
            try:
                files = list(manifest_files(str(source))) or [str(source)]
            except Exception:  # an unreadable manifest is still what the run was given
                files = [str(source)]
        else:
            files = [str(source)] if source else []
        for uri in files:
            read(uri)
        if raw := raw_folder(parameters.get("dataset")):
            found.outputs.append(_output(*storage_name(raw), rows=rows_out))
        if metrics.get("rejects_path"):
            found.outputs.append(
                _output(*storage_name(dataset_folder(str(metrics["rejects_path"]))), rows=metrics.get("rows_rejected"))
            )
    elif template_id == "db_to_raw":
        database = secret if secret_id else site.source
        tables = (
            [str(parameters["source_table"])]
            if parameters.get("source_table")
            else _sql_tables(str(parameters.get("query") or ""), "postgres")
        )
        for table in tables if secret_known else ():
            found.inputs.append(_input(*_database_table(table, database, secret_id)))
        if raw := raw_folder(parameters.get("dataset")):
            found.outputs.append(_output(*storage_name(raw), rows=rows_out))
    elif template_id == "http_to_landing":
        if parameters.get("url"):
            read(str(parameters["url"]))
        target = metrics.get("target_uri") or (
            f"s3://{parameters.get('bucket') or site.landing_bucket}/{str(parameters['target_key']).lstrip('/')}"
            if parameters.get("target_key")
            else None
        )
        if target:
            found.outputs.append(_output(*storage_name(str(target)), rows=rows_out))
    elif template_id == "raw_to_stage_scd2":
        if raw := raw_folder(parameters.get("dataset")):
            read(raw)
        if table := _given(metrics, parameters, "target_table"):
            wrote_table(str(table), rows_out)
    elif template_id == "stage_to_presentation":
        target = _given(metrics, parameters, "target_table")
        target_name = _iceberg(str(target), site)[1] if target else None
        for table in dict.fromkeys(_sql_tables(str(parameters.get("sql") or ""), "sparksql")):
            if _iceberg(table, site)[1] != target_name:
                read_table(table)
        if target:
            wrote_table(str(target), rows_out)
    elif template_id == "presentation_to_warehouse":
        if source := _given(metrics, parameters, "source_table"):
            read_table(str(source))
        if (target := _given(metrics, parameters, "target_table")) and secret_known:
            database = secret if secret_id else site.warehouse
            found.outputs.append(_output(*_database_table(str(target), database, secret_id), rows=rows_out))
    elif template_id == "quality_check":
        if parameters.get("table"):
            read_table(str(parameters["table"]))
        elif raw := raw_folder(parameters.get("dataset")):
            read(raw)
    elif template_id == "maintain_table" and (maintained := metrics.get("target_table") or parameters.get("table")):
        wrote_table(str(maintained))  # rewritten in place: an output, not a cycle of input and output
    return found
