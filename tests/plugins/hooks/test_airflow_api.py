"""The Airflow API client: JWT login, idempotent trigger (409 = exists), token refresh, outages."""

from __future__ import annotations

import pytest

from lakehouse.hooks.airflow_api import AirflowApiClient, AirflowApiError, AirflowUnavailableError


def test_trigger_is_idempotent_by_run_id(fake_airflow) -> None:
    url, state = fake_airflow
    client = AirflowApiClient(url, "admin", "pw")
    assert client.trigger_dag_run("invoices", "s3__invoices__1", {"file": {"key": "a"}}) == "created"
    assert client.trigger_dag_run("invoices", "s3__invoices__1", {"file": {"key": "a"}}) == "exists"
    assert state.runs[("invoices", "s3__invoices__1")]["conf"] == {"file": {"key": "a"}}
    assert state.runs[("invoices", "s3__invoices__1")]["logical_date"] is None
    assert state.tokens_issued == 1


def test_expired_token_is_refreshed_once(fake_airflow) -> None:
    url, state = fake_airflow
    client = AirflowApiClient(url, "admin", "pw")
    client.trigger_dag_run("d", "r1")
    state.valid_tokens.clear()
    assert client.trigger_dag_run("d", "r2") == "created"
    assert state.tokens_issued == 2


def test_wrong_password_is_a_clear_error(fake_airflow) -> None:
    url, _ = fake_airflow
    with pytest.raises(AirflowApiError, match="login as 'admin' refused"):
        AirflowApiClient(url, "admin", "nope").trigger_dag_run("d", "r")


def test_5xx_and_unreachable_mean_retry_later(fake_airflow) -> None:
    url, state = fake_airflow
    state.fail_with = 503
    with pytest.raises(AirflowUnavailableError):
        AirflowApiClient(url, "admin", "pw").trigger_dag_run("d", "r")
    with pytest.raises(AirflowUnavailableError, match="unreachable"):
        AirflowApiClient("http://127.0.0.1:1", "admin", "pw", timeout=2).trigger_dag_run("d", "r")
