"""Where bytes come from and go to: landing objects, lake folders, metrics files.

Spark on Glue reads and writes ``s3://`` natively. Locally there is no Hadoop S3 connector (none
is installable offline), so a landing object is first copied with boto3 into a temp folder; that
difference lives in :func:`localize_input` only, switched by the Spark conf
``spark.lakehouse.stage_s3_through_boto3`` which the local runner sets and Glue never does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from pyspark.sql import SparkSession

from lakehouse_jobs.environment import read_environment

__all__ = [
    "STAGE_S3_CONF",
    "delete_path",
    "file_head",
    "is_manifest",
    "lake_path",
    "local_path",
    "localize_input",
    "path_exists",
    "read_text",
    "s3_client",
    "spark_jvm",
    "write_text",
]

STAGE_S3_CONF = "spark.lakehouse.stage_s3_through_boto3"
_S3_SCHEMES = ("s3", "s3a", "s3n")


def s3_client() -> Any:
    """A boto3 S3 client; ``AWS_ENDPOINT_URL_S3`` points it at SeaweedFS (or any S3) locally."""
    import boto3

    return boto3.client("s3", endpoint_url=read_environment().s3_endpoint_url)


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if not parsed.netloc or not key:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, key


def local_path(uri: str) -> Path | None:
    """The filesystem path of a plain path or ``file:`` URI; None for remote URIs."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def is_manifest(uri: str) -> bool:
    """A run's manifest (``<lake>/_manifests/<flow>/<run>.json``, written by the invoker for a
    micro-batch) rather than a landing file: what ``${files.uri}`` names for a run of many files."""
    path = PurePosixPath(urlparse(uri).path or uri)
    return path.suffix == ".json" and "_manifests" in path.parts


def lake_path(lake_uri: str, *parts: str) -> str:
    """``lake_uri`` joined with path segments; a plain local path becomes a ``file://`` URI."""
    local = local_path(lake_uri)
    base = local.resolve().as_uri() if local is not None else lake_uri
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


@contextmanager
def localize_input(spark: SparkSession, uri: str) -> Iterator[str]:
    """Yield a URI Spark can read for ``uri``; staged copies are removed on exit.

    Spark reads lazily: every action on data read from the yielded URI must run inside the block.
    """
    scheme = urlparse(uri).scheme
    stage = (spark.conf.get(STAGE_S3_CONF, "false") or "false").lower() == "true"
    if scheme in _S3_SCHEMES and stage:
        bucket, key = _split_s3(uri)
        folder = tempfile.mkdtemp(prefix="lakehouse-landing-")
        target = Path(folder) / (Path(key).name or "object")
        try:
            s3_client().download_file(bucket, key, str(target))
            yield target.as_uri()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    local = local_path(uri)
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"source file {uri} does not exist")
        yield local.resolve().as_uri()
        return
    yield uri


def write_text(uri: str, text: str) -> None:
    """Write a small text object (metrics JSON) to a local path, ``file://`` or ``s3://`` URI."""
    if urlparse(uri).scheme in _S3_SCHEMES:
        bucket, key = _split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType="application/json")
        return
    local = local_path(uri)
    if local is None:
        raise ValueError(f"cannot write to {uri!r}: use a local path, file:// or s3:// URI")
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(local)  # a reader polling for the file never sees half of it


def read_text(uri: str) -> str | None:
    """A small text object (schema, watermark, metrics) from a local path, ``file://`` or ``s3://``;
    None when it does not exist."""
    if urlparse(uri).scheme in _S3_SCHEMES:
        bucket, key = _split_s3(uri)
        client = s3_client()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        except client.exceptions.NoSuchKey:
            return None
    local = local_path(uri)
    if local is None:
        raise ValueError(f"cannot read {uri!r}: use a local path, file:// or s3:// URI")
    return local.read_text(encoding="utf-8") if local.is_file() else None


def file_head(uri: str, length: int = 65536, tail: int = 0) -> tuple[bytes, bytes, int]:
    """``(first bytes, last bytes, size)`` of a file: enough to tell an empty, truncated or
    wrong-format file before Spark reads it (local path, ``file://`` or ``s3://``)."""
    if urlparse(uri).scheme in _S3_SCHEMES:
        bucket, key = _split_s3(uri)
        client = s3_client()
        size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        if size == 0:
            return b"", b"", 0
        head = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{min(size, length) - 1}")["Body"].read()
        end = b""
        if tail:
            end = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{min(size, tail)}")["Body"].read()
        return head, end, size
    local = local_path(uri)
    if local is None:
        raise ValueError(f"cannot read {uri!r}: use a local path, file:// or s3:// URI")
    size = local.stat().st_size
    with local.open("rb") as handle:
        head = handle.read(length)
        end = b""
        if tail and size:
            handle.seek(max(0, size - tail))
            end = handle.read()
    return head, end, size


def spark_jvm(spark: SparkSession) -> Any:
    """The session's py4j view of the JVM (``org``, ``java``, ...); PySpark types it as optional."""
    jvm = spark.sparkContext._jvm
    if jvm is None:
        raise RuntimeError("the SparkContext has no JVM gateway")
    return jvm


def _hadoop_path(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    jvm = spark_jvm(spark)
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def path_exists(spark: SparkSession, uri: str) -> bool:
    """Through Hadoop's FileSystem, so it works for whatever scheme Spark itself can read."""
    fs, path = _hadoop_path(spark, uri)
    return bool(fs.exists(path))


def delete_path(spark: SparkSession, uri: str) -> None:
    """Remove a folder recursively if present (stale output of an earlier run of the same batch)."""
    fs, path = _hadoop_path(spark, uri)
    if fs.exists(path):
        fs.delete(path, True)
