from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class FakeAirflowApi:
    """A recorded-behaviour stand-in for Airflow 3's REST API v2 (token, dagRuns, 409 on a known run id)."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], dict[str, Any]] = {}
        self.tokens_issued = 0
        self.valid_tokens: set[str] = set()
        self.fail_with: int | None = None
        self.password = "pw"


@pytest.fixture
def fake_airflow() -> Iterator[tuple[str, FakeAirflowApi]]:
    state = FakeAirflowApi()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if state.fail_with:
                return self._send(state.fail_with, {"detail": "boom"})
            if self.path == "/auth/token":
                if body.get("password") != state.password:
                    return self._send(401, {"detail": "bad login"})
                state.tokens_issued += 1
                token = f"t{state.tokens_issued}"
                state.valid_tokens.add(token)
                return self._send(201, {"access_token": token})
            if self.headers.get("Authorization", "").removeprefix("Bearer ") not in state.valid_tokens:
                return self._send(401, {"detail": "token expired"})
            parts = self.path.split("/")  # /api/v2/dags/{dag}/dagRuns
            key = (parts[4], body["dag_run_id"])
            if key in state.runs:
                return self._send(409, {"detail": "exists"})
            state.runs[key] = body
            return self._send(200, {"dag_run_id": body["dag_run_id"], "state": "queued"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
