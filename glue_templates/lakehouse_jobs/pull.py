"""Fetching a file over HTTP(S) into the landing bucket, streamed, checked, never half-written.

The body is streamed to a temporary file while its length and SHA-256 are computed; a response
shorter than its ``Content-Length`` (a dropped connection), an empty body or an HTTP error fails
naming the URL and the problem, and nothing is put into the bucket. Only a complete file is
uploaded (one S3 PUT, or a multipart upload completed at the end: an object appears whole or not at
all), so the invoker never starts a flow on half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

__all__ = ["FetchError", "Fetched", "fetch_to_file", "put_file"]

_CHUNK = 1 << 20
_RETRY_STATUS = {429, 500, 502, 503, 504}


class FetchError(RuntimeError):
    """The download failed; the message names the URL and the problem."""


@dataclass(frozen=True)
class Fetched:
    path: str
    size: int
    sha256: str
    content_type: str | None
    etag: str | None
    last_modified: str | None


def _safe(url: str) -> str:
    """The URL without credentials or query string, for messages."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


def fetch_to_file(
    url: str,
    folder: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60,
    attempts: int = 3,
    backoff: float = 1.0,
) -> Fetched:
    """Download ``url`` into a new file under ``folder``; retries transient failures."""
    if urlparse(url).scheme not in ("http", "https"):
        raise ValueError(f"--url must be http:// or https://, got {_safe(url)!r}")
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            return _fetch_once(url, folder, dict(headers or {}), timeout)
        except FetchError as exc:
            last = exc
            if not getattr(exc, "transient", False) or attempt == attempts:
                raise
            time.sleep(backoff * attempt)
    if last is None:  # pragma: no cover - no attempt at all
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    raise last  # pragma: no cover - the loop always returns or raises


def _fetch_once(url: str, folder: str, headers: dict[str, str], timeout: float) -> Fetched:
    request = urllib.request.Request(url, headers={"User-Agent": "lakehouse-http-to-landing", **headers})
    where = _safe(url)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        error = FetchError(f"GET {where} answered HTTP {exc.code} {exc.reason}")
        error.transient = exc.code in _RETRY_STATUS  # type: ignore[attr-defined]
        raise error from None
    except (urllib.error.URLError, OSError) as exc:
        error = FetchError(f"GET {where} failed: {getattr(exc, 'reason', exc)}")
        error.transient = True  # type: ignore[attr-defined]
        raise error from None
    with response:
        declared = response.headers.get("Content-Length")
        digest = hashlib.sha256()
        size = 0
        # closed by `with handle` below; created before the try so the cleanup can always name it
        handle = tempfile.NamedTemporaryFile(dir=folder, prefix="download-", delete=False)  # noqa: SIM115
        try:
            with handle:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except Exception as exc:  # http.client.IncompleteRead, a reset connection
                        error = FetchError(
                            f"GET {where}: the connection broke after {size} bytes"
                            + (f" of {declared}" if declared else "")
                            + f" ({type(exc).__name__})"
                        )
                        error.transient = True  # type: ignore[attr-defined]
                        raise error from None
                    if not chunk:
                        break
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            if declared is not None and int(declared) != size:
                error = FetchError(f"GET {where}: truncated, received {size} of {declared} bytes")
                error.transient = True  # type: ignore[attr-defined]
                raise error
            if size == 0:
                raise FetchError(f"GET {where}: the response body is empty")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(handle.name)  # a partial download is never kept, let alone uploaded
            raise
        return Fetched(
            handle.name,
            size,
            digest.hexdigest(),
            response.headers.get("Content-Type"),
            response.headers.get("ETag"),
            response.headers.get("Last-Modified"),
        )


def put_file(client: Any, fetched: Fetched, bucket: str, key: str, source_url: str) -> dict[str, Any]:
    """Upload the complete file; the object's metadata records where it came from and its hash."""
    extra: dict[str, Any] = {"Metadata": {"source-url": _safe(source_url), "sha256": fetched.sha256}}
    if fetched.content_type:
        extra["ContentType"] = fetched.content_type
    client.upload_file(fetched.path, bucket, key, ExtraArgs=extra)
    head = client.head_object(Bucket=bucket, Key=key)
    if int(head["ContentLength"]) != fetched.size:
        raise FetchError(
            f"s3://{bucket}/{key} has {head['ContentLength']} bytes after the upload, expected {fetched.size}"
        )
    return {"etag": head.get("ETag", "").strip('"'), "size": fetched.size}
