"""The webhook endpoint: auth, size limit and bad bodies are refused and trigger nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from lakehouse.invoker.core import Invoker
from lakehouse.invoker.server import MAX_BODY_BYTES, InvokerServer

TOKEN = "s3cr3t-token"
SAMPLES = Path(__file__).parent / "samples"


@pytest.fixture
def server(invoker: Invoker) -> Iterator[str]:
    srv = InvokerServer(("127.0.0.1", 0), invoker, TOKEN, retry_interval=3600)
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def seaweed_event(bucket: str) -> dict:
    payload = json.loads((SAMPLES / "seaweedfs_create.json").read_text())
    payload["key"] = f"/buckets/{bucket}/in/a.txt"
    return payload


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_wrong_or_missing_token_is_401_and_triggers_nothing(server: str, airflow, bucket: str, header) -> None:
    headers = {"Authorization": header} if header else {}
    response = requests.post(f"{server}/events/seaweedfs", json=seaweed_event(bucket), headers=headers, timeout=5)
    assert response.status_code == 401
    assert airflow.calls == 0


def test_authorised_event_triggers_and_duplicate_does_not(server: str, airflow, bucket: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    first = requests.post(f"{server}/events/seaweedfs", json=seaweed_event(bucket), headers=headers, timeout=10)
    second = requests.post(f"{server}/events/seaweedfs", json=seaweed_event(bucket), headers=headers, timeout=10)
    assert first.status_code == 200 and first.json()["outcomes"][0]["status"] == "created"
    assert second.json()["outcomes"][0]["status"] == "duplicate"
    assert len(airflow.runs) == 1


def test_oversized_and_malformed_bodies_are_refused(server: str, airflow) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    big = requests.post(f"{server}/events/s3", data=b"x" * (MAX_BODY_BYTES + 1), headers=headers, timeout=10)
    assert big.status_code == 413
    bad = requests.post(f"{server}/events/s3", data=b"{not json", headers=headers, timeout=5)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    odd = requests.post(f"{server}/events/s3", json={"Records": [{"eventName": "ObjectCreated:Put"}]},
                        headers=headers, timeout=5)
    assert odd.status_code == 400 and "missing field" in odd.json()["error"]
    assert airflow.calls == 0


def test_health(server: str) -> None:
    assert requests.get(f"{server}/healthz", timeout=5).json() == {"status": "ok"}
