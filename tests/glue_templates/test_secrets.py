"""A job reads its secret from the local runner's hand-over, else from Secrets Manager."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from lakehouse_jobs.secrets import read_secret


def test_the_local_hand_over_wins_and_needs_no_aws() -> None:
    env = {"LAKEHOUSE_SECRETS_JSON": json.dumps({"wh": {"host": "h", "username": "u", "password": "p"}})}
    assert read_secret("wh", client=object(), environ=env) == {"host": "h", "username": "u", "password": "p"}


def test_secrets_manager_when_not_handed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("secretsmanager")
        client.create_secret(Name="wh", SecretString=json.dumps({"host": "db", "password": "pw"}))
        client.create_secret(Name="plain", SecretString="just-a-password")
        assert read_secret("wh", environ={"LAKEHOUSE_SECRETS_JSON": json.dumps({"other": {}})}) == {
            "host": "db",
            "password": "pw",
        }
        with pytest.raises(ValueError, match="secret 'plain' is not a JSON object"):
            read_secret("plain", environ={})
