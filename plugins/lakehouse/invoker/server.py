"""The invoker's HTTP endpoint: SeaweedFS filer webhooks and S3 notification JSON.

Standard library only (it is a few routes). Every request must carry the shared bearer token;
anything else gets 401 and triggers nothing. The answer is sent only after the event is in the
ledger, so the sender's own retry covers the window before that.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lakehouse.invoker.core import Invoker
from lakehouse.invoker.events import EventError

__all__ = ["InvokerServer", "MAX_BODY_BYTES"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


class InvokerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], invoker: Invoker, token: str, retry_interval: float = 5.0) -> None:
        super().__init__(address, _Handler)
        self.invoker = invoker
        self.token = token
        self._stop = threading.Event()
        self._retry_interval = retry_interval
        self._retrier = threading.Thread(target=self._retry_loop, name="invoker-retry", daemon=True)

    def serve(self) -> None:
        self._retrier.start()
        try:
            self.serve_forever()
        finally:
            self._stop.set()

    def _retry_loop(self) -> None:
        while not self._stop.wait(self._retry_interval):
            try:
                for outcome in self.invoker.retry_pending():
                    log.info("retried %s: %s %s", outcome.dag_run_id, outcome.status, outcome.detail)
            except Exception:  # keep retrying; the ledger keeps the rows
                log.exception("retry of pending ledger rows failed")


class _Handler(BaseHTTPRequestHandler):
    server: InvokerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        header = self.headers.get("Authorization", "")
        if not hmac.compare_digest(header.encode(), f"Bearer {self.server.token}".encode()):
            self._reply(401, {"error": "missing or wrong bearer token"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"})
            return
        try:
            payload = json.loads(self.rfile.read(length) or b"null")
        except json.JSONDecodeError as exc:
            self._reply(400, {"error": f"body is not JSON: {exc}"})
            return
        if not isinstance(payload, dict):
            self._reply(400, {"error": "body must be a JSON object"})
            return
        routes = {
            "/events/seaweedfs": self.server.invoker.handle_seaweedfs_event,
            "/events/s3": self.server.invoker.handle_s3_event,
        }
        handle = routes.get(self.path)
        if handle is None:
            self._reply(404, {"error": f"no route {self.path}"})
            return
        try:
            outcomes = handle(payload)
        except EventError as exc:
            self._reply(400, {"error": str(exc)})
            return
        except Exception as exc:  # the event is not stored: make the sender retry
            log.exception("event handling failed")
            self._reply(503, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._reply(200, {"outcomes": [o.as_dict() for o in outcomes]})
