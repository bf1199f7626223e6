"""Airflow REST API v2 with a JWT, the way a user's Lambda calls it.

Triggering is idempotent by run id: Airflow answers 409 for a run id it already has, which this
client reports as ``"exists"`` rather than an error, so delivering an event twice is harmless.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import requests

__all__ = ["AirflowApiClient", "AirflowApiError", "AirflowUnavailableError"]


class AirflowApiError(RuntimeError):
    """Airflow refused the request (4xx other than 409); retrying will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Airflow API {status}: {message}")
        self.status = status


class AirflowUnavailableError(RuntimeError):
    """Airflow is down or answered 5xx: the request should be retried later."""


@dataclass
class AirflowApiClient:
    base_url: str
    username: str
    password: str
    timeout: float = 10.0
    _token: str | None = None
    _token_at: float = 0.0

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._session = requests.Session()

    # -- plumbing ----------------------------------------------------------------------------
    def _fetch_token(self) -> str:
        try:
            response = self._session.post(
                f"{self.base_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise AirflowUnavailableError(f"Airflow at {self.base_url} unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise AirflowUnavailableError(f"Airflow token endpoint answered {response.status_code}")
        if response.status_code not in (200, 201):
            raise AirflowApiError(response.status_code, f"login as {self.username!r} refused: {response.text[:200]}")
        self._token = response.json()["access_token"]
        self._token_at = time.monotonic()
        return self._token

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        # tokens are refreshed proactively after 10 minutes and once on a 401
        if self._token is None or time.monotonic() - self._token_at > 600:
            self._fetch_token()
        for attempt in range(2):
            try:
                response = self._session.request(
                    method,
                    f"{self.base_url}{path}",
                    headers={"Authorization": f"Bearer {self._token}"},
                    timeout=self.timeout,
                    **kwargs,
                )
            except requests.RequestException as exc:
                raise AirflowUnavailableError(f"Airflow at {self.base_url} unreachable: {exc}") from exc
            if response.status_code == 401 and attempt == 0:
                self._fetch_token()
                continue
            if response.status_code >= 500:
                raise AirflowUnavailableError(f"{method} {path} answered {response.status_code}: {response.text[:200]}")
            return response
        return response

    # -- API -----------------------------------------------------------------------------------
    def trigger_dag_run(
        self, dag_id: str, dag_run_id: str, conf: dict[str, Any] | None = None
    ) -> Literal["created", "exists"]:
        response = self._request(
            "POST",
            f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns",
            json={"dag_run_id": dag_run_id, "logical_date": None, "conf": conf or {}},
        )
        if response.status_code == 409:
            return "exists"
        if response.status_code not in (200, 201):
            raise AirflowApiError(response.status_code, f"trigger {dag_id}/{dag_run_id}: {response.text[:300]}")
        return "created"

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        """``GET`` one object; None when Airflow has no such thing (404)."""
        response = self._request("GET", path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise AirflowApiError(response.status_code, response.text[:300])
        return response.json()

    def get_dag_run(self, dag_id: str, dag_run_id: str) -> dict[str, Any] | None:
        return self._get_or_none(f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(dag_run_id, safe='')}")

    def get_dag(self, dag_id: str) -> dict[str, Any] | None:
        return self._get_or_none(f"/api/v2/dags/{quote(dag_id, safe='')}")

    def get_dag_details(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG with its doc panel (``doc_md``), as the UI's details page shows it."""
        return self._get_or_none(f"/api/v2/dags/{quote(dag_id, safe='')}/details")

    def list_dags(self, limit: int = 100, offset: int = 0, **filters: Any) -> dict[str, Any]:
        """One page of ``GET /api/v2/dags`` (``dags`` and ``total_entries``), e.g. ``tags=["invalid"]``."""
        response = self._request("GET", "/api/v2/dags", params={"limit": limit, "offset": offset, **filters})
        if response.status_code != 200:
            raise AirflowApiError(response.status_code, response.text[:300])
        return response.json()

    def set_paused(self, dag_id: str, paused: bool) -> None:
        response = self._request("PATCH", f"/api/v2/dags/{quote(dag_id, safe='')}", json={"is_paused": paused})
        if response.status_code != 200:
            raise AirflowApiError(response.status_code, response.text[:300])

    def list_dag_runs(self, dag_id: str, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """One page of the DAG's runs, oldest first (Airflow's default order); 100 is the API's page cap."""
        response = self._request(
            "GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns", params={"limit": limit, "offset": offset}
        )
        if response.status_code != 200:
            raise AirflowApiError(response.status_code, response.text[:300])
        return response.json()["dag_runs"]

    def list_task_instances(self, dag_id: str, dag_run_id: str) -> list[dict[str, Any]]:
        response = self._request(
            "GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(dag_run_id, safe='')}/taskInstances"
        )
        if response.status_code != 200:
            raise AirflowApiError(response.status_code, response.text[:300])
        return response.json()["task_instances"]

    def clear_failed_tasks(self, dag_id: str, dag_run_id: str) -> int:
        """Re-run the failed tasks of a run (the UI's "Clear"); templates are idempotent per batch."""
        response = self._request(
            "POST",
            f"/api/v2/dags/{quote(dag_id, safe='')}/clearTaskInstances",
            json={
                "dry_run": False,
                "dag_run_id": dag_run_id,
                "only_failed": True,
                "reset_dag_runs": True,
                "include_downstream": True,
            },
        )
        if response.status_code != 200:
            raise AirflowApiError(response.status_code, response.text[:300])
        return int(response.json().get("total_entries", 0))

    def import_errors(self) -> list[dict[str, Any]]:
        response = self._request("GET", "/api/v2/importErrors")
        if response.status_code != 200:
            raise AirflowApiError(response.status_code, response.text[:300])
        return response.json()["import_errors"]

    def health(self) -> dict[str, Any]:
        try:
            response = self._session.get(f"{self.base_url}/api/v2/monitor/health", timeout=self.timeout)
        except requests.RequestException as exc:
            raise AirflowUnavailableError(str(exc)) from exc
        if response.status_code != 200:
            raise AirflowUnavailableError(f"health answered {response.status_code}")
        return response.json()

    def wait_for_dag_run(self, dag_id: str, dag_run_id: str, timeout: float = 600, poll: float = 2.0) -> dict[str, Any]:
        """Poll until the run is finished (success or failed); raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_dag_run(dag_id, dag_run_id)
            if run is not None and run.get("state") in ("success", "failed"):
                return run
            if time.monotonic() > deadline:
                state = run.get("state") if run else "not created"
                raise TimeoutError(f"DAG run {dag_id}/{dag_run_id} still {state} after {timeout:.0f}s")
            time.sleep(poll)
