"""Normalise object events from every transport into one record.

S3 sends URL-encoded keys with ``+`` for spaces (decoded with ``unquote_plus``, exactly as S3
encodes them); SeaweedFS's filer webhook sends the filer path and a base64 ETag. Both end up as
the same :class:`ObjectEvent`, so the same file version gets the same run id whichever way it came.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote_plus

__all__ = ["ObjectEvent", "IgnoredEvent", "EventError", "from_s3_notification", "from_seaweedfs_webhook"]

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 1024  # S3's own limit, in UTF-8 bytes


class EventError(ValueError):
    """The event cannot be understood; the message names the field."""


@dataclass(frozen=True)
class ObjectEvent:
    bucket: str
    key: str
    etag: str
    size: int | None
    event_time: datetime | None
    source: str

    def __post_init__(self) -> None:
        if not self.bucket:
            raise EventError("event has no bucket")
        check_key(self.key)


@dataclass(frozen=True)
class IgnoredEvent:
    """An event that starts nothing, with the reason (logged, never silently dropped)."""

    reason: str
    detail: str = ""


def check_key(key: str) -> None:
    if not key:
        raise EventError("event has an empty object key")
    if len(key.encode()) > MAX_KEY_LENGTH:
        raise EventError(f"object key longer than {MAX_KEY_LENGTH} bytes")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise EventError(f"object key {key!r} contains control characters")
    if ".." in key.split("/"):
        raise EventError(f"object key {key!r} contains a '..' segment")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def from_s3_notification(payload: Mapping[str, Any], source: str = "s3") -> list[ObjectEvent | IgnoredEvent]:
    """An S3 event notification (``{"Records": [...]}``), as sent to Lambda, SNS or SQS."""
    if payload.get("Event") == "s3:TestEvent":
        return [IgnoredEvent("s3 test event")]
    records = payload.get("Records")
    if not isinstance(records, list):
        raise EventError("S3 notification has no 'Records' list")
    out: list[ObjectEvent | IgnoredEvent] = []
    for index, record in enumerate(records):
        name = str(record.get("eventName", ""))
        if not name.startswith("ObjectCreated:"):
            out.append(IgnoredEvent("not an object-created event", f"Records[{index}].eventName={name!r}"))
            continue
        try:
            s3 = record["s3"]
            bucket = s3["bucket"]["name"]
            obj = s3["object"]
            key = unquote_plus(obj["key"])
        except (KeyError, TypeError) as exc:
            raise EventError(f"Records[{index}]: missing field {exc}") from exc
        size = obj.get("size")
        if key.endswith("/") and not size:
            out.append(IgnoredEvent("folder marker", f"s3://{bucket}/{key}"))
            continue
        out.append(
            ObjectEvent(
                bucket=bucket,
                key=key,
                etag=str(obj.get("versionId") or obj.get("eTag") or obj.get("etag") or "").strip('"'),
                size=int(size) if size is not None else None,
                event_time=_parse_time(record.get("eventTime")),
                source=source,
            )
        )
    return out


def from_seaweedfs_webhook(payload: Mapping[str, Any]) -> list[ObjectEvent | IgnoredEvent]:
    """One SeaweedFS filer event (``create`` or ``update`` of an entry under ``/buckets/<bucket>/``)."""
    event_type = payload.get("event_type")
    path = str(payload.get("key", ""))
    if event_type not in ("create", "update"):
        return [IgnoredEvent(f"filer event {event_type!r}", path)]
    message = payload.get("message") or {}
    entry = message.get("new_entry") or {}
    if entry.get("is_directory"):
        return [IgnoredEvent("directory entry", path)]
    parts = path.split("/", 3)  # ['', 'buckets', bucket, key]
    if len(parts) < 4 or parts[1] != "buckets" or not parts[3]:
        return [IgnoredEvent("not an object in a bucket", path)]
    bucket, key = parts[2], parts[3]
    if bucket.startswith("."):
        return [IgnoredEvent("system entry", path)]
    attributes = entry.get("attributes") or {}
    extended = entry.get("extended") or {}
    etag = ""
    if "Seaweed-X-Amz-ETag" in extended:
        etag = base64.b64decode(extended["Seaweed-X-Amz-ETag"]).decode().strip('"')
    elif attributes.get("md5"):
        etag = base64.b64decode(attributes["md5"]).hex()
    mtime = attributes.get("mtime")
    return [
        ObjectEvent(
            bucket=bucket,
            key=key,
            etag=etag,
            size=attributes.get("file_size"),
            event_time=datetime.fromtimestamp(mtime, tz=timezone.utc) if mtime else None,
            source="seaweedfs",
        )
    ]
