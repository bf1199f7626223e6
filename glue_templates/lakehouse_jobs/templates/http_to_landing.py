"""http_to_landing: one file from an HTTP(S) endpoint into the landing bucket.

The object lands at ``s3://{bucket}/{target_key}`` only when it was received completely (see
lakehouse_jobs.pull), so a flow triggered by the landing key never sees half a file; a re-run of
the batch puts the same key again (same content, or the endpoint's newer one). Credentials come from
the secret ``--secret_id``, never from the task's parameters: its ``headers`` (an object of header ->
value) if it has them, else ``username`` + ``password`` as HTTP basic auth, else ``password`` alone as
a bearer token (locally an Airflow connection: login/password, as the runner hands it over). With
``--skip_unchanged`` the SHA-256 of the new body is compared with the object already at the key and
an identical file is not uploaded again (no new landing event, no new flow run).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from pyspark.sql import SparkSession

from lakehouse_jobs import io
from lakehouse_jobs.args import ArgSpec
from lakehouse_jobs.environment import read_environment
from lakehouse_jobs.job import run_template
from lakehouse_jobs.pull import fetch_to_file, put_file
from lakehouse_jobs.secrets import read_secret

__all__ = ["SPEC", "main", "run"]

TEMPLATE = "http_to_landing"

SPEC: tuple[ArgSpec, ...] = (
    ArgSpec("url", required=True, description="http(s) URL of the file"),
    ArgSpec("target_key", required=True, description="landing object key, e.g. rates/${logical_date}.csv"),
    ArgSpec("bucket", description="landing bucket (default LAKEHOUSE_LANDING_BUCKET or 'landing')"),
    ArgSpec("secret_id", description="secret with the endpoint's credentials (headers, basic or bearer)"),
    ArgSpec("timeout_seconds", "float", default=60.0, description="per request"),
    ArgSpec("attempts", "int", default=3, description="tries for transient failures (5xx, resets, truncation)"),
    ArgSpec("skip_unchanged", "bool", default=False, description="do not re-upload an identical file"),
)


def _auth_headers(secret_id: str) -> dict[str, str]:
    secret = read_secret(secret_id)
    if secret.get("headers") is not None:
        headers = secret["headers"]
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError(f"secret {secret_id}: headers must map header names to string values")
        return dict(headers)
    password = secret.get("password") or ""
    if not password:
        raise ValueError(f"secret {secret_id} has neither headers nor a password")
    if secret.get("username"):
        token = base64.b64encode(f"{secret['username']}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}
    return {"Authorization": f"Bearer {password}"}


def run(spark: SparkSession, args: dict[str, Any]) -> dict[str, Any]:
    key = args["target_key"].lstrip("/")
    if not key or key.endswith("/") or ".." in key.split("/"):
        raise ValueError(f"--target_key must be an object key like folder/file.csv, got {args['target_key']!r}")
    bucket = args["bucket"] or read_environment().landing_bucket or "landing"
    headers = _auth_headers(args["secret_id"]) if args["secret_id"] else {}
    folder = tempfile.mkdtemp(prefix="lakehouse-http-")
    try:
        fetched = fetch_to_file(args["url"], folder, headers, args["timeout_seconds"], max(1, args["attempts"]))
        client = io.s3_client()
        metrics: dict[str, Any] = {
            "rows_in": 1,
            "rows_out": 1,
            "rows_rejected": 0,
            "bytes": fetched.size,
            "sha256": fetched.sha256,
            "target_uri": f"s3://{bucket}/{key}",
        }
        if args["skip_unchanged"]:
            try:
                existing = client.head_object(Bucket=bucket, Key=key)
            except client.exceptions.ClientError:
                existing = None
            if existing and existing.get("Metadata", {}).get("sha256") == fetched.sha256:
                return {**metrics, "rows_out": 0, "unchanged": True}
        put = put_file(client, fetched, bucket, key, args["url"])
        return {**metrics, "etag": put["etag"], "unchanged": False}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: Sequence[str]) -> dict[str, Any]:
    return run_template(TEMPLATE, argv, SPEC, run)
