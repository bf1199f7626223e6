"""Small JSON objects the orchestration side writes into the lake: a micro-batch's file manifest.

The lake is a local folder (``file://``) on the stack and an S3 prefix on AWS; the manifest is how a
run of many files names them (Airflow's run ``conf`` stays small) and what ``landing_to_raw``
reads. Written whole: a local file is replaced atomically, an S3 object is one PUT.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import boto3

__all__ = ["write_json"]


def write_json(lake_uri: str, relative: str, document: Any) -> str:
    """Write ``document`` to ``<lake_uri>/<relative>``; returns the object's URI."""
    uri = f"{lake_uri.rstrip('/')}/{relative.lstrip('/')}"
    body = json.dumps(document, default=str, sort_keys=True)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        boto3.client("s3").put_object(
            Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=body.encode(), ContentType="application/json"
        )
        return uri
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"cannot write {uri!r}: the lake must be a file:// or s3:// URI")
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(path)
    return path.resolve().as_uri()
