"""Trigger DAG runs on Amazon MWAA through boto3's ``mwaa.invoke_rest_api``.

On AWS the invoker Lambda usually has no network path to the MWAA webserver and no Airflow
password: ``invoke_rest_api`` goes through the MWAA control plane with the Lambda's IAM role
(``airflow:InvokeRestApi``) instead. This client has the same ``trigger_dag_run`` contract as
:class:`lakehouse.hooks.airflow_api.AirflowApiClient` — ``"created"``, ``"exists"`` for Airflow's
409, :class:`AirflowUnavailableError` for 5xx/throttling (retry later), :class:`AirflowApiError`
for other refusals — so the invoker core does not care which one it holds.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lakehouse.hooks.airflow_api import AirflowApiError, AirflowUnavailableError

__all__ = ["MwaaTriggerClient"]

#: ``invoke_rest_api`` refuses a ``Path`` longer than this (AWS API reference, InvokeRestApi).
MAX_PATH_LENGTH = 64

#: Control-plane errors that mean "MWAA or the webserver is not answering now", not "never".
_TRANSIENT_CODES = {"InternalServerException", "ThrottlingException", "ServiceUnavailable", "RestApiServerException"}


class MwaaTriggerClient:
    """``POST /dags/{dag_id}/dagRuns`` through ``invoke_rest_api`` on environment ``environment``."""

    def __init__(self, environment: str, region: str, client: Any | None = None) -> None:
        if not environment:
            raise ValueError("LAKEHOUSE_MWAA_ENVIRONMENT must name the MWAA environment when LAKEHOUSE_AIRFLOW_API=mwaa")
        self.environment = environment
        self._client = client or boto3.client(
            "mwaa", region_name=region, config=Config(retries={"max_attempts": 3, "mode": "standard"})
        )

    def trigger_dag_run(
        self, dag_id: str, dag_run_id: str, conf: dict[str, Any] | None = None
    ) -> Literal["created", "exists"]:
        path = f"/dags/{quote(dag_id, safe='')}/dagRuns"
        if len(path) > MAX_PATH_LENGTH:  # final: retrying cannot shorten it; a shorter dag_id can
            raise AirflowApiError(400, f"MWAA: dag_id {dag_id!r} too long for invoke_rest_api (Path {path!r} is "
                                       f"{len(path)} characters, at most {MAX_PATH_LENGTH}); set flows.dag_id shorter")
        try:
            response = self._client.invoke_rest_api(
                Name=self.environment,
                Path=path,
                Method="POST",
                Body={"dag_run_id": dag_run_id, "logical_date": None, "conf": conf or {}},
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = int(exc.response.get("RestApiStatusCode") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            detail = exc.response.get("RestApiResponse") or exc.response.get("Error", {}).get("Message", "")
            if code == "RestApiClientException" and status == 409:
                return "exists"
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                raise AirflowUnavailableError(f"MWAA {self.environment}: {code} {status}: {detail}") from exc
            raise AirflowApiError(status or 400, f"MWAA {self.environment}: {code}: {detail}") from exc
        except BotoCoreError as exc:  # endpoint unreachable, credentials not yet available ...
            raise AirflowUnavailableError(f"MWAA {self.environment} unreachable: {exc}") from exc
        status = int(response.get("RestApiStatusCode", 200))
        if status == 409:
            return "exists"
        if status not in (200, 201):
            raise AirflowApiError(status, f"trigger {dag_id}/{dag_run_id}: {response.get('RestApiResponse')}")
        return "created"
