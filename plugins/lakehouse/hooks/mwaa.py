"""Trigger DAG runs on Amazon MWAA through boto3's ``mwaa.invoke_rest_api``.

On AWS the invoker Lambda usually has no network path to the MWAA webserver and no Airflow
password: ``invoke_rest_api`` goes through the MWAA control plane with the Lambda's IAM role
(``airflow:InvokeRestApi``) instead. This client has the same ``trigger_dag_run`` / ``get_dag`` contract as
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
            raise ValueError(
                "LAKEHOUSE_MWAA_ENVIRONMENT must name the MWAA environment when LAKEHOUSE_AIRFLOW_API=mwaa"
            )
        self.environment = environment
        self._client = client or boto3.client(
            "mwaa", region_name=region, config=Config(retries={"max_attempts": 3, "mode": "standard"})
        )

    def _invoke(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(Airflow's status, its answer) for one call; 409 and 404 come back as statuses, and the
        control plane's errors map to the REST client's exceptions."""
        if len(path) > MAX_PATH_LENGTH:  # final: retrying cannot shorten it; a shorter dag_id can
            raise AirflowApiError(
                400,
                f"MWAA: path {path!r} is {len(path)} characters, invoke_rest_api takes at "
                f"most {MAX_PATH_LENGTH}; set flows.dag_id shorter",
            )
        try:
            response = self._client.invoke_rest_api(
                Name=self.environment, Path=path, Method=method, **({"Body": body} if body is not None else {})
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = int(
                exc.response.get("RestApiStatusCode")
                or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            )
            detail = exc.response.get("RestApiResponse") or exc.response.get("Error", {}).get("Message", "")
            if code == "RestApiClientException" and status in (404, 409):
                return status, detail
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                raise AirflowUnavailableError(f"MWAA {self.environment}: {code} {status}: {detail}") from exc
            raise AirflowApiError(status or 400, f"MWAA {self.environment}: {code}: {detail}") from exc
        except BotoCoreError as exc:  # endpoint unreachable, credentials not yet available ...
            raise AirflowUnavailableError(f"MWAA {self.environment} unreachable: {exc}") from exc
        return int(response.get("RestApiStatusCode", 200)), response.get("RestApiResponse")

    def trigger_dag_run(
        self, dag_id: str, dag_run_id: str, conf: dict[str, Any] | None = None
    ) -> Literal["created", "exists"]:
        status, answer = self._invoke(
            "POST",
            f"/dags/{quote(dag_id, safe='')}/dagRuns",
            {"dag_run_id": dag_run_id, "logical_date": None, "conf": conf or {}},
        )
        if status == 409:
            return "exists"
        if status not in (200, 201):
            raise AirflowApiError(status, f"trigger {dag_id}/{dag_run_id}: {answer}")
        return "created"

    def get_dag(self, dag_id: str) -> dict[str, Any] | None:
        """``GET /dags/{dag_id}``: the DAG as Airflow serves it (tags, is_stale), or None."""
        status, answer = self._invoke("GET", f"/dags/{quote(dag_id, safe='')}")
        if status == 404:
            return None
        if status != 200 or not isinstance(answer, dict):
            raise AirflowApiError(status, f"get DAG {dag_id}: {answer}")
        return answer
