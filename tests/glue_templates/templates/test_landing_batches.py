"""landing_to_raw on a run of many files (a micro-batch's manifest): one read of all of them, each
file accepted or rejected whole, rejects kept, and every raw row keeps its file and event time."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakehouse_jobs.metrics import JobFailure
from lakehouse_jobs.templates import landing_to_raw, raw_to_stage_scd2

pytestmark = pytest.mark.integration

SCHEMA = json.dumps({"id": "int", "name": "string"})


def _manifest(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, list[str]]:
    """The files on disk and a manifest naming them, as the invoker writes it for a batch."""
    entries = []
    for i, (name, body) in enumerate(files.items()):
        path = tmp_path / "landing" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        entries.append({"uri": str(path), "event_time": f"2026-11-01T06:00:0{i}+00:00"})
    manifest = tmp_path / "lake" / "_manifests" / "flow" / "s3batch__flow__0000000001.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"files": entries}))
    return manifest, [e["uri"] for e in entries]


def _run(tmp_path: Path, lake_uri: str, manifest: Path, dataset: str, *extra: str) -> dict:
    metrics_file = tmp_path / "m.json"
    argv = [
        "--flow_id",
        "f",
        "--task_id",
        "to_raw",
        "--run_id",
        "r1",
        "--batch_id",
        f"b_{dataset}",
        "--lake_uri",
        lake_uri,
        "--metrics_uri",
        str(metrics_file),
        "--source_uri",
        str(manifest),
        "--dataset",
        dataset,
        "--format",
        "csv",
        "--schema",
        SCHEMA,
        *extra,
    ]
    try:
        landing_to_raw.main(argv)
    finally:
        written = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
    return written


def test_a_batch_is_read_together_and_a_bad_file_is_rejected_whole(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    manifest, uris = _manifest(
        tmp_path,
        {
            "a.csv": b"id,name\n1,alpha\n2,beta\n",
            "b.csv.gz": gzip.compress(b"id,name\n3,gamma\nx,bad\n4,delta\n5,epsilon\n"),  # 1 reject of 4: within 0.3
            "c.csv": b"id,name\nx,one\ny,two\n6,three\n",  # 2 of 3 rejected: the whole file is rejected
            "d.csv": b"",  # empty
            "e.csv": b"\x00\x01\x02binary\xff\xfe",  # not text
        },
    )
    metrics = _run(tmp_path, lake_uri, manifest, f"batch_{unique}", "--max_reject_ratio", "0.3")

    assert (metrics["files"], metrics["files_accepted"], metrics["files_rejected"]) == (5, 2, 3)
    reasons = " | ".join(metrics["rejected_files"])
    assert f"{uris[2]}: 2 of 3 lines rejected (66.7%)" in reasons and f"{uris[3]} is empty" in reasons
    assert uris[4] in reasons
    raw = spark.read.parquet(metrics["raw_path"])
    rows = {(r["id"], r["_source_file"], r["_line_number"]) for r in raw.collect()}
    assert rows == {(1, uris[0], 2), (2, uris[0], 3), (3, uris[1], 2), (4, uris[1], 4), (5, uris[1], 5)}
    times = {
        r["_source_file"]: r["_ingested_at"].isoformat()
        for r in raw.select("_source_file", "_ingested_at").distinct().collect()
    }
    assert times == {uris[0]: "2026-11-01T06:00:00", uris[1]: "2026-11-01T06:00:01"}  # each file's event time
    assert metrics["rows_out"] == 5
    rejects = {(r["_source_file"], r["_line_number"]) for r in spark.read.json(metrics["rejects_path"]).collect()}
    assert rejects == {(uris[1], 3), (uris[2], 2), (uris[2], 3)}  # every bad line kept, of every file


def test_a_batch_whose_every_file_is_rejected_fails_naming_each(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    manifest, uris = _manifest(tmp_path, {"a.csv": b"", "b.csv": b"id,name\nx,bad\n"})
    with pytest.raises(JobFailure, match="all 2 files of the batch were rejected") as failed:
        _run(tmp_path, lake_uri, manifest, f"allbad_{unique}")
    assert uris[0] in str(failed.value) and uris[1] in str(failed.value)
    assert not (Path(lake_uri.removeprefix("file://")) / "raw" / f"allbad_{unique}").exists()


def test_a_gzip_cut_short_is_found_while_reading_and_set_aside(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    whole = gzip.compress(b"id,name\n" + b"".join(f"{i},n{i}\n".encode() for i in range(20000)))
    manifest, uris = _manifest(tmp_path, {"good.csv": b"id,name\n1,one\n", "cut.csv.gz": whole[: len(whole) // 2]})
    metrics = _run(tmp_path, lake_uri, manifest, f"cut_{unique}")
    assert metrics["files_accepted"] == 1 and metrics["rejected_files"] == [
        f"landing file {uris[1]} is truncated: the compressed stream ends early (read as csv)"
    ]
    assert [r["id"] for r in spark.read.parquet(metrics["raw_path"]).collect()] == [1]


def test_a_batch_without_sequence_by_is_ordered_by_file_event_time_then_line(
    spark: SparkSession, tmp_path: Path, lake_uri: str, unique: str
) -> None:
    """The stage orders a micro-batch's files by their event times and, inside a file, by line."""
    manifest, uris = _manifest(
        tmp_path,
        {
            "a.csv": b"id,name\n1,alpha\n1,alpha-corrected\n",  # one file: its later line is the key's state
            "b.csv": b"id,name\n1,beta\n2,gamma\n",  # a later event: a new version of 1
            "c.csv": b"id,name\n2,gamma\n",  # unchanged: no version
        },
    )
    dataset, table = f"order_{unique}", f"stage.order_{unique}"
    raw = _run(tmp_path, lake_uri, manifest, dataset)
    assert raw["files_accepted"] == 3
    metrics_file = tmp_path / "stage.json"
    raw_to_stage_scd2.main(
        [
            *("--batch_id", f"b_{dataset}", "--lake_uri", lake_uri, "--metrics_uri", str(metrics_file)),
            *("--dataset", dataset, "--target_table", table, "--keys", "id"),
        ]
    )
    versions = [
        (r["id"], r["name"], r["_valid_from"].isoformat(), r["_is_current"], r["_source_file"])
        for r in spark.table(table).orderBy("id", "_valid_from").collect()
    ]
    assert versions == [
        (1, "alpha-corrected", "2026-11-01T06:00:00", False, uris[0]),
        (1, "beta", "2026-11-01T06:00:01", True, uris[1]),
        (2, "gamma", "2026-11-01T06:00:01", True, uris[1]),
    ]
