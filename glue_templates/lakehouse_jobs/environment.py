"""What a job reads from its environment, in one place: the variables the local runner hands over.

The orchestration side's settings never reach a job as such: the local runner (and the warm driver,
per run) sets the few variables below, and on AWS Glue none of them is set, so a job falls back to
Secrets Manager, the default S3 endpoint and its arguments. Plain standard library: the job
library ships to Glue alone (pyspark, boto3 and the standard library only). Every call reads
``os.environ`` anew, because the warm driver sets and restores it around each run: nothing here
may be cached at import.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JdbcLogin", "JobEnvironment", "read_environment"]


@dataclass(frozen=True)
class JdbcLogin:
    """A JDBC URL and login given as variables; ``url`` is None when the variable is unset."""

    url: str | None
    user: str = ""
    password: str = field(default="", repr=False)  # never printed into a job log


@dataclass(frozen=True)
class JobEnvironment:
    """A snapshot of the job's variables (empty counts as unset), taken by :func:`read_environment`."""

    #: ``AWS_ENDPOINT_URL_S3``: the landing store's S3 endpoint (SeaweedFS locally; unset on Glue)
    s3_endpoint_url: str | None
    #: ``LAKEHOUSE_LANDING_BUCKET``: http_to_landing's bucket when its ``--bucket`` is not given
    landing_bucket: str | None
    #: ``LAKEHOUSE_SECRETS_JSON``: the task's secrets the runner resolved, ``{secret_id: {...}}``
    secrets_json: str | None = field(repr=False)
    #: ``LAKEHOUSE_WAREHOUSE_JDBC_URL`` / ``_USER`` / ``_PASSWORD``: the warehouse without a secret_id
    warehouse: JdbcLogin
    #: ``LAKEHOUSE_SOURCE_JDBC_URL`` / ``_USER`` / ``_PASSWORD``: db_to_raw's source without a secret_id
    source: JdbcLogin

    def handed_over_secrets(self) -> dict[str, Any]:
        """``LAKEHOUSE_SECRETS_JSON`` parsed: the secrets the runner resolved for this task."""
        if not self.secrets_json:
            return {}
        value = json.loads(self.secrets_json)
        if not isinstance(value, dict):
            raise ValueError("LAKEHOUSE_SECRETS_JSON must be a JSON object of secret_id -> secret")
        return value


def read_environment(environ: Mapping[str, str] | None = None) -> JobEnvironment:
    """The job's variables as they are now (``environ`` stands in for ``os.environ`` in tests)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        return env.get(name) or None

    def login(prefix: str, url: str) -> JdbcLogin:
        return JdbcLogin(get(url), get(f"{prefix}_USER") or "", get(f"{prefix}_PASSWORD") or "")

    return JobEnvironment(
        s3_endpoint_url=get("AWS_ENDPOINT_URL_S3"),
        landing_bucket=get("LAKEHOUSE_LANDING_BUCKET"),
        secrets_json=get("LAKEHOUSE_SECRETS_JSON"),
        warehouse=login("LAKEHOUSE_WAREHOUSE", "LAKEHOUSE_WAREHOUSE_JDBC_URL"),
        source=login("LAKEHOUSE_SOURCE_JDBC", "LAKEHOUSE_SOURCE_JDBC_URL"),
    )
