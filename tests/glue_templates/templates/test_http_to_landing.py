"""http_to_landing with a real HTTP server (stdlib, in a thread) and the real landing bucket
(SeaweedFS, started the way `make up` starts it, on the test ports)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lakehouse.config import Settings
from lakehouse_jobs.pull import FetchError
from lakehouse_jobs.templates import http_to_landing

pytestmark = pytest.mark.integration

BODY = b"".join(b"%d,rate %d\n" % (i, i) for i in range(50000))  # ~0.6 MB: more than one read chunk
SEEN: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        SEEN.append({"path": self.path, "auth": self.headers.get("Authorization")})
        path = self.path.split("?")[0]
        if path == "/rates.csv":
            self._send(200, BODY)
        elif path == "/private.csv":
            if self.headers.get("Authorization") != "Bearer t0ken":
                self._send(401, b"no")
            else:
                self._send(200, b"id\n1\n")
        elif path == "/cut.csv":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:1000])
            self.wfile.flush()
            self.close_connection = True
        elif path == "/empty.csv":
            self._send(200, b"")
        else:
            self._send(404, b"not here")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def landing(pg: Settings) -> Iterator[Settings]:
    """SeaweedFS on the test ports; stopped again unless something else had started it."""
    from lakehouse.hooks.s3 import landing_client
    from lakehouse.stack import services
    from lakehouse.stack.processes import group_alive, stop_group

    already = group_alive(pg.run_dir, "seaweedfs")
    services._start_seaweedfs(pg, services.stack_environment(pg), lambda _: None)
    landing_client(pg).head_bucket(Bucket=pg.landing_bucket)
    yield pg
    if not already:
        stop_group(pg.run_dir, "seaweedfs")


@pytest.fixture
def s3_env(landing: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", landing.s3_endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", landing.s3_access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", landing.s3_secret_access_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", landing.aws_region or "us-east-1")
    monkeypatch.setenv("LAKEHOUSE_LANDING_BUCKET", landing.landing_bucket)
    monkeypatch.setenv(
        "LAKEHOUSE_SECRETS_JSON",
        json.dumps(
            {
                "api": {"engine": "postgres", "host": "", "username": "", "password": "t0ken"},
                "basic": {"username": "ann", "password": "pw"},
                "custom": {"headers": {"Authorization": "Bearer t0ken"}},
            }
        ),
    )
    return landing


def _run(tmp_path: Path, lake_uri: str, url: str, key: str, *extra: str) -> dict:
    metrics_file = tmp_path / "m.json"
    http_to_landing.main(
        [
            "--batch_id",
            "b1",
            "--lake_uri",
            lake_uri,
            "--metrics_uri",
            str(metrics_file),
            "--url",
            url,
            "--target_key",
            key,
            "--attempts",
            "2",
            *extra,
        ]
    )
    return json.loads(metrics_file.read_text())


def _object(settings: Settings, key: str) -> tuple[bytes, dict]:
    from lakehouse.hooks.s3 import landing_client

    obj = landing_client(settings).get_object(Bucket=settings.landing_bucket, Key=key)
    return obj["Body"].read(), obj["Metadata"]


def _exists(settings: Settings, key: str) -> bool:
    from lakehouse.hooks.s3 import landing_client

    found = landing_client(settings).list_objects_v2(Bucket=settings.landing_bucket, Prefix=key)
    return found.get("KeyCount", 0) > 0


def test_downloads_into_the_landing_bucket(
    http_server: str, s3_env: Settings, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    key = f"rates_{unique}/2026-11-23.csv"
    metrics = _run(tmp_path, lake_uri, f"{http_server}/rates.csv?day=2026-11-23", key)
    body, meta = _object(s3_env, key)
    assert body == BODY and metrics["bytes"] == len(BODY)
    assert meta["sha256"] == hashlib.sha256(BODY).hexdigest() == metrics["sha256"]
    assert meta["source-url"] == f"{http_server}/rates.csv"  # no query string: it may carry tokens
    assert metrics["target_uri"] == f"s3://{s3_env.landing_bucket}/{key}"

    again = _run(tmp_path, lake_uri, f"{http_server}/rates.csv", key, "--skip_unchanged", "true")
    assert again["unchanged"] is True and again["rows_out"] == 0

    private = _run(
        tmp_path, lake_uri, f"{http_server}/private.csv", f"rates_{unique}/private.csv", "--secret_id", "api"
    )  # an Airflow connection with only a password: a bearer token
    assert private["bytes"] == 5 and SEEN[-1]["auth"] == "Bearer t0ken"
    _run(tmp_path, lake_uri, f"{http_server}/private.csv", f"rates_{unique}/p2.csv", "--secret_id", "custom")
    assert SEEN[-1]["auth"] == "Bearer t0ken"
    with pytest.raises(FetchError, match="HTTP 401"):  # basic auth is sent, and refused by this endpoint
        _run(tmp_path, lake_uri, f"{http_server}/private.csv", f"rates_{unique}/p3.csv", "--secret_id", "basic")
    assert SEEN[-1]["auth"] == "Basic YW5uOnB3"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/nope.csv", "answered HTTP 404"),
        ("/private.csv", "answered HTTP 401"),
        ("/cut.csv", "bytes"),
        ("/empty.csv", "the response body is empty"),
    ],
)
def test_failed_downloads_name_the_url_and_land_nothing(
    http_server: str, s3_env: Settings, tmp_path: Path, lake_uri: str, unique: str, path: str, problem: str
) -> None:
    key = f"bad_{unique}{path}"
    with pytest.raises(FetchError) as failure:
        _run(tmp_path, lake_uri, f"{http_server}{path}", key)
    assert f"{http_server}{path}" in str(failure.value) and problem in str(failure.value)
    assert not _exists(s3_env, key)
    assert "FetchError" in json.loads((tmp_path / "m.json").read_text())["error"]


def test_refuses_other_schemes_and_bad_keys(s3_env: Settings, tmp_path: Path, lake_uri: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        _run(tmp_path, lake_uri, "file:///etc/passwd", "x/y.csv")
    with pytest.raises(ValueError, match="--target_key"):
        _run(tmp_path, lake_uri, "http://127.0.0.1:1/x", "../y.csv")
