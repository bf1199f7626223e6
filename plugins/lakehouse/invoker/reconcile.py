"""Reconciliation: list what is in the bucket and record what no event ever announced.

Object notifications are not guaranteed to arrive (a webhook that gave up, a Lambda throttled past
its retries, a queue purged), so, like Auto Loader and Snowpipe, the invoker also lists each
file-triggered flow's part of the bucket now and then. An object version the ledger has never seen
for the flow is recorded with source ``reconcile`` and goes on exactly as an event would; a version
already recorded (by an event, or an earlier sweep) is left alone, so a sweep never starts a second
run for a file.

The listing is narrowed to the longest literal prefix of the flow's key pattern, and each page of
the listing is compared with the ledger in one query.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lakehouse.flows import Flow
from lakehouse.invoker.core import Invoker, TriggerJob, TriggerOutcome
from lakehouse.invoker.events import EventError, ObjectEvent

__all__ = ["SweepResult", "bucket_objects", "key_prefix", "reconcile", "reconcile_flow"]

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    flow_id: str
    bucket: str
    prefix: str
    listed: int = 0
    matching: int = 0
    known: int = 0
    recorded: list[TriggerOutcome] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"flow {self.flow_id}: listed {self.listed} object(s) under s3://{self.bucket}/{self.prefix}, "
            f"{self.matching} match its pattern, {self.known} already in the ledger, "
            f"{len(self.recorded)} recorded now" + (f", {len(self.refused)} refused" if self.refused else "")
        )


def key_prefix(flow: Flow) -> str:
    """The longest literal start of the flow's key pattern: every matching key begins with it."""
    pattern = flow.trigger_key_pattern or ""
    if flow.trigger_pattern_syntax == "regex":
        literal = re.match(r"(?:[^\\.^$*+?{}\[\]|()]|\\[^A-Za-z0-9])*", pattern.removeprefix("^"))
        text = literal.group(0) if literal else ""
        if text and len(pattern) > len(text) and pattern[len(text)] in "*?{":  # a quantifier binds the last char
            text = text[:-1]
        return re.sub(r"\\(.)", r"\1", text)
    return re.split(r"[*?\[]", pattern, maxsplit=1)[0]


def bucket_objects(s3: Any, bucket: str, prefix: str, source: str) -> Iterator[list[ObjectEvent]]:
    """Pages of the bucket's current objects under ``prefix`` as object events (a versioned
    bucket's version id is the file version, as in S3's events). Folder markers are skipped, as
    their events are; a key an event would be refused for is logged and skipped."""
    versioned = s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
    if versioned:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        listed = (((o, o["VersionId"]) for o in page.get("Versions", ()) if o.get("IsLatest")) for page in pages)
    else:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        listed = (((o, o["ETag"].strip('"')) for o in page.get("Contents", ())) for page in pages)
    for page in listed:
        events = []
        for obj, version in page:
            if not obj["Size"] and obj["Key"].endswith(("/", "_$folder$")):
                continue
            try:
                events.append(ObjectEvent(bucket, obj["Key"], version, obj["Size"], obj.get("LastModified"), source))
            except EventError as exc:
                log.warning("s3://%s/%s skipped: %s", bucket, obj["Key"], exc)
        yield events


def reconcile_flow(invoker: Invoker, s3: Any, flow: Flow) -> tuple[SweepResult, list[TriggerJob]]:
    """One sweep of one flow: record the versions the ledger lacks; returns the trigger calls."""
    assert flow.trigger_bucket
    result = SweepResult(flow.flow_id, flow.trigger_bucket, key_prefix(flow))
    jobs: list[TriggerJob] = []
    for page in bucket_objects(s3, flow.trigger_bucket, result.prefix, "reconcile"):
        result.listed += len(page)
        matching = [e for e in page if flow.matches(e.bucket, e.key)]
        result.matching += len(matching)
        if not matching:
            continue
        with invoker.pool.connection() as conn, conn:  # one transaction per page: a first sweep may find 100,000
            with conn.cursor() as cur:
                cur.execute(
                    """SELECT object_key, etag FROM lakehouse.file_ledger
                       WHERE bucket = %s AND flow_id = %s AND run_suffix = ''
                         AND (object_key, etag) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
                    (flow.trigger_bucket, flow.flow_id, [e.key for e in matching], [e.etag for e in matching]),
                )
                known = set(cur.fetchall())
            result.known += len(known)
            for event in matching:
                if (event.key, event.etag) in known:
                    continue
                outcome, job = invoker._store_for_flow(conn, event, flow, commit=False)
                result.recorded.append(outcome)
                if job is not None:
                    jobs.append(job)
    if result.recorded:
        log.warning("%s (no event had announced them)", result.line())
    return result, jobs


def reconcile(invoker: Invoker, s3: Any, flow_id: str | None = None) -> tuple[list[SweepResult], list[TriggerJob]]:
    """A sweep of every active file-triggered flow (or one), returning what each found."""
    flows = [f for f in invoker.catalogue().flows.values() if f.trigger_bucket and f.is_active]
    if flow_id is not None:
        flows = [f for f in flows if f.flow_id == flow_id]
        if not flows:
            raise LookupError(f"no active flow {flow_id!r} with a file trigger")
    results: list[SweepResult] = []
    jobs: list[TriggerJob] = []
    for flow in sorted(flows, key=lambda f: f.flow_id):
        result, found = reconcile_flow(invoker, s3, flow)
        results.append(result)
        jobs.extend(found)
    return results, jobs
