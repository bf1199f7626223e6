"""S3 client for the landing bucket: SeaweedFS locally, AWS S3 when the endpoint is unset."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from lakehouse.config import Settings

__all__ = ["landing_client"]


def landing_client(settings: Settings) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        region_name=settings.aws_region,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )
