"""MWAA path: ``invoke_rest_api`` answers (shapes as botocore's service model defines them) map to
the same created / exists / retry-later / refused contract as the REST client."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from lakehouse.config import load_settings
from lakehouse.hooks.airflow_api import AirflowApiError, AirflowUnavailableError
from lakehouse.hooks.mwaa import MwaaTriggerClient
from lakehouse.invoker.core import build_invoker

EXPECTED = {
    "Name": "lakehouse-prod",
    "Path": "/dags/invoices/dagRuns",
    "Method": "POST",
    "Body": {"dag_run_id": "s3__invoices__abc", "logical_date": None, "conf": {"flow_id": "invoices"}},
}


@pytest.fixture
def stubbed() -> tuple[MwaaTriggerClient, Stubber]:
    client = boto3.client("mwaa", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    return MwaaTriggerClient("lakehouse-prod", "eu-west-1", client=client), Stubber(client)


def test_created(stubbed) -> None:
    mwaa, stub = stubbed
    stub.add_response(
        "invoke_rest_api",
        {
            "RestApiStatusCode": 200,
            "RestApiResponse": {
                "dag_run_id": "s3__invoices__abc",
                "dag_id": "invoices",
                "state": "queued",
                "run_type": "manual",
            },
        },
        EXPECTED,
    )
    with stub:
        assert mwaa.trigger_dag_run("invoices", "s3__invoices__abc", {"flow_id": "invoices"}) == "created"
    stub.assert_no_pending_responses()


def test_409_is_exists(stubbed) -> None:
    mwaa, stub = stubbed
    stub.add_client_error(
        "invoke_rest_api",
        service_error_code="RestApiClientException",
        http_status_code=400,
        modeled_fields={
            "RestApiStatusCode": 409,
            "RestApiResponse": {
                "title": "Conflict",
                "status": 409,
                "detail": "DAGRun with DAG ID: 'invoices' and DAGRun ID: 's3__invoices__abc' already exists",
            },
        },
        expected_params=EXPECTED,
    )
    with stub:
        assert mwaa.trigger_dag_run("invoices", "s3__invoices__abc", {"flow_id": "invoices"}) == "exists"


def test_server_errors_mean_retry_later_and_4xx_is_refused(stubbed) -> None:
    mwaa, stub = stubbed
    stub.add_client_error(
        "invoke_rest_api",
        service_error_code="RestApiServerException",
        http_status_code=400,
        modeled_fields={"RestApiStatusCode": 503, "RestApiResponse": {"detail": "webserver starting"}},
    )
    stub.add_client_error(
        "invoke_rest_api",
        service_error_code="RestApiClientException",
        http_status_code=400,
        modeled_fields={"RestApiStatusCode": 404, "RestApiResponse": {"detail": "DAG not found"}},
    )
    stub.add_client_error("invoke_rest_api", service_error_code="AccessDeniedException", http_status_code=403)
    with stub:
        with pytest.raises(AirflowUnavailableError, match="503"):
            mwaa.trigger_dag_run("invoices", "r")
        with pytest.raises(AirflowApiError) as not_found:
            mwaa.trigger_dag_run("invoices", "r")
        assert not_found.value.status == 404  # the invoker keeps 404 pending (DAG not parsed yet)
        with pytest.raises(AirflowApiError, match="AccessDenied"):
            mwaa.trigger_dag_run("invoices", "r")


def test_configuration_chooses_mwaa(monkeypatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_API", "mwaa")
    monkeypatch.setenv("LAKEHOUSE_MWAA_ENVIRONMENT", "lakehouse-prod")
    invoker = build_invoker(load_settings())
    assert isinstance(invoker.airflow, MwaaTriggerClient) and invoker.airflow.environment == "lakehouse-prod"
    monkeypatch.delenv("LAKEHOUSE_MWAA_ENVIRONMENT")
    with pytest.raises(ValueError, match="LAKEHOUSE_MWAA_ENVIRONMENT"):
        build_invoker(load_settings())
    monkeypatch.setenv("LAKEHOUSE_AIRFLOW_API", "carrier-pigeon")
    with pytest.raises(ValueError, match="'rest' or 'mwaa'"):
        load_settings()


def test_dag_id_too_long_for_mwaa_path_is_refused_before_calling(stubbed) -> None:
    mwaa, stub = stubbed
    # no response queued: a call would fail the Stubber
    with stub, pytest.raises(AirflowApiError, match="at most 64") as refused:
        mwaa.trigger_dag_run("d" * 51, "r")
    assert refused.value.status == 400


def test_get_dag_reads_tags_and_a_missing_dag_is_none(stubbed) -> None:
    """The invoker asks for a fixed flow's DAG before it releases the files it held (tag ``invalid``)."""
    mwaa, stub = stubbed
    get = {"Name": "lakehouse-prod", "Path": "/dags/invoices", "Method": "GET"}
    stub.add_response(
        "invoke_rest_api",
        {
            "RestApiStatusCode": 200,
            "RestApiResponse": {
                "dag_id": "invoices",
                "is_stale": False,
                "tags": [{"name": "lakehouse", "dag_id": "invoices"}],
            },
        },
        get,
    )
    stub.add_client_error(
        "invoke_rest_api",
        service_error_code="RestApiClientException",
        http_status_code=400,
        modeled_fields={"RestApiStatusCode": 404, "RestApiResponse": {"detail": "not found"}},
        expected_params=get,
    )
    with stub:
        assert mwaa.get_dag("invoices")["tags"] == [{"name": "lakehouse", "dag_id": "invoices"}]
        assert mwaa.get_dag("invoices") is None
    stub.assert_no_pending_responses()
