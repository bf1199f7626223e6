"""Event shapes from real payloads: S3 notifications and SeaweedFS filer webhooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lakehouse.invoker.events import EventError, IgnoredEvent, ObjectEvent, from_s3_notification, from_seaweedfs_webhook

SAMPLES = Path(__file__).parent / "samples"


def s3_record(key: str, name: str = "ObjectCreated:Put", size: int = 12, etag: str = "abc") -> dict:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": name,
        "eventTime": "2026-11-23T10:00:00.000Z",
        "s3": {"bucket": {"name": "landing"}, "object": {"key": key, "size": size, "eTag": etag}},
    }


def test_s3_keys_are_decoded_as_s3_encodes_them() -> None:
    (event,) = from_s3_notification({"Records": [s3_record("invoices/my+file%2B1%C3%A9.txt")]})
    assert isinstance(event, ObjectEvent)
    assert event.key == "invoices/my file+1é.txt"
    assert (event.bucket, event.etag, event.size) == ("landing", "abc", 12)
    assert event.event_time is not None and event.event_time.year == 2026


def test_s3_test_event_folder_marker_and_delete_are_ignored_with_reason() -> None:
    assert from_s3_notification({"Service": "Amazon S3", "Event": "s3:TestEvent"}) == [IgnoredEvent("s3 test event")]
    folder, delete = from_s3_notification(
        {"Records": [s3_record("invoices/", size=0), s3_record("a.txt", name="ObjectRemoved:Delete")]}
    )
    assert isinstance(folder, IgnoredEvent) and folder.reason == "folder marker"
    assert isinstance(delete, IgnoredEvent) and "not an object-created" in delete.reason


def test_version_id_wins_over_etag() -> None:
    record = s3_record("a.txt")
    record["s3"]["object"]["versionId"] = "v2"
    (event,) = from_s3_notification({"Records": [record]})
    assert event.etag == "v2"


@pytest.mark.parametrize(
    ("key", "message"),
    [("a/../b.txt", "'..' segment"), ("a\x01b", "control characters"), ("k" * 1025, "longer than 1024")],
)
def test_dangerous_keys_are_refused(key: str, message: str) -> None:
    with pytest.raises(EventError, match=message):
        from_s3_notification({"Records": [s3_record(key)]})


def test_malformed_notification_names_the_field() -> None:
    with pytest.raises(EventError, match="Records"):
        from_s3_notification({"foo": 1})
    with pytest.raises(EventError, match=r"Records\[0\]: missing field 's3'"):
        from_s3_notification({"Records": [{"eventName": "ObjectCreated:Put"}]})


def test_seaweedfs_create_gives_the_same_etag_s3_reports() -> None:
    (event,) = from_seaweedfs_webhook(json.loads((SAMPLES / "seaweedfs_create.json").read_text()))
    assert isinstance(event, ObjectEvent)
    assert (event.bucket, event.key) == ("landing", "invoices/2026/a b+c.txt")
    # put_object answered ETag "b1946ac92492d2347c6235b4d2611184" for this body
    assert event.etag == "b1946ac92492d2347c6235b4d2611184"
    assert event.size == 6 and event.source == "seaweedfs"


def test_seaweedfs_overwrite_is_a_new_version() -> None:
    (event,) = from_seaweedfs_webhook(json.loads((SAMPLES / "seaweedfs_update.json").read_text()))
    assert isinstance(event, ObjectEvent)
    assert event.etag == "a10edbbb8f28f8e98ee6b649ea2556f4" and event.size == 7


def test_seaweedfs_directories_and_system_entries_are_ignored() -> None:
    (directory,) = from_seaweedfs_webhook(json.loads((SAMPLES / "seaweedfs_directory.json").read_text()))
    assert isinstance(directory, IgnoredEvent) and directory.reason == "directory entry"
    (system,) = from_seaweedfs_webhook(
        {"event_type": "create", "key": "/buckets/.system/owners/.complete", "message": {"new_entry": {}}}
    )
    assert isinstance(system, IgnoredEvent)
    (deleted,) = from_seaweedfs_webhook({"event_type": "delete", "key": "/buckets/landing/a.txt"})
    assert isinstance(deleted, IgnoredEvent)


def test_seaweedfs_multipart_parts_are_ignored_and_the_completed_object_counts() -> None:
    """Captured from SeaweedFS 4.48: the parts of a multipart upload are created under the bucket's
    ``.uploads/`` folder (one filer event each); completing the upload creates the object itself,
    with the ETag S3 reports for it (``<md5 of part md5s>-<parts>``)."""
    (part,) = from_seaweedfs_webhook(json.loads((SAMPLES / "seaweedfs_multipart_part.json").read_text()))
    assert isinstance(part, IgnoredEvent) and part.reason == "multipart upload part"
    (done,) = from_seaweedfs_webhook(json.loads((SAMPLES / "seaweedfs_multipart_complete.json").read_text()))
    assert isinstance(done, ObjectEvent)
    assert (done.bucket, done.key, done.size) == ("landing", "big/file one.bin", 5243880)
    assert done.etag.endswith("-2") and len(done.etag) == 34
