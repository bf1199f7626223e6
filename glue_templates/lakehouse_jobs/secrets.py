"""A job's secret by id: from the local runner's environment, else from AWS Secrets Manager.

The orchestrator never puts a secret into a job's arguments (Glue shows arguments in its console;
``ps`` shows a local command line). Locally the runner resolves the task's ``secret_id`` (an
Airflow connection) and hands it over in ``LAKEHOUSE_SECRETS_JSON``; on Glue the job reads the
Secrets Manager secret of that name with its own IAM role.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lakehouse_jobs.environment import read_environment

__all__ = ["read_secret"]


def read_secret(secret_id: str, client: Any = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    handed_over = read_environment(environ).handed_over_secrets()
    if secret_id in handed_over:
        return dict(handed_over[secret_id])
    if client is None:
        import boto3

        client = boto3.client("secretsmanager")
    value = client.get_secret_value(SecretId=secret_id)
    try:
        return json.loads(value["SecretString"])
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"secret {secret_id!r} is not a JSON object with host, port, dbname, username, password"
        ) from exc
