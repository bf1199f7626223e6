"""The webhook endpoint: auth, size limit and bad bodies are refused and trigger nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from lakehouse.invoker.core import Invoker
from lakehouse.invoker.server import MAX_BODY_BYTES, InvokerServer

from .conftest import catalogue_for

TOKEN = "s3cr3t-token"
SAMPLES = Path(__file__).parent / "samples"


def serve(invoker: Invoker, workers: int, retry_interval: float = 3600) -> tuple[InvokerServer, str]:
    srv = InvokerServer(("127.0.0.1", 0), invoker, TOKEN, retry_interval=retry_interval, dispatch_workers=workers)
    threading.Thread(target=srv.serve, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture
def server(invoker: Invoker) -> Iterator[str]:
    """As in production: answered once stored, Airflow called by dispatcher threads (tests that
    assert on the call's result wait for it with :func:`wait_dispatched`)."""
    srv, url = serve(invoker, workers=2)
    yield url
    srv.stop()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll a behaviour until it holds (the dispatchers work in the background)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {what}")
        time.sleep(0.05)


def wait_dispatched(ledger_rows: Callable[[], list[dict]]) -> list[dict]:
    """The ledger rows once the background dispatch is done: none of them waits for its call."""
    wait_until(lambda: all(r["status"] != "pending" for r in ledger_rows()), "every stored event dispatched")
    return ledger_rows()


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


def test_authorised_event_triggers_and_duplicate_does_not(server: str, airflow, bucket: str, ledger_rows) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    first = requests.post(f"{server}/events/seaweedfs", json=seaweed_event(bucket), headers=headers, timeout=10)
    assert first.status_code == 200 and first.json()["outcomes"][0]["status"] == "accepted"
    assert [r["status"] for r in wait_dispatched(ledger_rows)] == ["triggered"] and len(airflow.runs) == 1
    second = requests.post(f"{server}/events/seaweedfs", json=seaweed_event(bucket), headers=headers, timeout=10)
    assert second.json()["outcomes"][0]["status"] == "duplicate"
    assert len(airflow.runs) == 1


def test_oversized_and_malformed_bodies_are_refused(server: str, airflow) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    big = requests.post(f"{server}/events/s3", data=b"x" * (MAX_BODY_BYTES + 1), headers=headers, timeout=10)
    assert big.status_code == 413
    bad = requests.post(f"{server}/events/s3", data=b"{not json", headers=headers, timeout=5)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    odd = requests.post(
        f"{server}/events/s3", json={"Records": [{"eventName": "ObjectCreated:Put"}]}, headers=headers, timeout=5
    )
    assert odd.status_code == 400 and "missing field" in odd.json()["error"]
    assert airflow.calls == 0


def test_health(server: str) -> None:
    assert requests.get(f"{server}/healthz", timeout=5).json() == {"status": "ok"}


def test_hmac_signature_is_an_alternative_to_the_bearer_token(server: str, airflow, bucket: str, ledger_rows) -> None:
    from lakehouse.invoker.server import SIGNATURE_HEADER, sign_body

    body = json.dumps(seaweed_event(bucket)).encode()
    good = requests.post(
        f"{server}/events/seaweedfs", data=body, timeout=10, headers={SIGNATURE_HEADER: sign_body(TOKEN, body)}
    )
    assert good.status_code == 200 and good.json()["outcomes"][0]["status"] == "accepted"
    assert [r["status"] for r in wait_dispatched(ledger_rows)] == ["triggered"]
    tampered = body.replace(b"in/a.txt", b"in/b.txt")
    for headers in (
        {SIGNATURE_HEADER: sign_body(TOKEN, body)},  # signature of another body
        {SIGNATURE_HEADER: sign_body("other-secret", tampered)},
        {SIGNATURE_HEADER: "sha256=" + "0" * 64},
    ):
        refused = requests.post(f"{server}/events/seaweedfs", data=tampered, headers=headers, timeout=10)
        assert refused.status_code == 401
    assert len(airflow.runs) == 1


def test_aws_shapes_share_one_route_and_one_run(server: str, airflow, bucket: str, ledger_rows) -> None:
    """The same object via SNS and via EventBridge on /events/s3: one run (exactly once across transports)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    sns = json.loads((SAMPLES / "sns_lambda.json").read_text())
    inner = json.loads(sns["Records"][0]["Sns"]["Message"])
    inner["Records"][0]["s3"]["bucket"]["name"] = bucket
    inner["Records"][0]["s3"]["object"]["key"] = "in/x+y.txt"
    sns["Records"][0]["Sns"]["Message"] = json.dumps(inner)
    eventbridge = json.loads((SAMPLES / "eventbridge_object_created.json").read_text())
    eventbridge["detail"]["bucket"]["name"] = bucket
    eventbridge["detail"]["object"]["key"] = "in/x+y.txt"
    first = requests.post(f"{server}/events/s3", json=sns, headers=headers, timeout=10).json()["outcomes"]
    assert [(o["status"], o["key"]) for o in first] == [("accepted", "in/x y.txt")]
    assert [r["status"] for r in wait_dispatched(ledger_rows)] == ["triggered"]
    second = requests.post(f"{server}/events/s3", json=eventbridge, headers=headers, timeout=10).json()["outcomes"]
    assert [o["status"] for o in second] == ["duplicate"] and second[0]["dag_run_id"] == first[0]["dag_run_id"]
    assert len(airflow.runs) == 1


def test_dangerous_key_is_refused_with_a_clear_error(server: str, airflow, bucket: str) -> None:
    payload = seaweed_event(bucket)
    payload["key"] = f"/buckets/{bucket}/in/../../etc/passwd"
    response = requests.post(
        f"{server}/events/seaweedfs", json=payload, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert response.status_code == 400 and "'..' segment" in response.json()["error"]
    assert airflow.calls == 0


def test_dispatching_server_answers_once_stored_and_triggers_in_background(
    invoker: Invoker, airflow, bucket: str, ledger_rows
) -> None:
    srv, url = serve(invoker, workers=4, retry_interval=0.2)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        answers = [
            requests.post(f"{url}/events/seaweedfs", json=seaweed_event(bucket), headers=headers, timeout=10).json()[
                "outcomes"
            ][0]
            for _ in range(2)
        ]
        assert answers[0]["status"] == "accepted" and answers[0]["ledger_id"] == ledger_rows()[0]["ledger_id"]
        wait_until(lambda: ledger_rows()[0]["status"] == "triggered", "the dispatcher triggered the run")
        assert len(airflow.runs) == 1 and ledger_rows()[0]["deliveries"] == 2  # the second: counted, no new run
    finally:
        srv.stop()


def test_airflow_down_does_not_slow_the_answer_and_the_outbox_drains(
    invoker: Invoker, airflow, bucket: str, ledger_rows
) -> None:
    airflow.down = True
    srv, url = serve(invoker, workers=4, retry_interval=0.2)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for i in range(20):
            payload = seaweed_event(bucket)
            payload["key"] = f"/buckets/{bucket}/in/{i}.txt"
            response = requests.post(f"{url}/events/seaweedfs", json=payload, headers=headers, timeout=10)
            assert response.status_code == 200 and response.json()["outcomes"][0]["status"] == "accepted"
        wait_until(lambda: all(r["attempts"] >= 1 or r["last_error"] for r in ledger_rows()), "every row tried")
        assert {r["status"] for r in ledger_rows()} == {"pending"} and airflow.runs == {}
        # the breaker: one outage costs a few calls, not one per event
        assert airflow.calls < 20
        airflow.down = False
        wait_until(lambda: {r["status"] for r in ledger_rows()} == {"triggered"}, "the outbox drained")
        assert len(airflow.runs) == 20
    finally:
        srv.stop()


def test_rows_stranded_by_a_dead_server_are_triggered_by_the_next(pg, airflow, bucket: str, ledger_rows) -> None:
    """Stored, answered, then the process goes away before any trigger call: the next server
    (a new Invoker over the same ledger) takes the rows over once their lease has run out."""
    catalogue = catalogue_for(bucket, ("inv_a", "in/*.txt"))
    first = Invoker(pg.metadata_dsn, airflow, catalogue_loader=lambda: catalogue, lease_seconds=1)
    srv, url = serve(first, workers=1)
    srv.submit = lambda jobs, retry=False: None  # type: ignore[method-assign]  # the crash: queued jobs vanish
    response = requests.post(
        f"{url}/events/seaweedfs", json=seaweed_event(bucket), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert response.json()["outcomes"][0]["status"] == "accepted"
    srv.stop()
    first.close()
    assert [r["status"] for r in ledger_rows()] == ["pending"] and airflow.calls == 0
    second = Invoker(pg.metadata_dsn, airflow, catalogue_loader=lambda: catalogue, lease_seconds=1)
    srv, url = serve(second, workers=2, retry_interval=0.2)
    try:
        wait_until(lambda: ledger_rows()[0]["status"] == "triggered", "the next server triggered the row")
        assert len(airflow.runs) == 1
    finally:
        srv.stop()
        second.close()


def test_empty_secret_is_refused_at_start(invoker: Invoker) -> None:
    with pytest.raises(ValueError, match="LAKEHOUSE_INVOKER_TOKEN is empty"):
        InvokerServer(("127.0.0.1", 0), invoker, "")


def test_no_dispatcher_or_no_pooled_connection_is_refused_at_start(invoker: Invoker) -> None:
    """Calling Airflow inside the request and connecting per use are the benchmark's baseline
    (bench/invoker.py), not modes of the package."""
    from lakehouse.invoker.core import ConnectionPool

    with pytest.raises(ValueError, match="at least 1 dispatcher thread, got 0"):
        InvokerServer(("127.0.0.1", 0), invoker, TOKEN, dispatch_workers=0)
    with pytest.raises(ValueError, match="at least 1 connection, got 0"):
        ConnectionPool("postgresql://unused", 0)


def test_events_arriving_while_the_database_is_away_are_spooled_then_stored(
    pg, airflow, bucket: str, ledger_rows, tmp_path: Path
) -> None:
    """SeaweedFS's webhook does not retry a 503: while Postgres is unreachable the event is kept
    on disk (answered 200 only once written) and reaches the ledger, once, when it is back."""
    from lakehouse.invoker.core import ConnectionPool
    from lakehouse.invoker.spool import EventSpool

    catalogue = catalogue_for(bucket, ("inv_a", "in/*.txt"))
    invoker = Invoker(
        "postgresql://nobody:x@127.0.0.1:1/none?connect_timeout=2", airflow, catalogue_loader=lambda: catalogue
    )
    spool = EventSpool(tmp_path / "spool")
    srv = InvokerServer(("127.0.0.1", 0), invoker, TOKEN, retry_interval=0.2, dispatch_workers=2, spool=spool)
    threading.Thread(target=srv.serve, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for i in (1, 2, 2):  # the last one a duplicate delivery
            payload = seaweed_event(bucket)
            payload["key"] = f"/buckets/{bucket}/in/{i}.txt"
            response = requests.post(f"{url}/events/seaweedfs", json=payload, headers=headers, timeout=10)
            assert response.status_code == 200 and response.json()["outcomes"][0]["status"] == "spooled"
        assert len(spool.pending()) == 3 and ledger_rows() == [] and airflow.calls == 0

        invoker.pool = ConnectionPool(pg.metadata_dsn, 2)  # the database answers again
        invoker.metadata_dsn = pg.metadata_dsn
        # the spool empties only after its last event (the duplicate) is stored: both must hold
        wait_until(
            lambda: spool.pending() == [] and [r["status"] for r in ledger_rows()] == ["triggered", "triggered"],
            "spool drained",
        )
        assert len(airflow.runs) == 2
        assert sorted(r["deliveries"] for r in ledger_rows()) == [1, 2]
    finally:
        srv.stop()
        invoker.close()


def test_a_pooled_connection_the_server_dropped_does_not_lose_the_event(
    invoker: Invoker, airflow, bucket: str, ledger_rows, pg, tmp_path: Path
) -> None:
    """A Postgres restart drops the pool's idle connections: the next event meets "server closed
    the connection", then "connection already closed"; it is spooled, not answered 503."""
    import psycopg2

    from lakehouse.invoker.spool import EventSpool

    spool = EventSpool(tmp_path / "spool")
    srv = InvokerServer(("127.0.0.1", 0), invoker, TOKEN, retry_interval=0.2, dispatch_workers=2, spool=spool)
    threading.Thread(target=srv.serve, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        first = seaweed_event(bucket)
        assert requests.post(f"{url}/events/seaweedfs", json=first, headers=headers, timeout=10).status_code == 200
        wait_until(lambda: [r["status"] for r in ledger_rows()] == ["triggered"], "first event triggered")
        pids = [conn.get_backend_pid() for conn in list(invoker.pool._idle.queue)]
        with psycopg2.connect(pg.metadata_dsn) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        admin.close()
        second = seaweed_event(bucket)
        second["key"] = f"/buckets/{bucket}/in/b.txt"
        response = requests.post(f"{url}/events/seaweedfs", json=second, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        wait_until(lambda: [r["status"] for r in ledger_rows()] == ["triggered", "triggered"], "second event stored")
        assert spool.pending() == []
    finally:
        srv.stop()
