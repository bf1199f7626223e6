"""Normalise object events from every transport into one record.

Shapes understood (:func:`decode_payload` tells them apart):

* S3 event notification ``{"Records": [{"eventSource": "aws:s3", ...}]}`` (S3 → Lambda, or the
  body of an SQS message / the ``Message`` of an SNS notification);
* SNS → Lambda ``{"Records": [{"EventSource": "aws:sns", "Sns": {"Message": "<json>"}}]}`` and the
  bare SNS envelope ``{"Type": "Notification", "Message": "<json>"}`` (SNS → SQS, SNS → HTTPS);
* SQS → Lambda ``{"Records": [{"eventSource": "aws:sqs", "messageId": ..., "body": "<json>"}]}``,
  whose bodies may be any of these shapes (per-message results: :func:`decode_sqs_batch`);
* EventBridge ``{"source": "aws.s3", "detail-type": "Object Created", "detail": {...}}``;
* the SeaweedFS filer webhook ``{"event_type": "create", "key": "/buckets/<bucket>/<key>", ...}``.

S3 sends URL-encoded keys with ``+`` for spaces (decoded with ``unquote_plus``, exactly as S3
encodes them; EventBridge's ``detail.object.key`` is treated the same way); SeaweedFS's filer
webhook sends the filer path and a base64 ETag. All end up as the same :class:`ObjectEvent`, so
the same file version gets the same run id whichever way it came. The file version is the
``versionId`` when the bucket is versioned, else the ETag (quotes stripped).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

__all__ = [
    "EventError",
    "IgnoredEvent",
    "ObjectEvent",
    "SqsMessage",
    "check_key",
    "decode_payload",
    "decode_sqs_batch",
    "from_eventbridge",
    "from_s3_notification",
    "from_seaweedfs_webhook",
    "from_sns_envelope",
    "is_sqs_batch",
]

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


#: Zero-byte objects that only stand for a folder: S3 console "folders" (``a/b/``) and the
#: ``_$folder$`` markers Hadoop/EMR writes.
_FOLDER_SUFFIXES = ("/", "_$folder$")


#: Where SeaweedFS's S3 gateway keeps the parts of multipart uploads, inside the bucket.
_SEAWEED_MULTIPART_FOLDER = ".uploads/"


def _folder_marker(key: str, size: int | None) -> bool:
    return not size and key.endswith(_FOLDER_SUFFIXES)


def _version(obj: Mapping[str, Any], *names: str) -> str:
    """The file version: the first non-empty of the given fields, quotes stripped."""
    for name in names:
        value = obj.get(name)
        if value:
            return str(value).strip('"')
    return ""


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
        name = str(record.get("eventName", "")).removeprefix("s3:")
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
        if _folder_marker(key, size):
            out.append(IgnoredEvent("folder marker", f"s3://{bucket}/{key}"))
            continue
        out.append(
            ObjectEvent(
                bucket=bucket,
                key=key,
                etag=_version(obj, "versionId", "eTag", "etag"),
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
    if key.startswith(_SEAWEED_MULTIPART_FOLDER):
        # parts of an unfinished multipart upload; completing it creates the object itself
        return [IgnoredEvent("multipart upload part", path)]
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
            event_time=datetime.fromtimestamp(mtime, tz=UTC) if mtime else None,
            source="seaweedfs",
        )
    ]


def from_eventbridge(payload: Mapping[str, Any]) -> list[ObjectEvent | IgnoredEvent]:
    """An EventBridge event from S3 (``source: aws.s3``); only ``Object Created`` starts anything."""
    detail_type = str(payload.get("detail-type", ""))
    if detail_type != "Object Created":
        return [IgnoredEvent("not an object-created event", f"detail-type={detail_type!r}")]
    try:
        detail = payload["detail"]
        bucket = detail["bucket"]["name"]
        obj = detail["object"]
        key = unquote_plus(obj["key"])
    except (KeyError, TypeError) as exc:
        raise EventError(f"EventBridge event: missing field {exc}") from exc
    size = obj.get("size")
    if _folder_marker(key, size):
        return [IgnoredEvent("folder marker", f"s3://{bucket}/{key}")]
    return [
        ObjectEvent(
            bucket=bucket,
            key=key,
            etag=_version(obj, "version-id", "etag"),
            size=int(size) if size is not None else None,
            event_time=_parse_time(payload.get("time")),
            source="eventbridge",
        )
    ]


def _json_text(text: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(text, str):
        raise EventError(f"{where} is not a JSON string")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventError(f"{where} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise EventError(f"{where} is not a JSON object")
    return value


def from_sns_envelope(envelope: Mapping[str, Any]) -> list[ObjectEvent | IgnoredEvent]:
    """An SNS message (as SNS → SQS or SNS → HTTPS delivers it): the S3 notification is in ``Message``."""
    kind = envelope.get("Type", "Notification")
    if kind != "Notification":
        # subscription (un)confirmations carry no object; confirming is an operator's step
        return [IgnoredEvent(f"SNS {kind}", str(envelope.get("TopicArn", "")))]
    inner = _json_text(envelope.get("Message"), "SNS Message")
    return [_with_source(e, "sns") for e in decode_payload(inner)]


def _with_source(event: ObjectEvent | IgnoredEvent, source: str) -> ObjectEvent | IgnoredEvent:
    """Name the outermost transport (sns, sqs) rather than the S3 notification inside it."""
    if isinstance(event, ObjectEvent) and event.source in ("s3", "sns", "eventbridge"):
        return ObjectEvent(event.bucket, event.key, event.etag, event.size, event.event_time, source)
    return event


@dataclass(frozen=True)
class SqsMessage:
    """One message of an SQS batch, decoded on its own: a bad message must not fail its neighbours."""

    message_id: str
    events: list[ObjectEvent | IgnoredEvent]
    error: str | None = None


def decode_sqs_batch(payload: Mapping[str, Any]) -> list[SqsMessage]:
    """SQS → Lambda: each message's body (S3 notification, SNS envelope or EventBridge event)."""
    out = []
    for index, record in enumerate(payload.get("Records") or ()):
        message_id = str(record.get("messageId") or f"Records[{index}]")
        try:
            body = _json_text(record.get("body"), f"SQS message {message_id} body")
            events = [_with_source(e, "sqs") for e in decode_payload(body)]
        except EventError as exc:
            out.append(SqsMessage(message_id, [], str(exc)))
            continue
        out.append(SqsMessage(message_id, events))
    return out


