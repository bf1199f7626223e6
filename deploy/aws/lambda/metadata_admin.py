"""The metadata database's admin door on AWS, packaged into ``invoker.zip`` by deploy/package.py.

RDS sits in private subnets, so nothing outside the VPC can reach it. This Lambda runs inside
the VPC with the same settings as the invoker and does two things:

* as the stack's custom resource (``RequestType`` in the event) it applies the versioned
  migrations shipped next to it (``migrations/``, a copy of ``metadata/migrations``) on every
  deployment that changes them, so a fresh stack has the ``lakehouse`` schema and the template
  catalogue before the first file lands;
* invoked directly by an operator with ``{"sql": "<script>"}`` it runs the script (for example a
  flow definition such as ``metadata/samples/invoices/flow.sql``, which has its own
  ``BEGIN``/``COMMIT``) and returns the rows of its last statement::

      aws lambda invoke --function-name <MetadataAdminFunction> --cli-binary-format raw-in-base64-out \\
          --payload "$(jq -Rs '{sql: .}' my_flow.sql)" /dev/stdout

Whoever may invoke it has the metadata database's full access: grant ``lambda:InvokeFunction``
on it to administrators only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import psycopg2

from lakehouse.config import load_settings
from lakehouse.metadata.migrations import migrate

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
PHYSICAL_ID = "lakehouse-metadata-schema"
MAX_ROWS = 1000

log = logging.getLogger(__name__)


def run_sql(dsn: str, script: str) -> dict[str, Any]:
    """Run ``script`` in autocommit mode (the script owns its transactions); rows of the last statement."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(script)
            result: dict[str, Any] = {"status": cur.statusmessage}
            if cur.description is not None:
                rows = cur.fetchmany(MAX_ROWS)
                result["columns"] = [d.name for d in cur.description]
                # JSON-safe: dates, decimals and the like as text, exactly as psql would print them
                result["rows"] = json.loads(json.dumps(rows, default=str))
            return result
    finally:
        conn.close()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    settings = load_settings()
    if "RequestType" in event:  # CloudFormation, through the custom resource provider
        if event["RequestType"] == "Delete":  # the schema outlives the stack's resource (RDS is snapshotted)
            return {"PhysicalResourceId": event.get("PhysicalResourceId", PHYSICAL_ID)}
        applied = migrate(settings.metadata_dsn, MIGRATIONS)
        log.info("metadata migrations applied: %s", applied or "none")
        return {"PhysicalResourceId": PHYSICAL_ID, "Data": {"Applied": ",".join(applied) or "none"}}
    if event.get("migrate"):
        return {"applied": migrate(settings.metadata_dsn, MIGRATIONS)}
    if isinstance(event.get("sql"), str) and event["sql"].strip():
        return run_sql(settings.metadata_dsn, event["sql"])
    raise ValueError('expected {"sql": "..."} or {"migrate": true}')
