"""CDK entry point: ``cdk synth`` / ``cdk deploy`` run this (see cdk.json).

Context values (``-c key=value``) choose what a deployment may vary; all have defaults, so a
plain ``cdk synth`` works offline without an AWS account:

=====================  ==============================================  =====================
context key            meaning                                         default
=====================  ==============================================  =====================
dist_dir               output of ``deploy/package.py``                 ``<repo>/dist``
stack_name             CloudFormation stack name                       ``Lakehouse``
schedule_flow_id       flow started by the EventBridge schedule        ``invoices``
schedule_expression    EventBridge schedule of that flow               ``cron(0 6 * * ? *)``
airflow_version        MWAA's Airflow version                          ``3.0.6``
mwaa_webserver_access  ``PUBLIC_ONLY`` or ``PRIVATE_ONLY``             ``PUBLIC_ONLY``
alert_email            e-mail subscribed to the alert topic            (none)
lake_databases         Glue databases (Iceberg namespaces) jobs may    ``stage,presentation``
                       write; the Glue role gets no other
mwaa_environment_class ``mw1.micro`` ... ``mw1.2xlarge``               ``mw1.small``
=====================  ==============================================  =====================
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aws_cdk as cdk
from lakehouse_stack import LakehouseProps, LakehouseStack

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    app = cdk.App()

    def ctx(key: str, default: str | None) -> str | None:
        value = app.node.try_get_context(key)
        return default if value in (None, "") else str(value)

    dist = Path(ctx("dist_dir", str(REPO / "dist")) or "").resolve()
    props = LakehouseProps(
        dist_dir=dist,
        schedule_flow_id=ctx("schedule_flow_id", "invoices") or "invoices",
        schedule_expression=ctx("schedule_expression", "cron(0 6 * * ? *)") or "",
        airflow_version=ctx("airflow_version", "3.0.6") or "",
        mwaa_webserver_access=ctx("mwaa_webserver_access", "PUBLIC_ONLY") or "",
        alert_email=ctx("alert_email", None),
        lake_databases=tuple(
            d.strip() for d in (ctx("lake_databases", "stage,presentation") or "").split(",") if d.strip()
        ),
        mwaa_environment_class=ctx("mwaa_environment_class", "mw1.small") or "mw1.small",
    )
    LakehouseStack(
        app,
        ctx("stack_name", "Lakehouse") or "Lakehouse",
        props,
        description="lakehouse: metadata-driven pipelines (S3, Lambda, MWAA, Glue, RDS, Redshift Serverless)",
    )
    app.synth()


if __name__ == "__main__":
    main()