def is_sqs_batch(payload: Mapping[str, Any]) -> bool:
    records = payload.get("Records")
    return (
        isinstance(records, list)
        and bool(records)
        and isinstance(records[0], dict)
        and (records[0].get("eventSource") == "aws:sqs")
    )


def decode_payload(payload: Mapping[str, Any]) -> list[ObjectEvent | IgnoredEvent]:
    """Any supported shape, told apart by its fields; an unknown shape is an :class:`EventError`."""
    if payload.get("Event") == "s3:TestEvent":
        return [IgnoredEvent("s3 test event", str(payload.get("Bucket", "")))]
    if "detail-type" in payload:
        if payload.get("source") != "aws.s3":
            return [IgnoredEvent("EventBridge event not from aws.s3", f"source={payload.get('source')!r}")]
        return from_eventbridge(payload)
    if payload.get("Type") in ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"):
        return from_sns_envelope(payload)
    if "event_type" in payload and str(payload.get("key", "")).startswith("/"):
        return from_seaweedfs_webhook(payload)
    records = payload.get("Records")
    if isinstance(records, list):
        if is_sqs_batch(payload):
            out: list[ObjectEvent | IgnoredEvent] = []
            for message in decode_sqs_batch(payload):
                if message.error:
                    raise EventError(message.error)
                out.extend(message.events)
            return out
        if records and isinstance(records[0], dict) and records[0].get("EventSource") == "aws:sns":
            out = []
            for index, record in enumerate(records):
                sns = record.get("Sns")
                if not isinstance(sns, dict):
                    raise EventError(f"Records[{index}]: missing field 'Sns'")
                out.extend(from_sns_envelope(sns))
            return out
        return from_s3_notification(payload)
    raise EventError("unrecognised event shape: expected an S3 notification, SNS, SQS, EventBridge or SeaweedFS event")
