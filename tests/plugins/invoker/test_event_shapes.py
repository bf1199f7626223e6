"""Every AWS event shape, from sample payloads shaped like AWS's documented examples, decodes to
the same file version; test events, deletes and folder markers are ignored with a reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lakehouse.invoker.events import (
    EventError,
    IgnoredEvent,
    ObjectEvent,
    decode_payload,
    decode_sqs_batch,
    is_sqs_batch,
)

SAMPLES = Path(__file__).parent / "samples"
KEY = "invoices/2026/Nov 23/inv+1 (copy).txt"  # what the sample's encoded key names
ETAG = "d41d8cd98f00b204e9800998ecf8427e"


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def test_direct_s3_notification_decodes_keys_and_prefers_version_id() -> None:
    first, second = decode_payload(sample("s3_put_lambda.json"))
    assert isinstance(first, ObjectEvent) and isinstance(second, ObjectEvent)
    assert (first.bucket, first.key, first.etag, first.size, first.source) == ("landing", KEY, ETAG, 1024, "s3")
    assert first.event_time is not None and first.event_time.isoformat() == "2026-11-23T10:15:30.120000+00:00"
    # a versioned bucket: the version id, not the multipart ETag, is the file version
    assert (second.key, second.etag) == ("invoices/big.csv", "uhggCJ2_B6gU2JaXWXebnXFDstO0ID6G")


def test_sns_to_lambda_unwraps_the_message() -> None:
    (event,) = decode_payload(sample("sns_lambda.json"))
    assert isinstance(event, ObjectEvent)
    assert (event.key, event.etag, event.source) == (KEY, ETAG, "sns")


def test_bare_sns_envelope_and_confirmation() -> None:
    envelope = json.loads(sample("sqs_batch.json")["Records"][1]["body"])  # SNS → SQS body
    (event,) = decode_payload(envelope)
    assert isinstance(event, ObjectEvent) and event.key == KEY
    (confirmation,) = decode_payload(
        {
            "Type": "SubscriptionConfirmation",
            "TopicArn": "arn:aws:sns:eu-west-1:1:t",
            "Message": "You have chosen to subscribe",
            "SubscribeURL": "https://x",
        }
    )
    assert isinstance(confirmation, IgnoredEvent) and confirmation.reason == "SNS SubscriptionConfirmation"


def test_eventbridge_object_created_and_deleted() -> None:
    (event,) = decode_payload(sample("eventbridge_object_created.json"))
    assert isinstance(event, ObjectEvent)
    assert (event.bucket, event.key, event.etag, event.size, event.source) == (
        "landing",
        KEY,
        ETAG,
        1024,
        "eventbridge",
    )
    (deleted,) = decode_payload(sample("eventbridge_object_deleted.json"))
    assert isinstance(deleted, IgnoredEvent) and "Object Deleted" in deleted.detail
    (foreign,) = decode_payload({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2"})
    assert isinstance(foreign, IgnoredEvent)


def test_sqs_batch_decodes_each_message_on_its_own() -> None:
    payload = sample("sqs_batch.json")
    assert is_sqs_batch(payload) and not is_sqs_batch(sample("s3_put_lambda.json"))
    direct, via_sns, via_eventbridge, test_event, poison = decode_sqs_batch(payload)
    assert [e.source for e in direct.events + via_sns.events + via_eventbridge.events] == ["sqs", "sqs", "sqs"]
    assert direct.events[0].etag == "uhggCJ2_B6gU2JaXWXebnXFDstO0ID6G"
    # the same object through SNS and through EventBridge: the same file version
    assert (via_sns.events[0].key, via_sns.events[0].etag) == (
        via_eventbridge.events[0].key,
        via_eventbridge.events[0].etag,
    )
    assert isinstance(test_event.events[0], IgnoredEvent) and test_event.error is None
    assert poison.message_id == "bad00000-0000-4000-8000-000000000001" and "not JSON" in (poison.error or "")
    with pytest.raises(EventError, match="not JSON"):
        decode_payload(payload)  # flattened (HTTP route): one bad message refuses the whole request


def test_test_event_delete_and_folder_markers_are_ignored_with_reasons() -> None:
    (test_event,) = decode_payload(sample("s3_test_event.json"))
    assert isinstance(test_event, IgnoredEvent) and test_event.reason == "s3 test event"
    delete, folder, hadoop_folder = decode_payload(sample("s3_delete_and_folder.json"))
    assert isinstance(delete, IgnoredEvent) and "ObjectRemoved:Delete" in delete.detail
    assert isinstance(folder, IgnoredEvent) and folder.reason == "folder marker"
    assert isinstance(hadoop_folder, IgnoredEvent) and hadoop_folder.detail.endswith("emr_$folder$")


def test_unknown_shape_is_a_clear_error() -> None:
    with pytest.raises(EventError, match="unrecognised event shape"):
        decode_payload({"hello": "world"})
    with pytest.raises(EventError, match="EventBridge event: missing field 'object'"):
        decode_payload({"detail-type": "Object Created", "source": "aws.s3", "detail": {"bucket": {"name": "b"}}})


def test_dangerous_key_inside_eventbridge_is_refused() -> None:
    payload = sample("eventbridge_object_created.json")
    payload["detail"]["object"]["key"] = "a/%2E%2E/etc/passwd"
    with pytest.raises(EventError, match=re.escape("'..' segment")):
        decode_payload(payload)
